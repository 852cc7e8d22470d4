"""Random sequences of agent changes, failed writes, kill -9 at every failpoint, helper restarts,
operator writes and rollbacks on REAL v1 cgroups; after every ``rollback --all`` each target
must hold the value it would hold had the agent never acted (issues 10 and 24).

    sudo python3 -m tests.stress.rollback_sequences                    # 1000 sequences
    sudo python3 -m tests.stress.rollback_sequences --sequences 20 --seed 7
    sudo python3 -m pytest -m stress tests/stress/test_rollback_stress.py   # the same, as a test

The world, the actors and the checks; ``tests/stress/test_rollback_stress.py`` runs the
sequences as a stress test and ``tests/e2e/test_rollback_sequences.py`` a short version under
hypothesis in the default suite.

Each sequence gets two fresh cgroups under ``autotune-rbseq-<pid>`` in this process's own v1
cpu cgroup, with cpu quota and cpu weight on each (4 targets), its own state DB and its own
real helper (``Helper`` + ``HelperServer`` with a root-owned policy for that subtree). Every
actor is a real process, FORKED from this one so a step costs milliseconds, not an interpreter
start: the helper; each agent session (``Agent.start`` = reconcile, then ``Agent.apply`` /
``verify`` / ``stop`` through ``connect_helper``, with ``autotune.failpoints`` armed so the
session SIGKILLs itself at before_plan / after_plan / after_write / during_verify); and every
CLI call (``autotune rollback``/``enable``, run as the typer app in the child). Failed writes:
a value the policy refuses; the helper gone when the agent connects to write (nothing sent);
the helper dying mid-request before or after writing (the read-back fails too: fate unknown
until a later reading); the connection lost after a write that landed; a write that lands
another value and reports the knob's read-back mismatch (``host_error``). Operator writes go
straight through the knob: during an episode, values no agent step ever proposes; between
episodes (on a target a checked ``rollback --all`` left with nothing open or of unknown fate),
any value, the agent's own and the partial writes' included - the stale-episode case of issue
24 (the agent 0.15 -> 0.22 -> 0.33, rollback, the operator sets 0.22, the agent acts again, the
next rollback must restore 0.22).

The model keeps, per target, the value it would hold had the agent never acted (its initial
value, replaced by each operator write) and the value before the agent's current run (for
``--force``). Checks after every ``rollback --all`` and every ``restore_on_stop``: the live
value is that baseline (``--force``: the run's original when that is certain); exit code 1
exactly when a drift was newly reported; no entry left planned/applied/verifying/kept; every
drifted entry audited as drift and an operator's override reported; a second ``rollback
--all`` changes nothing, adds no audit row and exits 0; the audit chain verifies.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

POINTS = ("before_plan", "after_plan", "after_write", "during_verify")
FAULTS = ("refused", "unreachable", "lost_after_write", "partial", "dropped")
QUOTA, WEIGHT = "cgroup.cpu_quota", "cgroup.cpu_weight"
INITIAL = {QUOTA: "max", WEIGHT: "100"}  # a fresh v1 cgroup: quota -1, shares 1024
# Agent, operator and "partial write" values never overlap, so a reading is never ambiguous
# (an operator who writes exactly the agent's value cannot be told apart by anyone).
AGENT = {QUOTA: ("max", "0.3", "0.6", "1.1"), WEIGHT: ("100", "50", "200", "400")}
PARTIAL = {QUOTA: {"max": "1.95", "0.3": "0.35", "0.6": "0.65", "1.1": "1.15"},
           WEIGHT: {"100": "110", "50": "55", "200": "210", "400": "410"}}
OPERATOR = {QUOTA: ("0.45", "0.75", "1.35"), WEIGHT: ("75", "150", "300")}
REFUSED = {QUOTA: "3", WEIGHT: "5000"}  # outside the policy below
POLICY = """
[peers]
uids = [0]
[limits]
rate_per_s = 100000.0
burst = 100000
max_connections = 64
[knob."cgroup.cpu_quota"]
subtrees = ["{parent}"]
min = 0.1
max = 2.0
values = ["max"]
[knob."cgroup.cpu_weight"]
subtrees = ["{parent}"]
min = 1
max = 1000
"""
CONFIG = """
[agent]
mode = "apply"
state_path = "{db}"
helper_socket = "{sock}"
metrics_listen = "off"
[verification]
window_s = 1
settle_s = 0
rule_cooldown_s = 0
knob_cooldown_s = 0
"""
GATED = 3  # an agent session that did not act: the target is in flight or unmanaged
SESSION_FAILED = 70  # an exception escaped an agent session or a CLI call


class Unsupported(Exception):
    """This host cannot run the sequences (not root, no v1 cpu hierarchy)."""


class InvariantViolation(AssertionError):
    pass


# -- processes ----------------------------------------------------------------------------------
def _child(fn: Callable[[], int | None], out: Path | None, err: Path | None) -> None:
    code = SESSION_FAILED
    try:
        if out is not None:
            fo, fe = open(out, "w"), open(err or out, "w")
            os.dup2(fo.fileno(), 1)
            os.dup2(fe.fileno(), 2)
            sys.stdout, sys.stderr = fo, fe
        code = fn() or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - report and exit with a code the parent checks
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def fork_run(fn: Callable[[], int | None], out: Path | None = None, err: Path | None = None) -> int:
    """``fn()`` in a forked child; its exit code, negative when a signal killed it."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(fn, out, err)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def fork_bg(fn: Callable[[], int | None], log: Path) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(fn, log, log)
    return pid


