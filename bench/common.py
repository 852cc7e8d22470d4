"""Benchmark plumbing: cgroups for the server and the neighbour, their processes, cleanup.

Runs as root on a real kernel. Every cgroup is created *under the bench process's own cgroup*
in each hierarchy (on the dev VM the memory hierarchy places us in a sandbox cgroup, which we
must not escape), named ``autotune-bench-<pid>/<role>`` so parallel runs never collide. The
same path is created in the v2 tree too (hybrid 'unified', no controllers there) and the pids
are moved into it, so per-cgroup PSI (``cpu.pressure``) is readable for each role.

Everything started or created is registered for cleanup, run by ``cleanup()`` in a finally
block and again at exit (atexit, SIGTERM): processes are terminated then killed, cgroups are
emptied into their parent and removed, children before parents.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from autotune import cgroupfs
from autotune.cgroupfs import controller_dir, norm_cgpath
from autotune.errors import HostError, InvalidValue, MissingFile
from autotune.host import Host
from autotune.knobs import get_knob
from autotune.sensors.psi import read_psi_file, some_avg10_pct
from autotune.workload.load import AdmitHook

V1_CONTROLLERS = ("cpu", "cpuacct", "memory")
GIB = 1024**3

_procs: list[subprocess.Popen] = []
_cgroups: list["BenchCgroup"] = []


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- cgroups ------------------------------------------------------------------------------------
class BenchCgroup:
    """One role's cgroup in every hierarchy we use (v1 cpu/cpuacct/memory, and v2 for PSI).

    Limits are set through the knobs (the same code the agent's changes go through), and
    processes are moved in through ``cgroupfs``: the bench writes no cgroup file itself.
    """

    def __init__(self, host: Host, name: str) -> None:
        self.host = host
        self.name = name
        self.dirs: dict[str, str] = {}  # hierarchy key ("cpu", "memory", "v2"...) -> host path
        self.paths: dict[str, str] = {}  # same keys -> cgroup path inside that hierarchy
        info = host.cgroup
        for ctrl in V1_CONTROLLERS:
            if info.controller_version(ctrl) == 1:
                parent = cgroupfs.pid_cgroup(host, ctrl) or "/"
                self.paths[ctrl] = norm_cgpath(f"{parent}/{name}")
                self.dirs[ctrl] = controller_dir(host, ctrl, self.paths[ctrl])
        if info.v2_mount:
            self.paths["v2"] = norm_cgpath(f"{cgroupfs.pid_cgroup(host) or '/'}/{name}")
            self.dirs["v2"] = info.v2_mount + self.paths["v2"]
        if not self.dirs:
            raise HostError("no cgroup hierarchy found: the bench needs cgroup v1 or v2 mounted")
        for d in self.dirs.values():
            os.makedirs(host.path(d), exist_ok=True)
        _cgroups.append(self)

    def _set(self, knob: str, controller: str, value: str, *, required: bool) -> None:
        """Set ``knob`` on this role's cgroup in the hierarchy that manages ``controller``.
        A host without that controller is fine unless a limit was asked for (``required``)."""
        k = get_knob(knob)
        target = self.paths.get(controller) or self.paths.get("v2")
        try:
            if target is None:
                raise MissingFile(f"no {controller} hierarchy")
            k.write(self.host, target, k.validate(self.host, target, value))
        except (MissingFile, InvalidValue) as err:
            if required:
                raise HostError(f"cannot set {knob} for {self.name}: {err}") from err

    def set_cpu_quota(self, cores: float | None) -> None:
        """Cores, or None for no limit (the period stays the kernel's default 100 ms)."""
        self._set("cgroup.cpu_quota", "cpu", "max" if cores is None else str(cores),
                  required=cores is not None)

    def reset_cpu_weight(self) -> None:
        """Back to the default share (v1 cpu.shares 1024 / v2 cpu.weight 100): the agent-managed
        run changes weights, and no other configuration may inherit them."""
        self._set("cgroup.cpu_weight", "cpu", "100", required=False)

    def cpu_cgroup_path(self) -> str:
        """The path the agent's config names (cpu hierarchy; v2 path on a pure v2 host)."""
        return self.paths.get("cpu") or self.paths["v2"]

    def set_memory_max(self, nbytes: int | None) -> None:
        self._set("cgroup.memory_max", "memory", "max" if nbytes is None else str(nbytes),
                  required=nbytes is not None)

    def add_pid(self, pid: int) -> None:
        for d in self.dirs.values():
            cgroupfs.add_pid(self.host, d, pid)

    def enter(self) -> None:
        """Move the calling process in (used as preexec_fn: children inherit the cgroups)."""
        self.add_pid(os.getpid())

    def pids(self) -> set[int]:
        out: set[int] = set()
        for d in self.dirs.values():
            text = self.host.read_optional(f"{d}/cgroup.procs") or ""
            out.update(int(x) for x in text.split())
        return out

    def cpu_pressure_avg10(self) -> float | None:
        """This cgroup's own PSI cpu some avg10 (percent), from the v2 tree."""
        if "v2" not in self.dirs:
            return None
        return some_avg10_pct(read_psi_file(self.host, f"{self.dirs['v2']}/cpu.pressure"))

    def remove(self) -> None:
        """Move any leftover pids to the parent, then rmdir this and the bench parent dir."""
        for d in self.dirs.values():
            parent = d.rsplit("/", 1)[0]
            text = self.host.read_optional(f"{d}/cgroup.procs") or ""
            for pid in text.split():
                try:
                    cgroupfs.add_pid(self.host, parent, pid)
                except HostError:
                    pass  # already gone
            for _ in range(40):
                try:
                    os.rmdir(self.host.path(d))
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY for a moment after the last task left
                    time.sleep(0.05)
            try:  # the shared autotune-bench-<pid> dir goes once its last role is gone
                os.rmdir(self.host.path(parent))
            except OSError:
                pass


def bench_cgroups(host: Host, roles: tuple[str, ...] = ("server", "neighbour")) -> dict[str, BenchCgroup]:
    base = f"autotune-bench-{os.getpid()}"
    return {role: BenchCgroup(host, f"{base}/{role}") for role in roles}


# -- processes ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv: list[str], cgroup: BenchCgroup | None, log_path: Path) -> subprocess.Popen:
    """Start a process already inside ``cgroup`` (moved before exec, so children inherit it)."""
    fh = open(log_path, "ab")
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                            preexec_fn=cgroup.enter if cgroup else None, start_new_session=True)
    fh.close()
    _procs.append(proc)
    return proc


def stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
    if proc in _procs:
        _procs.remove(proc)


def autotune_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "autotune", *args]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 180.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}; see its log")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url}/health not ready after {timeout_s:.0f} s")


