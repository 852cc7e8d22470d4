"""Real kernel: the helper changes cpu quota on a cgroup this test creates, then restores it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autotune.errors import PolicyRefused
from autotune.helper.client import HelperClient
from autotune.helper.handler import Helper
from autotune.helper.policy import load_policy
from autotune.helper.server import HelperServer, bind_socket
from autotune.host import Host

from .conftest import FAKE_KNOBS

CPU_V1 = Path("/sys/fs/cgroup/cpu")

pytestmark = [pytest.mark.realkernel, pytest.mark.root]


def _knobs():
    """The real cgroup knob when the registry has landed, else the test's v1-capable fake."""
    try:
        from autotune.knobs import KNOBS

        if "cgroup.cpu_quota" in KNOBS:
            return KNOBS, "real"
    except ImportError:
        pass
    return FAKE_KNOBS, "fake"


@pytest.fixture
def test_cgroup():
    if os.geteuid() != 0:
        pytest.skip("needs root to create a cgroup")
    if not (CPU_V1 / "cpu.cfs_quota_us").exists():
        pytest.skip("no cgroup v1 cpu hierarchy at /sys/fs/cgroup/cpu (this test targets hybrid hosts)")
    name = f"autotune-helpertest-{os.getpid()}"
    d = CPU_V1 / name
    d.mkdir()
    try:
        yield name, d
    finally:
        d.rmdir()


def test_helper_applies_and_restores_cpu_quota_on_real_cgroup(tmp_path, test_cgroup):
    name, d = test_cgroup
    quota0 = (d / "cpu.cfs_quota_us").read_text()
    period0 = (d / "cpu.cfs_period_us").read_text()
    pol = tmp_path / "policy.toml"
    pol.write_text(f'[knob."cgroup.cpu_quota"]\nsubtrees = ["/{name}"]\nmin = 0.1\nmax = 1.0\nvalues = ["max"]\n')
    os.chmod(pol, 0o644)
    knobs, kind = _knobs()
    helper = Helper(load_policy(pol), Host("/", writable=True), knobs=knobs)
    server = HelperServer(helper, bind_socket(tmp_path / "h.sock"))
    import threading

    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        with HelperClient(str(tmp_path / "h.sock")) as c:
            before = c.read("cgroup.cpu_quota", f"/{name}")
            res = c.apply("cgroup.cpu_quota", f"/{name}", "0.5", expect_before=before.value)
            assert res.changed, kind
            assert int((d / "cpu.cfs_quota_us").read_text()) == int(period0) // 2
            assert c.read("cgroup.cpu_quota", f"/{name}").value in ("0.5", "0.50", "0.500")
            with pytest.raises(PolicyRefused) as info:  # the sibling root cgroup is not allowed
                c.apply("cgroup.cpu_quota", "/", "0.5")
            assert info.value.code == "target_refused"
            c.restore("cgroup.cpu_quota", f"/{name}", before)
        assert (d / "cpu.cfs_quota_us").read_text() == quota0
        assert (d / "cpu.cfs_period_us").read_text() == period0
    finally:
        server.close()
        th.join(5)


def test_helper_reads_live_sysctl_and_thp_and_dry_runs_without_writing(tmp_path):
    """The confined Host on the live /proc and /sys (procfs sysctl files fail a large read
    with ENOMEM; the kernel's own layout has no links below the root). Dry runs only: no
    global setting changes."""
    if os.geteuid() != 0:
        pytest.skip("needs root (policy ownership)")
    swap = Path("/proc/sys/vm/swappiness")
    if not swap.exists():
        pytest.skip("no /proc/sys/vm/swappiness")
    before = swap.read_text()
    pol = tmp_path / "policy.toml"
    pol.write_text('[knob.sysctl]\nkeys = { "vm.swappiness" = { min = 0, max = 100 } }\n')
    os.chmod(pol, 0o644)
    from autotune.knobs import KNOBS

    helper = Helper(load_policy(pol), Host("/", writable=True), knobs=KNOBS)
    read = helper.handle_line(b'{"op":"read","knob":"sysctl","target":"vm.swappiness"}')
    assert read.ok and read.result.before.value == before.strip(), read.error
    other = "10" if before.strip() != "10" else "20"
    dry = helper.handle_line(('{"op":"apply","knob":"sysctl","target":"vm.swappiness","value":"%s",'
                              '"dry_run":true}' % other).encode())
    assert dry.ok and dry.result.proposed == other and not dry.result.changed, dry.error
    for bad in ("60.5", "1e1", "0x10"):
        resp = helper.handle_line(('{"op":"apply","knob":"sysctl","target":"vm.swappiness",'
                                   '"value":"%s","dry_run":true}' % bad).encode())
        assert not resp.ok and resp.error.code == "invalid_value", (bad, resp.error)
    assert swap.read_text() == before
