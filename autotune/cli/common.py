"""Options and helpers shared by CLI commands (kept import-light)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

def _root(value: Path | None) -> Path | None:
    """--root must be a host tree (autotune.host.check_root): an empty or missing directory would
    otherwise read as an idle host with this machine's CPU count."""
    if value is not None:
        from autotune.errors import HostError
        from autotune.host import check_root

        try:
            check_root(value)
        except HostError as err:
            raise typer.BadParameter(str(err)) from err
    return value


def positive_seconds(value: float | None) -> float | None:
    """Option callback: a duration or period must be more than 0 s (0 would mean no sampling)
    and finite (``inf`` would run forever: leave the option out for that, where it may be)."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be more than 0 seconds, got {value:g}")
    if value is not None and value == float("inf"):
        raise typer.BadParameter("must be a finite number of seconds, got inf")
    return value


RootOpt = Annotated[
    Path | None,
    typer.Option("--root", envvar="AUTOTUNE_ROOT", callback=_root,
                 help="Host root: '/' live, or a fixture / mounted host tree (holding proc/ and sys/)."),
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


DIST = "autotune-node"  # the distribution's name on the package index (the command is autotune)
# The modules each optional extra of pyproject.toml brings, for the commands that need them.
EXTRAS: dict[str, tuple[str, ...]] = {
    "report": ("matplotlib",),
    "gate": ("starlette", "uvicorn"),
    "workload": ("fastapi", "uvicorn", "torch", "transformers", "tokenizers", "jinja2"),
}


def require_extra(extra: str, *, what: str) -> None:
    """Exit 2 with one line naming the extra when a module only ``extra`` installs is missing.

    Checked with ``find_spec`` (nothing is imported), before the command does any work.
    """
    import importlib.util

    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if not missing:
        return
    from autotune.config import REPO_ROOT

    if (REPO_ROOT / "pyproject.toml").exists():  # a checkout: the extra of this tree
        how = f"pip install -e '{REPO_ROOT}[{extra}]'"
    else:
        how = f"pip install '{DIST}[{extra}]'"
    fail(f"{what}: needs the '{extra}' extra ({', '.join(missing)} not installed): {how}")


def strict_json(data: Any) -> Any:
    """``data`` with every non-finite number as null: NaN and Infinity are not JSON, and a strict
    parser (jq, Go, a browser) refuses the whole document over one of them."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: strict_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json(v) for v in data]
    return data


def print_json(data: Any) -> None:
    """JSON on stdout, strict (``allow_nan=False`` after ``strict_json``): every command that
    prints JSON prints it through here."""
    json.dump(strict_json(data), sys.stdout, indent=2, sort_keys=False, default=str, allow_nan=False)
    sys.stdout.write("\n")


def load_config_or_exit(path: Path | None):
    from autotune.config import load_config
    from autotune.errors import ConfigError

    try:
        return load_config(path)
    except ConfigError as err:  # one line per problem; a single problem is one line in all
        fail(f"invalid config: {err}" if "\n" not in str(err) else f"invalid config:\n{err}")


WIDE_COLUMNS = 120  # below this a table's cells wrap into columns of a few letters


def is_narrow(console) -> bool:
    """True when ``console`` (a rich Console) is too narrow for the wide tables: print one
    record per block instead (a head line, then indented detail lines that wrap whole)."""
    return console.width < WIDE_COLUMNS


def print_block(console, head: str, lines: list[str], *, indent: int = 4) -> None:
    """One record: ``head`` (rich markup allowed), then each of ``lines`` (plain text) wrapped
    at the console's width under an ``indent``-column margin."""
    import textwrap

    console.print(head.rstrip(), highlight=False)
    width = max(20, console.width - indent)
    for ln in lines:
        for part in textwrap.wrap(ln, width=width, break_on_hyphens=False, break_long_words=True):
            console.print(" " * indent + part, markup=False, highlight=False, soft_wrap=True)


def fit_or_split(first: str, second: str, width: int) -> list[str]:
    """``first  second`` as one line when it fits in ``width`` columns, else two lines."""
    both = f"{first}  {second}"
    return [both] if len(both) <= width else [first, second]
