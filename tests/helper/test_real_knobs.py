"""The helper with the real knob registry (autotune.knobs) on the fixture host tree.

Skips until the registry exists; the fake knobs in conftest.py cover the policy logic meanwhile.
"""

from __future__ import annotations

import pytest

from autotune.errors import PolicyRefused
from autotune.helper.client import HelperClient

from .conftest import CPU, needs_root

pytestmark = needs_root


@pytest.fixture
def real_knobs():
    knobs = pytest.importorskip("autotune.knobs", reason="knob registry not written yet")
    registry = getattr(knobs, "KNOBS", None)
    if not registry:
        pytest.skip("autotune.knobs has no KNOBS registry yet")
    return registry


def test_real_sysctl_apply_restore(serve, host_root, real_knobs):
    if "sysctl" not in real_knobs:
        pytest.skip("no real sysctl knob")
    run = serve(knobs=real_knobs)
    f = host_root / "proc/sys/vm/swappiness"
    with HelperClient(run.socket_path) as c:
        before = c.read("sysctl", "vm.swappiness")
        assert c.apply("sysctl", "vm.swappiness", "10", expect_before=before.value).changed
        assert f.read_text().strip() == "10"
        with pytest.raises(PolicyRefused):
            c.apply("sysctl", "vm.swappiness", "150")
        c.restore("sysctl", "vm.swappiness", before)
    assert f.read_text().strip() == "60"


def test_real_cgroup_cpu_quota_confined(serve, host_root, real_knobs):
    if "cgroup.cpu_quota" not in real_knobs:
        pytest.skip("no real cgroup.cpu_quota knob")
    run = serve(knobs=real_knobs)
    quota = host_root / CPU.lstrip("/") / "autotune/llm/cpu.cfs_quota_us"
    with HelperClient(run.socket_path) as c:
        before = c.read("cgroup.cpu_quota", "/autotune/llm")
        assert c.apply("cgroup.cpu_quota", "/autotune/llm", "0.5").changed
        assert quota.read_text().strip() == "50000"
        for target in ("/autotune/evil", "/autotune/trap", "/autotune/../other"):
            with pytest.raises(PolicyRefused) as info:
                c.apply("cgroup.cpu_quota", target, "0.5")
            assert info.value.code == "target_refused"
        c.restore("cgroup.cpu_quota", "/autotune/llm", before)
    assert quota.read_text().strip() == "-1"
    assert (host_root / CPU.lstrip("/") / "other/cpu.cfs_quota_us").read_text().strip() == "-1"


def test_real_thp(serve, host_root, real_knobs):
    if "thp" not in real_knobs:
        pytest.skip("no real thp knob")
    run = serve(knobs=real_knobs)
    with HelperClient(run.socket_path) as c:
        before = c.read("thp", "enabled")
        assert before.value == "madvise"
        assert c.apply("thp", "enabled", "never").changed
        with pytest.raises(PolicyRefused):
            c.apply("thp", "enabled", "always")
        c.restore("thp", "enabled", before)
        assert c.read("thp", "enabled").value == "madvise"
