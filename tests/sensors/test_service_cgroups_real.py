"""Real kernel (cgroup v1): a process of this test's own, in a cpu cgroup and a different memory
cgroup it creates, found by its command line alone; the cgroups and the process are removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from autotune.config import Service
from autotune.host import Host
from autotune.knobs import get_knob
from autotune.sensors.collect import read_service

pytestmark = [pytest.mark.realkernel, pytest.mark.root]

CG = Path("/sys/fs/cgroup")


@pytest.fixture
def placed_process():
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups")
    host = Host("/")
    if any(host.cgroup.controller_version(c) != 1 for c in ("cpu", "memory")):
        pytest.skip("needs the cpu and memory controllers on cgroup v1 (hybrid or v1 host)")
    tag = f"autotune-resolve-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    cpu_dir = Path(host.cgroup.v1_mounts["cpu"]) / tag / "llm"
    mem_dir = Path(host.cgroup.v1_mounts["memory"]) / f"{tag}-mem"
    made: list[Path] = []
    child = None
    try:
        for d in (cpu_dir.parent, cpu_dir, mem_dir):
            d.mkdir()
            made.append(d)
        (cpu_dir / "cpu.cfs_quota_us").write_text("50000")  # 0.5 cores
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", tag],
                                 stdin=subprocess.DEVNULL)
        (cpu_dir / "cgroup.procs").write_text(str(child.pid))
        (mem_dir / "cgroup.procs").write_text(str(child.pid))
        yield tag, child.pid
    finally:
        if child is not None:
            child.kill()
            child.wait()
        for d in reversed(made):
            for _ in range(100):  # a killed task leaves its cgroups asynchronously
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)
        assert not any(d.exists() for d in made)


def test_found_by_cmdline_in_its_own_v1_groups(placed_process):
    tag, pid = placed_process
    svc = Service(name="llm", cmdline=tag)
    reading = read_service(Host("/"), svc)
    cg = reading.cgroups
    assert [p.pid for p in reading.processes] == [pid]
    assert cg.cpu == f"/{tag}/llm" and cg.memory == f"/{tag}-mem"
    assert cg.how == f"from processes (pid {pid})"
    assert reading.cgroup.cpu_quota_cores == pytest.approx(0.5)
    assert reading.cgroup.path == f"/{tag}/llm"
    assert get_knob("cgroup.cpu_quota").service_target(svc, cg) == f"/{tag}/llm"
    assert get_knob("cgroup.memory_max").service_target(svc, cg) == f"/{tag}-mem"
    assert get_knob("cgroup.cpu_quota").read(Host("/"), cg.cpu).value == "0.5"
