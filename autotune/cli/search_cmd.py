"""`autotune search`: the search (the learned allocation search) - is it in use, why, what it has
tried and what it would choose now; `export` / `import` move its trials between nodes (a fleet's
prior). `autotune ranker`, its old name, still works with a one-line notice (cli/main.ALIASES)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from autotune.cli.common import ConfigOpt, JsonOpt, fail, print_json
from autotune.cli.history import StateOpt, _open


def _trials(db, service: str | None = None):
    from autotune.diagnose.search.model import Trial

    if db.execute("SELECT 1 FROM sqlite_master WHERE name='learner_trials'").fetchone() is None:
        return []
    sql = "SELECT trial FROM learner_trials" + (" WHERE service=?" if service else "") + " ORDER BY id"
    return [Trial.model_validate_json(r[0]) for r in db.execute(sql, [service] if service else [])]


def _status(cfg, db) -> dict:
    """Per searched service: trials, the best one, and what the model proposes at the newest load."""
    from autotune.diagnose.search.state import Search
    from autotune.diagnose.search import model as L

    searched = Search.__new__(Search)  # the service selection only; no DB writes
    searched.cfg = cfg
    out: dict = {"enabled": cfg.search.enabled, "inactive_reason": searched.why_inactive(), "services": {}}
    for svc in searched.services():
        trials = _trials(db, svc.name)
        entry: dict = {"trials": len(trials), "imported": sum(t.source == "imported" for t in trials)}
        if trials:
            best = max(trials, key=lambda t: t.score)
            entry["best_observed"] = {"allocation": best.allocation.label(), "score": best.score,
                                      "slack": best.slack, "neighbour_share": best.be_share, "load": best.load}
            ncpu = trials[-1].ncpu
            load = trials[-1].load
            floor = sum(n.min_cpu_cores or 0.0 for n in cfg.services if n.role == "neighbour")
            cands = L.candidates(ncpu, quota_min=0.25, neighbour_floor=floor)
            p = L.propose(trials, cands, load=load, ncpu=ncpu,
                          phase_trials=[t for t in trials if L.similar_load(t, load, cfg.search.phase_change)],
                          settings=L.Settings(safe_prob=cfg.search.safe_prob, stop_ei=cfg.search.stop_ei,
                                              max_trials=cfg.search.max_trials))
            entry.update(status=p.status, reason=p.reason, load=load,
                         proposal=p.allocation.label() if p.allocation else None)
        else:
            entry.update(status="waiting", reason="no trial yet: the rules decide alone until the first "
                         "allocation has been observed for [ranker] trial_s")
        out["services"][svc.name] = entry
    return out


def register(app: typer.Typer) -> None:
    search_app = typer.Typer(help="The learned allocation search: with no command, what it knows and would "
                             "choose now; export / import its trials.",
                             invoke_without_command=True, no_args_is_help=False)
    app.add_typer(search_app, name="search")

    @search_app.callback()
    def search(ctx: typer.Context, state: StateOpt = None, config: ConfigOpt = None,
               json_out: JsonOpt = False) -> None:
        """Is the learned allocation search in use, why, what it tried and would choose now."""
        if ctx.invoked_subcommand is not None:  # `search --state DB export`: the command's default
            ctx.obj = {"state": state, "config": config}
            return
        from rich.console import Console

        cfg, db = _open(state, config, read_only=True)
        st = _status(cfg, db)
        if json_out:
            print_json(st)
            return
        console = Console()
        if st["inactive_reason"]:
            console.print(f"search: not in use: {st['inactive_reason']}; the rules decide alone", markup=False)
            return
        for name, e in st["services"].items():
            console.print(f"[bold]{name}[/]: {e['status']} - {e['reason']}")
            console.print(f"  trials: {e['trials']} ({e['imported']} imported)")
            if "best_observed" in e:
                b = e["best_observed"]
                console.print(f"  best observed: {b['allocation']}: score {b['score']:.3f}, slack {b['slack']:+.2f}, "
                              f"neighbours {b['neighbour_share']:.0%} of the host at load {b['load']:.2f}/s")
            if e.get("proposal"):
                console.print(f"  would choose now: {e['proposal']}")

    def _group(ctx: typer.Context, state: Path | None, config: Path | None) -> tuple[Path | None, Path | None]:
        """The command's own --state/--config, else those given before it (`search --state DB ...`)."""
        given = ctx.obj if isinstance(ctx.obj, dict) else {}
        return (state if state is not None else given.get("state"),
                config if config is not None else given.get("config"))

    @search_app.command("export")
    def export(ctx: typer.Context, path: Annotated[Path, typer.Argument(help="JSON-lines file to write.")],
               state: StateOpt = None, config: ConfigOpt = None) -> None:
        """Write this node's trials (JSON lines) for another node to import as a prior."""
        state, config = _group(ctx, state, config)
        _cfg, db = _open(state, config, read_only=True)
        trials = _trials(db)
        try:
            path.write_text("".join(t.model_dump_json() + "\n" for t in trials))
        except OSError as err:
            fail(f"{path}: cannot write ({err.strerror})")
        typer.echo(f"exported {len(trials)} trials to {path}")

    @search_app.command("import")
    def import_(ctx: typer.Context,
                path: Annotated[Path, typer.Argument(help="JSON-lines file from `autotune search export`.")],
                service: Annotated[Optional[str], typer.Option(help="Record them for this service.")] = None,
                state: StateOpt = None, config: ConfigOpt = None) -> None:
        """Add another node's trials as a prior (marked imported: they count as noisier evidence)."""
        from autotune.diagnose.search.state import Search
        from autotune.errors import ConfigError
        from autotune.journal.journal import Journal

        state, config = _group(ctx, state, config)
        cfg, db = _open(state, config)
        if not path.is_file():
            fail(f"{path}: no such file")
        try:
            n = Search(cfg, db, Journal(db), ncpu=1).import_(path, service)
        except ConfigError as err:
            fail(str(err))
        typer.echo(f"imported {n} trials from {path}")
