"""``cgroup.cpu_weight``: weight 1..10000 (v2 ``cpu.weight``); v1 ``cpu.shares`` mapped like
systemd (x10.24, exact round trip)."""

from __future__ import annotations

from typing import Any

from autotune import cgroupfs
from autotune.host import Host
from autotune.knobs._util import invalid
from autotune.knobs.cgroup.base import CgroupKnob, parse_int
from autotune.knobs.grammar import parse_int_strict


class CpuWeight(CgroupKnob):
    name = "cgroup.cpu_weight"
    description = "relative cpu weight 1..10000 (default 100)"
    controller = "cpu"
    file_v2, file_v1 = "cpu.weight", "cpu.shares"
    numeric = True

    def cpu_share(self, value: str) -> dict[str, Any] | None:
        return {"weight": int(value)}

    def parse(self, version: int, raw: str, path: str) -> str:
        n = parse_int(raw, path)
        return str(n if version == 2 else cgroupfs.shares_to_weight(n))

    def normalize(self, host: Host, target: str, version: int, value: str) -> str:
        try:
            w = parse_int_strict(value)
        except ValueError as err:
            raise invalid(self.name, target, value, f"must be an integer 1..10000: {err}") from err
        if not cgroupfs.CPU_WEIGHT_MIN <= w <= cgroupfs.CPU_WEIGHT_MAX:
            raise invalid(self.name, target, value, "must be within 1..10000")
        return str(w)

    def encode(self, version: int, value: str) -> str:
        return value if version == 2 else str(cgroupfs.weight_to_shares(int(value)))
