"""/proc/vmstat: cumulative VM event counters ("pgmajfault 1234" per line).

All counters are kept (pgfault, pgmajfault, pswpin/out, pgscan_*, pgsteal_*, compact_stall,
thp_fault_alloc/fallback, numa_miss ... whichever this kernel has); rates are derived later.
"""

from __future__ import annotations

from autotune.host import Host
from autotune.sensors.cgroup import parse_flat_keyed

PATH = "/proc/vmstat"


def parse_vmstat(text: str, source: str = PATH) -> dict[str, int]:
    """/proc/vmstat has the same "<name> <count>" lines as cgroup cpu.stat: one parser."""
    return parse_flat_keyed(text, source)


def read_vmstat(host: Host) -> dict[str, int]:
    return parse_vmstat(host.read_text(PATH), PATH)
