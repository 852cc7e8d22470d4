"""Small helpers shared by knob modules (value formatting, error wording)."""

from __future__ import annotations

from autotune.errors import InvalidValue


def invalid(knob: str, target: str, value: object, why: str) -> InvalidValue:
    """InvalidValue whose message names knob, target and value (the helper shows it verbatim)."""
    return InvalidValue(f"{knob} on {target!r}: value {value!r} {why}")


def fmt_float(x: float) -> str:
    """Compact decimal: 0.5 -> "0.5", 2.0 -> "2", 1/3 -> "0.333333"."""
    return f"{x:.6g}"
