"""`autotune recommend`: sample for a while, then say what is wrong and what would help.

The same Agent as `autotune run`, with the dry-run actuator on a read-only Host for N seconds
(autotune/agent/daemon.recommend): nothing is written to the host or the state DB.
"""

from __future__ import annotations

from typing import Annotated

import typer

from autotune.cli.common import (ConfigOpt, JsonOpt, RootOpt, fail, is_narrow, load_config_or_exit,
                                 positive_seconds, print_block, print_json)


def register(app: typer.Typer) -> None:
    @app.command()
    def recommend(
        root: RootOpt = None,
        config: ConfigOpt = None,
        duration: Annotated[float, typer.Option(
            "--duration", "-d", callback=positive_seconds, help="Seconds to sample.")] = 10.0,
        period: Annotated[float | None, typer.Option(
            "--period", callback=positive_seconds, help="Sampling period s (default: config).")] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Sample for DURATION seconds, print symptoms and recommended actions; write nothing."""
        from autotune.agent.daemon import recommend as run_recommend
        from autotune.errors import AutotuneError

        cfg = load_config_or_exit(config)
        status = None
        if not json_out:
            from rich.console import Console

            status = Console(stderr=True).status(f"sampling for {duration:g} s …")
            status.start()
        try:
            rec = run_recommend(cfg, root=root, duration=duration, period=period)
        except AutotuneError as err:
            fail(str(err))
        finally:
            if status is not None:
                status.stop()
        if json_out:
            print_json(rec.model_dump(mode="json"))
        else:
            print_recommendation(rec)


def print_recommendation(rec) -> None:
    from rich.console import Console
    from rich.markup import escape

    con = Console()
    con.print(f"sampled {rec.samples} times over {rec.duration_s:g} s — dry run, nothing was written")
    if is_narrow(con):
        _print_blocks(con, rec)
    else:
        _print_tables(con, rec)
    if rec.blocked:
        con.print("[bold yellow]Blocked[/] (why nothing is done, and what would unblock it)")
        for line in rec.blocked:
            con.print(f"  [yellow]{escape(line)}[/]")
    for n in rec.notes:
        con.print(f"[dim]{escape(n)}[/]")


def _print_blocks(con, rec) -> None:
    """One record per block: readable at 80 columns, where the tables' cells wrapped into
    columns of a few letters."""
    from rich.markup import escape

    if rec.symptoms:
        con.print("[bold]Symptoms[/]")
        for s in rec.symptoms:
            print_block(con, f"  {escape(s.name)}  {escape(s.service or 'host')}",
                        [f"{s.metric} = {s.value:.3g} (threshold {s.threshold:g})", s.detail], indent=6)
    else:
        con.print("[green]no symptoms[/]")
    if rec.actions:
        con.print("[bold]Recommended actions[/] (not applied)")
        for i, a in enumerate(rec.actions, 1):
            if a.advisory:
                print_block(con, f"  {i}. advice for {escape(a.target)}  (rule {escape(a.rule)})",
                            [a.proposed, f"why: {a.rationale}"], indent=6)
            else:
                print_block(con, f"  {i}. {escape(a.knob)} {escape(a.target)}: {escape(a.current or '?')} -> "
                                 f"{escape(a.proposed)}{'  BLOCKED' if a.blocked else ''}",
                            [f"rule {a.rule}: {a.rationale}"] + ([f"blocked: {a.blocked}"] if a.blocked else []),
                            indent=6)
    else:
        con.print("[green]nothing to recommend[/]")


def _print_tables(con, rec) -> None:
    from rich.markup import escape
    from rich.table import Table

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
                      escape(a.current or "?"), escape(a.proposed) + (" [yellow](blocked)[/]" if a.blocked else ""),
                      a.rule, escape(a.rationale) + (f" [yellow]Blocked: {escape(a.blocked)}[/]" if a.blocked else ""))
        con.print(t)
    else:
        con.print("[green]nothing to recommend[/]")
