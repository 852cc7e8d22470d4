"""Real-kernel end-to-end fixtures: our own cpu cgroup, a CPU burner in it, the real helper.

Everything here is created by the test and removed at teardown: the cgroup directories
(``autotune-e2e-<pid>`` in the v1 cpu and cpuacct hierarchies, or in the v2 hierarchy when it
has the cpu controller), the burner process and the ``autotune helper`` SUBPROCESS listening on
a tmp socket with a tmp root-owned 0644 policy. Nothing global is written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from autotune.host import Host

REPO = Path(__file__).resolve().parents[2]


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def _rmdir(path: Path) -> None:
    for _ in range(100):  # a killed task leaves the cgroup asynchronously
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)
    path.rmdir()


@dataclass
class E2ECgroup:
    """Our cgroup: ``target`` is the cgroup path the knobs/helper use ("/autotune-e2e-123")."""

    target: str
    version: int
    cpu_dir: Path  # holds the quota files and cpu.stat
    acct_dir: Path  # v1 cpuacct.usage (ns) / v2 cpu.stat usage_usec
    dirs: list[Path] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def add(self, pid: int) -> None:
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid))

    def burner(self) -> subprocess.Popen:
        """A single-threaded busy loop inside the cgroup (wants 1 full core)."""
        p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        self.procs.append(p)
        self.add(p.pid)
        return p

    def quota_files(self) -> dict[str, str]:
        """Exact raw contents of the quota files (v1: period + quota; v2: cpu.max)."""
        names = ("cpu.cfs_period_us", "cpu.cfs_quota_us") if self.version == 1 else ("cpu.max",)
        return {n: (self.cpu_dir / n).read_text() for n in names}

    def nr_throttled(self) -> int:
        for line in (self.cpu_dir / "cpu.stat").read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == "nr_throttled":
                return int(v)
        raise AssertionError("cpu.stat has no nr_throttled")

    def usage_s(self) -> float:
        """Cumulative CPU time of the cgroup, seconds."""
        if self.version == 1:
            return int((self.acct_dir / "cpuacct.usage").read_text()) / 1e9
        for line in (self.cpu_dir / "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
        raise AssertionError("cpu.stat has no usage_usec")

    def cores_used(self, seconds: float) -> float:
        """Average cores the cgroup used over the next ``seconds`` (wall)."""
        u0, t0 = self.usage_s(), time.monotonic()
        time.sleep(seconds)
        return (self.usage_s() - u0) / (time.monotonic() - t0)


@pytest.fixture
def e2e_cgroup():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a cgroup and runs the privileged helper")
    info = Host("/").cgroup
    name = f"autotune-e2e-{os.getpid()}"
    ver = info.controller_version("cpu")
    if ver == 1 and "cpuacct" in info.v1_mounts:
        cpu_dir = Path(info.v1_mounts["cpu"]) / name
        acct_dir = Path(info.v1_mounts["cpuacct"]) / name
        dirs = [cpu_dir] if acct_dir == cpu_dir else [cpu_dir, acct_dir]
    elif ver == 2 and info.v2_mount:
        sub = Path(info.v2_mount) / "cgroup.subtree_control"
        if "cpu" not in sub.read_text().split():
            pytest.skip(f"cgroup v2 cpu controller not enabled in {sub}")
        cpu_dir = acct_dir = Path(info.v2_mount) / name
        dirs = [cpu_dir]
    else:
        pytest.skip(f"no cpu controller usable here (cgroup layout {info.layout}, cpu on v{ver})")
    for d in dirs:
        d.mkdir()
    cg = E2ECgroup(target=f"/{name}", version=ver, cpu_dir=cpu_dir, acct_dir=acct_dir, dirs=dirs)
    try:
        yield cg
    finally:
        for p in cg.procs:
            _kill(p)
        for d in reversed(dirs):
            _rmdir(d)
    assert not any(d.exists() for d in dirs)


class HelperProc:
    """The real ``autotune helper`` as a subprocess."""

    def __init__(self, policy: Path, sock: Path, state: Path, log: Path) -> None:
        self.sock, self.log = sock, log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autotune", "helper", "--policy", str(policy),
             "--socket", str(sock), "--state", str(state), "--socket-mode", "600"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        deadline = time.monotonic() + 20
        while not sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"helper did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                _kill(self.proc)
        self._log.close()


@pytest.fixture
def start_helper(tmp_path):
    """``start_helper(policy_text) -> HelperProc``; every helper is stopped at teardown."""
    procs: list[HelperProc] = []

    def start(policy_text: str) -> HelperProc:
        n = len(procs)
        policy = tmp_path / f"policy{n}.toml"
        policy.write_text(policy_text)
        os.chmod(policy, 0o644)  # root-owned (we are root), not group/world-writable
        h = HelperProc(policy, tmp_path / f"helper{n}.sock", tmp_path / f"origins{n}.json",
                       tmp_path / f"helper{n}.log")
        procs.append(h)
        return h

    yield start
    for h in procs:
        h.stop()


def _run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture
def run_cli():
    """``run_cli(*args)``: ``autotune ...`` as a real subprocess (what an operator types)."""
    return _run_cli
