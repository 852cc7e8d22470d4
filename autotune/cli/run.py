"""`autotune run`: the agent daemon (recommend or apply mode) on APScheduler jobs.

Jobs (max_instances=1, coalesce=True) share ONE worker thread, so stages never overlap on the
shared SQLite connection: sample every sample_period_s (also pings the systemd watchdog),
evaluate every evaluate_every_s, verify every 1 s, retention every 60 s. SIGTERM/SIGINT stop
cleanly (STOPPING=1, optional restore_on_stop, agent_stop audited).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from autotune.cli.common import ConfigOpt, RootOpt, fail, load_config_or_exit

log = logging.getLogger("autotune.run")


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        root: RootOpt = None,
        config: ConfigOpt = None,
        mode: Annotated[str | None, typer.Option("--mode", help="recommend | apply (default: config).")] = None,
        helper_socket: Annotated[Path | None, typer.Option("--helper-socket", help="Helper socket (default: config).")] = None,
        duration: Annotated[float | None, typer.Option("--duration", min=0, help="Stop after S seconds (tests/bench).")] = None,
        local_actuator: Annotated[bool, typer.Option(
            "--local-actuator", help="Root only, tests/bench: write directly through the knobs, no helper.")] = False,
        metrics_listen: Annotated[str | None, typer.Option(
            "--metrics-listen", help="ADDR:PORT for /metrics, or 'off' (default: config).")] = None,
        state: Annotated[Path | None, typer.Option("--state", help="State DB (default: config).")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    ) -> None:
        """Run the closed loop: sample, detect, diagnose, (apply, verify, roll back)."""
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # one line per scrape/probe request and per scheduler tick is noise in the journal
        for noisy in ("apscheduler", "httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
        cfg = load_config_or_exit(config)
        mode = mode or cfg.agent.mode
        if mode not in ("recommend", "apply"):
            fail(f"--mode must be recommend or apply, not {mode!r}")
        updates = {"mode": mode}
        if state is not None:
            updates["state_path"] = str(state)
        listen = metrics_listen if metrics_listen is not None else cfg.agent.metrics_listen
        updates["metrics_listen"] = None if (listen or "").lower() in ("off", "none", "") else listen
        cfg = cfg.model_copy(update={"agent": cfg.agent.model_copy(update=updates)})
        code = run_agent(cfg, root=root, helper_socket=helper_socket, duration=duration,
                         local_actuator=local_actuator)
        raise typer.Exit(code)


def build_actuator(cfg, host_root: Path | None, *, helper_socket: Path | None, local_actuator: bool):
    """(host, actuator) for the mode; exits 2 with a clear message when apply cannot work."""
    from autotune.agent.actuator import DryRunActuator, HelperActuator, LocalActuator
    from autotune.errors import AutotuneError
    from autotune.host import Host

    if cfg.agent.mode == "recommend":
        host = Host(host_root, writable=False)
        return host, DryRunActuator(host, cfg)
    if local_actuator:
        if os.geteuid() != 0:
            fail("--local-actuator writes host files directly and is for root-run tests and the "
                 "benchmark only; run as root, or drop it and start the helper (autotune helper)")
        host = Host(host_root, writable=True)
        return host, LocalActuator(host, cfg)
    from autotune.helper.client import HelperClient

    host = Host(host_root, writable=False)
    sock = str(helper_socket or cfg.agent.helper_socket)
    client = HelperClient(sock)
    try:
        client.ping()
    except AutotuneError as err:
        fail(f"apply mode needs the privileged helper, but it is not reachable at {sock} ({err}). "
             "Start it (`autotune helper serve` / autotune-helper.service), pass --helper-socket, "
             "or use --mode recommend")
    return host, HelperActuator(client, host=host, cfg=cfg)


def run_agent(cfg, *, root: Path | None, helper_socket: Path | None = None,
              duration: float | None = None, local_actuator: bool = False) -> int:
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    from autotune.agent.loop import Agent
    from autotune.agent.notify import sd_notify
    from autotune.diagnose.rules import load_rules
    from autotune.errors import AutotuneError
    from autotune.store.db import open_db

    try:
        ruleset = load_rules(cfg.rule_dirs())
    except AutotuneError as err:
        fail(f"invalid rules:\n{err}")
    host, actuator = build_actuator(cfg, root, helper_socket=helper_socket, local_actuator=local_actuator)
    try:
        db = open_db(cfg.state_path())
    except AutotuneError as err:
        fail(str(err))
    exporter = None
    if cfg.agent.metrics_listen:
        from autotune.audit.exporter import Exporter

        exporter = Exporter()
        try:
            addr, port = exporter.start(cfg.agent.metrics_listen)
            log.info("metrics on http://%s:%d/metrics", addr, port)
        except (OSError, ValueError) as err:
            fail(f"cannot serve metrics on {cfg.agent.metrics_listen}: {err} "
                 "(use --metrics-listen ADDR:PORT or off)")
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

    def sample_job() -> None:
        agent.guarded("sample", agent.sample)
        sd_notify("WATCHDOG=1", f"STATUS={agent.status_line()}")

    a = cfg.agent
    sched = BackgroundScheduler(executors={"default": ThreadPoolExecutor(max_workers=1)},
                                job_defaults={"max_instances": 1, "coalesce": True,
                                              "misfire_grace_time": max(1, int(a.sample_period_s * 2))})
    sched.add_job(sample_job, "interval", seconds=a.sample_period_s, id="sample")
    sched.add_job(agent.guarded, "interval", args=("evaluate", agent.evaluate),
                  seconds=a.evaluate_every_s, id="evaluate")
    if agent.mode == "apply":
        sched.add_job(agent.guarded, "interval", args=("verify", agent.verify), seconds=1, id="verify")
    sched.add_job(agent.guarded, "interval", args=("retain", agent.retain), seconds=60, id="retain")
    sched.start()
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while not stop.is_set():
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                break
            stop.wait(min(left, 1.0))
    finally:
        sd_notify("STOPPING=1")
        sched.shutdown(wait=True)
        agent.guarded("stop", agent.stop)
        if exporter is not None:
            exporter.stop()
        close = getattr(getattr(actuator, "client", None), "close", None)
        if close is not None:
            close()
        log.info("agent stopped")
    return 0
