"""`autotune history`, `autotune rollback`, `autotune enable`: the operator's view of the journal.

Rollback is the one routine in autotune/verify/rollback.py (the agent uses it too); this module
only picks the entries, the way to the host and prints. It puts back the prior KnobState the
journal recorded before the change, THROUGH THE HELPER (the agent user cannot write kernel
files). The helper writes those raw bytes verbatim only when it saw that prior state itself
before its own write (memory or ``--state``); otherwise it applies ``state.value``
range-checked. ``--local`` is a root-only escape hatch that writes the recorded raw files with
the knobs directly (fixture trees, helper down).

``--all`` puts every target back to the value it held before the agent's first change (one
write per target, see verify/rollback.py for the whole table); a change whose write may have
landed (a crash right after the write) is settled by reading the target first, and one that
never landed is never restored. A target whose live value is neither ours nor that original
was changed by someone else: it is left alone (the entries marked drifted, the target
unmanaged; later runs report it as ``left_alone``) unless ``--force``; ``autotune enable KNOB
TARGET`` hands it back to the agent. Every restore is journaled and audited (kind
``rollback``; skips are ``drift``, failures ``error``, settled fates ``reconcile``).

Exit codes: 0 all done (or left alone as reported before), 1 something newly skipped, blocked
or failed, 2 usage / unreachable helper.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from autotune.cli.common import (ConfigOpt, JsonOpt, RootOpt, fail, fit_or_split, is_narrow,
                                 load_config_or_exit, print_block, print_json)

if TYPE_CHECKING:  # heavy-ish imports stay inside the commands
    from autotune.journal.journal import JournalEntry

StateOpt = Annotated[
    Optional[Path],
    typer.Option("--state", envvar="AUTOTUNE_STATE", help="State database (default: from the config)."),
]
SocketOpt = Annotated[
    Optional[str],
    typer.Option("--helper-socket", help="Helper socket (default: agent.helper_socket from the config)."),
]
LocalOpt = Annotated[bool, typer.Option(
    "--local", help="Root only: write the recorded values with the knobs directly, without the helper.")]


# -- presentation --------------------------------------------------------------------------
def _fmt_ts(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


_STYLE = {"rolled_back": "yellow", "failed": "red", "drifted": "magenta", "kept": "green"}


def _verdict(e: "JournalEntry") -> str:
    vr = e.verify_result
    if vr is None:
        return "-"
    if vr.effect is not None:
        return f"{vr.verdict} {vr.effect * 100:+.1f}%"
    return vr.verdict


def entry_json(e: "JournalEntry") -> dict[str, Any]:
    return e.model_dump(mode="json")


def _open(state: Path | None, config: Path | None, *, read_only: bool = False) -> tuple[Any, Any]:
    cfg = load_config_or_exit(config)
    path = state or cfg.state_path()
    if not Path(path).exists():
        fail(f"no state database at {path}; start the agent first or pass --state PATH")
    from autotune.store.db import open_db

    return cfg, open_db(path, read_only=read_only)


def register(app: typer.Typer) -> None:
    @app.command()
    def history(
        state: StateOpt = None,
        config: ConfigOpt = None,
        json_out: JsonOpt = False,
        limit: Annotated[int, typer.Option("--limit", "-n", help="Most recent N entries (0 = all).")] = 50,
        outcome: Annotated[Optional[str], typer.Option(
            "--outcome", help="Only entries in this state: kept, rolled_back, failed, drifted, applied...")] = None,
        knob: Annotated[Optional[str], typer.Option("--knob", help="Only this knob.")] = None,
        target: Annotated[Optional[str], typer.Option("--target", help="Only this target.")] = None,
    ) -> None:
        """Changes the agent made, newest first: rule, prior -> proposed, state, verification."""
        from autotune.journal.journal import Journal

        _cfg, db = _open(state, config, read_only=True)
        journal = Journal(db)
        entries = journal.entries(states=[outcome] if outcome else None, knob=knob, target=target,
                                  newest_first=True, limit=limit or None)
        unmanaged = journal.unmanaged()
        if json_out:
            print_json({"entries": [entry_json(e) for e in entries],
                        "unmanaged": [u.model_dump(mode="json") for u in unmanaged]})
            return
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        console = Console()
        if not entries:
            console.print("no journal entries" + (f" in state {outcome!r}" if outcome else ""))
        elif is_narrow(console):
            console.print(f"autotune history: {len(entries)} change(s), newest first")
            for e in entries:
                style = _STYLE.get(e.state, "")
                state = f"[{style}]{e.state}[/]" if style else e.state
                verdict = _verdict(e)
                print_block(console, f"[bold]#{e.id}[/]  {_fmt_ts(e.ts)}  {state}"
                            + (f"  {escape(verdict)}" if verdict != "-" else ""),
                            fit_or_split(f"{e.knob} {e.target}: {e.prior_value} -> {e.proposed}",
                                         f"(rule {e.rule})", console.width - 4))
        else:
            table = Table(title="autotune history (newest first)")
            for col in ("id", "time", "knob", "target", "rule", "prior -> proposed", "state",
                        "verify"):
                table.add_column(col, overflow="fold")
            for e in entries:
                style = _STYLE.get(e.state, "")
                table.add_row(str(e.id), _fmt_ts(e.ts), e.knob, e.target, e.rule,
                              f"{e.prior_value} -> {e.proposed}", f"[{style}]{e.state}[/]" if style
                              else e.state, _verdict(e))
            console.print(table)
        for u in unmanaged:
            # soft_wrap: keep the command on one line so it can be copied
            console.print(f"[magenta]unmanaged[/] {u.knob} {u.target} since {_fmt_ts(u.since_ts)}: "
                          f"{u.reason}", soft_wrap=True)
            console.print(f"  re-enable: autotune enable {u.knob} {u.target}", soft_wrap=True,
                          markup=False, highlight=False)

    @app.command()
    def rollback(
        entry_id: Annotated[Optional[int], typer.Argument(metavar="ID", help="Journal entry id.")] = None,
        all_: Annotated[bool, typer.Option(
            "--all", help="Put every target back to its value before the agent's first change.")] = False,
        force: Annotated[bool, typer.Option(
            "--force", help="Restore even where someone else changed the value since (drift).")] = False,
        knob: Annotated[Optional[str], typer.Option("--knob", help="With --all: only this knob.")] = None,
        target: Annotated[Optional[str], typer.Option("--target", help="With --all: only this target.")] = None,
        helper_socket: SocketOpt = None,
        local: LocalOpt = False,
        root: RootOpt = None,
        state: StateOpt = None,
        config: ConfigOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Restore the recorded prior value of one entry (ID) or of every entry (--all)."""
        import os

        from autotune.agent.daemon import connect_helper, local_actuator
        from autotune.audit.trail import AuditTrail
        from autotune.errors import HostError
        from autotune.journal.journal import Journal, JournalError
        from autotune.verify.rollback import Rollback, audit_to, candidates

        if (entry_id is None) == (not all_):
            fail("give exactly one of ID or --all")
        if entry_id is not None and (knob or target):
            fail("--knob/--target only go with --all")
        if local and os.geteuid() != 0:
            fail("--local writes kernel files directly and needs root; use the helper instead")
        cfg, db = _open(state, config)
        journal = Journal(db)
        if all_:
            entries = candidates(journal, knob=knob, target=target)  # nothing open: no helper needed
        else:
            try:
                entries = [journal.get(entry_id)]  # type: ignore[arg-type]
            except JournalError as err:
                fail(str(err))
        if not entries:
            typer.echo("nothing to roll back")
            return
        sock = helper_socket or cfg.agent.helper_socket
        if local:
            actuator, via = local_actuator(cfg, root, flag="--local"), "local"
        else:
            try:
                actuator, via = connect_helper(cfg, sock, timeout=10.0), "helper"
            except HostError as err:
                fail(f"helper unreachable at {sock}: {err}. Start it (systemctl start "
                     "autotune-helper.socket), pass --helper-socket PATH, or as root use --local")
        # a helper that goes away (a transport HostError) aborts the run: nothing is half-done
        rollback = Rollback(journal, actuator, audit=audit_to(AuditTrail(db)), by="operator",
                            via=via, abort_on=(HostError,) if via == "helper" else ())
        try:
            if all_:
                outcomes = rollback.all(force=force, knob=knob, target=target)
            else:
                outcomes = rollback.entries(entries, force=force, single=True)
        except HostError as err:
            fail(f"helper went away during rollback: {err}; entries restored so far are journaled")
        finally:
            client = getattr(actuator, "client", None)
            if client is not None:
                client.close()
        if json_out:
            print_json([o.model_dump() for o in outcomes])
        elif not outcomes:
            typer.echo("nothing to roll back")
        else:
            for o in outcomes:
                color = {"restored": "green", "already_prior": None, "gone": None, "not_applied": None,
                         "left_alone": "yellow", "superseded": "yellow"}.get(o.result, "red")
                line = f"entry {o.entry_id} {o.knob} {o.target}: {o.result} - {o.reason}"
                if o.result == "restored":
                    line += f" (now {o.after!r}{', exact raw' if o.exact else ''})"
                typer.secho(line, fg=color)
            if any(o.result in ("skipped_drift", "left_alone") for o in outcomes):
                typer.echo("drifted targets are now unmanaged; `autotune rollback --force` clobbers "
                           "them, `autotune enable KNOB TARGET` hands them back to the agent")
        if any(o.result in ("skipped_drift", "failed", "blocked") for o in outcomes):
            raise typer.Exit(1)

    @app.command()
    def enable(
        knob: Annotated[str, typer.Argument(help="Knob name, e.g. cgroup.cpu_quota.")],
        target: Annotated[str, typer.Argument(help="Target exactly as in `autotune history`.")],
        state: StateOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Let the agent manage a target again after drift made it unmanaged."""
        from autotune.audit.trail import AuditEvent, AuditTrail
        from autotune.journal.journal import Journal

        _cfg, db = _open(state, config)
        journal = Journal(db)
        if not journal.enable_target(knob, target):
            have = ", ".join(f"{u.knob} {u.target}" for u in journal.unmanaged()) or "none"
            fail(f"{knob} {target} is not unmanaged (unmanaged targets: {have})", code=1)
        AuditTrail(db).append(AuditEvent(ts=time.time(), kind="enable", knob=knob, target=target,
                                         outcome="enabled", detail={"by": "operator"}))
        typer.echo(f"{knob} {target}: managed again; the agent may change it from its next tick")
