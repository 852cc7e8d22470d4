"""Auto thread choice: min(affinity cpus, floor(effective cgroup cpu quota) or 1), followed live."""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from autotune import cgroupfs
from autotune.host import Host
from autotune.workload.threads import ThreadChoice, ThreadFollower, auto_threads

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
    assert cgroupfs.pid_cgroup(host, "cpu") == "/bench/server"
    assert cgroupfs.effective_cpu_quota_cores(host, "/bench/server") == 1.5
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
    assert cgroupfs.effective_cpu_quota_cores(host, "/svc") == 2.5
    assert auto_threads(host).threads == min(AFFINITY, 2)


def test_garbage_files_fall_back_to_affinity(tmp_path):
    host = _hybrid(tmp_path, {"/": -1})
    _w(tmp_path, "/sys/fs/cgroup/cpu/bench/server/cpu.cfs_quota_us", "banana\n")
    _w(tmp_path, "/sys/fs/cgroup/cpu/bench/server/cpu.cfs_period_us", "100000\n")
    assert auto_threads(host).threads == AFFINITY


# -- following the quota while running -----------------------------------------------------------
def _choice(n: int) -> ThreadChoice:
    return ThreadChoice(threads=n, affinity_cpus=2, quota_cores=None, cgroup="/x", reason="test")


def test_follower_rereads_at_most_every_interval_and_reports_changes():
    now, wanted, seen = [0.0], [2], []
    f = ThreadFollower(interval_s=2.0, clock=lambda: now[0], choose=lambda: _choice(wanted[0]),
                       on_change=lambda c: seen.append(c.threads))
    assert f.choice().threads == 2
    wanted[0] = 1
    now[0] = 1.0
    assert f.choice().threads == 2  # within the interval: not re-read
    now[0] = 2.5
    assert f.choice().threads == 1 and seen == [1] and f.changes == 1
    now[0] = 9.0
    assert f.choice().threads == 1 and seen == [1]  # unchanged: no callback


def test_fixed_threads_never_reread():
    calls = []
    f = ThreadFollower(fixed=3, choose=lambda: calls.append(1) or _choice(1))
    assert f.choice().threads == 3 and calls == []
    with pytest.raises(ValueError):
        ThreadFollower(fixed=0)


def test_apply_sets_the_calling_threads_count_only():
    torch = pytest.importorskip("torch")
    wanted = [1]
    f = ThreadFollower(interval_s=0.0, choose=lambda: _choice(wanted[0]))
    main_before = torch.get_num_threads()
    with ThreadPoolExecutor(1) as pool:
        def run() -> tuple[int, int]:
            applied = f.apply()
            (torch.ones(64, 64) @ torch.ones(64, 64)).sum()  # a parallel op under the new count
            return applied, torch.get_num_threads()

        assert pool.submit(run).result() == (1, 1)
        wanted[0] = 2
        assert pool.submit(run).result() == (2, 2)  # the same worker follows the change
    assert torch.get_num_threads() == main_before  # torch's count is per thread: main untouched


CPU_V1 = Path("/sys/fs/cgroup/cpu")


@pytest.mark.realkernel
@pytest.mark.root
def test_auto_threads_follows_a_real_quota_change(tmp_path):
    """A child in a cgroup we create re-chooses its threads as we move the cgroup's quota."""
    if os.geteuid() != 0 or not (CPU_V1 / "cpu.cfs_quota_us").exists():
        pytest.skip("needs root and a cgroup v1 cpu hierarchy at /sys/fs/cgroup/cpu")
    if AFFINITY < 2:
        pytest.skip("needs 2+ cpus in our affinity to tell 1 thread from several")
    cg = CPU_V1 / f"autotune-threads-{os.getpid()}"
    cg.mkdir()
    code = ("import sys\nfrom autotune.workload.threads import ThreadFollower\n"
            "f = ThreadFollower(interval_s=0.0)\n"
            "for _ in sys.stdin:\n    print(f.choice().threads, f.current.quota_cores, flush=True)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    try:
        (cg / "cgroup.procs").write_text(str(child.pid))

        def ask() -> str:
            child.stdin.write("?\n")
            child.stdin.flush()
            return child.stdout.readline().split()[0]

        assert ask() == str(AFFINITY)  # only the hierarchy root (never limited) is above us
        (cg / "cpu.cfs_quota_us").write_text("50000")  # 0.5 core
        assert ask() == "1"
        (cg / "cpu.cfs_quota_us").write_text("-1")
        assert ask() == str(AFFINITY)
    finally:
        child.kill()
        child.wait(10)
        for _ in range(100):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.02)