def _refuses(sock: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(sock))
        return False
    except OSError:
        return True
    finally:
        s.close()


# -- the rig (per run) and a world (per sequence) ------------------------------------------------
class Rig:
    """The parent cgroup ``autotune-rbseq-<pid>`` in our own v1 cpu cgroup, the helper policy for
    it and a scratch directory. ``close()`` removes all of it (worlds must be closed first)."""

    def __init__(self) -> None:
        from autotune import cgroupfs
        from autotune.errors import HostError
        from autotune.host import Host

        if os.geteuid() != 0:
            raise Unsupported("needs root: creates cgroups and runs the privileged helper")
        self.host = Host("/", writable=True)
        try:
            version = cgroupfs.controller_version(self.host, "cpu")
        except HostError as err:
            raise Unsupported(f"no cpu cgroup controller: {err}") from err
        if version != 1:
            raise Unsupported(f"cpu is on cgroup v{version}; these sequences use the v1 hierarchy")
        own = cgroupfs.pid_cgroup(self.host, "cpu") or "/"
        self.parent = cgroupfs.norm_cgpath(f"{own}/autotune-rbseq-{os.getpid()}")
        self.parent_dir = Path(cgroupfs.controller_dir(self.host, "cpu", self.parent))
        self.parent_dir.mkdir()
        self.tmp = Path(tempfile.mkdtemp(prefix="autotune-rbseq-"))
        self.policy = self.tmp / "policy.toml"
        self.policy.write_text(POLICY.format(parent=self.parent))
        os.chmod(self.policy, 0o644)
        self.worlds = 0
        # import once here: every forked actor then starts warm
        import autotune.agent.daemon  # noqa: F401
        import autotune.agent.loop  # noqa: F401
        import autotune.cli.main  # noqa: F401
        import autotune.helper.handler  # noqa: F401
        import autotune.helper.server  # noqa: F401
        import autotune.verify.stats  # noqa: F401

    def world(self) -> "World":
        self.worlds += 1
        return World(self, self.worlds)

    def close(self) -> None:
        for _ in range(100):
            try:
                self.parent_dir.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class PairModel:
    baseline: str  # the value had the agent never acted (initial, then each operator write)
    origin: str | None = None  # the value before the agent's current run (None: no run)
    left: str | None = None  # the value the agent last left in place (None: overwritten / none)
    sure_open: bool = False  # nothing could have settled the run since its last landing
    overridden: bool = False  # an operator overwrote an agent value still in place
    # priors of writes whose fate the journal cannot know: a plain ``rollback --all`` that finds
    # someone else's value leaves such an entry drifted, and a LATER ``--force`` may restore it
    unknown: list[str] = field(default_factory=list)
    # a checked rollback --all left nothing open since the agent last acted on the target: the
    # operator may write any value, even one an agent entry proposed or held
    between: bool = True
    episode: list[str] = field(default_factory=list)  # values the target held in the last run


