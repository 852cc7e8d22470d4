"""Auto thread choice: min(affinity cpus, floor(effective cgroup cpu quota) or 1)."""

import os
from pathlib import Path

from autotune.host import Host
from autotune.workload.threads import auto_threads, effective_quota_cores, own_cgroup

AFFINITY = len(os.sched_getaffinity(0))


def _w(root: Path, path: str, text: str) -> None:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def _hybrid(root: Path, quotas: dict[str, int]) -> Host:
    _w(root, "/proc/self/cgroup", "4:memory:/x\n1:cpu:/bench/server\n0::/bench/server\n")
    _w(root, "/sys/fs/cgroup/unified/cgroup.procs", "")
    _w(root, "/sys/fs/cgroup/cpu/cgroup.procs", "")
    for cg, quota in quotas.items():
        d = "/sys/fs/cgroup/cpu" + ("" if cg == "/" else cg)
        _w(root, f"{d}/cpu.cfs_quota_us", f"{quota}\n")
        _w(root, f"{d}/cpu.cfs_period_us", "100000\n")
    return Host(root)


def test_v1_quota_on_parent_limits_threads(tmp_path):
    host = _hybrid(tmp_path, {"/": -1, "/bench": 150000, "/bench/server": -1})
    assert own_cgroup(host, "cpu") == "/bench/server"
    assert effective_quota_cores(host, "/bench/server") == 1.5
    choice = auto_threads(host)
    assert choice.threads == 1  # floor(1.5) = 1 even with 2+ cpus
    assert choice.quota_cores == 1.5


def test_half_core_quota_gives_one_thread(tmp_path):
    host = _hybrid(tmp_path, {"/": -1, "/bench": -1, "/bench/server": 50000})
    assert auto_threads(host).threads == 1


def test_no_quota_uses_affinity(tmp_path):
    host = _hybrid(tmp_path, {"/": -1, "/bench": -1, "/bench/server": -1})
    choice = auto_threads(host)
    assert choice.threads == AFFINITY
    assert choice.quota_cores is None


def test_v2_cpu_max(tmp_path):
    _w(tmp_path, "/sys/fs/cgroup/cgroup.controllers", "cpu memory\n")
    _w(tmp_path, "/proc/self/cgroup", "0::/svc\n")
    _w(tmp_path, "/sys/fs/cgroup/svc/cpu.max", "250000 100000\n")
    host = Host(tmp_path)
    assert effective_quota_cores(host, "/svc") == 2.5
    assert auto_threads(host).threads == min(AFFINITY, 2)


def test_garbage_files_fall_back_to_affinity(tmp_path):
    host = _hybrid(tmp_path, {"/": -1})
    _w(tmp_path, "/sys/fs/cgroup/cpu/bench/server/cpu.cfs_quota_us", "banana\n")
    _w(tmp_path, "/sys/fs/cgroup/cpu/bench/server/cpu.cfs_period_us", "100000\n")
    assert auto_threads(host).threads == AFFINITY
