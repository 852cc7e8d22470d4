"""``cgroup.cpuset``: the cpus a cgroup may run on, as a cpu list.

Normalized so "0,1" == "0-1"; must fit the parent's effective cpus (else the online cpus).
"""

from __future__ import annotations

from typing import Any

from autotune import cgroupfs
from autotune.errors import ParseError
from autotune.host import Host, format_cpulist, parse_cpulist
from autotune.knobs._util import invalid
from autotune.knobs.cgroup.base import CgroupKnob
from autotune.knobs.grammar import parse_cpulist_strict, strip_ws


class Cpuset(CgroupKnob):
    name = "cgroup.cpuset"
    description = "cpus the cgroup may run on (cpu list)"
    controller = "cpuset"
    file_v2, file_v1 = "cpuset.cpus", "cpuset.cpus"

    def canonical(self, value: str) -> str:
        try:
            return format_cpulist(parse_cpulist_strict(strip_ws(value)))
        except ValueError:
            return strip_ws(value)

    def cpu_share(self, value: str) -> dict[str, Any] | None:
        return {"cpus": frozenset(parse_cpulist(value))}

    def parse(self, version: int, raw: str, path: str) -> str:
        try:
            return format_cpulist(parse_cpulist(raw))
        except ValueError as err:
            raise ParseError(f"{path}: bad cpu list {raw.strip()!r}") from err

    def allowed(self, host: Host, target: str, version: int) -> tuple[list[int], str]:
        """Cpus the target may use: the parent's effective set, else the online cpus."""
        cg = cgroupfs.norm_cgpath(target)
        parent = cg.rsplit("/", 1)[0] or "/"
        if cg != "/":
            pdir = cgroupfs.controller_dir(host, "cpuset", parent)
            fname = "cpuset.cpus.effective" if version == 2 else "cpuset.effective_cpus"
            text = host.read_optional(f"{pdir}/{fname}")
            if text is not None and text.strip():
                return parse_cpulist(text), f"{pdir}/{fname}"
        online = host.read_optional("/sys/devices/system/cpu/online")
        if online and online.strip():
            return parse_cpulist(online), "/sys/devices/system/cpu/online"
        return list(range(host.ncpu)), "online cpu count"

    def normalize(self, host: Host, target: str, version: int, value: str) -> str:
        try:
            cpus = parse_cpulist_strict(value)
        except ValueError as err:
            raise invalid(self.name, target, value, f"is not a cpu list like '0-1,3': {err}") from err
        if not cpus:
            raise invalid(self.name, target, value, "is empty")
        allowed, source = self.allowed(host, target, version)
        extra = sorted(set(cpus) - set(allowed))
        if extra:
            raise invalid(self.name, target, value, f"uses cpus {format_cpulist(extra)} outside "
                          f"{format_cpulist(allowed)} ({source})")
        return format_cpulist(cpus)
