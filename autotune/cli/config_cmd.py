"""`autotune config check FILE`: validate a config and its rule directories without running."""

from __future__ import annotations

from pathlib import Path

import typer

from autotune.cli.common import fail, load_config_or_exit, print_json


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="Validate and show configuration.", no_args_is_help=True)

    @sub.command("check")
    def check(
        file: Path = typer.Argument(..., help="TOML config file."),
        json_out: bool = typer.Option(False, "--json", help="Print the effective config as JSON."),
    ) -> None:
        """Validate FILE and the rule files it points to; exit 2 naming the bad field."""
        from autotune.diagnose.rules import load_rules
        from autotune.errors import ConfigError

        cfg = load_config_or_exit(file)
        try:
            ruleset = load_rules(cfg.rule_dirs())
        except ConfigError as err:
            fail(f"invalid rules:{chr(10) if chr(10) in str(err) else ' '}{err}")
        if json_out:
            print_json(cfg.model_dump(mode="json", by_alias=True))
            return
        typer.echo(
            f"{file}: OK — {len(cfg.services)} service(s), {len(ruleset.rules)} rule(s) from "
            f"{', '.join(str(d) for d in cfg.rule_dirs())}, state {cfg.state_path()}"
        )
        from autotune import slo

        for svc in cfg.services:  # which SLO fields the declared source can measure, one line each
            for a in slo.assess(svc):
                typer.echo(a.line)

    @sub.command("show")
    def show(file: Path = typer.Argument(None, help="TOML config file (default: embedded defaults).")) -> None:
        """Print the effective configuration (defaults filled in) as JSON."""
        cfg = load_config_or_exit(file)
        data = cfg.model_dump(mode="json", by_alias=True)
        data["effective"] = {"state_path": str(cfg.state_path()), "rule_dirs": [str(d) for d in cfg.rule_dirs()]}
        print_json(data)

    app.add_typer(sub, name="config")
