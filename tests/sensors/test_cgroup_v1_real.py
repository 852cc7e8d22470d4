"""Real kernel: a v1 cpu cgroup this test creates, with a quota, throttles a busy child."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotune.config import Service
from autotune.host import Host
from autotune.sensors.cgroup import read_cgroup
from autotune.sensors.service import resolve_service

pytestmark = pytest.mark.realkernel

CPU_V1 = Path("/sys/fs/cgroup/cpu")


@pytest.fixture
def v1_cpu_cgroup():
    if os.geteuid() != 0:
        pytest.skip("needs root to create a cgroup")
    if Host("/").cgroup.controller_version("cpu") != 1 or not (CPU_V1 / "cpu.cfs_quota_us").exists():
        pytest.skip("no cgroup v1 cpu hierarchy at /sys/fs/cgroup/cpu")
    name = f"autotune-test-{os.getpid()}"
    path = CPU_V1 / name
    path.mkdir()
    children: list[subprocess.Popen] = []
    try:
        yield name, path, children
    finally:
        for child in children:
            child.kill()
            child.wait()
        for _ in range(50):  # the killed task leaves the cgroup asynchronously
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.02)
    assert not path.exists()


def test_quota_throttles_busy_child(v1_cpu_cgroup):
    name, path, children = v1_cpu_cgroup
    (path / "cpu.cfs_period_us").write_text("100000")
    (path / "cpu.cfs_quota_us").write_text("10000")  # 0.1 cores
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    children.append(child)
    (path / "cgroup.procs").write_text(str(child.pid))
    host = Host("/")

    first = read_cgroup(host, f"/{name}")
    assert first.version == 1 and first.cpu_quota_cores == pytest.approx(0.1)
    assert first.nr_tasks == 1
    time.sleep(0.6)
    second = read_cgroup(host, f"/{name}")
    assert second.nr_throttled > first.nr_throttled
    assert second.nr_periods >= 3 and second.throttled_usec > 0
    assert resolve_service(host, Service(name="t", cgroup=f"/{name}")).pids == [child.pid]
