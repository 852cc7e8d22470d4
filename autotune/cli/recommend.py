"""`autotune recommend`: sample for a while, then say what is wrong and what would help.

Dry run by construction: the Host is read-only and nothing is written to it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from autotune.cli.common import ConfigOpt, JsonOpt, RootOpt, fail, load_config_or_exit, print_json


def register(app: typer.Typer) -> None:
    @app.command()
    def recommend(
        root: RootOpt = None,
        config: ConfigOpt = None,
        duration: Annotated[float, typer.Option("--duration", "-d", min=0, help="Seconds to sample.")] = 10.0,
        period: Annotated[float | None, typer.Option("--period", help="Sampling period s (default: config).")] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Sample for DURATION seconds, print symptoms and recommended actions; write nothing."""
        from autotune.diagnose.rules import load_rules
        from autotune.errors import ConfigError

        cfg = load_config_or_exit(config)
        try:
            ruleset = load_rules(cfg.rule_dirs())
        except ConfigError as err:
            fail(f"invalid rules:\n{err}")
        rec = run_recommend(root, cfg, ruleset, duration, period or cfg.agent.sample_period_s, quiet=json_out)
        if json_out:
            print_json(rec.model_dump(mode="json"))
        else:
            print_recommendation(rec)


def run_recommend(root: Path | None, cfg, ruleset, duration: float, period: float, *, quiet: bool):
    """Sample, detect, diagnose. Returns a Recommendation; never writes to the host."""
    from autotune.agent.pipeline import evaluate, knob_reader, metric_history
    from autotune.detect.symptoms import DetectorState
    from autotune.host import Host
    from autotune.sensors.collect import collect
    from autotune.types import Recommendation

    host = Host(root, writable=False)
    window = []
    start = time.monotonic()
    deadline = start + duration
    status = None
    if not quiet:
        from rich.console import Console

        status = Console(stderr=True).status(f"sampling for {duration:g} s …")
        status.start()
    try:
        while True:
            window.append(collect(host, cfg.services))
            now_m = time.monotonic()
            if now_m >= deadline:
                break
            next_tick = start + len(window) * period
            time.sleep(max(0.0, min(next_tick, deadline) - now_m))
    finally:
        if status is not None:
            status.stop()
    lookback = max(1, round(cfg.agent.window_s / period))
    history = metric_history(window, lookback, services=cfg.services, ncpu=host.ncpu)
    now = window[-1].ts
    symptoms, actions, _ = evaluate(
        ruleset, cfg, history, DetectorState(), knob_reader(host, cfg), now,
        observed_s=duration,
    )
    notes = [f"missing: {m}" for m in sorted({m for s in window for m in s.missing})]
    if not cfg.services:
        notes.append("no services configured: only host-wide checks ran (see `autotune config`)")
    return Recommendation(
        ts=now, duration_s=duration, samples=len(window), symptoms=symptoms, actions=actions, notes=notes
    )


def print_recommendation(rec) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    con = Console()
    con.print(f"sampled {rec.samples} times over {rec.duration_s:g} s — dry run, nothing was written")
    if rec.symptoms:
        t = Table(title="Symptoms")
        for col in ("symptom", "service", "metric", "value", "threshold", "detail"):
            t.add_column(col)
        for s in rec.symptoms:
            t.add_row(s.name, s.service or "host", s.metric, f"{s.value:.3g}", f"{s.threshold:g}", escape(s.detail))
        con.print(t)
    else:
        con.print("[green]no symptoms[/]")
    if rec.actions:
        t = Table(title="Recommended actions (not applied)")
        for col in ("knob", "target", "current", "proposed", "rule", "rationale"):
            t.add_column(col, overflow="fold")
        for a in rec.actions:
            t.add_row(a.knob + (" (advice)" if a.advisory else ""), escape(a.target),
                      escape(a.current or "?"), escape(a.proposed), a.rule, escape(a.rationale))
        con.print(t)
    else:
        con.print("[green]nothing to recommend[/]")
    for n in rec.notes:
        con.print(f"[dim]{escape(n)}[/]")
