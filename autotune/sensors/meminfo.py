"""/proc/meminfo in bytes.

Lines look like "MemTotal:  16000 kB"; values with a "kB" unit are multiplied by 1024.
Unitless lines (HugePages_Total, HugePages_Free ...) are page counts and stay counts.
"""

from __future__ import annotations

import sys

from autotune.errors import ParseError
from autotune.host import Host

PATH = "/proc/meminfo"


def parse_meminfo(text: str, source: str = PATH) -> dict[str, int]:
    out: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        name, sep, rest = raw.partition(":")
        fields = rest.split()
        if not sep or not name.strip() or not 1 <= len(fields) <= 2:
            raise ParseError(f"{source}: line {lineno}: expected '<Name>: <value> [kB]', got {raw.strip()!r}")
        try:
            value = int(fields[0])
        except ValueError as err:
            raise ParseError(f"{source}: line {lineno}: {name.strip()} is not an integer ({fields[0]!r})") from err
        if value < 0:  # sizes and page counts: a negative one is a broken file, not a reading
            raise ParseError(f"{source}: line {lineno}: {name.strip()} = {value}: a size or count "
                             "cannot be negative; reading dropped")
        if len(fields) == 2:
            if fields[1] != "kB":
                raise ParseError(f"{source}: line {lineno}: {name.strip()}: unknown unit {fields[1]!r}")
            value *= 1024
        out[sys.intern(name.strip())] = value  # one string per key across every snapshot kept
    if not out:
        raise ParseError(f"{source}: empty file")
    return out


def read_meminfo(host: Host) -> dict[str, int]:
    return parse_meminfo(host.read_text(PATH), PATH)