class World:
    """One sequence: two cgroups (quota + weight on each: 4 targets), a state DB, a helper."""

    def __init__(self, rig: Rig, n: int) -> None:
        from autotune import cgroupfs

        self.rig = rig
        self.dir = rig.tmp / f"s{n}"
        self.dir.mkdir()
        self.cgroups = [f"{rig.parent}/s{n}-t{i}" for i in range(2)]
        self.cg_dirs = [Path(cgroupfs.controller_dir(rig.host, "cpu", c)) for c in self.cgroups]
        for d in self.cg_dirs:
            d.mkdir()
        self.pairs = [(k, c) for c in self.cgroups for k in (QUOTA, WEIGHT)]
        self.db = self.dir / "state.db"
        self.sock = self.dir / "helper.sock"
        self.origins = self.dir / "origins.json"
        self.cfg = self.dir / "autotune.toml"
        self.cfg.write_text(CONFIG.format(db=self.db, sock=self.sock))
        self.helper_pid: int | None = None
        self.log: list[str] = []
        self.stats: Counter[str] = Counter()
        self.model = {}
        try:
            for p in self.pairs:
                v = self.live(p)
                if not self._same(p, v, INITIAL[p[0]]):
                    raise RuntimeError(f"fresh cgroup {p} reads {v!r}, not {INITIAL[p[0]]!r}")
                self.model[p] = PairModel(baseline=v)
            self._audit()  # the state DB (journal, trail), as the agent's first start creates it
            self.start_helper(keep_state=True)
        except BaseException:
            self.close()
            raise

    # -- host -------------------------------------------------------------------------------
    def live(self, pair: tuple[str, str]) -> str:
        from autotune.knobs import get_knob

        return get_knob(pair[0]).read(self.rig.host, pair[1]).value

    def lives(self) -> dict[tuple[str, str], str]:
        return {p: self.live(p) for p in self.pairs}

    @staticmethod
    def _same(pair: tuple[str, str], a: str | None, b: str | None) -> bool:
        from autotune.knobs import get_knob

        return get_knob(pair[0]).same(a, b)

    # -- helper -----------------------------------------------------------------------------
    def start_helper(self, *, keep_state: bool) -> None:
        """The real helper in a forked process; ``keep_state``: it remembers the priors it saw
        (``--state``), else it starts with an empty memory (restores go by value)."""
        from autotune.helper.client import HelperClient

        self.stop_helper()
        origins = self.origins if keep_state else None

        def serve() -> None:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            from autotune.helper.handler import Helper, Origins
            from autotune.helper.policy import load_policy
            from autotune.helper.server import HelperServer, bind_socket
            from autotune.host import Host

            helper = Helper(load_policy(self.rig.policy), Host("/", writable=True),
                            origins=Origins(origins))
            HelperServer(helper, bind_socket(self.sock, 0o600)).serve_forever()

        self.helper_pid = fork_bg(serve, self.dir / "helper.log")
        deadline = time.monotonic() + 20
        while True:
            try:
                with HelperClient(str(self.sock), timeout=2) as c:
                    c.ping()
                return
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"helper did not start: {self._tail('helper.log')}")
                time.sleep(0.01)

    def stop_helper(self) -> None:
        if self.helper_pid is not None:
            try:
                os.kill(self.helper_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.helper_pid, 0)
            self.helper_pid = None

    def helper_up(self) -> bool:
        if self.helper_pid is None:
            return False
        pid, _ = os.waitpid(self.helper_pid, os.WNOHANG)
        if pid:  # killed by a session (the "unreachable" fault)
            self.helper_pid = None
            return False
        return True

    def ensure_helper(self) -> None:
        """The agent refuses to start without its helper and the operator starts it before a
        rollback: (re)start it when a fault took it down."""
        if not self.helper_up():
            self.stats["helper_restarts"] += 1
            self.start_helper(keep_state=True)

    def _tail(self, name: str) -> str:
        try:
            return (self.dir / name).read_text()[-3000:]
        except OSError:
            return ""

    # -- steps ------------------------------------------------------------------------------
    def _step(self, what: str, kind: str, fn: Callable[[], Any]) -> Any:
        before = self.lives()
        out = fn()
        after = self.lives()
        self.stats["steps"] += 1
        self.log.append(f"{what} -> {out!r}; live {self._fmt(after)}")
        self._observe(kind, before, after)
        return out

    @staticmethod
    def _fmt(lives: dict) -> str:
        return " ".join(f"{k.split('.')[-1]}@{t.rsplit('-', 1)[-1]}={v}" for (k, t), v in lives.items())

    def _observe(self, kind: str, before: dict, after: dict) -> None:
        """Update the model from what a step did to the live values. ``checked`` steps (every
        target settled by the one rollback routine) are judged, then reset, by _check_settled."""
        for p in self.pairs:
            m = self.model[p]
            b, a = before[p], after[p]
            changed = not self._same(p, a, b)
            if kind == "agent" and changed:  # an agent write landed (fully or partly)
                if m.origin is None or m.left is None or not self._same(p, b, m.left):
                    m.origin, m.overridden = b, False  # a new run starts over what was there
                    m.episode = []
                m.left, m.sure_open = a, True
                m.episode += [b, a]
            elif kind in ("agent", "undo"):
                m.sure_open = False  # a session's reconcile or a rollback may settle entries
                if changed:  # an undo by the agent (verify) or a rollback
                    m.left = a
                    if m.origin is not None and self._same(p, a, m.origin):
                        m.origin = m.left = None

    def _session(self, kind: str, pair: tuple[str, str] | None = None, value: str | None = None,
                 *, point: str | None = None, fault: str | None = None,
                 on_inconclusive: str = "keep") -> int:
        """One agent process: start (reconcile), then apply / verify / stop."""
        self.ensure_helper()
        helper_pid, sock, cfg_path = self.helper_pid, self.sock, self.cfg

        def session() -> int:
            import autotune.failpoints as fp
            from autotune.agent.daemon import connect_helper
            from autotune.agent.loop import Agent
            from autotune.config import load_config
            from autotune.host import Host
            from autotune.store.db import open_db
            from autotune.types import Action

            fp._ARMED = point  # read at import in a real agent; this one was forked warm
            cfg = load_config(cfg_path)
            cfg = cfg.model_copy(update={
                "verification": cfg.verification.model_copy(update={"on_inconclusive": on_inconclusive}),
                "agent": cfg.agent.model_copy(update={"restore_on_stop": kind == "stop"})})
            host = Host("/", writable=False)
            act = connect_helper(cfg, str(sock), host=host)
            if fault is not None:
                _inject(act, fault, helper_pid, sock)
            agent = Agent(cfg, host=host, db=open_db(cfg.state_path()), actuator=act,
                          ruleset=SimpleNamespace(rules=[]), clock=time.time)
            agent.start()
            far = time.time() + 100_000  # every change is due for verification
            if kind == "apply":
                knob, target = pair  # type: ignore[misc]
                if agent.journal.in_flight(target, knob) or agent.journal.is_unmanaged(knob, target):
                    return GATED  # the agent's gate would not act here
                agent.apply(Action(knob=knob, target=target, proposed=value, rule="rbseq",
                                   rationale="rollback sequences"))
                if point == "during_verify":
                    agent.verify(far)
            elif kind == "verify":
                agent.verify(far)
            elif kind == "stop":
                agent.stop()
            return 0

        rc = fork_run(session, self.dir / "agent.out", self.dir / "agent.err")
        if rc == -signal.SIGKILL:
            self.stats["kills"] += 1
            self.stats[f"kill_{point}"] += 1
        elif rc not in (0, GATED):
            raise InvariantViolation(f"agent session {kind} {pair} {value} point={point} "
                                     f"fault={fault} exited {rc}:\n{self._tail('agent.err')}")
        return rc

    def _cli(self, *args: str) -> tuple[int, str, str]:
        self.ensure_helper()

        def run() -> None:
            from autotune.cli.main import app

            app(args=list(args), prog_name="autotune")

        rc = fork_run(run, self.dir / "cli.out", self.dir / "cli.err")
        return rc, (self.dir / "cli.out").read_text(), self._tail("cli.err")

    def _base(self) -> tuple[str, ...]:
        return ("--config", str(self.cfg), "--state", str(self.db), "--helper-socket", str(self.sock))

    # -- the operations (indices keep both drivers' choices small) --------------------------
    def apply(self, p: int, v: int) -> int:
        pair = self.pairs[p]
        value = AGENT[pair[0]][v % len(AGENT[pair[0]])]
        self.stats["applies"] += 1
        self.model[pair].between = False
        return self._step(f"apply {pair} {value}", "agent", lambda: self._session("apply", pair, value))

    def crash(self, p: int, v: int, point: str) -> int:
        pair = self.pairs[p]
        value = AGENT[pair[0]][v % len(AGENT[pair[0]])]
        before = self.live(pair)
        self.model[pair].between = False
        rc = self._step(f"apply {pair} {value} kill -9 at {point}", "agent",
                        lambda: self._session("apply", pair, value, point=point))
        if point == "after_plan" and self._same(pair, self.live(pair), before):
            # planned, never written - but the journal cannot know: a planned entry's write may
            # have landed. If an operator changes the target before a reading settles it, the
            # entry is drifted with its fate unknown, and ``--force`` (restore our recorded prior
            # over someone else's value, as documented) may restore this prior
            self.model[pair].unknown.append(before)
        return rc

    def failed_apply(self, p: int, v: int, fault: str) -> int:
        pair = self.pairs[p]
        value = REFUSED[pair[0]] if fault == "refused" else AGENT[pair[0]][v % len(AGENT[pair[0]])]
        self.stats[f"fault_{fault}"] += 1
        before = self.live(pair)
        self.model[pair].between = False
        rc = self._step(f"apply {pair} {value} fault {fault}", "agent",
                        lambda: self._session("apply", pair, value, fault=fault))
        if fault == "dropped" and rc == 0 and self._same(pair, self.live(pair), before):
            # it never landed, but nobody can tell until a later reading: ``--force`` over an
            # operator's value may take it for ours (it may have landed before the operator)
            self.model[pair].unknown.append(before)
        return rc

    def verify(self, rollback: bool, crash: bool) -> int:
        return self._step(f"verify (inconclusive -> {'rollback' if rollback else 'keep'})"
                          f"{' kill -9 during_verify' if crash else ''}", "undo",
                          lambda: self._session("verify", point="during_verify" if crash else None,
                                                on_inconclusive="rollback" if rollback else "keep"))

    def operator(self, p: int, v: int) -> str:
        pair = self.pairs[p]
        return self._operator_write(pair, OPERATOR[pair[0]][v % len(OPERATOR[pair[0]])])

    def operator_between(self, p: int, v: int, value: str | None = None) -> str:
        """Between episodes the operator writes any value (``value``, else: one the target held
        during the agent's last run when there is one - the stale-episode case - else any
        agent, partial or operator value). A target with something open or of unknown fate gets a plain operator
        write instead (an agent value then could not be told apart from the agent's write)."""
        pair = self.pairs[p]
        m = self.model[pair]
        if not (m.between and not m.unknown):
            return self.operator(p, v)
        knob = pair[0]
        pool = list(dict.fromkeys(m.episode)) if m.episode and v % 2 == 0 else \
            [*AGENT[knob], *PARTIAL[knob].values(), *OPERATOR[knob]]
        self.stats["operator_between"] += 1
        return self._operator_write(pair, value or pool[v % len(pool)], between=True)

    def episodes(self, p: int, v: int) -> None:
        """Issue 24's sequence on one target: the agent changes it twice, x -> a -> b (each
        kept), a checked ``rollback --all`` (x is back), the operator sets a, the agent changes
        a -> b again; the next ``rollback --all`` must restore the operator's a, not x."""
        pair = self.pairs[p]
        knob = pair[0]
        self.stats["episode_scripts"] += 1
        live = self.live(pair)
        fresh = [i for i, x in enumerate(AGENT[knob]) if not self._same(pair, x, live)]
        a, b = fresh[v % len(fresh)], fresh[(v + 1) % len(fresh)]
        for k in (a, b):
            self.apply(p, k)
            self.verify(rollback=False, crash=False)
        self.rollback_all(force=False)
        self.operator_between(p, v, value=AGENT[knob][a])
        self.apply(p, b)

    def _operator_write(self, pair: tuple[str, str], value: str, *, between: bool = False) -> str:
        from autotune.knobs import get_knob

        m = self.model[pair]

        def write() -> str:
            k = get_knob(pair[0])
            k.write(self.rig.host, pair[1], k.validate(self.rig.host, pair[1], value))
            return value

        self._step(f"operator {pair} {value}{' (between episodes)' if between else ''}",
                   "operator", write)
        m.baseline = self.live(pair)
        if m.origin is not None and self._same(pair, value, m.origin):
            m.overridden = False  # put back by hand: nothing of ours to report
        elif m.left is not None:
            m.overridden = True
        m.left = None
        return value

    def helper_restart(self, keep_state: bool) -> None:
        self.stats["helper_restarts"] += 1
        self._step(f"helper restart ({'with' if keep_state else 'without'} its state)", "none",
                   lambda: self.start_helper(keep_state=keep_state))

    def enable(self, p: int) -> int:
        pair = self.pairs[p]
        return self._step(f"enable {pair}", "none",
                          lambda: self._cli("enable", pair[0], pair[1], "--config", str(self.cfg),
                                            "--state", str(self.db))[0])

    def rollback_id(self, k: int) -> int | None:
        ids = [e.id for e in self._journal_entries()]
        if not ids:
            return None
        eid = ids[k % len(ids)]
        self.stats["rollbacks"] += 1

        def run() -> int:
            rc, out, err = self._cli("rollback", str(eid), *self._base(), "--json")
            if rc not in (0, 1):
                raise InvariantViolation(f"rollback {eid} exited {rc}: {out}{err}")
            return rc

        return self._step(f"rollback {eid}", "undo", run)

    def stop(self) -> None:
        """An agent stop with ``restore_on_stop``: the same routine as ``rollback --all``."""
        self.stats["rollbacks"] += 1
        self._step("agent stop (restore_on_stop)", "checked", lambda: self._session("stop"))
        self._check_settled(force=False, outcomes=None, rc=0, what="restore_on_stop")

    def rollback_all(self, force: bool = False) -> None:
        self.stats["rollbacks"] += 1
        self.stats["rollback_all"] += 1
        res: dict[str, Any] = {}

        def run() -> int:
            rc, out, err = self._cli("rollback", "--all", *(("--force",) if force else ()),
                                     *self._base(), "--json")
            res.update(rc=rc, out=out, err=err)
            return rc

        self._step(f"rollback --all{' --force' if force else ''}", "checked", run)
        rc, out = res["rc"], res["out"]
        if rc not in (0, 1):
            raise InvariantViolation(f"rollback --all exited {rc}: {out}{res['err']}")
        outcomes = [] if out.startswith("nothing to roll back") else json.loads(out)
        self._check_settled(force=force, outcomes=outcomes, rc=rc, what="rollback --all")

    def finish(self) -> None:
        """The end of a sequence: the operator rolls everything back."""
        self.rollback_all(force=False)

    def close(self) -> None:
        self.stop_helper()
        for d in reversed(self.cg_dirs):
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- checks -----------------------------------------------------------------------------
    def _journal_entries(self):
        from autotune.journal.journal import Journal
        from autotune.store.db import open_db

        db = open_db(self.db)
        try:
            return Journal(db).entries()
        finally:
            db.conn.close()

    def _audit(self):
        from autotune.audit.trail import AuditTrail
        from autotune.store.db import open_db

        db = open_db(self.db)
        try:
            trail = AuditTrail(db)
            return trail.query(), trail.verify().ok
        finally:
            db.conn.close()

    def _fail(self, msg: str) -> None:
        raise InvariantViolation(msg + "\nsteps:\n  " + "\n  ".join(self.log))

    def _check_settled(self, *, force: bool, outcomes: list[dict] | None, rc: int, what: str) -> None:
        lives = self.lives()
        wrong = []
        for p in self.pairs:
            m, live = self.model[p], lives[p]
            if force and m.origin is not None and m.sure_open:
                want = [m.origin]  # the run's original, over the operator's value
            elif force and m.origin is not None:
                want = [m.origin, m.baseline]  # settled or not: the journal decides
            else:
                want = [m.baseline]
            if force:
                want.extend(m.unknown)
            if not any(self._same(p, live, w) for w in want):
                wrong.append(f"{p} holds {live!r}, expected {' or '.join(want)}")
        self.stats["values_checked"] += len(self.pairs)
        self.stats["wrong_values"] += len(wrong)
        if wrong:
            self._fail(f"after {what}: " + "; ".join(wrong))
        if outcomes is not None:
            results = Counter(o["result"] for o in outcomes)
            if results["failed"] or results["blocked"]:
                self._fail(f"{what} failed: {outcomes}")
            if (rc == 1) != bool(results["skipped_drift"]):
                self._fail(f"{what} exited {rc} with {dict(results)}")
        entries = self._journal_entries()
        for e in entries:
            if e.state in ("planned", "applied", "verifying", "kept"):
                self._fail(f"after {what}: entry {e.id} still {e.state}")
            if e.state == "failed" and e.landed is not False and (e.knob, e.target) in lives:
                self._fail(f"after {what}: failed entry {e.id} landed={e.landed} left unsettled")
        events, chain_ok = self._audit()
        if not chain_ok:
            self._fail(f"after {what}: the audit chain does not verify")
        drift_rows = {ev.action_id for ev in events if ev.kind == "drift"}
        for e in entries:
            if e.state == "drifted" and e.id not in drift_rows:
                self._fail(f"after {what}: drifted entry {e.id} was never reported (no drift row)")
        for p in self.pairs:
            m = self.model[p]
            if m.overridden and not force and not any(e.state == "drifted" and (e.knob, e.target) == p
                                                      for e in entries):
                self._fail(f"after {what}: the operator's override of {p} was not reported")
        # idempotent: a second run writes nothing, records nothing and exits 0
        rc2, out2, err2 = self._cli("rollback", "--all", *self._base(), "--json")
        again = [] if out2.startswith("nothing to roll back") else json.loads(out2 or "[]")
        events2, _ = self._audit()
        new = [(ev.kind, ev.action_id, ev.outcome) for ev in events2[len(events):]]
        if rc2 != 0 or any(o["result"] != "left_alone" for o in again) or new or self.lives() != lives:
            self._fail(f"second rollback --all after {what}: exit {rc2}, {again}, new audit {new}, "
                       f"{err2}")
        for p in self.pairs:  # what the operator sees now is the new starting point
            m = self.model[p]
            if force:
                m.baseline = lives[p]
            if force or (m.origin is not None and self._same(p, lives[p], m.origin)):
                m.origin = None
            m.left, m.sure_open, m.overridden = None, False, False
            # a plain rollback settles an unknown-fate entry only when it reads the entry's prior
            # (or ours) in place; over someone else's value the entry stays drifted, forceable
            m.unknown = [] if force else [u for u in m.unknown if not self._same(p, lives[p], u)]
            m.between = True
        self.stats["checks"] += 1


