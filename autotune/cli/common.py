"""Options and helpers shared by CLI commands (kept import-light)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

RootOpt = Annotated[
    Path | None,
    typer.Option("--root", envvar="AUTOTUNE_ROOT", help="Host root: '/' live, or a fixture / mounted host tree."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="AUTOTUNE_CONFIG", help="TOML config file (default: embedded defaults)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def fail(message: str, code: int = 2) -> None:
    """Print a clear error to stderr and exit non-zero."""
    typer.secho(f"autotune: {message}", fg="red", err=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def load_config_or_exit(path: Path | None):
    from autotune.config import load_config
    from autotune.errors import ConfigError

    try:
        return load_config(path)
    except ConfigError as err:
        fail(f"invalid config:\n{err}")
