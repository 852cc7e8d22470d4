"""/proc/loadavg: "0.15 0.10 0.07 1/93 9815" (1/5/15-min load, runnable/total threads, last pid)."""

from __future__ import annotations

from autotune.errors import ParseError
from autotune.host import Host
from autotune.types import LoadAvg, reading

PATH = "/proc/loadavg"


def parse_loadavg(text: str, source: str = PATH) -> LoadAvg:
    fields = text.split()
    try:
        runnable, threads = fields[3].split("/")
        nums = dict(load1=float(fields[0]), load5=float(fields[1]), load15=float(fields[2]),
                    runnable=int(runnable), threads=int(threads))
    except (IndexError, ValueError) as err:
        raise ParseError(
            f"{source}: expected '<l1> <l5> <l15> <runnable>/<threads> <lastpid>', got {text.strip()[:80]!r}"
        ) from err
    return reading(LoadAvg, source, **nums)


def read_loadavg(host: Host) -> LoadAvg:
    return parse_loadavg(host.read_text(PATH), PATH)
