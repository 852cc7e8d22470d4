"""/proc/vmstat: cumulative VM event counters ("pgmajfault 1234" per line).

All counters are kept (pgfault, pgmajfault, pswpin/out, pgscan_*, pgsteal_*, compact_stall,
thp_fault_alloc/fallback, numa_miss ... whichever this kernel has); rates are derived later.
"""

from __future__ import annotations

from autotune.errors import ParseError
from autotune.host import Host

PATH = "/proc/vmstat"


def parse_vmstat(text: str, source: str = PATH) -> dict[str, int]:
    out: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ParseError(f"{source}: line {lineno}: expected '<name> <count>', got {raw.strip()!r}")
        try:
            out[fields[0]] = int(fields[1])
        except ValueError as err:
            raise ParseError(f"{source}: line {lineno}: {fields[0]} is not an integer ({fields[1]!r})") from err
    if not out:
        raise ParseError(f"{source}: empty file")
    return out


def read_vmstat(host: Host) -> dict[str, int]:
    return parse_vmstat(host.read_text(PATH), PATH)
