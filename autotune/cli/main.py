"""Entry point: each command lives in its own module (``COMMANDS``), imported when it runs."""

from __future__ import annotations

import importlib
import sys

import typer


def version() -> None:
    """Print the autotune version."""
    from autotune import __version__

    typer.echo(__version__)


def _new_app() -> typer.Typer:
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
    app.command()(version)
    return app


# Every top-level command: the module whose ``register(app)`` adds it, whether it is a group, and
# its help's first paragraph (what `autotune --help` lists), in the order the CLI lists them.
# `autotune --help` is built from this table and `autotune COMMAND ...` imports that command's
# module only: building every command's parameters from its signature took most of a --help.
# tests/cli/test_help.py keeps the table equal to what the modules register.
COMMANDS: dict[str, tuple[str, bool, str]] = {
    "status": ("autotune.cli.status", False,
               "Host capabilities (cgroup layout, PSI, triggers, cpufreq, THP) and the latest readings."),
    "recommend": ("autotune.cli.recommend", False,
                  "Sample for DURATION seconds, print symptoms and recommended actions; write nothing."),
    "run": ("autotune.cli.run", False, "Run the closed loop: sample, detect, diagnose, (apply, verify, roll back)."),
    "history": ("autotune.cli.history", False,
                "Changes the agent made, newest first: rule, prior -> proposed, state, verification."),
    "rollback": ("autotune.cli.history", False,
                 "Restore the recorded prior value of one entry (ID) or of every entry (--all)."),
    "enable": ("autotune.cli.history", False, "Let the agent manage a target again after drift made it unmanaged."),
    "gate": ("autotune.cli.gate_cmd", False,
             "Reverse proxy that admits requests while CPU pressure is low and under a concurrency limit."),
    "health": ("autotune.cli.health", False,
               "Exit 0 while the running agent keeps sampling (newest stored sample younger than --max-age)."),
    "demo": ("autotune.cli.demo_cmd", False, "Watch the agent act on this host, then have everything put back (root)."),
    "config": ("autotune.cli.config_cmd", True, "Validate and show configuration."),
    "helper": ("autotune.cli.helper_cmd", True, "Privileged helper: applies only what a root-owned policy allows."),
    "audit": ("autotune.cli.audit_cmd", True, "Inspect the tamper-evident audit trail of every agent decision."),
    "workload": ("autotune.cli.workload_cmd", True,
                 "Reference workloads (GPT-2 server, llama.cpp's llama-server), load generator, noisy neighbour."),
    "search": ("autotune.cli.search_cmd", True,
               "The learned allocation search: with no command, what it knows and would choose now; "
               "export / import its trials."),
}
# old command names: still run, as their new name, after a one-line notice on stderr
ALIASES: dict[str, str] = {"ranker": "search"}


def _register(app: typer.Typer, module_name: str) -> None:
    """``module.register(app)``; a module missing while the project grows is skipped, so one
    unfinished group never breaks the CLI."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        return
    module.register(app)


def full_app() -> typer.Typer:
    """Every command, for tests (``from autotune.cli.main import app``) and typer's runner."""
    app = _new_app()
    for module_name in dict.fromkeys(m for m, _, _ in COMMANDS.values()):
        _register(app, module_name)
    return app


def _listing_app() -> typer.Typer:
    """`autotune`, `autotune --help`, `autotune version` and unknown commands: the commands by
    name and help only (never run: a known command name routes to its module)."""
    app = _new_app()
    for name, (_, group, text) in COMMANDS.items():
        if group:
            app.add_typer(typer.Typer(), name=name, help=text)
        else:
            app.command(name=name, help=text)(_never_run)
    return app


def _never_run() -> None:
    raise AssertionError("a listed command ran without its module")  # pragma: no cover


def app_for(argv: list[str]) -> typer.Typer:
    """The app that handles ``argv``: its command's module only, or the listing."""
    if argv and argv[0] in COMMANDS:
        app = _new_app()  # `version` keeps it a group: a one-command app would take no name
        _register(app, COMMANDS[argv[0]][0])
        return app
    return _listing_app()


def __getattr__(name: str):
    if name == "app":  # built on first use, once
        globals()["app"] = built = full_app()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    if len(sys.argv) > 1 and sys.argv[1] in ALIASES:
        new = ALIASES[sys.argv[1]]
        typer.secho(f"autotune: `{sys.argv[1]}` is now `autotune {new}`; running that", fg="yellow", err=True)
        sys.argv[1] = new
    try:
        rv = app_for(sys.argv[1:])(standalone_mode=False)
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
