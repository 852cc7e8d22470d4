"""``cgroup.cpu_burst``: usec above the quota a cgroup may bank (kernel: burst <= quota)."""

from __future__ import annotations

from autotune import cgroupfs
from autotune.host import Host
from autotune.knobs._util import invalid
from autotune.knobs.cgroup.base import CgroupKnob, parse_int
from autotune.knobs.cgroup.cpu_quota import MAX_BW_USEC
from autotune.knobs.grammar import parse_int_strict


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
            usec = parse_int_strict(value)
        except ValueError as err:
            raise invalid(self.name, target, value, f"must be an integer usec >= 0: {err}") from err
        if usec > MAX_BW_USEC:
            raise invalid(self.name, target, value, f"exceeds the kernel's maximum {MAX_BW_USEC} us")
        quota = cgroupfs.read_cpu_max(host, target).quota_usec
        if quota is not None and usec > quota:
            raise invalid(self.name, target, value, f"exceeds the quota ({quota} us); the "
                          "kernel requires burst <= quota")
        return str(usec)
