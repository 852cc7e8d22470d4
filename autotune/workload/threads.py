"""How many torch intra-op threads the server should use.

Measured on the 2-core dev VM: GPT-2 under a 0.5-core CFS quota took 4.49 s for 20 tokens with
2 torch threads but 2.49 s with 1 thread (unconstrained ~1.1 s either way). Intra-op threads
that outnumber the quota's cores burn the quota in parallel and then all sit throttled. So
"auto" = min(cpus in our affinity mask, floor(effective cgroup cpu quota in cores) or 1).
"""

from __future__ import annotations

import math
import os

from pydantic import BaseModel

from autotune.cgroupfs import controller_dir, norm_cgpath, parse_cpu_max, quota_to_cores
from autotune.errors import HostError
from autotune.host import Host


class ThreadChoice(BaseModel):
    threads: int
    affinity_cpus: int
    quota_cores: float | None  # effective (smallest along the path); None = unlimited / unknown
    cgroup: str | None  # our cpu cgroup path
    reason: str


def own_cgroup(host: Host, controller: str, pid: int | str = "self") -> str | None:
    """Our cgroup path for ``controller`` from /proc/<pid>/cgroup ("0::" line for v2)."""
    text = host.read_optional(f"/proc/{pid}/cgroup") or ""
    version = host.cgroup.controller_version(controller)
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if version == 2 and ctrls == "":
            return norm_cgpath(path)
        if version == 1 and controller in ctrls.split(","):
            return norm_cgpath(path)
    return None


def effective_quota_cores(host: Host, cgpath: str) -> float | None:
    """Smallest cpu quota (cores) on the path from ``cgpath`` up to the root; None = none."""
    version = host.cgroup.controller_version("cpu")
    if version is None:
        return None
    best: float | None = None
    path = norm_cgpath(cgpath)
    while True:
        d = controller_dir(host, "cpu", path)
        cores: float | None = None
        if version == 2:
            text = host.read_optional(f"{d}/cpu.max")
            if text:
                cores = quota_to_cores(*parse_cpu_max(text, source=f"{d}/cpu.max"))
        else:
            q = host.read_optional(f"{d}/cpu.cfs_quota_us")
            p = host.read_optional(f"{d}/cpu.cfs_period_us")
            if q and p:
                try:
                    cores = quota_to_cores(int(q), int(p))
                except ValueError:
                    cores = None
        if cores is not None:
            best = cores if best is None else min(best, cores)
        if path == "/":
            return best
        path = norm_cgpath(path.rsplit("/", 1)[0] or "/")


def auto_threads(host: Host | None = None) -> ThreadChoice:
    """Choose intra-op threads for this process; never raises (falls back to affinity)."""
    host = host or Host()
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    cgpath: str | None = None
    quota: float | None = None
    try:
        cgpath = own_cgroup(host, "cpu")
        if cgpath is not None:
            quota = effective_quota_cores(host, cgpath)
    except HostError:
        pass
    if quota is None:
        n, why = affinity, f"{affinity} cpus in affinity, no cpu quota"
    else:
        n = max(1, min(affinity, math.floor(quota)))
        why = f"min({affinity} cpus in affinity, floor({quota:g} quota cores) or 1)"
    return ThreadChoice(threads=n, affinity_cpus=affinity, quota_cores=quota, cgroup=cgpath,
                        reason=why)
