"""One cgroup's CPU, cpuset and memory state in one vocabulary for cgroup v1, hybrid and v2.

Each controller is read from whichever hierarchy manages it on this host (``host.cgroup``),
so a hybrid host (v1 cpu/memory, v2 'unified' without controllers) still gets per-cgroup PSI
from the unified tree. Units: usec for CPU time, bytes for memory, cores for quota.

``paths`` (a service's ServiceCgroups) gives each controller its own group: on v1 a process
can sit in a different one per controller; a controller it has none for is not read.
A cgroup that exists in no hierarchy raises TargetGone. A single absent file leaves its field
None; an unparsable file also leaves it None and adds a message to ``errors`` (when given).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from autotune.cgroupfs import (
    CpuMax,
    controller_dir,
    norm_cgpath,
    read_cpu_max,
    shares_to_weight,
    v2_dir,
)
from autotune.errors import HostError, MissingFile, ParseError, TargetGone
from autotune.host import Host, parse_cpulist
from autotune.sensors.psi import CGROUP_PSI_RESOURCES, parse_psi
from autotune.types import CgroupReading, ServiceCgroups

log = logging.getLogger(__name__)
T = TypeVar("T")

# v1 reports "unlimited" as PAGE_COUNTER_MAX pages in bytes, which depends on the page size
# (9223372036854771712 with 4 KiB pages); anything this large is no limit.
_V1_UNLIMITED_FLOOR = 1 << 62


def parse_flat_keyed(text: str, source: str) -> dict[str, int]:
    """cpu.stat / memory.events style "key value" lines -> dict."""
    out: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ParseError(f"{source}: line {lineno}: expected '<key> <int>', got {raw.strip()!r}")
        try:  # the same keys every sample: one string each, not one per snapshot kept
            out[sys.intern(fields[0])] = int(fields[1])
        except ValueError as err:
            raise ParseError(f"{source}: line {lineno}: {fields[0]} is not an integer") from err
    if not out:
        raise ParseError(f"{source}: empty file")
    return out


def _int(text: str, source: str) -> int:
    try:
        return int(text.strip())
    except ValueError as err:
        raise ParseError(f"{source}: expected an integer, got {text.strip()[:40]!r}") from err


def _v2_limit(text: str, source: str) -> int | None:
    return None if text.strip() == "max" else _int(text, source)


def _v1_limit(text: str, source: str) -> int | None:
    value = _int(text, source)
    return None if value >= _V1_UNLIMITED_FLOOR else value


def _cpus(text: str, source: str) -> list[int] | None:
    try:
        cpus = parse_cpulist(text)
    except ValueError as err:
        raise ParseError(f"{source}: bad cpu list {text.strip()!r}") from err
    return cpus or None  # empty v2 cpuset.cpus means "inherit from parent"


# memory.stat keys kept, in the v2 vocabulary; v1 reports the hierarchical sums as total_<key>
# and calls anon "rss" and page cache "cache"
MEMORY_STAT_KEYS = ("anon", "file", "workingset_refault_file", "pgmajfault")
_V1_MEMORY_STAT = {"total_rss": "anon", "total_cache": "file",
                   "total_workingset_refault_file": "workingset_refault_file", "total_pgmajfault": "pgmajfault"}


def parse_memory_stat(text: str, source: str, *, version: int) -> dict[str, int]:
    """The ``MEMORY_STAT_KEYS`` of a memory.stat file (v1 or v2); other lines are ignored."""
    raw = parse_flat_keyed(text, source)
    if version == 1:
        return {new: raw[old] for old, new in _V1_MEMORY_STAT.items() if old in raw}
    return {k: raw[k] for k in MEMORY_STAT_KEYS if k in raw}


def _count_lines(text: str, source: str) -> int:
    return sum(1 for line in text.splitlines() if line.strip())


class _Reader:
    """Reads files of one cgroup, turning per-file problems into None plus a message."""

    def __init__(self, host: Host, errors: list[str] | None) -> None:
        self.host = host
        self.errors = errors

    def get(self, path: str | None, parse: Callable[[str, str], T]) -> T | None:
        if path is None:
            return None
        return self.call(lambda: parse(self.host.read_text(path), path))

    def call(self, read: Callable[[], T]) -> T | None:
        try:
            return read()
        except MissingFile:
            return None
        except HostError as err:  # ParseError, permission, EIO...
            msg = str(err)
            log.debug("cgroup file unreadable: %s", msg)
            if self.errors is not None:
                self.errors.append(msg)
            return None


def _dir(host: Host, controller: str, cgpath: str | None) -> tuple[int | None, str | None]:
    """(version, host dir) of cgpath for a controller, or (None, None) when unavailable."""
    version = host.cgroup.controller_version(controller)
    if version is None or cgpath is None:
        return None, None
    return version, controller_dir(host, controller, cgpath)


def _quota_into(fields: dict, cpu_max: CpuMax | None) -> None:
    if cpu_max is not None and cpu_max.period_usec:
        fields["cpu_period_usec"] = cpu_max.period_usec
        fields["cpu_quota_cores"] = cpu_max.cores


def read_cgroup(host: Host, cgpath: str, *, errors: list[str] | None = None,
                paths: ServiceCgroups | None = None) -> CgroupReading:
    """Read one cgroup (path relative to the hierarchy root, e.g. "/autotune/llm"); with
    ``paths``, each controller from the service's group for it."""
    cgpath = norm_cgpath(cgpath)
    info = host.cgroup

    def at(field: str) -> str | None:
        return cgpath if paths is None else paths.of(field)

    cpu_path = at("cpu")
    cpu_v, cpu_dir = _dir(host, "cpu", cpu_path)
    acct_v, acct_dir = _dir(host, "cpuacct", at("cpuacct"))
    set_v, set_dir = _dir(host, "cpuset", at("cpuset"))
    mem_v, mem_dir = _dir(host, "memory", at("memory"))
    unified = v2_dir(host, at("unified")) if at("unified") else None

    candidates = [d for d in (cpu_dir, acct_dir, set_dir, mem_dir, unified) if d]
    if not candidates:
        raise TargetGone(f"cgroup {cgpath}: no cgroup hierarchy on this host (layout {info.layout})")
    if not any(host.is_dir(d) for d in candidates):
        raise TargetGone(f"cgroup {cgpath}: not found (looked in {', '.join(sorted(set(candidates)))})")

    r = _Reader(host, errors)
    fields: dict = {}

    # -- cpu ----------------------------------------------------------------------------
    if cpu_v == 1:
        stat = r.get(f"{cpu_dir}/cpu.stat", parse_flat_keyed) or {}
        fields["nr_periods"] = stat.get("nr_periods")
        fields["nr_throttled"] = stat.get("nr_throttled")
        if "throttled_time" in stat:  # nanoseconds in v1
            fields["throttled_usec"] = stat["throttled_time"] // 1000
        _quota_into(fields, r.call(lambda: read_cpu_max(host, cpu_path)))
        shares = r.get(f"{cpu_dir}/cpu.shares", _int)
        fields["cpu_weight"] = shares_to_weight(shares) if shares is not None else None
    elif unified:
        # cpu.stat usage_usec exists in every v2 cgroup, with or without the cpu controller.
        stat = r.get(f"{unified}/cpu.stat", parse_flat_keyed) or {}
        fields["cpu_usage_usec"] = stat.get("usage_usec")
        fields["nr_periods"] = stat.get("nr_periods")
        fields["nr_throttled"] = stat.get("nr_throttled")
        fields["throttled_usec"] = stat.get("throttled_usec")
        if cpu_v == 2 and cpu_path is not None:
            _quota_into(fields, r.call(lambda: read_cpu_max(host, cpu_path)))
            fields["cpu_weight"] = r.get(f"{unified}/cpu.weight", _int)
    if acct_v == 1:
        usage_ns = r.get(f"{acct_dir}/cpuacct.usage", _int)
        if usage_ns is not None:
            fields["cpu_usage_usec"] = usage_ns // 1000

    # -- cpuset -------------------------------------------------------------------------
    if set_v == 1:
        fields["cpuset_cpus"] = r.get(f"{set_dir}/cpuset.cpus", _cpus)
    elif set_v == 2:
        fields["cpuset_cpus"] = r.get(f"{set_dir}/cpuset.cpus.effective", _cpus) or r.get(
            f"{set_dir}/cpuset.cpus", _cpus
        )

    # -- memory -------------------------------------------------------------------------
    if mem_v == 1:
        fields["memory_current_bytes"] = r.get(f"{mem_dir}/memory.usage_in_bytes", _int)
        fields["memory_max_bytes"] = r.get(f"{mem_dir}/memory.limit_in_bytes", _v1_limit)
        fields["memory_high_bytes"] = r.get(f"{mem_dir}/memory.soft_limit_in_bytes", _v1_limit)
        failcnt = r.get(f"{mem_dir}/memory.failcnt", _int)
        fields["memory_events"] = {"failcnt": failcnt} if failcnt is not None else {}
        fields["memory_stat"] = r.get(f"{mem_dir}/memory.stat", lambda t, s: parse_memory_stat(t, s, version=1))
    elif mem_v == 2:
        fields["memory_current_bytes"] = r.get(f"{mem_dir}/memory.current", _int)
        fields["memory_max_bytes"] = r.get(f"{mem_dir}/memory.max", _v2_limit)
        fields["memory_high_bytes"] = r.get(f"{mem_dir}/memory.high", _v2_limit)
        fields["memory_events"] = r.get(f"{mem_dir}/memory.events", parse_flat_keyed) or {}
        fields["memory_low_bytes"] = r.get(f"{mem_dir}/memory.low", _v2_limit)
        fields["memory_stat"] = r.get(f"{mem_dir}/memory.stat", lambda t, s: parse_memory_stat(t, s, version=2))
    if mem_v is not None and host.is_dir(mem_dir):
        fields["memory_controller_version"] = mem_v

    # -- tasks and pressure -------------------------------------------------------------
    procs_dir = next((d for d in (cpu_dir, unified, mem_dir) if d and host.is_dir(d)), None)
    fields["nr_tasks"] = r.get(f"{procs_dir}/cgroup.procs" if procs_dir else None, _count_lines)
    if unified and host.is_dir(unified):
        psi = {res: r.get(f"{unified}/{res}.pressure", parse_psi) for res in CGROUP_PSI_RESOURCES}
        fields["psi"] = {res: val for res, val in psi.items() if val is not None}

    version = 2 if 2 in (cpu_v, mem_v) or (cpu_v is None and mem_v is None) else 1
    clean = {k: v for k, v in fields.items() if v is not None}
    return CgroupReading(path=cgpath, version=version, **clean)


def read_cgroup_procs(host: Host, cgdir: str) -> list[int]:
    """PIDs listed in ``<cgdir>/cgroup.procs`` (host path); TargetGone if the cgroup is gone."""
    path = f"{cgdir}/cgroup.procs"
    try:
        text = host.read_text(path)
    except MissingFile as err:
        raise TargetGone(f"{cgdir}: cgroup not found") from err
    try:
        return sorted(int(line) for line in text.split())
    except ValueError as err:
        raise ParseError(f"{path}: expected one pid per line") from err
