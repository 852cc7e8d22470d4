"""`autotune ranker`: what the learned ranker has learned from this node's verified changes."""

from __future__ import annotations

from collections import defaultdict

import typer

from autotune.cli.common import ConfigOpt, JsonOpt, print_json
from autotune.cli.history import StateOpt, _open


def register(app: typer.Typer) -> None:
    @app.command()
    def ranker(state: StateOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
        """Is the learned ranker in use, how well it predicts, and the outcomes it learns from."""
        from rich.console import Console
        from rich.table import Table

        from autotune.diagnose.ranker import from_journal
        from autotune.journal.journal import Journal

        cfg, db = _open(state, config, read_only=True)
        r = from_journal(Journal(db).verified(limit=cfg.ranker.max_outcomes), min_outcomes=cfg.ranker.min_outcomes)
        groups: dict[tuple[str, str], list[float]] = defaultdict(list)
        for o in r.outcomes:
            groups[(o.knob, o.rule)].append(o.improvement)
        rows = [{"knob": k, "rule": ru, "n": len(v), "mean_improvement": sum(v) / len(v)}
                for (k, ru), v in sorted(groups.items(), key=lambda kv: -sum(kv[1]) / len(kv[1]))]
        if json_out:
            print_json({"enabled": cfg.ranker.enabled, **r.status.model_dump(), "by_rule": rows})
            return
        console = Console()
        state_txt = "in use" if r.status.active and cfg.ranker.enabled else "not in use"
        if not cfg.ranker.enabled:
            state_txt += " (disabled in [ranker])"
        console.print(f"learned ranker: {state_txt}: {r.status.reason}")
        if not rows:
            return
        t = Table(title="verified changes by rule (improvement: + = objective got better)")
        for col in ("knob", "rule", "n", "mean improvement"):
            t.add_column(col, justify="right" if col in ("n", "mean improvement") else "left")
        for row in rows:
            t.add_row(row["knob"], row["rule"], str(row["n"]), f"{row['mean_improvement']:+.0%}")
        console.print(t)
