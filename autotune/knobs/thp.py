"""``thp``: transparent huge pages modes under /sys/kernel/mm/transparent_hugepage.

Targets: "enabled", "defrag" (files list every mode with the current one in brackets:
"always [madvise] never") and "khugepaged/defrag" (0/1). The raw restore record holds the
bare mode ("madvise"), which is what the kernel accepts on write - not the listing.
"""

from __future__ import annotations

import re

from autotune.errors import InvalidValue, MissingFile, ParseError
from autotune.host import Host
from autotune.knobs._util import invalid
from autotune.knobs.base import Knob, KnobState
from autotune.knobs.grammar import strip_ws

THP_DIR = "/sys/kernel/mm/transparent_hugepage"
TARGETS = ("enabled", "defrag", "khugepaged/defrag")
_BRACKET = re.compile(r"\[([^\]]+)\]")


def parse_modes(text: str, *, source: str) -> tuple[str, list[str]]:
    """("always [madvise] never") -> ("madvise", ["always", "madvise", "never"])."""
    m = _BRACKET.search(text)
    if not m and len(text.split()) == 1:
        # a plain-file host tree (fixture) holds just the last mode written
        return text.strip(), [text.strip()]
    if not m:
        raise ParseError(f"{source}: no [current] mode in {text.strip()!r}")
    modes = [w.strip("[]") for w in text.split()]
    return m.group(1), modes


def _path(target: str) -> str:
    if target not in TARGETS:
        raise InvalidValue(f"thp target {target!r} unknown; use one of {list(TARGETS)}")
    return f"{THP_DIR}/{target}"


class Thp(Knob):
    name = "thp"
    description = "transparent hugepage mode (enabled/defrag: a listed mode; khugepaged/defrag: 0/1)"
    target_kind = "choice"

    def check_target(self, target: str) -> None:
        if target not in TARGETS:
            raise InvalidValue(f"thp target must be one of {sorted(TARGETS)}")

    def host_files(self, host: Host, target: str) -> frozenset[str] | None:
        return frozenset({_path(target)})

    def _read_file(self, host: Host, target: str) -> tuple[str, str]:
        path = _path(target)
        try:
            return path, host.read_text(path)
        except MissingFile as err:
            raise MissingFile(f"thp {target!r}: {path} missing (kernel without THP?)") from err

    def read(self, host: Host, target: str) -> KnobState:
        path, text = self._read_file(host, target)
        if target == "khugepaged/defrag":
            value = text.strip()
            if value not in ("0", "1"):
                raise ParseError(f"{path}: expected 0 or 1, got {value!r}")
        else:
            value, _ = parse_modes(text, source=path)
        return KnobState(knob=self.name, target=target, value=value, raw={path: value})

    def validate(self, host: Host, target: str, value: str) -> str:
        path, text = self._read_file(host, target)
        v = strip_ws(str(value))
        if target == "khugepaged/defrag":
            if v not in ("0", "1"):
                raise invalid(self.name, target, value, "must be 0 or 1")
            return v
        _, modes = parse_modes(text, source=path)
        if v not in modes:
            raise invalid(self.name, target, value, f"is not a mode this kernel lists ({modes})")
        return v

    def write(self, host: Host, target: str, value: str) -> None:
        host.write_text(_path(target), value)
