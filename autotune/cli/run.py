"""`autotune run`: the agent daemon (recommend or apply mode); see autotune/agent/daemon.py."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from autotune.cli.common import ConfigOpt, RootOpt, fail, load_config_or_exit, positive_seconds


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        root: RootOpt = None,
        config: ConfigOpt = None,
        mode: Annotated[str | None, typer.Option("--mode", help="recommend | apply (default: config).")] = None,
        helper_socket: Annotated[Path | None, typer.Option("--helper-socket", help="Helper socket (default: config).")] = None,
        duration: Annotated[float | None, typer.Option(
            "--duration", callback=positive_seconds, help="Stop after S seconds (tests/bench).")] = None,
        local_actuator: Annotated[bool, typer.Option(
            "--local-actuator", help="Root only, tests/bench: write directly through the knobs, no helper.")] = False,
        metrics_listen: Annotated[str | None, typer.Option(
            "--metrics-listen", help="ADDR:PORT for /metrics, or 'off' (default: config).")] = None,
        state: Annotated[Path | None, typer.Option("--state", help="State DB (default: config).")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    ) -> None:
        """Run the closed loop: sample, detect, diagnose, (apply, verify, roll back)."""
        # before numpy loads: its BLAS threads only contend with the served workload for the
        # agent's small matrices (a 150-trial GP fit took 8x the CPU with two threads, loaded)
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # one line per scrape/probe request and per scheduler tick is noise in the journal; the
        # scheduler's stays out even with -v (about 6 lines a second; agent/schedule.py reports
        # what matters: stages falling behind)
        for noisy in ("httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
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
        from autotune.agent.daemon import run_agent
        from autotune.errors import AutotuneError

        try:
            code = run_agent(cfg, root=root, helper_socket=helper_socket, duration=duration,
                             local_actuator=local_actuator)
        except AutotuneError as err:
            fail(str(err))
        raise typer.Exit(code)
