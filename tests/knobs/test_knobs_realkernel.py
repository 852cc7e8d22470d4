"""Real kernel: only a cgroup and processes this test creates (and cleans up).

Global writes (sysctl, THP) run only with AUTOTUNE_TEST_GLOBAL_WRITES=1 and restore the value.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from autotune.host import Host, format_cpulist
from autotune.knobs import get_knob

LIVE = Host("/", writable=True)
CPU_V1 = "/sys/fs/cgroup/cpu"


def _need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.fixture
def v1_cpu_cgroup():
    _need_root()
    if LIVE.cgroup.controller_version("cpu") != 1 or LIVE.cgroup.v1_mounts.get("cpu") != CPU_V1:
        pytest.skip(f"cpu controller is not on cgroup v1 at {CPU_V1}")
    name = f"autotune-knobtest-{os.getpid()}"
    path = f"{CPU_V1}/{name}"
    os.mkdir(path)
    try:
        yield f"/{name}", path
    finally:
        os.rmdir(path)


@pytest.mark.realkernel
@pytest.mark.root
def test_v1_cpu_quota_and_weight_roundtrip(v1_cpu_cgroup):
    cg, path = v1_cpu_cgroup
    quota = get_knob("cgroup.cpu_quota")
    res = quota.change(LIVE, cg, "0.5")
    assert res.changed and res.after.value == "0.5"
    assert open(f"{path}/cpu.cfs_quota_us").read().strip() == "50000"
    quota.restore(LIVE, res.before)
    assert open(f"{path}/cpu.cfs_quota_us").read() == "-1\n"
    assert open(f"{path}/cpu.cfs_period_us").read() == res.before.raw[f"{path}/cpu.cfs_period_us"]
    assert quota.read(LIVE, cg) == res.before

    weight = get_knob("cgroup.cpu_weight")
    res = weight.change(LIVE, cg, "200")
    assert open(f"{path}/cpu.shares").read().strip() == "2048"
    assert weight.read(LIVE, cg).value == "200"
    weight.restore(LIVE, res.before)
    assert open(f"{path}/cpu.shares").read() == "1024\n"


@pytest.mark.realkernel
@pytest.mark.root
def test_v1_restore_across_period_change(v1_cpu_cgroup):
    """Recorded (quota 20000, period 50000); live (300000, 100000): restore must get there."""
    cg, path = v1_cpu_cgroup
    quota = get_knob("cgroup.cpu_quota")
    LIVE.write_text(f"{path}/cpu.cfs_period_us", "50000")
    LIVE.write_text(f"{path}/cpu.cfs_quota_us", "20000")
    saved = quota.read(LIVE, cg)
    LIVE.write_text(f"{path}/cpu.cfs_period_us", "100000")
    LIVE.write_text(f"{path}/cpu.cfs_quota_us", "300000")
    quota.restore(LIVE, saved)
    assert quota.read(LIVE, cg) == saved
    LIVE.write_text(f"{path}/cpu.cfs_quota_us", "-1")


THREADS = textwrap.dedent("""
    import sys, threading, time
    for _ in range(4):
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    print("ready", flush=True)
    time.sleep(60)
""")


@pytest.mark.realkernel
def test_affinity_per_thread_restore():
    online = sorted(os.sched_getaffinity(0))
    if len(online) < 2:
        pytest.skip("needs at least 2 cpus")
    proc = subprocess.Popen([sys.executable, "-c", THREADS], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        tids = sorted(int(t) for t in os.listdir(f"/proc/{proc.pid}/task"))
        assert len(tids) == 5
        os.sched_setaffinity(tids[-1], {online[-1]})  # one thread pinned differently
        originals = {t: os.sched_getaffinity(t) for t in tids}
        k = get_knob("affinity")
        target = f"pids:{proc.pid}"
        before = k.read(LIVE, target)
        assert before.value == "mixed"
        assert before.raw[f"tid:{tids[-1]}"] == str(online[-1])
        res = k.change(LIVE, target, "0")
        assert res.changed and res.after.value == "0"
        assert all(os.sched_getaffinity(t) == {0} for t in tids)
        k.restore(LIVE, res.before)
        assert {t: os.sched_getaffinity(t) for t in tids} == originals
        assert k.read(LIVE, target) == before
        assert before.raw[f"tid:{tids[0]}"] == format_cpulist(originals[tids[0]])
    finally:
        proc.kill()
        proc.wait()
    # the process is gone now: restoring its record is a no-op, not an error
    get_knob("affinity").restore(LIVE, before)


@pytest.mark.realkernel
@pytest.mark.globalwrite
@pytest.mark.skipif(os.environ.get("AUTOTUNE_TEST_GLOBAL_WRITES") != "1",
                    reason="global writes need AUTOTUNE_TEST_GLOBAL_WRITES=1")
@pytest.mark.parametrize("knob,target", [
    ("sysctl", "vm.swappiness"), ("thp", "khugepaged/defrag"),
])
def test_global_roundtrip(knob, target):
    _need_root()
    k = get_knob(knob)
    before = k.read(LIVE, target)
    new = {"sysctl": str((int(before.value) + 1) % 100), "thp": "0" if before.value == "1" else "1"}[knob]
    try:
        res = k.change(LIVE, target, new)
        assert res.changed and k.read(LIVE, target).value == new
    finally:
        k.restore(LIVE, before)
    assert k.read(LIVE, target) == before


@pytest.fixture
def v1_cgroup(request):
    """A fresh cgroup in the v1 hierarchy of ``request.param`` (memory, cpuset)."""
    _need_root()
    ctrl = request.param
    mount = LIVE.cgroup.v1_mounts.get(ctrl)
    if LIVE.cgroup.controller_version(ctrl) != 1 or not mount:
        pytest.skip(f"{ctrl} controller is not on cgroup v1")
    name = f"autotune-knobtest-{os.getpid()}"
    os.mkdir(f"{mount}/{name}")
    try:
        yield f"/{name}", f"{mount}/{name}"
    finally:
        os.rmdir(f"{mount}/{name}")


@pytest.mark.realkernel
@pytest.mark.root
@pytest.mark.parametrize("v1_cgroup", ["memory"], indirect=True)
def test_v1_memory_page_rounding_and_unlimited(v1_cgroup):
    cg, path = v1_cgroup
    k = get_knob("cgroup.memory_max")
    before = k.read(LIVE, cg)
    assert before.value == "max"
    res = k.change(LIVE, cg, "1000000")  # kernel rounds down to a page; same() tolerates it
    assert res.changed and int(res.after.value) % os.sysconf("SC_PAGE_SIZE") == 0
    assert not k.change(LIVE, cg, "1000000").changed
    k.change(LIVE, cg, "max")
    assert k.read(LIVE, cg).value == "max"
    k.change(LIVE, cg, "64M")
    k.restore(LIVE, before)
    assert k.read(LIVE, cg) == before


@pytest.mark.realkernel
@pytest.mark.root
@pytest.mark.parametrize("v1_cgroup", ["cpuset"], indirect=True)
def test_v1_cpuset_roundtrip(v1_cgroup):
    cg, path = v1_cgroup
    k = get_knob("cgroup.cpuset")
    before = k.read(LIVE, cg)
    res = k.change(LIVE, cg, "0")
    assert res.after.value == "0" and open(f"{path}/cpuset.cpus").read() == "0\n"
    k.restore(LIVE, before)
    assert k.read(LIVE, cg) == before
