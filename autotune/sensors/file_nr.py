"""/proc/sys/fs/file-nr: "allocated unused max" file handles. A server that leaks connections
or files runs into file-max long before it runs out of memory; this is the host's count.

Declared in the metric registry (autotune/detect/registry.py: ``fs.file_handles``,
``fs.file_handles_pct``): this module and those entries are all a new host reading needs."""

from __future__ import annotations

from autotune.errors import ParseError
from autotune.host import Host

PATH = "/proc/sys/fs/file-nr"


def parse_file_nr(text: str, source: str = PATH) -> dict[str, float]:
    fields = text.split()
    try:
        allocated, _unused, maximum = (int(f) for f in fields[:3])
    except ValueError as err:
        raise ParseError(f"{source}: expected '<allocated> <unused> <max>', got {text.strip()[:80]!r}") from err
    if len(fields) < 3 or allocated < 0 or maximum <= 0:
        raise ParseError(f"{source}: expected '<allocated> <unused> <max>', got {text.strip()[:80]!r}")
    return {"allocated": float(allocated), "max": float(maximum), "used_pct": 100.0 * allocated / maximum}


def read_file_nr(host: Host) -> dict[str, float]:
    return parse_file_nr(host.read_text(PATH), PATH)