def _inject(act, fault: str, helper_pid: int | None, sock: Path) -> None:
    """Make the agent's next write fail the way ``fault`` says (in the agent process)."""
    from autotune.errors import HostError
    from autotune.errors import PolicyRefused

    real = act.apply
    if fault == "unreachable":  # the helper dies between the agent's read and its write
        def apply(knob, target, value, **kw):
            if helper_pid is not None:
                os.kill(helper_pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while not _refuses(sock) and time.monotonic() < deadline:
                time.sleep(0.005)
            act.client.close()
            return real(knob, target, value, **kw)
    elif fault == "lost_after_write":
        def apply(knob, target, value, **kw):
            real(knob, target, value, **kw)
            raise HostError("helper closed the connection after the write (simulated)")
    elif fault == "dropped":  # the helper dies mid-request, before or after writing: the
        # read-back fails too, so the journal cannot know (until a later reading)
        def apply(knob, target, value, **kw):
            if AGENT[knob].index(value) % 2 == 0:
                real(knob, target, value, **kw)
            if helper_pid is not None:
                os.kill(helper_pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while not _refuses(sock) and time.monotonic() < deadline:
                time.sleep(0.005)
            act.client.close()
            raise HostError("helper closed the connection: EOF (simulated)")
    elif fault == "partial":  # the kernel kept another value: the knob's read-back check
        def apply(knob, target, value, **kw):
            other = PARTIAL[knob][value]
            real(knob, target, other, **kw)
            raise PolicyRefused("host_error", f"{knob} on {target}: wrote {value!r} but read "
                                              f"back {other!r} (simulated)")
    else:
        return  # refused: the policy does it
    act.apply = apply


# -- the random driver ---------------------------------------------------------------------------
OPS = (("apply", 25), ("crash", 20), ("failed_apply", 12), ("verify", 10), ("stop", 3),
       ("operator", 10), ("operator_between", 8), ("episodes", 3), ("helper_restart", 4),
       ("enable", 4), ("rollback_id", 5), ("rollback_all", 7))


def random_step(w: World, rng: random.Random) -> str:
    op = rng.choices([o for o, _ in OPS], weights=[n for _, n in OPS])[0]
    p, v = rng.randrange(len(w.pairs)), rng.randrange(8)
    if op == "apply":
        w.apply(p, v)
    elif op == "crash":
        w.crash(p, v, rng.choice(POINTS))
    elif op == "failed_apply":
        w.failed_apply(p, v, rng.choice(FAULTS))
    elif op == "verify":
        w.verify(rng.random() < 0.5, rng.random() < 0.15)
    elif op == "stop":
        w.stop()
    elif op == "operator":
        w.operator(p, v)
    elif op == "operator_between":
        w.operator_between(p, v)
    elif op == "episodes":
        w.episodes(p, v)
    elif op == "helper_restart":
        w.helper_restart(rng.random() < 0.5)
    elif op == "enable":
        w.enable(p)
    elif op == "rollback_id":
        w.rollback_id(rng.randrange(1000))
    else:
        w.rollback_all(force=rng.random() < 0.3)
    return op


def run(sequences: int, seed: int, max_steps: int, out=sys.stdout) -> Counter:
    rig = Rig()
    total: Counter[str] = Counter()
    failures: list[str] = []
    t0 = time.monotonic()
    try:
        for i in range(sequences):
            rng = random.Random(f"{seed}-{i}")
            w = rig.world()
            try:
                for _ in range(rng.randint(3, max_steps)):
                    random_step(w, rng)
                w.finish()
            except InvariantViolation as err:
                total["violations"] += 1
                failures.append(f"sequence {i} (seed {seed}-{i}): {err}")
                print(f"VIOLATION in sequence {i}: {err}", file=out, flush=True)
            finally:
                total.update(w.stats)
                w.close()
            total["sequences"] += 1
            if (i + 1) % 50 == 0:
                print(f"[{time.monotonic() - t0:7.1f} s] {i + 1} sequences, {total['steps']} steps, "
                      f"{total['wrong_values']} wrong values, {total['violations']} violations",
                      file=out, flush=True)
    finally:
        rig.close()
    total["wall_s"] = round(time.monotonic() - t0)  # type: ignore[assignment]
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sequences", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=20)
    a = ap.parse_args(argv)
    try:
        t = run(a.sequences, a.seed, a.max_steps)
    except Unsupported as err:
        print(f"cannot run here: {err}", file=sys.stderr)
        return 2
    print(summary(t))
    return 1 if t["violations"] else 0


def summary(t: Counter) -> str:
    kills = ", ".join(f"{p} {t[f'kill_{p}']}" for p in POINTS)
    faults = ", ".join(f"{f} {t[f'fault_{f}']}" for f in FAULTS)
    return (f"sequences {t['sequences']}  steps {t['steps']}  kills {t['kills']} ({kills})\n"
            f"failed writes: {faults}  helper restarts {t['helper_restarts']}\n"
            f"operator writes between episodes {t['operator_between']} (scripted issue-24 "
            f"sequences {t['episode_scripts']})\n"
            f"rollbacks {t['rollbacks']} (--all {t['rollback_all']}), invariant checks {t['checks']}\n"
            f"values checked {t['values_checked']}, wrong values {t['wrong_values']}\n"
            f"invariant violations {t['violations']}  wall {t['wall_s']} s")


if __name__ == "__main__":
    sys.exit(main())
