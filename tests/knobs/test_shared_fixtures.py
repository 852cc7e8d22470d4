"""Every knob against writable copies of the shared fixture trees (captured VM, v2 docs host)."""

from __future__ import annotations

import pytest

from autotune.errors import MissingFile
from autotune.host import Host
from autotune.knobs import get_knob

hosts = pytest.importorskip("tests.fixtures.hosts")

NEW = {
    "cgroup.cpu_quota": "0.5", "cgroup.cpu_burst": "1000", "cgroup.cpu_weight": "200",
    "cgroup.cpu_idle": "1", "cgroup.memory_high": "1G", "cgroup.memory_max": "2G",
    "cgroup.memory_low": "64M", "cgroup.cpuset": "0", "cgroup.io_weight": "150",
}
TREES = {
    "hybrid-local": ["/autotune-fixture/llm"],
    "v2-docs": ["/system.slice/llm.service", "/system.slice/noisy.service"],
}
CASES = [(t, cg, k) for t, cgs in TREES.items() for cg in cgs for k in NEW]


def _copy(name, tmp_path):
    try:
        return Host(hosts.writable_copy(name, tmp_path), writable=True)
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.mark.parametrize("tree,cg,knob", CASES, ids=[f"{t}:{c}:{k}" for t, c, k in CASES])
def test_cgroup_knob_roundtrip(tmp_path, tree, cg, knob):
    host = _copy(tree, tmp_path)
    k = get_knob(knob)
    try:
        before = k.read(host, cg)
    except MissingFile as err:
        pytest.skip(f"{knob} absent in {tree}: {err}")
    files = {p: host.read_text(p) for p in before.raw}
    res = k.change(host, cg, NEW[knob])
    assert res.changed == (not k.same(before.value, res.proposed))
    assert k.same(k.read(host, cg).value, res.proposed)
    k.restore(host, before)
    assert k.read(host, cg) == before
    if knob != "cgroup.io_weight":  # io.weight per-device lines are deliberately not rewritten
        assert {p: host.read_text(p) for p in before.raw} == files


@pytest.mark.parametrize("tree", list(TREES))
def test_global_knobs_on_shared_trees(tmp_path, tree):
    host = _copy(tree, tmp_path)
    sysctl = get_knob("sysctl")
    before = sysctl.read(host, "vm.swappiness")
    res = sysctl.change(host, "vm/swappiness", "7")
    assert res.after.value == "7"
    sysctl.restore(host, before)
    assert host.read_text("/proc/sys/vm/swappiness") == before.raw["/proc/sys/vm/swappiness"]
    thp = get_knob("thp")
    for target in ("enabled", "defrag", "khugepaged/defrag"):
        try:
            st = thp.read(host, target)
        except MissingFile:
            continue
        assert thp.validate(host, target, st.value) == st.value


def test_v2_docs_governor(tmp_path):
    host = _copy("v2-docs", tmp_path)
    k = get_knob("governor")
    before = k.read(host, "all")
    avail = host.read_text("/sys/devices/system/cpu/cpufreq/policy1/scaling_available_governors").split()
    res = k.change(host, "policy1", avail[0])
    k.restore(host, res.before)
    assert k.read(host, "all") == before


@pytest.mark.parametrize("tree", list(TREES))
def test_affinity_reads_captured_process(tree):
    root = hosts.fixture_path(tree)
    host = Host(root)
    pids = [p for p in host.listdir("/proc") if p.isdigit()]
    st = get_knob("affinity").read(host, f"pids:{pids[0]}")
    assert st.raw and all(k.startswith("tid:") for k in st.raw)
