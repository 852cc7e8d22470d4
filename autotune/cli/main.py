"""Entry point: registers command groups from their own modules."""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="autotune",
    help="Closed-loop OS tuning agent for Linux nodes serving LLM inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# (module, attribute): each module exposes ``register(app)``; modules missing while the
# project grows are skipped so one unfinished group never breaks the CLI.
COMMAND_MODULES = [
    "autotune.cli.status",
    "autotune.cli.recommend",
    "autotune.cli.config_cmd",
    "autotune.cli.run",
    "autotune.cli.history",
    "autotune.cli.helper_cmd",
    "autotune.cli.audit_cmd",
    "autotune.cli.workload_cmd",
    "autotune.cli.gate_cmd",
    "autotune.cli.ranker_cmd",
    "autotune.cli.health",
]

@app.command()
def version() -> None:
    """Print the autotune version."""
    from autotune import __version__

    typer.echo(__version__)


for _mod in COMMAND_MODULES:
    try:
        module = importlib.import_module(_mod)
    except ModuleNotFoundError as err:
        if err.name != _mod:
            raise
        continue
    module.register(app)


def main() -> None:
    import sqlite3

    from autotune.errors import AutotuneError

    try:
        app()
    except AutotuneError as err:
        typer.secho(f"autotune: {err}", fg="red", err=True)
        sys.exit(2)
    except sqlite3.DatabaseError as err:  # damage open_db's checks could not see: one line too
        from autotune.store.db import describe

        typer.secho(f"autotune: {describe(err)}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
