"""/proc/stat: cumulative CPU time per state, converted from USER_HZ ticks to seconds.

Only the fields we use are kept: the cpu line, how many cpuN lines there are, ctxt,
processes, procs_running, procs_blocked. Older kernels print fewer cpu columns; absent
trailing columns count as 0.
guest/guest_nice are already included in user/nice, so they are not added again.
"""

from __future__ import annotations

import os

from autotune.errors import ParseError
from autotune.host import Host
from autotune.types import CpuTimes, StatReading, reading

PATH = "/proc/stat"
_CPU_FIELDS = ("user_s", "nice_s", "system_s", "idle_s", "iowait_s", "irq_s", "softirq_s", "steal_s")
_SCALARS = ("ctxt", "processes", "procs_running", "procs_blocked")


def clock_ticks() -> int:
    """USER_HZ: ticks per second in /proc/stat (almost always 100)."""
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError):
        return 100


def parse_stat(text: str, source: str = PATH, *, hz: int | None = None) -> StatReading:
    hz = hz or clock_ticks()
    total: CpuTimes | None = None
    ncpu = 0
    scalars: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields:
            continue
        key = fields[0]
        try:
            if key.startswith("cpu"):
                if len(fields) < 5:  # user nice system idle at the very least
                    raise ParseError(f"{source}: line {lineno}: {key} has {len(fields) - 1} columns, need >= 4")
                if key != "cpu":
                    ncpu += 1
                    continue
                ticks = [int(v) for v in fields[1 : 1 + len(_CPU_FIELDS)]]
                total = reading(CpuTimes, f"{source}: line {lineno}: {key}",
                                **{name: t / hz for name, t in zip(_CPU_FIELDS, ticks)})
            elif key in _SCALARS:
                scalars[key] = int(fields[1])
        except (ValueError, IndexError) as err:
            raise ParseError(f"{source}: line {lineno}: cannot parse {key!r} ({err})") from err
    if total is None:
        raise ParseError(f"{source}: no aggregate 'cpu' line (empty or truncated file?)")
    return reading(StatReading, source, total=total, ncpu=ncpu or None, **scalars)


def read_stat(host: Host) -> StatReading:
    return parse_stat(host.read_text(PATH), PATH)
