"""`autotune demo`: watch the agent act on this host, then have everything put back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from autotune.cli.common import fail, positive_seconds, require_extra


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        duration: Annotated[float, typer.Option(
            "--duration", callback=positive_seconds,
            help="Seconds of load once the agent runs: 60 % high (the SLO breaks), then low.")] = 120.0,
        model: Annotated[str, typer.Option(help="Server model: tiny (starts in seconds) or gpt2.")] = "tiny",
        slo_itl: Annotated[Optional[float], typer.Option(
            "--slo-itl", callback=positive_seconds,
            help="The server's SLO, inter-token latency p95 in s (default: 2x what it measures alone).")] = None,
        workdir: Annotated[Optional[Path], typer.Option(
            "--dir", help="New or empty directory for state, logs and audit trail (default: a new one in /tmp).")] = None,
    ) -> None:
        """Watch the agent act on this host, then have everything put back (root).

        Runs the reference server, a CPU-hungry neighbour, the privileged helper and the agent
        on cgroups of its own; breaks the server's SLO and prints each symptom, action, verdict
        and rollback as it happens; then restores every value, stops everything and removes the
        cgroups (also on Ctrl-C). The state DB and logs stay in --dir."""
        import os

        if model not in ("tiny", "gpt2"):
            fail(f"--model must be tiny or gpt2, got {model!r}")
        if os.geteuid() != 0:
            fail("autotune demo needs root: it creates cgroups and runs the privileged helper "
                 "(sudo autotune demo)")
        require_extra("workload", what="demo (the reference server)")
        from autotune.demo.session import Demo, Options

        code = Demo(Options(duration_s=duration, model=model, slo_itl_s=slo_itl, workdir=workdir)).run()
        raise typer.Exit(code)
