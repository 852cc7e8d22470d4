"""BenchCgroup sets its limits through the knobs (no raw cgroup writes), on the real kernel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from autotune.host import Host  # noqa: E402
from autotune.knobs import get_knob  # noqa: E402

pytestmark = [pytest.mark.realkernel, pytest.mark.root]


@pytest.mark.skipif(os.geteuid() != 0, reason="creates cgroups: needs root")
@pytest.mark.skipif(not Path("/sys/fs/cgroup").is_dir(), reason="no cgroup filesystem")
def test_limits_go_through_the_knobs_and_cleanup_leaves_nothing():
    from bench import common

    host = Host("/", writable=True)
    cg = common.BenchCgroup(host, f"autotune-bench-test-{os.getpid()}/role")
    try:
        target = cg.cpu_cgroup_path()
        quota = get_knob("cgroup.cpu_quota")
        cg.set_cpu_quota(0.5)
        assert quota.read(host, target).value == "0.5"
        cg.set_cpu_quota(None)
        assert quota.read(host, target).value == "max"
        cg.reset_cpu_weight()
        assert get_knob("cgroup.cpu_weight").read(host, target).value == "100"
        if host.cgroup.controller_version("memory") is not None:
            mem_target = cg.paths.get("memory") or cg.paths["v2"]
            cg.set_memory_max(1 << 30)
            assert get_knob("cgroup.memory_max").read(host, mem_target).value == str(1 << 30)
            cg.set_memory_max(None)
            assert get_knob("cgroup.memory_max").read(host, mem_target).value == "max"
        proc = subprocess.Popen(["sleep", "30"], preexec_fn=cg.enter)
        try:
            assert proc.pid in cg.pids()
        finally:
            proc.kill()
            proc.wait()
    finally:
        common.cleanup()
    assert common._cgroups == []
    assert not any(host.exists(d) for d in cg.dirs.values())


@pytest.mark.skipif(os.geteuid() != 0, reason="creates cgroups: needs root")
@pytest.mark.skipif(not Path("/sys/fs/cgroup").is_dir(), reason="no cgroup filesystem")
def test_a_killed_runs_cgroups_are_swept_by_the_next_run_and_a_live_ones_are_not():
    """A bench or demo killed with -9 leaves autotune-bench-<pid>/<role> behind; the next run
    removes it when that pid is gone and nothing runs inside, never otherwise."""
    from autotune.workload import harness
    from bench import common

    host = Host("/", writable=True)
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # never a live pid
    stale = harness.RoleCgroup(host, f"autotune-bench-{gone}/server")
    harness._cgroups.remove(stale)  # forgotten, as after kill -9
    sleeper = subprocess.Popen(["sleep", "30"])
    busy = harness.RoleCgroup(host, f"autotune-bench-{gone + 1}/server")  # no such pid...
    harness._cgroups.remove(busy)
    busy.add_pid(sleeper.pid)  # ...but a task still inside
    try:
        cgs = common.bench_cgroups(host)
        assert not any(host.exists(d) for d in stale.dirs.values())
        assert all(host.exists(d) for d in busy.dirs.values())
        assert all(host.exists(d) for cg in cgs.values() for d in cg.dirs.values())  # ours, alive
    finally:
        sleeper.kill()
        sleeper.wait()
        busy.remove()
        common.cleanup()
