"""How the Agent runs: as the daemon (``run_agent``), or for N seconds in the foreground
(``recommend``); and how it (or the operator's ``autotune rollback``) reaches the host.

The daemon's jobs (``agent/schedule.py``) share ONE worker thread, so stages never overlap on
the shared SQLite connection: sample every sample_period_s (also pings the systemd watchdog),
evaluate every evaluate_every_s, verify every 1 s, retention every 60 s; a run due while the
job's previous one is still queued or running is skipped, and skips are reported, not logged each.
SIGTERM/SIGINT stop cleanly (STOPPING=1, optional restore_on_stop, agent_stop audited).

``recommend`` is the same Agent with the dry-run actuator on a read-only Host and a throwaway
in-memory state DB: it samples every period, evaluates on the daemon's cadence and once more at
the end, and reports what it found. Nothing is written to the host or to the state DB.

Errors that stop a start (bad rules, no helper, metrics port taken) are AutotuneErrors whose
message says what to do; the CLI prints them and exits 2.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from pathlib import Path

from autotune.config import Config
from autotune.errors import AutotuneError, ConfigError, HostError, PolicyRefused
from autotune.host import Host
from autotune.types import Recommendation

log = logging.getLogger("autotune.run")


def connect_helper(cfg: Config, socket_path: str | os.PathLike[str] | None = None, *,
                   host: Host | None = None, timeout: float = 5.0):
    """A HelperActuator on the helper's socket, pinged once; HostError when it does not answer."""
    from autotune.fix.actuator import HelperActuator
    from autotune.helper.client import HelperClient

    sock = str(socket_path or cfg.agent.helper_socket)
    act = HelperActuator(HelperClient(sock, timeout=timeout), host=host, cfg=cfg)
    try:
        act.ping()
    except HostError:
        act.client.close()
        raise
    return act


def local_actuator(cfg: Config, root: Path | None, *, flag: str = "--local-actuator"):
    """The knobs on a writable Host, no helper, no policy: root only (tests, the bench, and
    the operator's escape hatch ``autotune rollback --local``)."""
    from autotune.fix.actuator import LocalActuator

    if os.geteuid() != 0:
        raise HostError(f"{flag} writes host files directly and needs root; run as root, or drop "
                        "it and start the helper (autotune helper)")
    return LocalActuator(Host(root, writable=True), cfg)


def build_actuator(cfg: Config, root: Path | None, *, helper_socket: Path | None = None,
                   local: bool = False):
    """(host, actuator) for the agent's mode: dry run in recommend mode; in apply mode the
    helper (or, root only, the knobs directly)."""
    from autotune.fix.actuator import DryRunActuator

    if cfg.agent.mode == "recommend":
        host = Host(root, writable=False)
        return host, DryRunActuator(host, cfg)
    if local:
        act = local_actuator(cfg, root)
        return act.host, act
    host = Host(root, writable=False)
    sock = str(helper_socket or cfg.agent.helper_socket)
    try:
        return host, connect_helper(cfg, sock, host=host)
    except HostError as err:
        raise HostError(
            f"apply mode needs the privileged helper, but it is not reachable at {sock} ({err}). "
            f"Start it as root (`autotune helper --policy FILE --socket {sock}`, or "
            "autotune-helper.socket under systemd), pass --helper-socket, or use --mode recommend"
        ) from err


def _rules(cfg: Config):
    from autotune.diagnose.rules import load_rules

    try:
        return load_rules(cfg.rule_dirs())
    except AutotuneError as err:
        sep = "\n" if "\n" in str(err) else " "  # one problem, one line
        raise ConfigError(f"invalid rules:{sep}{err}") from err


def _exporter(cfg: Config):
    if not cfg.agent.metrics_listen:
        return None
    from autotune.audit.exporter import Exporter

    exporter = Exporter.for_config(cfg)
    try:
        addr, port = exporter.start(cfg.agent.metrics_listen)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot serve metrics on {cfg.agent.metrics_listen}: {err} "
                          "(use --metrics-listen ADDR:PORT or off)") from err
    log.info("metrics on http://%s:%d/metrics", addr, port)
    return exporter


