"""Small helpers shared by knob modules (value formatting, error wording)."""

from __future__ import annotations

from decimal import Decimal

from autotune.errors import InvalidValue


def invalid(knob: str, target: str, value: object, why: str) -> InvalidValue:
    """InvalidValue whose message names knob, target and value (the helper shows it verbatim)."""
    return InvalidValue(f"{knob} on {target!r}: value {value!r} {why}")


def fmt_float(x: float) -> str:
    """Compact decimal with 6 significant digits and never an exponent (values must pass the
    strict grammar): 0.5 -> "0.5", 2.0 -> "2", 1/3 -> "0.333333", 2e6 -> "2000000"."""
    text = format(Decimal(f"{x:.6g}"), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
