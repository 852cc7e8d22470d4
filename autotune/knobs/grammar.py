"""The number grammar every knob validates values with: ASCII digits, nothing loose.

Python's ``int()``/``float()`` accept far more than the kernel does: ``1_0``, Arabic-Indic
``١٠`` and full-width ``１０`` digits, ``+5``, ``inf``, ``nan``, ``1e1``, ``60.0``. A value
normalized by them before the range check passes as something the kernel refuses or reads
differently (a sysctl reads ``010`` as octal 8). So each kind of number has one parser here and
knobs use nothing else. Every parser takes the token exactly (callers strip surrounding ASCII
whitespace with ``strip_ws``), is bounded in length (no 4,300-digit ``int()`` and no float
overflow), and raises ``ValueError`` saying what is wrong.
"""

from __future__ import annotations

import re
from decimal import Decimal

WS = " \t\n"  # the only whitespace a value may carry around it (and between sysctl fields)
MAX_INT_DIGITS = 20  # 2**64 - 1 has 20 digits; the kernel parses at most an unsigned long
MAX_FRACTION_DIGITS = 15
MAX_CPU = 8191  # the largest NR_CPUS (x86 MAXSMP); also bounds a cpu list's size

_INT = re.compile(r"-?(?:0|[1-9][0-9]*)", re.ASCII)
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?", re.ASCII)
_CPU_PART = re.compile(r"(0|[1-9][0-9]*)(?:-(0|[1-9][0-9]*))?", re.ASCII)
_FIELD_SEP = re.compile(r"[ \t]+")


def strip_ws(text: str) -> str:
    """Drop surrounding ASCII spaces, tabs and newlines (not NBSP, not U+3000, not \\x1c)."""
    return text.strip(WS)


def fields(text: str) -> list[str]:
    """Whitespace-separated fields of a one-line value (ASCII space/tab only)."""
    t = strip_ws(text)
    return _FIELD_SEP.split(t) if t else []


def printable_ascii(text: str) -> bool:
    """Only printable ASCII and tabs: what a one-line kernel value may contain."""
    return all(c == "\t" or " " <= c <= "~" for c in text)


def _shape(text: str) -> str:
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


def parse_int_strict(text: str, *, signed: bool = False) -> int:
    """A decimal integer: ``0`` or ``[1-9][0-9]*``, ``-`` first only when ``signed``.

    Refused: leading zeros (octal to the kernel), ``+``, ``0x``, ``_``, non-ASCII digits,
    whitespace, fractions, exponents, more than 20 digits.
    """
    if not isinstance(text, str) or not _INT.fullmatch(text):
        raise ValueError(f"{_shape(text)} is not a decimal integer (ASCII digits, no leading "
                         "zeros, no sign, '_', exponent or fraction)")
    if text.startswith("-") and not signed:
        raise ValueError(f"{_shape(text)} must not be negative")
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"{_shape(text)} has more than {MAX_INT_DIGITS} digits")
    return int(text)


def parse_decimal_strict(text: str, *, signed: bool = False) -> Decimal:
    """A plain decimal: ``12``, ``0.5``, ``1.25`` (``-`` first only when ``signed``).

    Refused: exponents (``1e1``), ``inf``/``nan``, ``_``, non-ASCII digits, ``+``, a bare
    ``.5`` or ``5.``, leading zeros, more than 20 integer or 15 fraction digits. The result
    is exact (a Decimal); ``float()`` of it is always finite.
    """
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text):
        raise ValueError(f"{_shape(text)} is not a plain decimal number (ASCII digits with an "
                         "optional '.fraction'; no exponent, sign, '_', inf or nan)")
    if text.startswith("-") and not signed:
        raise ValueError(f"{_shape(text)} must not be negative")
    whole, _, frac = text.lstrip("-").partition(".")
    if len(whole) > MAX_INT_DIGITS or len(frac) > MAX_FRACTION_DIGITS:
        raise ValueError(f"{_shape(text)} has too many digits (at most {MAX_INT_DIGITS}"
                         f".{MAX_FRACTION_DIGITS})")
    return Decimal(text)


def decimal_or_none(text: str | None, *, signed: bool = True) -> float | None:
    """``parse_decimal_strict`` as a float, or None when ``text`` is not such a number."""
    if text is None:
        return None
    try:
        return float(parse_decimal_strict(strip_ws(text), signed=signed))
    except ValueError:
        return None


def parse_cpulist_strict(text: str, *, max_cpu: int = MAX_CPU) -> list[int]:
    """The kernel's cpu list (``0-3,8``) as sorted cpus, each <= ``max_cpu``.

    Refused: empty parts, spaces, descending ranges, non-ASCII digits, cpus above
    ``max_cpu`` (checked before a range is expanded, so ``0-2147483647`` costs nothing).
    """
    if not isinstance(text, str) or not text:
        raise ValueError("empty cpu list")
    cpus: set[int] = set()
    for part in text.split(","):
        m = _CPU_PART.fullmatch(part)
        if not m:
            raise ValueError(f"{_shape(part)} is not a cpu or range like '0-3'")
        if max(len(m.group(1)), len(m.group(2) or "")) > len(str(max_cpu)):
            raise ValueError(f"cpu {_shape(part)} is above {max_cpu}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"cpu range {part!r} is descending")
        if hi > max_cpu:
            raise ValueError(f"cpu {hi} is above {max_cpu}")
        cpus.update(range(lo, hi + 1))
    return sorted(cpus)