def start_server(cg: BenchCgroup, *, model: str, max_concurrency: int, log_path: Path,
                 threads: str = "auto") -> tuple[subprocess.Popen, str]:
    port = free_port()
    argv = autotune_argv("workload", "serve", "--model", model, "--port", str(port),
                         "--threads", threads, "--max-concurrency", str(max_concurrency),
                         "--log-level", "warning")
    proc = spawn(argv, cg, log_path)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)
    return proc, url


def start_neighbour(cg: BenchCgroup, *, cpu: int, mem_mib: int, json_path: Path,
                    log_path: Path) -> subprocess.Popen:
    argv = autotune_argv("workload", "noise", "--cpu", str(cpu), "--mem-mib", str(mem_mib),
                         "--interval", "0.5", "--json-file", str(json_path))
    return spawn(argv, cg, log_path)


def read_noise(json_path: Path) -> dict | None:
    try:
        return json.loads(json_path.read_text())
    except (OSError, ValueError):
        return None


def gate_counts(url: str) -> tuple[int, int] | None:
    """(deferred, rejected) counters of an ``autotune gate`` at ``url``; None when there is none."""
    try:
        r = httpx.get(f"{url}/gate/status", timeout=5)
        if r.status_code == 200:
            st = r.json()
            return int(st["deferred"]), int(st["rejected"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        pass
    return None


# -- the seed's admission gate, client side -----------------------------------------------------
def seed_psi_admit(host: Host, *, threshold_pct: float = 95.0, retry_s: float = 0.5,
                   max_retries: int = 10) -> AdmitHook:
    """Defer while system /proc/pressure/cpu some avg10 > threshold; drop after max_retries.

    The seed did this inside its server before generating; doing it in front of each request
    on the client is equivalent for end-to-end latency, which includes the deferral here.
    """

    async def admit() -> tuple[bool, int]:
        deferrals = 0
        while True:
            avg10 = some_avg10_pct(read_psi_file(host, "/proc/pressure/cpu"))
            if avg10 is None or avg10 <= threshold_pct:
                return True, deferrals
            if deferrals >= max_retries:
                return False, deferrals
            deferrals += 1
            await asyncio.sleep(retry_s)

    return admit


# -- cleanup --------------------------------------------------------------------------------------
def cleanup() -> None:
    """Stop every process we started and remove every cgroup we created (idempotent)."""
    for proc in list(_procs):
        try:
            stop(proc, timeout_s=5)
        except Exception as err:  # noqa: BLE001 - keep cleaning
            log(f"cleanup: could not stop pid {proc.pid}: {err}")
    for cg in reversed(list(_cgroups)):
        try:
            cg.remove()
        except Exception as err:  # noqa: BLE001
            log(f"cleanup: could not remove cgroup {cg.name}: {err}")
        _cgroups.remove(cg)


def install_cleanup() -> None:
    atexit.register(cleanup)

    def on_term(signum, _frame) -> None:  # noqa: ANN001
        cleanup()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
