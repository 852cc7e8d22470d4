"""Where a cgroup's files live, and the one vocabulary mapped onto cgroup v1 and v2.

Vocabulary (what rules, knobs, journal and audit speak):
- cpu quota in **cores** (float, or "max" for unlimited):
  v2 ``cpu.max`` = "<quota_usec> <period_usec>"; v1 ``cpu.cfs_quota_us`` (-1 = unlimited) and
  ``cpu.cfs_period_us``. cores = quota_usec / period_usec.
- cpu weight **1..10000** (v2 ``cpu.weight``, default 100); v1 ``cpu.shares`` (2..262144,
  default 1024) mapped like systemd: shares = weight * 1024 / 100, weight = shares * 100 / 1024.
- memory limits in **bytes** (or "max"): v2 ``memory.max`` / ``memory.high`` / ``memory.low``;
  v1 ``memory.limit_in_bytes`` for max, ``memory.soft_limit_in_bytes`` for high (the nearest v1
  notion: reclaimed first under global pressure; v1 has no throttling limit and no memory.low).
- cpuset as a **cpu list** ("0-1"): v2 ``cpuset.cpus``, v1 ``cpuset.cpus``.
"""

from __future__ import annotations

from autotune.errors import MissingFile, ParseError
from autotune.host import Host

V1_UNLIMITED = 9223372036854771712  # memory.limit_in_bytes when unlimited (PAGE_COUNTER_MAX)
CPU_WEIGHT_MIN, CPU_WEIGHT_MAX, CPU_WEIGHT_DEFAULT = 1, 10000, 100
CPU_SHARES_MIN, CPU_SHARES_MAX = 2, 262144


def norm_cgpath(cgpath: str) -> str:
    """Canonical cgroup path: absolute, no trailing slash, '/' for the root."""
    if not cgpath.startswith("/"):
        cgpath = "/" + cgpath
    parts = [p for p in cgpath.split("/") if p and p != "."]
    if ".." in parts:
        raise ParseError(f"cgroup path {cgpath!r} must not contain '..'")
    return "/" + "/".join(parts)


def controller_version(host: Host, controller: str) -> int:
    """1 or 2: which hierarchy manages ``controller`` on this host (MissingFile if none)."""
    v = host.cgroup.controller_version(controller)
    if v is None:
        raise MissingFile(f"cgroup controller {controller!r} is not available on this host "
                          f"(layout {host.cgroup.layout})")
    return v


def controller_dir(host: Host, controller: str, cgpath: str) -> str:
    """Host path of ``cgpath``'s directory in the hierarchy that manages ``controller``."""
    cgpath = norm_cgpath(cgpath)
    info = host.cgroup
    if controller_version(host, controller) == 2:
        base = info.v2_mount or "/sys/fs/cgroup"
    else:
        base = info.v1_mounts[controller]
    return base if cgpath == "/" else f"{base}{cgpath}"


def v2_dir(host: Host, cgpath: str) -> str | None:
    """Host path of ``cgpath`` in the v2 tree (pure v2 or hybrid 'unified'); None if no v2."""
    mount = host.cgroup.v2_mount
    if not mount:
        return None
    cgpath = norm_cgpath(cgpath)
    return mount if cgpath == "/" else f"{mount}{cgpath}"


def shares_to_weight(shares: int) -> int:
    return max(CPU_WEIGHT_MIN, min(CPU_WEIGHT_MAX, round(shares * 100 / 1024)))


def weight_to_shares(weight: int) -> int:
    return max(CPU_SHARES_MIN, min(CPU_SHARES_MAX, round(weight * 1024 / 100)))


def parse_cpu_max(text: str, *, source: str = "cpu.max") -> tuple[int | None, int]:
    """v2 cpu.max "max 100000" / "50000 100000" -> (quota_usec or None, period_usec)."""
    fields = text.split()
    try:
        if len(fields) == 1:
            return (None if fields[0] == "max" else int(fields[0])), 100000
        quota, period = fields[0], int(fields[1])
        return (None if quota == "max" else int(quota)), period
    except (ValueError, IndexError) as err:
        raise ParseError(f"{source}: cannot parse {text.strip()!r} as '<quota|max> <period>'") from err


def cores_to_quota(cores: float | None, period_usec: int) -> int | None:
    """Cores -> quota usec for a period (None = unlimited). The kernel minimum is 1000 us."""
    if cores is None:
        return None
    return max(1000, round(cores * period_usec))


def quota_to_cores(quota_usec: int | None, period_usec: int) -> float | None:
    if quota_usec is None or quota_usec < 0:
        return None
    return quota_usec / period_usec