def run_agent(cfg: Config, *, root: Path | None, helper_socket: Path | None = None,
              duration: float | None = None, local_actuator: bool = False) -> int:
    """Run the daemon until SIGTERM/SIGINT (or ``duration`` seconds). Returns the exit code."""
    from autotune.agent.loop import Agent
    from autotune.agent.notify import sd_notify
    from autotune.agent.schedule import Schedule
    from autotune.audit.trail import AuditTrail
    from autotune.journal.journal import Journal
    from autotune.store import lock as state_lock
    from autotune.store.db import open_db

    ruleset = _rules(cfg)
    db = open_db(cfg.state_path())
    Journal(db), AuditTrail(db)  # their schemas accepted before a lock file appears beside it
    # one agent per state (store/lock.py): before this one binds its port, reconciles or acts; a
    # second agent exits here, naming the first
    lock = state_lock.acquire(cfg.state_path()) if str(cfg.state_path()) != ":memory:" else None
    try:
        host, actuator = build_actuator(cfg, root, helper_socket=helper_socket, local=local_actuator)
    except PolicyRefused as err:  # the helper said no to this agent (its [peers]): audit it too
        _audit_refused_connection(db, cfg, helper_socket, err)
        raise HostError(f"the helper at {helper_socket or cfg.agent.helper_socket} refused this agent "
                        f"(uid {os.geteuid()}): {err.reason}; add its user to [peers] users in the "
                        "helper's policy and restart the helper") from err
    exporter = _exporter(cfg)
    agent = Agent(cfg, host=host, db=db, actuator=actuator, ruleset=ruleset, exporter=exporter)

    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    agent.start()
    agent.guarded("sample", agent.sample)
    sd_notify("READY=1", f"STATUS={agent.status_line()}")
    log.info("agent started: %s, %s, state %s", agent.mode, type(actuator).__name__, cfg.state_path())

    notifying = bool(os.environ.get("NOTIFY_SOCKET"))  # the status line costs a journal query

    def sample_job() -> None:
        agent.guarded("sample", agent.sample)
        if notifying:
            sd_notify("WATCHDOG=1", f"STATUS={agent.status_line()}")

    a = cfg.agent
    sched = Schedule()
    sched.add("sample", a.sample_period_s, sample_job)
    sched.add("evaluate", a.evaluate_every_s, agent.guarded, "evaluate", agent.evaluate)
    if agent.mode == "apply":
        sched.add("verify", 1.0, agent.guarded, "verify", agent.verify)
    sched.add("retain", 60.0, agent.guarded, "retain", agent.retain)
    sched.start()
    # what start-up built (modules, pydantic validators, rules, the scheduler) lives as long as
    # the process: out of the cyclic collector's full passes, which otherwise walk it again
    # every few dozen samples as the window's snapshots age into the oldest generation
    gc.collect()
    gc.freeze()
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while not stop.is_set():
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                break
            stop.wait(min(left, 1.0))
    finally:
        sd_notify("STOPPING=1")
        sched.shutdown()
        agent.guarded("stop", agent.stop)
        if exporter is not None:
            exporter.stop()
        close = getattr(getattr(actuator, "client", None), "close", None)
        if close is not None:
            close()
        if lock is not None:
            lock.release()
        log.info("agent stopped")
    return 0


def _audit_refused_connection(db, cfg: Config, helper_socket, err: PolicyRefused) -> None:
    import time as _time

    from autotune.audit.trail import AuditEvent, AuditTrail

    log.error("the helper refused this agent: %s", err.reason)
    AuditTrail(db).append(AuditEvent(ts=_time.time(), kind="refusal", outcome="refused", detail={
        "op": "connect", "code": getattr(err, "code", None), "reason": err.reason,
        "socket": str(helper_socket or cfg.agent.helper_socket), "uid": os.geteuid()}))


def recommend(cfg: Config, *, root: Path | None, duration: float, period: float | None = None,
              ruleset=None) -> Recommendation:
    """The Agent in recommend mode with the dry-run actuator for ``duration`` seconds: sample
    every ``period`` (default: config), evaluate as the daemon would and once at the end.
    Symptoms' durations are capped to fit in the observation; never writes to the host."""
    from autotune.fix.actuator import DryRunActuator
    from autotune.diagnose.blocked import lines as blocked_lines
    from autotune.agent.loop import Agent
    from autotune.store.db import open_db

    period = period or cfg.agent.sample_period_s
    cfg = cfg.model_copy(update={"agent": cfg.agent.model_copy(update={
        "mode": "recommend", "sample_period_s": period, "metrics_listen": None})})
    ruleset = ruleset if ruleset is not None else _rules(cfg)
    host = Host(root, writable=False)
    db = open_db(":memory:")  # throwaway: recommend leaves no state behind
    agent = Agent(cfg, host=host, db=db, actuator=DryRunActuator(host, cfg), ruleset=ruleset,
                  mode="recommend", observed_s=duration)
    agent.start()
    missing: set[str] = set()
    samples = 0
    start = time.monotonic()
    deadline = start + duration
    next_eval = start + cfg.agent.evaluate_every_s
    try:
        while True:
            missing.update(agent.sample().missing)
            samples += 1
            now_m = time.monotonic()
            if now_m >= deadline:
                break
            if now_m >= next_eval:
                agent.evaluate()
                next_eval = now_m + cfg.agent.evaluate_every_s
            next_tick = start + samples * period
            time.sleep(max(0.0, min(next_tick, deadline) - time.monotonic()))
        agent.evaluate()
    finally:
        agent.stop()
        db.conn.close()
    notes = [f"missing: {m}" for m in sorted(missing)] + [b.line for b in agent.blocks if b.kind == "note"]
    if not cfg.services:
        notes.append("no services configured: only host-wide checks ran (see `autotune config`)")
    return Recommendation(ts=agent.window[-1].ts, duration_s=duration, samples=samples,
                          symptoms=agent.symptoms, actions=agent.actions, notes=notes,
                          blocked=blocked_lines(agent.blocks))
