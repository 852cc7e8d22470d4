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

This module is the one door to cgroup files for sensors, knobs, workload and bench: where a
cgroup lives (``controller_dir``), which cgroup a process is in (``pid_cgroup``), the cpu
bandwidth limit (``read_cpu_max`` / ``write_cpu_max`` / ``effective_cpu_quota_cores``) and
moving a process in (``add_pid``). Everything goes through the ``Host``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

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


def _int(text: str, source: str) -> int:
    try:
        return int(text.strip())
    except ValueError as err:
        raise ParseError(f"{source}: expected an integer, got {text.strip()[:40]!r}") from err


class CpuMax(BaseModel):
    """One cgroup's cpu bandwidth limit as the kernel holds it.

    ``raw`` maps each file to its exact content in restore order (v1: the period first, so a
    restore can unlimit the quota before touching the period).
    """

    model_config = ConfigDict(frozen=True)

    version: int
    quota_usec: int | None  # None = unlimited
    period_usec: int
    raw: dict[str, str]

    @property
    def cores(self) -> float | None:
        return quota_to_cores(self.quota_usec, self.period_usec)


def cpu_max_files(host: Host, cgpath: str) -> tuple[int, list[str]]:
    """(version, host paths of the quota files): v2 [cpu.max]; v1 [cfs_period_us, cfs_quota_us]."""
    version = controller_version(host, "cpu")
    d = controller_dir(host, "cpu", cgpath)
    if version == 2:
        return 2, [f"{d}/cpu.max"]
    return 1, [f"{d}/cpu.cfs_period_us", f"{d}/cpu.cfs_quota_us"]


def read_cpu_max(host: Host, cgpath: str) -> CpuMax:
    """The cpu quota of ``cgpath`` (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us`` + period).

    MissingFile when the controller or a file is absent; ParseError names a garbled file.
    """
    version, paths = cpu_max_files(host, cgpath)
    raw = {p: host.read_text(p) for p in paths}
    if version == 2:
        (path, text), = raw.items()
        quota, period = parse_cpu_max(text, source=path)
        return CpuMax(version=2, quota_usec=quota, period_usec=period, raw=raw)
    ppath, qpath = paths
    quota, period = _int(raw[qpath], qpath), _int(raw[ppath], ppath)
    return CpuMax(version=1, quota_usec=None if quota < 0 else quota, period_usec=period, raw=raw)


def write_cpu_max(host: Host, cgpath: str, quota_usec: int | None, period_usec: int | None = None) -> None:
    """Set the quota (None = unlimited). ``period_usec`` None keeps the current period.

    v2: one write of "<quota|max> <period>"; v1: the period (when given) then the quota.
    """
    version, paths = cpu_max_files(host, cgpath)
    if version == 2:
        if period_usec is None:
            period_usec = read_cpu_max(host, cgpath).period_usec
        host.write_text(paths[0], f"{'max' if quota_usec is None else quota_usec} {period_usec}")
        return
    ppath, qpath = paths
    if period_usec is not None:
        host.write_text(ppath, str(period_usec))
    host.write_text(qpath, str(-1 if quota_usec is None else quota_usec))


def effective_cpu_quota_cores(host: Host, cgpath: str) -> float | None:
    """Smallest cpu quota (cores) from ``cgpath`` up to the root; None when none is set.

    Levels without quota files are skipped; a garbled file raises ParseError.
    """
    if host.cgroup.controller_version("cpu") is None:
        return None
    best: float | None = None
    path = norm_cgpath(cgpath)
    while True:
        try:
            cores = read_cpu_max(host, path).cores
        except MissingFile:
            cores = None
        if cores is not None:
            best = cores if best is None else min(best, cores)
        if path == "/":
            return best
        path = norm_cgpath(path.rsplit("/", 1)[0] or "/")


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup -> {controller: cgroup path}; the v2 ("0::") line is under "".

    A v1 line serving several controllers ("1:cpu,cpuacct:/x") gives each of them. A path is
    relative to the READER's cgroup namespace: one outside it starts with '/..' and is kept as
    shown ("/../../pod.slice/c.scope"; autotune/sensors/service_cgroups.py finds it).
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        path = _shown_path(path)
        if ctrls == "":
            out.setdefault("", path)
        for c in ctrls.split(","):
            if c:
                out.setdefault(c, path)
    return out


def _shown_path(path: str) -> str:
    """A /proc/<pid>/cgroup path cleaned of empty and '.' parts; '..' kept (see above)."""
    parts = [p for p in path.strip().split("/") if p and p != "."]
    return "/" + "/".join(parts)


def pid_cgroup(host: Host, controller: str | None = None, pid: int | str = "self") -> str | None:
    """The cgroup of ``pid`` in the hierarchy that manages ``controller`` (None: the v2 tree).

    None when /proc/<pid>/cgroup has no such line (process gone, controller not mounted).
    """
    groups = parse_proc_cgroup(host.read_optional(f"/proc/{pid}/cgroup") or "")
    if controller is None:
        return groups.get("")
    version = host.cgroup.controller_version(controller)
    if version == 2:
        return groups.get("")
    if version == 1:
        return groups.get(controller)
    return None


def add_pid(host: Host, cgdir: str, pid: int | str) -> None:
    """Move ``pid`` into the cgroup at host path ``cgdir`` (one write to cgroup.procs)."""
    host.write_text(f"{cgdir}/cgroup.procs", str(pid))


def init_cpuset(host: Host, cgdir: str) -> None:
    """Give a new v1 cpuset cgroup (host path ``cgdir``) its parent's cpus and mems: a v1
    cpuset starts with none and refuses every task until it has both (v2 inherits by itself)."""
    parent = cgdir.rsplit("/", 1)[0]
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not (host.read_optional(f"{cgdir}/{name}") or "").strip():
            host.write_text(f"{cgdir}/{name}", (host.read_text(f"{parent}/{name}")).strip())


def enable_v2_controllers(host: Host, cgdir: str, wanted: tuple[str, ...]) -> list[str]:
    """Enable ``wanted`` controllers for the children of the v2 cgroup at ``cgdir`` (those its
    parent makes available; a hybrid host's 'unified' tree has none). Returns what it enabled."""
    available = (host.read_optional(f"{cgdir}/cgroup.controllers") or "").split()
    todo = [c for c in wanted if c in available]
    if todo:
        host.write_text(f"{cgdir}/cgroup.subtree_control", " ".join(f"+{c}" for c in todo))
    return todo
