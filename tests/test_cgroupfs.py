"""cgroupfs: the one door to cgroup files (quota, /proc/<pid>/cgroup, moving pids)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune import cgroupfs
from autotune.errors import MissingFile, ParseError
from autotune.host import Host


def _w(root: Path, path: str, text: str) -> None:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def hybrid(root: Path) -> Host:
    _w(root, "/proc/self/cgroup", "9:name=systemd:/\n4:memory:/sandbox/x\n1:cpu,cpuacct:/bench\n0::/bench\n")
    _w(root, "/proc/42/cgroup", "1:cpu,cpuacct:/other\n0::/other\n")
    _w(root, "/sys/fs/cgroup/unified/cgroup.procs", "")
    for ctrl in ("cpu", "memory"):
        _w(root, f"/sys/fs/cgroup/{ctrl}/cgroup.procs", "")
    for cg, quota in (("", -1), ("/bench", 150000), ("/bench/server", 50000)):
        _w(root, f"/sys/fs/cgroup/cpu{cg}/cpu.cfs_quota_us", f"{quota}\n")
        _w(root, f"/sys/fs/cgroup/cpu{cg}/cpu.cfs_period_us", "100000\n")
        _w(root, f"/sys/fs/cgroup/cpu{cg}/cgroup.procs", "")
    return Host(root, writable=True)


def v2(root: Path) -> Host:
    _w(root, "/sys/fs/cgroup/cgroup.controllers", "cpu memory\n")
    _w(root, "/proc/self/cgroup", "0::/svc\n")
    _w(root, "/sys/fs/cgroup/svc/cpu.max", "250000 100000\n")
    _w(root, "/sys/fs/cgroup/svc/child/cpu.max", "max 100000\n")
    return Host(root, writable=True)


def test_proc_cgroup_parsed_once_for_every_caller(tmp_path):
    host = hybrid(tmp_path)
    assert cgroupfs.parse_proc_cgroup("1:cpu,cpuacct:/a/\n0::/b\n") == {"cpu": "/a", "cpuacct": "/a", "": "/b"}
    assert cgroupfs.pid_cgroup(host, "cpu") == "/bench"
    assert cgroupfs.pid_cgroup(host, "memory") == "/sandbox/x"
    assert cgroupfs.pid_cgroup(host) == "/bench"  # the unified (v2) line
    assert cgroupfs.pid_cgroup(host, "cpu", pid=42) == "/other"
    assert cgroupfs.pid_cgroup(host, "io") is None  # no such controller here
    assert cgroupfs.pid_cgroup(host, "cpu", pid=7) is None  # no such process
    assert cgroupfs.pid_cgroup(v2(tmp_path / "v2"), "cpu") == "/svc"


def test_read_and_write_cpu_max_v1(tmp_path):
    host = hybrid(tmp_path)
    cm = cgroupfs.read_cpu_max(host, "/bench")
    assert (cm.version, cm.quota_usec, cm.period_usec, cm.cores) == (1, 150000, 100000, 1.5)
    assert list(cm.raw) == ["/sys/fs/cgroup/cpu/bench/cpu.cfs_period_us",
                            "/sys/fs/cgroup/cpu/bench/cpu.cfs_quota_us"]  # restore order
    assert cgroupfs.read_cpu_max(host, "/").cores is None
    cgroupfs.write_cpu_max(host, "/bench", 30000)
    assert cgroupfs.read_cpu_max(host, "/bench").cores == 0.3
    cgroupfs.write_cpu_max(host, "/bench", None, period_usec=50000)
    cm = cgroupfs.read_cpu_max(host, "/bench")
    assert (cm.quota_usec, cm.period_usec) == (None, 50000)
    with pytest.raises(MissingFile):
        cgroupfs.read_cpu_max(host, "/nope")


def test_read_and_write_cpu_max_v2(tmp_path):
    host = v2(tmp_path)
    assert cgroupfs.read_cpu_max(host, "/svc").cores == 2.5
    cgroupfs.write_cpu_max(host, "/svc", 50000)  # the period is kept
    assert (tmp_path / "sys/fs/cgroup/svc/cpu.max").read_text() == "50000 100000"
    _w(tmp_path, "/sys/fs/cgroup/svc/cpu.max", "lots\n")
    with pytest.raises(ParseError, match="cpu.max"):
        cgroupfs.read_cpu_max(host, "/svc")


def test_effective_quota_is_the_smallest_on_the_path(tmp_path):
    host = hybrid(tmp_path)
    assert cgroupfs.effective_cpu_quota_cores(host, "/bench/server") == 0.5
    assert cgroupfs.effective_cpu_quota_cores(host, "/bench") == 1.5
    assert cgroupfs.effective_cpu_quota_cores(host, "/") is None
    h2 = v2(tmp_path / "v2")
    assert cgroupfs.effective_cpu_quota_cores(h2, "/svc/child") == 2.5  # root has no cpu.max
    assert cgroupfs.effective_cpu_quota_cores(Host(tmp_path / "empty"), "/x") is None


def test_add_pid_writes_cgroup_procs(tmp_path):
    host = hybrid(tmp_path)
    cgroupfs.add_pid(host, "/sys/fs/cgroup/cpu/bench", 42)
    assert (tmp_path / "sys/fs/cgroup/cpu/bench/cgroup.procs").read_text() == "42"
