"""``cgroup.io_weight``: weight 1..10000 (v2 ``io.weight`` "default N"); v1 ``blkio.weight``
10..1000 mapped like systemd (x5, default 500 == 100). Only the default line is touched,
never per-device ones."""

from __future__ import annotations

from autotune.errors import ParseError
from autotune.host import Host
from autotune.knobs._util import invalid
from autotune.knobs.base import KnobState
from autotune.knobs.cgroup.base import CgroupKnob, parse_int
from autotune.knobs.grammar import parse_int_strict, strip_ws

BLKIO_MIN, BLKIO_MAX, BLKIO_DEFAULT = 10, 1000, 500


class IoWeight(CgroupKnob):
    name = "cgroup.io_weight"
    description = "relative io weight 1..10000 (default 100)"
    controller = "io"
    v1_controller = "blkio"
    file_v2, file_v1 = "io.weight", "blkio.weight"
    numeric = True

    def canonical(self, value: str) -> str:
        return strip_ws(strip_ws(value).removeprefix("default"))

    def read(self, host: Host, target: str) -> KnobState:
        version, path = self.files(host, target)
        raw = self._read_raw(host, path)
        value = self.parse(version, raw, path)
        # io.weight lists per-device overrides too; only "default N" can be written back whole
        restore = f"default {value}" if version == 2 else raw
        return KnobState(knob=self.name, target=target, value=value, raw={path: restore})

    def parse(self, version: int, raw: str, path: str) -> str:
        if version == 1:
            n = parse_int(raw, path)
            return str(max(1, min(10000, round(n * 100 / BLKIO_DEFAULT))))
        for line in raw.splitlines():
            f = line.split()
            if len(f) == 2 and f[0] == "default":
                return str(parse_int(f[1], path))
        raise ParseError(f"{path}: no 'default N' line in {raw.strip()!r}")

    def normalize(self, host: Host, target: str, version: int, value: str) -> str:
        v = self.canonical(value)  # "default 100" is how io.weight itself spells it
        try:
            w = parse_int_strict(v)
        except ValueError as err:
            raise invalid(self.name, target, value, f"must be an integer 1..10000: {err}") from err
        if not 1 <= w <= 10000:
            raise invalid(self.name, target, value, "must be within 1..10000")
        if version == 1:  # what blkio.weight can represent: 10..1000 is weight 2..200
            return self.parse(1, self.encode(1, str(w)), "blkio.weight")
        return str(w)

    def encode(self, version: int, value: str) -> str:
        if version == 2:
            return f"default {value}"
        return str(max(BLKIO_MIN, min(BLKIO_MAX, int(value) * BLKIO_DEFAULT // 100)))
