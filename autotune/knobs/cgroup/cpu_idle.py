"""``cgroup.cpu_idle``: SCHED_IDLE for the whole group (1 = run only when nothing else wants
the cpu). A flag, not a number: rules set it, they do not step it."""

from __future__ import annotations

from typing import Any

from autotune.host import Host
from autotune.knobs._util import invalid
from autotune.knobs.cgroup.base import CgroupKnob


class CpuIdle(CgroupKnob):
    name = "cgroup.cpu_idle"
    description = "0/1: treat the cgroup as SCHED_IDLE"
    controller = "cpu"
    file_v2, file_v1 = "cpu.idle", "cpu.idle"

    def cpu_share(self, value: str) -> dict[str, Any] | None:
        return {"idle": value.strip() == "1"}

    def normalize(self, host: Host, target: str, version: int, value: str) -> str:
        if value not in ("0", "1"):
            raise invalid(self.name, target, value, "must be 0 or 1")
        return value
