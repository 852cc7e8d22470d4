"""Benchmark plumbing: the bench's cgroups for the server and the neighbour, its log, cleanup.

The cgroups, processes and their cleanup are ``autotune/workload/harness.py`` (shared with
`autotune demo`); they are re-exported here under the names the bench modules use. Every cgroup
is created *under the bench process's own cgroup* in each hierarchy (on the dev VM the memory
hierarchy places us in a sandbox cgroup, which we must not escape), named
``autotune-bench-<pid>/<role>`` so parallel runs never collide, and mirrored in the v2 tree
(hybrid 'unified', no controllers there) so per-cgroup PSI (``cpu.pressure``) is readable.

Everything started or created is registered for cleanup, run by ``cleanup()`` in a finally
block and again at exit (atexit, SIGTERM): processes are terminated then killed, cgroups are
emptied into their parent and removed, children before parents.

``HostGuard`` leaves the host as the run found it: the host-wide values (sysctls, THP, governor,
the cgroup roots; autotune/workload/hostvalues.py) read before the run, each agent row's own
``autotune rollback --all`` when it ends (bench/agent_front.py), then whatever still differs put
back by force, loudly, and the comparison in the run's output (issue 23).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx

from autotune.host import Host
from autotune.sensors.psi import read_psi_file, some_avg10_pct
from autotune.workload import harness, hostvalues
from autotune.workload.harness import (  # noqa: F401 - the bench modules' names for them
    GIB,
    _cgroups,
    _procs,
    autotune_argv,
    free_port,
    spawn,
    start_neighbour,
    start_server,
    stop,
    wait_healthy,
)
from autotune.workload.load import AdmitHook

# the neighbour's guaranteed share in every benchmark: the agent's min_cpu_cores for it, and
# the oracle's floor (a grid point that leaves the neighbour less is not valid)
NEIGHBOUR_FLOOR_CORES = 0.5


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchCgroup(harness.RoleCgroup):
    """A role's cgroup under the bench process's own cgroup (v1 cpu/cpuacct/memory + v2)."""

    def cpu_pressure_avg10(self) -> float | None:
        """This cgroup's own PSI cpu some avg10 (percent), from the v2 tree."""
        if "v2" not in self.dirs:
            return None
        return some_avg10_pct(read_psi_file(self.host, f"{self.dirs['v2']}/cpu.pressure"))


def base_name() -> str:
    """This run's cgroup directory (each role is one level below it)."""
    return f"autotune-bench-{os.getpid()}"


def bench_cgroups(host: Host, roles: tuple[str, ...] = ("server", "neighbour")) -> dict[str, BenchCgroup]:
    return harness.role_cgroups(host, base_name(), roles, cls=BenchCgroup)


class HostGuard:
    """The host-wide values before a run, and after it: put back by force whatever the agent
    rows' own rollbacks left different (a loud line each), then compared. Create it before the
    run touches anything; call ``finish`` after ``cleanup()``."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.dirs = harness.base_dirs(host, base_name())
        self.before = hostvalues.read(host, cgroup_dirs=self.dirs)

    def finish(self) -> dict:
        """Put back, read again, compare; what meta.json keeps (``line``: the run's last word)."""
        forced = hostvalues.put_back(self.host, self.before)
        for f in forced:
            if f.error is None:
                log(f"RESTORED BY FORCE: {f.label} {f.found} -> {f.was} (the agent's rollback left it changed)")
            else:
                log(f"NOT RESTORED: {f.label} is {f.found}, was {f.was}: {f.error}")
        after = hostvalues.read(self.host, cgroup_dirs=self.dirs).values
        rows = hostvalues.compare(self.before.values, after)
        return {"line": hostvalues.summary_line(rows), "same": all(r[3] for r in rows), "read": len(rows),
                "differ": {k: {"before": b, "after": a} for k, b, a, same in rows if not same},
                "forced": [{"label": f.label, "was": f.was, "found": f.found, "error": f.error} for f in forced],
                "before": self.before.values, "after": after}


def read_noise(json_path: Path) -> dict | None:
    try:
        return json.loads(json_path.read_text())
    except (OSError, ValueError):
        return None


def read_noise_after(json_path: Path, before: dict | None, timeout_s: float = 3.0) -> dict | None:
    """The neighbour's next report after ``before``: it reports once a second, so a load shorter
    than that (``--quick``) would otherwise read the same report twice and get no ops/s."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = read_noise(json_path)
        if before is None or (now is not None and now.get("elapsed_s", 0) > before.get("elapsed_s", 0)):
            return now
        if time.monotonic() >= deadline:
            return now
        time.sleep(0.05)


def wait_neighbour(json_path: Path, timeout_s: float = 60.0, *, stream: bool = False) -> dict | None:
    """The neighbour's first report (its burners and hog are up), then its next one, with the
    hog's pages all touched when there is a hog, and (``stream``) its streamer's file written
    and being read: measuring starts from a neighbour at work."""
    deadline = time.monotonic() + timeout_s
    first = None
    while time.monotonic() < deadline:
        r = read_noise(json_path)
        if r and first is None:
            first = r
        elif (r and first and r["elapsed_s"] > first["elapsed_s"] and (r.get("mem_resident") or not r.get("mem_mib"))
              and (not stream or r.get("stream_mib_total", 0) > 0)):
            return r
        time.sleep(0.2)
    log(f"the neighbour was not at work within {timeout_s:.0f} s; going on")
    return read_noise(json_path)


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
def stop_cgroup(cg: harness.RoleCgroup, timeout_s: float = 10.0) -> None:
    """SIGTERM every process left in ``cg``, SIGKILL what remains after ``timeout_s``, until it
    is empty: a server an agent's restart path started (bench/restart_server.py) runs in the
    role's cgroup but is no child of ours, so ``stop`` on our processes does not reach it."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        pids = cg.pids()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while cg.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
    if cg.pids():
        log(f"cgroup {cg.name}: processes {sorted(cg.pids())} survive SIGKILL")


def cleanup() -> None:
    """Stop every process we started, then whatever else is left in our role cgroups (a server
    an agent restarted), and remove every cgroup we created (idempotent)."""
    for proc in list(_procs):
        try:
            stop(proc, timeout_s=5)
        except Exception as err:  # noqa: BLE001 - keep cleaning
            log(f"cleanup: could not stop pid {proc.pid}: {err}")
    for cg in list(_cgroups):
        try:
            stop_cgroup(cg, timeout_s=5)
        except Exception as err:  # noqa: BLE001
            log(f"cleanup: could not empty cgroup {cg.name}: {err}")
    harness.cleanup(warn=log)


def install_cleanup() -> None:
    atexit.register(cleanup)

    def on_term(signum, _frame) -> None:  # noqa: ANN001
        cleanup()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
