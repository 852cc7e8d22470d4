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
    # click's plain help: at 80 columns rich's option boxes wrapped help five lines deep and cut
    # defaults ("http://127.0.0.1:…"); the plain layout wraps under one help column
    rich_markup_mode=None,
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
    "autotune.cli.demo_cmd",
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


def _command_name(ctx) -> str:
    """'audit report' for the context of `autotune audit report` (the program name left out)."""
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def usage_line(err) -> str:
    """A click usage error as ONE line: which command, what is wrong, where the help is."""
    ctx = getattr(err, "ctx", None)
    msg = " ".join(err.format_message().split())
    name = _command_name(ctx) if ctx is not None else ""
    where = f"{name}: " if name else ""
    hint = f" (see `autotune {name + ' ' if name else ''}--help`)" if ctx is not None else ""
    return f"autotune: {where}{msg}{hint}"


def main() -> None:
    """Run the CLI. Every error a user can cause is one line on stderr and exit 2: usage errors
    (click's, printed here instead of its multi-line box), AutotuneErrors and state-DB damage."""
    import sqlite3

    from autotune.errors import AutotuneError

    # the click typer runs on (recent typer vendors its own): its base of every usage error
    click_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        rv = app(standalone_mode=False)
    except click_error as err:
        if type(err).__name__ != "NoArgsIsHelpError":  # that one printed the help already
            typer.secho(usage_line(err), fg="red", err=True)
        sys.exit(err.exit_code)
    except typer.Abort:
        typer.secho("autotune: aborted", fg="red", err=True)
        sys.exit(1)
    except AutotuneError as err:
        typer.secho(f"autotune: {err}", fg="red", err=True)
        sys.exit(2)
    except sqlite3.DatabaseError as err:  # damage open_db's checks could not see: one line too
        from autotune.store.db import describe

        typer.secho(f"autotune: {describe(err)}", fg="red", err=True)
        sys.exit(2)
    except OSError as err:
        if not _from_stdout(err):
            raise
        _stdout_error(err)
    try:
        sys.stdout.flush()  # what is still buffered fails here, not in the interpreter's exit
    except OSError as err:
        _stdout_error(err)
    sys.exit(rv if isinstance(rv, int) else 0)


def _from_stdout(err: OSError) -> bool:
    """True when ``err`` was raised writing standard output (a full disk, a closed pipe): the
    innermost Python frame of its traceback holds stdout, directly (json's ``fp``, click's
    ``file``) or as a stream's ``file`` (a rich Console)."""
    out = sys.stdout
    tb = err.__traceback__
    frame = None
    while tb is not None:
        frame, tb = tb.tb_frame, tb.tb_next
    if frame is None:
        return False
    for value in frame.f_locals.values():
        if value is out or value is getattr(out, "buffer", None):
            return True
        try:
            if getattr(value, "file", None) is out:
                return True
        except Exception:  # noqa: BLE001 - a property that fails is not stdout
            continue
    return False


def _stdout_error(err: OSError) -> None:
    """Exit 2 with one line on stderr (none for a reader that closed the pipe, as `| head`
    does), with stdout pointed at /dev/null so the interpreter's exit flush stays quiet."""
    import errno
    import os

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if err.errno != errno.EPIPE:
        typer.secho(f"autotune: cannot write the output: {err.strerror or err}", fg="red", err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
