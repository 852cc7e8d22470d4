"""`autotune demo` end to end on the real kernel: it acts, then leaves the host as it found it.

Each test runs the real command (server, neighbour, helper, agent as subprocesses) and checks,
with its OWN reads (not only the demo's summary), that the host-wide cgroup and sysctl values
are the same afterwards, that no cgroup and no process of the demo is left, and the exit code.
One lets the demo end by itself; the other interrupts it (SIGINT) right after its first action.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from autotune.audit.trail import AuditTrail
from autotune.demo.session import MARK_ENV
from autotune.host import Host
from autotune.store.db import open_db

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.root, pytest.mark.realkernel, pytest.mark.slow, pytest.mark.workload,
    pytest.mark.skipif(os.geteuid() != 0, reason="the demo creates cgroups and runs the helper: root"),
]


@pytest.fixture(autouse=True)
def _needs_workload_and_cpu_cgroup():
    pytest.importorskip("torch", reason="the demo's server needs the workload extra")
    if Host("/").cgroup.controller_version("cpu") is None:
        pytest.skip("no cgroup cpu controller on this host")


def host_files() -> dict[str, str]:
    """The test's own reading of the global values the demo could reach."""
    host = Host("/")
    info = host.cgroup
    paths = ["/proc/sys/vm/swappiness", "/proc/sys/vm/dirty_ratio", "/proc/sys/vm/dirty_background_ratio",
             "/sys/kernel/mm/transparent_hugepage/enabled", "/sys/kernel/mm/transparent_hugepage/defrag"]
    for ctrl, files in (("cpu", ("cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us")),
                        ("cpuset", ("cpuset.cpus", "cpuset.mems"))):
        if ctrl in info.v1_mounts:
            paths += [f"{info.v1_mounts[ctrl]}/{f}" for f in files]
    if info.v2_mount:
        paths += [f"{info.v2_mount}/cgroup.subtree_control"]
    return {p: (host.read_optional(p) or "absent") for p in paths}


def demo_dirs(pid: int) -> list[str]:
    """cgroup directories of the demo run by ``pid`` at any hierarchy's root."""
    info = Host("/").cgroup
    mounts = [*info.v1_mounts.values(), *([info.v2_mount] if info.v2_mount else [])]
    return [f"{m}/autotune-demo-{pid}" for m in mounts if Path(f"{m}/autotune-demo-{pid}").exists()]


def marked_processes(workdir: Path) -> list[int]:
    """Live processes the demo started (they inherit MARK_ENV=<its directory>)."""
    mark = f"{MARK_ENV}={workdir}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if mark in (d / "environ").read_bytes().split(b"\0"):
                out.append(int(d.name))
        except OSError:
            continue
    return out


class Demo:
    """``autotune demo`` as a subprocess; its stdout collected line by line."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "autotune", "demo", "--dir", str(workdir), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for ln in self.proc.stdout:
            self.lines.append(ln.rstrip("\n"))

    def wait_for(self, tag: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            if any(ln[6:].startswith(tag) for ln in self.lines):
                return True
            time.sleep(0.2)
        return False

    def finish(self, timeout_s: float) -> int:
        try:
            code = self.proc.wait(timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(30)
        self._reader.join(10)
        return code

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def summary(self) -> dict:
        return json.loads((self.workdir / "summary.json").read_text())


def assert_left_as_found(demo: Demo, before: dict[str, str]) -> None:
    assert host_files() == before, demo.text
    assert demo_dirs(demo.proc.pid) == [], demo.text
    assert marked_processes(demo.workdir) == [], demo.text
    s = demo.summary()
    assert s["host_same"] is True and s["host_before"] == s["host_after"], demo.text
    assert s["problems"] == [], demo.text
    events = [ln for ln in demo.lines if re.match(r"^ *\d+s ", ln)]
    assert events and all(len(ln) <= 80 for ln in events), demo.text


def test_demo_acts_then_restores_everything(tmp_path):
    before = host_files()
    demo = Demo(tmp_path / "demo", "--duration", "50")
    code = demo.finish(timeout_s=170)
    assert code == 0, demo.text
    assert_left_as_found(demo, before)
    trail = AuditTrail(open_db(tmp_path / "demo/state/autotune.db", read_only=True))
    applied = trail.query(kind="apply", outcome="applied")
    assert applied, demo.text  # the agent acted, through the helper
    assert all(e.target.startswith(f"/autotune-demo-{demo.proc.pid}/") for e in applied)
    assert (trail.query(kind="agent_start")[0].detail["actuator"]) == "HelperActuator"
    assert " action " in demo.text and "Host values read before and after (all the same)" in demo.text
    # every change still in place at the end was restored by rollback --all (journaled)
    assert trail.verify().ok


def test_sigint_mid_run_still_restores_and_cleans_up(tmp_path):
    before = host_files()
    demo = Demo(tmp_path / "demo", "--duration", "300")
    acted = demo.wait_for("action", timeout_s=120)
    demo.proc.send_signal(signal.SIGINT)
    code = demo.finish(timeout_s=120)
    assert acted, demo.text  # there was something to restore when the signal came
    assert code == 128 + signal.SIGINT, demo.text
    assert "SIGINT: stopping and restoring everything" in demo.text
    assert_left_as_found(demo, before)
    s = demo.summary()
    assert s["signal"] == signal.SIGINT and s["applied"] >= 1
    # the agent's changes were undone: the server cgroup's quota went back before removal
    assert s["own_values"]["rollback"]["llm cgroup.cpu_quota"] == "0.5"
