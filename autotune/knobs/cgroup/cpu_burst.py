"""``cgroup.cpu_burst``: usec above the quota a cgroup may bank (kernel: burst <= quota)."""

from __future__ import annotations

from autotune import cgroupfs
from autotune.host import Host
from autotune.knobs._util import invalid
from autotune.knobs.cgroup.base import CgroupKnob, parse_int


class CpuBurst(CgroupKnob):
    name = "cgroup.cpu_burst"
    description = "cpu burst allowance in usec"
    controller = "cpu"
    file_v2, file_v1 = "cpu.max.burst", "cpu.cfs_burst_us"
    numeric = True

    def parse(self, version: int, raw: str, path: str) -> str:
        return str(parse_int(raw, path))

    def normalize(self, host: Host, target: str, version: int, value: str) -> str:
        try:
            usec = int(value)
        except ValueError as err:
            raise invalid(self.name, target, value, "must be an integer usec >= 0") from err
        if usec < 0:
            raise invalid(self.name, target, value, "must be >= 0 usec")
        quota = cgroupfs.read_cpu_max(host, target).quota_usec
        if quota is not None and usec > quota:
            raise invalid(self.name, target, value, f"exceeds the quota ({quota} us); the "
                          "kernel requires burst <= quota")
        return str(usec)
