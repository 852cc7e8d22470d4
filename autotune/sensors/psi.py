"""Pressure stall information: /proc/pressure/* and per-cgroup *.pressure files.

Format (kernel >= 4.20)::

    some avg10=0.33 avg60=0.11 avg300=0.42 total=9541043
    full avg10=0.00 avg60=0.00 avg300=0.00 total=0

avg* are percentages of wall time stalled; total is cumulative stall time in microseconds.
Kernels before 5.13 print only the ``some`` line for cpu, so ``full`` may be None.
"""

from __future__ import annotations

from autotune.errors import ParseError
from autotune.host import PSI_RESOURCES, Host
from autotune.types import PsiLine, PsiReading, reading

CGROUP_PSI_RESOURCES = ("cpu", "memory", "io")
_KEYS = ("avg10", "avg60", "avg300", "total")


def _parse_line(fields: list[str], source: str, lineno: int) -> PsiLine:
    values: dict[str, str] = {}
    for field in fields:
        key, sep, val = field.partition("=")
        if not sep:
            raise ParseError(f"{source}: line {lineno}: expected key=value, got {field!r}")
        values[key] = val
    missing = [k for k in _KEYS if k not in values]
    if missing:
        raise ParseError(f"{source}: line {lineno}: missing {', '.join(missing)}")
    try:
        nums = dict(avg10_pct=float(values["avg10"]), avg60_pct=float(values["avg60"]),
                    avg300_pct=float(values["avg300"]), total_usec=int(values["total"]))
    except ValueError as err:
        raise ParseError(f"{source}: line {lineno}: non-numeric value ({err})") from err
    return reading(PsiLine, f"{source}: line {lineno}", **nums)


def parse_psi(text: str, source: str) -> PsiReading:
    """Parse one pressure file; ParseError naming ``source`` on anything odd."""
    lines: dict[str, PsiLine] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields:
            continue
        kind = fields[0]
        if kind not in ("some", "full"):
            raise ParseError(f"{source}: line {lineno}: expected 'some' or 'full', got {kind!r}")
        lines[kind] = _parse_line(fields[1:], source, lineno)
    if not lines:
        raise ParseError(f"{source}: empty pressure file (expected a 'some ...' line)")
    return PsiReading(some=lines.get("some"), full=lines.get("full"))


def some_avg10_pct(reading: PsiReading | None) -> float | None:
    """``some avg10`` (%) of one pressure reading; None when the file or its 'some' line is absent.

    For readers of a lone pressure file (the gate, the bench). A Snapshot's PSI goes by the
    ``detect.metrics`` names (``psi.cpu.some.avg10``, ``svc.<s>.psi.cpu.some.avg10``).
    """
    return reading.some.avg10_pct if reading is not None and reading.some is not None else None


def read_psi_file(host: Host, path: str) -> PsiReading | None:
    """One pressure file, or None when the kernel does not provide it."""
    text = host.read_optional(path)
    return None if text is None else parse_psi(text, path)


def read_psi(host: Host) -> dict[str, PsiReading | None]:
    """System-wide PSI for cpu/memory/io/irq; absent files (old kernel, no irq) are None."""
    return {res: read_psi_file(host, f"/proc/pressure/{res}") for res in PSI_RESOURCES}


def read_cgroup_psi(host: Host, cgdir: str) -> dict[str, PsiReading | None]:
    """PSI of one v2 cgroup directory (host path); resources without a file are left out."""
    out: dict[str, PsiReading | None] = {}
    for res in CGROUP_PSI_RESOURCES:
        reading = read_psi_file(host, f"{cgdir}/{res}.pressure")
        if reading is not None:
            out[res] = reading
    return out
