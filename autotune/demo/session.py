"""`autotune demo`: the closed loop on this host, on cgroups it makes and removes again.

One run (root; cgroup v2, or v1 / hybrid; no systemd needed):

1. creates ``/autotune-demo-<pid>/llm`` and ``/batch`` at the root of the cpu, cpuacct and cpuset
   hierarchies and the v2 tree (``workload/harness.RoleCgroup``);
2. starts the reference server (``autotune workload serve``, tiny model) in ``llm`` and measures
   its inter-token latency alone under load: the SLO is twice that (``--slo-itl`` sets it);
3. caps the server at 0.5 core and starts a neighbour burning every CPU in ``batch``;
4. writes a policy naming exactly those two cgroups and runs the real privileged helper on a
   socket in the demo's directory; writes a config declaring the two services, the server's SLO
   and latency source and the neighbour's floor, and runs ``autotune run`` in apply mode through
   that helper with the default rule pack;
5. keeps the load up (the SLO breaks), then drops it (the agent should give CPU back), printing
   every symptom, action, verdict and rollback from the audit trail as it is written;
6. on the way out - at the end, on Ctrl-C / SIGTERM, or on an error - stops the agent,
   restores everything it changed (``autotune rollback --all`` through the helper), puts the
   demo cgroups' own files back as created, stops every process, removes the cgroups, and
   compares the host-wide values it read at the start with what they read now.

The state DB (journal, audit trail) stays in the demo's directory for ``autotune audit``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from autotune.demo.feed import Feed, follow, line
from autotune.workload import hostvalues
from autotune.workload.hostvalues import compare
from autotune.errors import AutotuneError, HostError
from autotune.host import Host
from autotune.knobs import get_knob
from autotune.knobs.base import KnobState
from autotune.workload import harness

ROLES = ("llm", "batch")
CONTROLLERS = ("cpu", "cpuacct", "cpuset")  # the demo's cgroups, at the root of each hierarchy
KNOBS = ("cgroup.cpu_quota", "cgroup.cpu_weight", "cgroup.cpuset")
START_QUOTA_CORES = 0.5
SLO_FACTOR = 2.0  # SLO = this x the server's own ITL p95 alone (measured at the start)
FLOOR_CORES = 0.5  # the neighbour's min_cpu_cores
MARK_ENV = "AUTOTUNE_DEMO_DIR"


class DemoError(AutotuneError):
    """The demo cannot go on (a process died, the host lacks what it needs)."""


class Interrupted(Exception):
    """Ctrl-C / SIGTERM: clean up and exit 128 + signal."""


@dataclass
class Options:
    duration_s: float = 120.0  # load after the agent starts: the first 60 % high, then low
    model: str = "tiny"
    slo_itl_s: float | None = None  # None: SLO_FACTOR x the ITL p95 measured alone
    workdir: Path | None = None
    peak_streams: int = 2
    low_streams: int = 1
    max_tokens: int = 64
    calibrate_s: float = 8.0
    status_every_s: float = 10.0


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen
    log: Path


@dataclass
class Outcome:
    """What the run did, for the summary and ``summary.json``."""

    applied: int = 0
    kept: int = 0
    rolled_back: int = 0
    restored_at_exit: int = 0
    restore_problems: list[str] = field(default_factory=list)
    own_files: list[str] = field(default_factory=list)
    error: str | None = None


class Load:
    """Closed-loop streaming load on the server: ``streams`` requests at a time, changeable."""

    def __init__(self, url: str, streams: int, max_tokens: int) -> None:
        self.url, self.streams, self.max_tokens = url, streams, max_tokens
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="demo-load", daemon=True)

    def _run(self) -> None:
        from autotune.workload.load import LoadSpec, run_load

        seed = 0
        while not self.stop.is_set():
            n = self.streams
            spec = LoadSpec(url=self.url, requests=n, concurrency=n, max_tokens=self.max_tokens,
                            stream=True, seed=seed, timeout_s=60, max_retries=2)
            try:
                asyncio.run(run_load(spec))
            except Exception:  # noqa: BLE001 - a server going away ends in teardown anyway
                self.stop.wait(1.0)
            seed += 1

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=70)


class Demo:
    def __init__(self, opts: Options, *, out=None) -> None:
        self.opts = opts
        self.out = out or sys.stdout
        self.t0 = time.monotonic()
        self.host = Host("/", writable=True)
        self.base = f"autotune-demo-{os.getpid()}"
        self.stop = threading.Event()  # a signal arrived
        self.signum: int | None = None
        self.cleaning = False
        self._say_lock = threading.Lock()
        self.dir = self._workdir()
        os.environ[MARK_ENV] = str(self.dir)  # every process it starts inherits it (tests find leftovers)
        self.db = self.dir / "state" / "autotune.db"
        self.sock = self.dir / "helper.sock"
        self.cgs: dict[str, harness.RoleCgroup] = {}
        self.orig: dict[tuple[str, str], KnobState] = {}
        self.procs: dict[str, Proc] = {}
        self.load: Load | None = None
        self.url = ""
        self.slo_s: float | None = None
        self.before: dict[str, str] = {}
        self.before_read: hostvalues.HostValues | None = None
        self.after: dict[str, str] = {}
        self.outcome = Outcome()
        self.feed_stop = threading.Event()
        self.feed_thread: threading.Thread | None = None
        self._scraper = None  # the status line's own scrape of the server's /metrics
        self.values: dict[str, dict[tuple[str, str], str]] = {}  # stage -> (role, knob) -> value

    # -- output ---------------------------------------------------------------------------
    def say(self, tag: str, text: str) -> None:
        with self._say_lock:
            print(line(time.monotonic() - self.t0, tag, text), file=self.out, flush=True)

    def _workdir(self) -> Path:
        if self.opts.workdir is not None:
            d = self.opts.workdir
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise DemoError(f"--dir {d}: cannot create it ({err.strerror or err})") from err
            if any(d.iterdir()):
                raise DemoError(f"--dir {d}: not empty; give a new or empty directory")
        else:
            d = Path(tempfile.mkdtemp(prefix="autotune-demo-"))
        os.chmod(d, 0o755)
        return d

    # -- the run --------------------------------------------------------------------------
    def run(self) -> int:
        """The whole demo; the exit code (0 all restored, 1 an error or a difference, 128+sig)."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        code = 0
        try:
            self.say("demo", f"state, logs and audit trail in {self.dir}")
            self.before_read = hostvalues.read(self.host, cgroup_dirs=self._base_dirs())
            self.before = self.before_read.values
            self.setup()
            self.drive()
        except Interrupted:
            self.say("demo", f"{signal.Signals(self.signum or signal.SIGINT).name}: stopping and "
                             "restoring everything")
            code = 128 + (self.signum or signal.SIGINT)
        except (AutotuneError, OSError, RuntimeError, TimeoutError) as err:
            self.outcome.error = str(err)
            self.say("error", str(err))
            code = 1
        finally:
            self.cleaning = True
            self.teardown()
            for s, h in old.items():
                signal.signal(s, h)
        if not self.report() and code == 0:
            code = 1
        return code

    def _on_signal(self, signum, _frame) -> None:  # noqa: ANN001
        if self.cleaning:
            self.say("demo", "already restoring and cleaning up; one moment")
            return
        self.signum = signum
        self.stop.set()

    def _check(self) -> None:
        if self.stop.is_set():
            raise Interrupted

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Interrupted

    # -- setup ----------------------------------------------------------------------------
    def setup(self) -> None:
        o = self.opts
        info = self.host.cgroup
        if info.controller_version("cpu") is None:
            raise DemoError(f"no cgroup cpu controller on this host (layout {info.layout})")
        self.cgs = harness.role_cgroups(self.host, self.base, ROLES, controllers=CONTROLLERS, under_root=True)
        for role, cg in self.cgs.items():
            for knob in self._knobs():
                self.orig[(role, knob)] = get_knob(knob).read(self.host, cg.cpu_cgroup_path())
        self.values["created"] = {key: st.value for key, st in self.orig.items()}
        self.say("setup", f"cgroups /{self.base}/llm and /batch ({info.layout} layout)")
        self._check()
        server = harness.start_server(self.cgs["llm"], model=o.model, max_concurrency=2,
                                      log_path=self.dir / "server.log", cancel=self.stop)
        self._check()
        self.procs["server"] = Proc("server", server[0], self.dir / "server.log")
        self.url = server[1]
        self.say("setup", f"server: workload serve --model {o.model} on :{self.url.rsplit(':', 1)[1]} "
                          "(cgroup llm)")
        self.load = Load(self.url, o.peak_streams, o.max_tokens)
        self.load.start()
        self.slo_s = o.slo_itl_s or self._calibrate()
        self.cgs["llm"].set_cpu_quota(START_QUOTA_CORES)
        self.say("setup", f"llm cpu quota {START_QUOTA_CORES} cores: too little for "
                          f"{o.peak_streams} streams, the SLO breaks")
        ncpu = self.host.ncpu
        noise = harness.start_neighbour(self.cgs["batch"], cpu=ncpu, mem_mib=0,
                                        json_path=self.dir / "noise.json", log_path=self.dir / "noise.log")
        self.procs["noise"] = Proc("neighbour", noise, self.dir / "noise.log")
        self.say("setup", f"neighbour: workload noise --cpu {ncpu} (cgroup batch, floor "
                          f"{FLOOR_CORES} cores)")
        self.values["start"] = self._own_values()
        self._start_helper()
        self._start_agent()

    def _knobs(self) -> list[str]:
        have = self.host.cgroup
        return [k for k in KNOBS if have.controller_version(get_knob(k).controller) is not None]

    def _calibrate(self) -> float:
        """The server's ITL p95 alone under the peak load, no quota: SLO_FACTOR x that."""
        from autotune.sensors.latency import LatencyScraper

        scraper = LatencyScraper(f"{self.url}/metrics")
        self._sleep(3.0)  # warm-up: the first calls per worker thread are slow
        scraper.sample()
        self._sleep(self.opts.calibrate_s)
        reading = scraper.sample()
        itl = reading.itl_p95_s
        if not itl:
            raise DemoError(f"no inter-token latency from {self.url}/metrics after "
                            f"{self.opts.calibrate_s:g} s of load ({reading.error or 'no tokens'}); "
                            f"see {self.dir / 'server.log'}")
        slo = round(max(SLO_FACTOR * itl, 0.005), 3)
        self.say("setup", f"SLO: ITL p95 <= {slo * 1000:.0f} ms ({SLO_FACTOR:g}x the {itl * 1000:.0f} ms "
                          "it has alone; --slo-itl)")
        return slo

    def policy_text(self) -> str:
        return policy_toml(base=self.base, ncpu=self.host.ncpu, knobs=self._knobs(), uid=os.geteuid())

    def config_text(self) -> str:
        return config_toml(base=self.base, url=self.url, slo_itl_s=self.slo_s or 0.05, db=self.db,
                           sock=self.sock)

    def _start_helper(self) -> None:
        policy = self.dir / "policy.toml"
        policy.write_text(self.policy_text())
        os.chmod(policy, 0o644)  # root-owned, not group/world-writable: the helper checks
        argv = harness.autotune_argv("helper", "--policy", str(policy), "--socket", str(self.sock),
                                     "--state", str(self.dir / "helper-origins.json"),
                                     "--socket-mode", "600")
        proc = harness.spawn(argv, None, self.dir / "helper.log")
        self.procs["helper"] = Proc("helper", proc, self.dir / "helper.log")
        deadline = time.monotonic() + 30
        while not self.sock.exists():
            self._alive("helper")
            if time.monotonic() > deadline:
                raise DemoError(f"the helper did not listen within 30 s; see {self.dir / 'helper.log'}")
            self._sleep(0.1)
        self.say("setup", f"helper (root): its policy allows /{self.base} only")

    def _start_agent(self) -> None:
        config = self.dir / "autotune.toml"
        config.write_text(self.config_text())
        check = subprocess.run(harness.autotune_argv("config", "check", str(config)),
                               capture_output=True, text=True, timeout=60, start_new_session=True)
        if check.returncode != 0:
            raise DemoError(f"the demo's config does not validate: {check.stderr.strip()}")
        argv = harness.autotune_argv("run", "--config", str(config), "--metrics-listen", "off")
        proc = harness.spawn(argv, None, self.dir / "agent.log")
        self.procs["agent"] = Proc("agent", proc, self.dir / "agent.log")
        self.say("setup", "agent: autotune run --config autotune.toml (apply, default rules)")
        self.feed_thread = threading.Thread(
            target=follow, args=(self.db, Feed({cg.cpu_cgroup_path(): r for r, cg in self.cgs.items()}),
                                 self.say, self.feed_stop), name="demo-feed", daemon=True)
        self.feed_thread.start()

    def _alive(self, name: str) -> None:
        p = self.procs.get(name)
        if p is not None and p.proc.poll() is not None:
            tail = [ln for ln in _tail(p.log, 20) if ln.strip()]
            last = tail[-1] if tail else "no output"
            raise DemoError(f"{p.name} exited with code {p.proc.returncode}: {last} (see {p.log})")

    # -- driving the load -----------------------------------------------------------------
    def drive(self) -> None:
        o = self.opts
        start = time.monotonic()
        peak_end = start + 0.6 * o.duration_s
        end = start + o.duration_s
        self.say("load", f"{o.peak_streams} streams of {o.max_tokens} tokens for "
                         f"{peak_end - start:.0f} s")
        self.say("status", self._status())
        next_status = start + o.status_every_s
        dropped = False
        while True:
            now = time.monotonic()
            if now >= end:
                return
            if not dropped and now >= peak_end:
                dropped = True
                assert self.load is not None
                self.load.streams = o.low_streams
                self.say("load", f"drops to {o.low_streams} stream for {end - now:.0f} s: the agent "
                                 "should give CPU back")
            if now >= next_status:
                next_status += o.status_every_s
                self.say("status", self._status())
            for name in ("agent", "helper", "server", "noise"):
                self._alive(name)
            self._sleep(min(1.0, max(0.05, end - now)))

    def _status(self) -> str:
        from autotune.sensors.latency import LatencyScraper

        if self._scraper is None:
            self._scraper = LatencyScraper(f"{self.url}/metrics")
            self._scraper.sample()
            return self._values()
        r = self._scraper.sample()
        itl = f"{r.itl_p95_s * 1000:.0f}" if r.itl_p95_s else "?"
        return f"ITL p95 {itl} ms (SLO {(self.slo_s or 0) * 1000:.0f}) | {self._values()}"

    def _own_values(self) -> dict[tuple[str, str], str]:
        """(role, knob) -> the live value of each knob on the demo's cgroups ("?" unreadable)."""
        out = {}
        for role, cg in self.cgs.items():
            for knob in self._knobs():
                try:
                    out[(role, knob)] = get_knob(knob).read(self.host, cg.cpu_cgroup_path()).value
                except HostError:
                    out[(role, knob)] = "?"
        return out

    def _values(self) -> str:
        """'llm 0.75 cores w 100 | batch w 25' (live; cpus only where changed)."""
        live = self._own_values()
        start = self.values.get("start", {})
        parts = []
        for role in self.cgs:
            vals = []
            if role == "llm" and (role, "cgroup.cpu_quota") in live:
                vals.append(f"{live[(role, 'cgroup.cpu_quota')]} cores")
            if (role, "cgroup.cpu_weight") in live:
                vals.append(f"w {live[(role, 'cgroup.cpu_weight')]}")
            cpus = live.get((role, "cgroup.cpuset"))
            if cpus is not None and cpus != start.get((role, "cgroup.cpuset")):
                vals.append(f"cpus {cpus}")
            parts.append(f"{role} {', '.join(vals)}")
        return " | ".join(parts)

    # -- teardown -------------------------------------------------------------------------
    def teardown(self) -> None:
        """Undo everything, in order; every step runs even when an earlier one failed."""
        steps = [("load", self._stop_load), ("agent", self._stop_agent), ("rollback", self._rollback),
                 ("feed", self._stop_feed), ("helper", lambda: self._stop_proc("helper")),
                 ("cgroup files", self._restore_own), ("server", lambda: self._stop_proc("server")),
                 ("neighbour", lambda: self._stop_proc("noise")), ("cleanup", self._cleanup)]
        for name, step in steps:
            try:
                step()
            except Exception as err:  # noqa: BLE001 - the next step must still run
                self.outcome.restore_problems.append(f"{name}: {err}")
                self.say("error", f"{name}: {err}")
        try:
            self._put_back()
            self.after = hostvalues.read(self.host, cgroup_dirs=self._base_dirs()).values
        except Exception as err:  # noqa: BLE001
            self.outcome.restore_problems.append(f"host values: {err}")

    def _base_dirs(self) -> dict[str, str]:
        return harness.base_dirs(self.host, self.base, controllers=CONTROLLERS, under_root=True)

    def _put_back(self) -> None:
        """A host-wide value that still differs after `rollback --all` is written back by force
        (the helper's policy should have refused any such change: each one is a problem)."""
        if self.before_read is None:
            return
        for f in hostvalues.put_back(self.host, self.before_read):
            what = f"{f.label} {f.found} -> {f.was}"
            self.outcome.restore_problems.append(
                f"restored by force: {what}" if f.error is None else f"could not restore {what}: {f.error}")
            self.say("error", f"RESTORED BY FORCE: {what}" if f.error is None else f"NOT RESTORED: {what} ({f.error})")

    def _stop_load(self) -> None:
        if self.load is not None:
            self.load.close()

    def _stop_proc(self, name: str) -> None:
        p = self.procs.get(name)
        if p is not None:
            harness.stop(p.proc, timeout_s=30 if name == "agent" else 10)

    def _stop_agent(self) -> None:
        if "agent" not in self.procs:
            return
        pending = self._in_flight()
        if pending:
            self.say("stop", f"{', '.join(pending)} still being verified: restored with the rest")
        self._stop_proc("agent")
        self.values["end"] = self._own_values()

    def _in_flight(self) -> list[str]:
        if not self.db.exists():
            return []
        from autotune.journal.journal import Journal
        from autotune.store.db import open_db

        db = open_db(self.db, read_only=True)
        try:
            return [f"#{e.id}" for e in Journal(db).entries(states=["applied", "verifying"])]
        finally:
            db.conn.close()

    def _rollback(self) -> None:
        """`autotune rollback --all` through the helper (root without it: --local)."""
        if not self.db.exists():
            return
        helper = self.procs.get("helper")
        via = ["--helper-socket", str(self.sock)]
        if helper is None or helper.proc.poll() is not None:
            via = ["--local"]
            self.say("restore", "the helper is gone: restoring with --local (root, the knobs directly)")
        res = subprocess.run(harness.autotune_argv("rollback", "--all", "--state", str(self.db), "--json",
                                                   *via), capture_output=True, text=True, timeout=120,
                             start_new_session=True)  # a second Ctrl-C must not cut it short
        if res.returncode not in (0, 1) or not res.stdout.strip().startswith("["):
            text = (res.stderr or res.stdout).strip()
            if "nothing to roll back" in res.stdout:
                return
            raise DemoError(f"rollback --all failed (exit {res.returncode}): {text}")
        outcomes = json.loads(res.stdout)
        self.outcome.restored_at_exit = sum(o["result"] == "restored" for o in outcomes)
        for o in outcomes:
            if o["result"] in ("skipped_drift", "failed", "blocked"):
                self.outcome.restore_problems.append(f"entry {o['entry_id']}: {o['result']} - {o['reason']}")
                self.say("error", f"#{o['entry_id']} not restored: {o['result']} ({o['reason']})")

    def _stop_feed(self) -> None:
        if self.feed_thread is not None:
            time.sleep(0.6)  # the rollback's audit events
            self.feed_stop.set()
            self.feed_thread.join(timeout=10)
        self._count()

    def _count(self) -> None:
        if not self.db.exists():
            return
        from autotune.audit.trail import AuditTrail
        from autotune.store.db import open_db

        db = open_db(self.db, read_only=True)
        try:
            trail = AuditTrail(db)
            self.outcome.applied = len(trail.query(kind="apply", outcome="applied"))
            self.outcome.kept = len(trail.query(kind="verify", outcome="kept"))
            self.outcome.rolled_back = len(trail.query(kind="verify", outcome="rolled_back"))
        finally:
            db.conn.close()

    def _restore_own(self) -> None:
        """The demo cgroups' files back to what they held when created (the demo's own 0.5-core
        quota included), through the knobs."""
        self.values["rollback"] = self._own_values()
        for (role, knob), state in self.orig.items():
            cg = self.cgs.get(role)
            if cg is None:
                continue
            k = get_knob(knob)
            target = cg.cpu_cgroup_path()
            cur = k.read(self.host, target)
            if dict(cur.raw) != dict(state.raw):
                k.restore(self.host, state)
                self.outcome.own_files.append(f"{role} {knob}: {cur.value} -> {state.value}")
                self.say("restore", f"{role} {knob.split('.', 1)[1]} {cur.value} -> {state.value} "
                                    "(as created)")
        self.values["restored"] = self._own_values()

    def _cleanup(self) -> None:
        problems: list[str] = []
        harness.cleanup(warn=problems.append)
        left = [d for cg in self.cgs.values() for d in cg.dirs.values() if self.host.exists(d)]
        problems += [f"{d} still exists" for d in left]
        self.outcome.restore_problems += problems
        if not problems:
            self.say("cleanup", f"processes stopped, cgroups /{self.base} removed")

    # -- the summary ----------------------------------------------------------------------
    def report(self) -> bool:
        """Print what happened and the host values before/after; True when all is as before."""
        o = self.outcome
        rows = compare(self.before, self.after) if self.before and self.after else []
        same = bool(rows) and all(r[3] for r in rows)
        p = lambda s="": print(s, file=self.out, flush=True)  # noqa: E731
        p()
        p("What happened")
        p(f"  agent: {o.applied} change(s) applied, {o.kept} kept after verification, "
          f"{o.rolled_back} rolled back by it;")
        p(f"  at exit rollback --all restored {o.restored_at_exit}, the demo {len(o.own_files)} "
          "of its own file(s).")
        for problem in o.restore_problems:
            p(f"  PROBLEM: {problem}")
        stages = [s for s in ("created", "start", "end", "rollback", "restored") if s in self.values]
        if stages:
            p()
            p("Values it changed (its own cgroups): created, demo's start, end of the run,")
            p("after `rollback --all`, restored by the demo before removing them")
            p(f"  {'cgroup':<6} {'knob':<11}" + "".join(f" {s:>10}" for s in stages))
            for role, knob in self.values["created"]:
                label = knob.split(".", 1)[1]
                p(f"  {role:<6} {label:<11}" + "".join(
                    f" {_cut(self.values[s].get((role, knob), '-'), 10):>10}" for s in stages))
        if rows:
            p()
            p(f"Host values read before and after ({'all the same' if same else 'DIFFERENT'})")
            w = max(len(r[0]) for r in rows)
            for label, b, a, ok in rows:
                p(f"  {label:<{w}}  {_cut(b, 14):<14}  {_cut(a, 14):<14}  {'same' if ok else 'CHANGED'}")
        p()
        p(f"Audit trail: {self.db}")
        p(f"  autotune audit --state {self.db} list")
        p(f"  autotune audit --state {self.db} report --html demo.html")
        p(f"  autotune history --state {self.db}")
        summary = {"dir": str(self.dir), "state": str(self.db), "slo_itl_s": self.slo_s,
                   "host_before": self.before, "host_after": self.after, "host_same": same,
                   "applied": o.applied, "kept": o.kept, "rolled_back": o.rolled_back,
                   "restored_at_exit": o.restored_at_exit, "own_files_restored": o.own_files,
                   "own_values": {s: {f"{r} {k}": v for (r, k), v in vals.items()}
                                  for s, vals in self.values.items()},
                   "problems": o.restore_problems, "error": o.error, "signal": self.signum}
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return same and not o.restore_problems and o.error is None


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _tail(path: Path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def policy_toml(*, base: str, ncpu: int, knobs: list[str], uid: int) -> str:
    """The demo's helper policy: the demo's cgroups only, cpu knobs only, the agent's uid."""
    sub = f'subtrees = ["/{base}"]'
    parts = [f"""# autotune demo: the helper may change the demo's own cgroups and nothing else.
[peers]
uids = [{uid}]

[limits]
rate_per_s = 50.0
burst = 100
"""]
    if "cgroup.cpu_quota" in knobs:
        parts.append(f'[knob."cgroup.cpu_quota"]\n{sub}\nmin = 0.1\nmax = {ncpu}\nvalues = ["max"]\n')
    if "cgroup.cpu_weight" in knobs:
        parts.append(f'[knob."cgroup.cpu_weight"]\n{sub}\nmin = 1\nmax = 10000\n')
    if "cgroup.cpuset" in knobs:
        parts.append(f'[knob."cgroup.cpuset"]\n{sub}\ncpus = "0-{ncpu - 1}"\n')
    return "\n".join(parts)


def config_toml(*, base: str, url: str, slo_itl_s: float, db: Path, sock: Path) -> str:
    """The agent's config: the two services, the SLO and latency source, the floor; nothing
    tuned (the default rule pack decides)."""
    return f"""# autotune demo: two services, the server's SLO, the neighbour's floor. Nothing tuned.
[agent]
mode = "apply"
state_path = "{db}"
helper_socket = "{sock}"

[[service]]
name = "llm"
role = "latency-critical"
cgroup = "/{base}/llm"
[service.slo]
itl_p95_s = {slo_itl_s}
[service.latency]
metrics_url = "{url}/metrics"
[service.threads]
pool = "follows-quota"   # the reference server sizes its torch threads from its quota

[[service]]
name = "batch"
role = "neighbour"
cgroup = "/{base}/batch"
min_cpu_cores = {FLOOR_CORES}
"""
