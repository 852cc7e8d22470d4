"""`autotune history`, `autotune rollback`, `autotune enable`: the operator's view of the journal.

Rollback puts back the prior KnobState the journal recorded before the change, THROUGH THE
HELPER (the agent user cannot write kernel files). The helper writes those raw bytes verbatim
only when it saw that prior state itself before its own write (memory or ``--state``);
otherwise it applies ``state.value`` range-checked. ``--local`` is a root-only escape hatch
that writes the recorded raw files with the knobs directly (fixture trees, helper down).

A target whose live value is neither ours nor the prior was changed by someone else: it is
skipped (and the entry marked drifted, the target unmanaged) unless ``--force``;
``autotune enable KNOB TARGET`` hands it back to the agent. Every restore is journaled and
audited (kind ``rollback``; skips are ``drift``, failures ``error``).

Exit codes: 0 all done, 1 something skipped or failed, 2 usage / unreachable helper.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

import typer
from pydantic import BaseModel

from autotune.cli.common import ConfigOpt, JsonOpt, RootOpt, fail, load_config_or_exit, print_json

if TYPE_CHECKING:  # heavy-ish imports stay inside the commands
    from autotune.audit.trail import AuditTrail
    from autotune.journal.journal import Journal, JournalEntry
    from autotune.knobs.base import KnobState

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

# Entries whose change may still be in place (a newer one blocks rolling back an older one alone).
IN_PLACE = ("applied", "verifying", "kept")


class Unreachable(Exception):
    """The helper cannot be reached: abort the whole command (exit 2), nothing is half-done."""


class _Writer:
    """An Actuator (autotune.agent.actuator) plus how it is reached: ``via`` "helper" or
    "local". Transport failures of the helper client (HostError; refusals are PolicyRefused)
    become Unreachable so one dead socket aborts the run instead of failing every entry."""

    def __init__(self, actuator: Any, via: str) -> None:
        self.actuator, self.via = actuator, via

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        from autotune.errors import HostError

        try:
            return fn(*args)
        except HostError as err:
            if self.via == "helper":
                raise Unreachable(str(err)) from err
            raise

    def read(self, knob: str, target: str) -> "KnobState | None":
        return self._guard(self.actuator.read, knob, target)

    def restore(self, knob: str, target: str, state: "KnobState") -> None:
        # force: the caller (rollback_plan) already decided; the raw record must be written
        # even when the normalized value already matches (e.g. a period that differs)
        self._guard(lambda: self.actuator.restore(knob, target, state, force=True))


def helper_writer(socket_path: str, cfg: Any = None, timeout: float = 10.0) -> _Writer:
    """Rollback through the privileged helper; Unreachable if it does not answer a ping."""
    from autotune.agent.actuator import HelperActuator
    from autotune.errors import HostError
    from autotune.helper.client import HelperClient

    act = HelperActuator(HelperClient(socket_path, timeout=timeout), cfg=cfg)
    try:
        act.ping()
    except HostError as err:
        act.client.close()
        raise Unreachable(str(err)) from err
    return _Writer(act, "helper")


def local_writer(root: Path | None, cfg: Any = None) -> _Writer:
    """Root-only escape hatch: the knobs on a writable Host, no helper and no policy."""
    from autotune.agent.actuator import LocalActuator
    from autotune.host import Host

    return _Writer(LocalActuator(Host(root, writable=True), cfg), "local")


class RollbackOutcome(BaseModel):
    entry_id: int
    knob: str
    target: str
    result: Literal["restored", "already_prior", "skipped_drift", "gone", "blocked", "failed"]
    reason: str
    before: str | None = None  # live value before the rollback
    after: str | None = None  # live value read back after it
    exact: bool | None = None  # read-back raw == the journal's recorded raw


def _newer_in_place(journal: "Journal", entry: "JournalEntry") -> "JournalEntry | None":
    for e in journal.entries(knob=entry.knob, target=entry.target, states=IN_PLACE, newest_first=True):
        if (e.ts, e.id) > (entry.ts, entry.id):
            return e
    return None


def rollback_entries(
    journal: "Journal",
    entries: Sequence["JournalEntry"],
    writer: _Writer,
    *,
    force: bool = False,
    trail: "AuditTrail | None" = None,
    single: bool = False,
    clock: Callable[[], float] = time.time,
) -> list[RollbackOutcome]:
    """Undo ``entries`` in the given order (callers pass newest first) and record each step.

    ``single``: the operator named one entry; refuse it while a newer change to the same
    target is still in place (restoring the older prior would silently undo that one too).
    Raises Unreachable when the helper goes away; everything before that is recorded.
    """
    from autotune.agent.actuator import same_for
    from autotune.errors import AutotuneError
    from autotune.knobs.base import KnobState

    out: list[RollbackOutcome] = []
    for entry in entries:
        def done(result: str, reason: str, **kw: Any) -> None:
            out.append(RollbackOutcome(entry_id=entry.id, knob=entry.knob, target=entry.target,  # noqa: B023
                                       result=result, reason=reason, **kw))  # type: ignore[arg-type]

        if entry.state == "planned":
            done("blocked", "planned but not known to be applied; the agent settles it at start "
                            "(reconcile) - nothing to undo yet")
            continue
        if single and entry.state != "rolled_back":
            newer = _newer_in_place(journal, entry)
            if newer is not None:
                done("blocked", f"newer entry {newer.id} on the same target is still in place; "
                                f"roll it back first or use: autotune rollback --all "
                                f"--knob {entry.knob} --target {entry.target}")
                continue
        same = same_for(entry.knob)
        try:
            live = writer.read(entry.knob, entry.target)
        except AutotuneError as err:
            done("failed", f"cannot read the live value: {err}")
            _audit(trail, clock, entry, "error", "failed", None, None,
                   {"operation": "rollback", "error": str(err), "via": writer.via})
            continue
        current = live.value if live is not None else None
        plan = journal.rollback_plan(entry, current, force=force, same=same)
        if plan.action == "nothing":
            if entry.state == "rolled_back":
                done("already_prior", plan.reason, before=current)
            elif current is None:
                done("gone", f"target gone; nothing to restore ({entry.state} entry left as is)")
            elif entry.state not in IN_PLACE:  # failed / drifted entry that is back at prior
                done("already_prior", plan.reason, before=current)
            else:  # our change is no longer in place: settle the entry, as reconcile would
                journal.mark_rolled_back(entry.id, detail=f"operator rollback: {plan.reason}")
                _audit(trail, clock, entry, "rollback", "rolled_back", current, current,
                       {"reason": plan.reason, "changed": False, "via": writer.via, "by": "operator"})
                done("already_prior", plan.reason, before=current, after=current,
                     exact=_exact(live, entry))
            continue
        if plan.action == "skip_drift":
            if entry.state in ("applied", "verifying", "kept"):
                journal.mark_drifted(entry.id, current, detail=plan.reason)
            _audit(trail, clock, entry, "drift", "skipped", current, None,
                   {"reason": plan.reason, "operation": "rollback", "via": writer.via})
            done("skipped_drift", plan.reason, before=current)
            continue
        prior = KnobState.model_validate(plan.restore or entry.prior)
        try:
            writer.restore(entry.knob, entry.target, prior)
            after = writer.read(entry.knob, entry.target)
        except AutotuneError as err:
            _audit(trail, clock, entry, "error", "failed", current, None,
                   {"operation": "rollback", "error": str(err), "via": writer.via})
            done("failed", f"restore refused or failed: {err}", before=current)
            continue
        after_v = after.value if after is not None else None
        if not same(after_v, entry.prior_value):
            why = f"restored but reads back {after_v!r}, not the prior {entry.prior_value!r}"
            _audit(trail, clock, entry, "error", "failed", current, after_v,
                   {"operation": "rollback", "error": why, "via": writer.via})
            done("failed", why, before=current, after=after_v)
            continue
        exact = _exact(after, entry)
        journal.mark_rolled_back(entry.id, detail=f"operator rollback via {writer.via}: {plan.reason}")
        _audit(trail, clock, entry, "rollback", "rolled_back", current, after_v,
               {"reason": plan.reason, "forced": force, "exact_raw": exact, "via": writer.via,
                "by": "operator"})
        done("restored", plan.reason, before=current, after=after_v, exact=exact)
    return out


def _exact(state: "KnobState | None", entry: "JournalEntry") -> bool | None:
    raw = entry.prior.get("raw")
    if state is None or not raw:
        return None
    return dict(state.raw) == dict(raw)


def _audit(trail: "AuditTrail | None", clock: Callable[[], float], entry: "JournalEntry",
           kind: str, outcome: str, before: str | None, after: str | None,
           detail: dict[str, Any]) -> None:
    if trail is None:
        return
    from autotune.audit.trail import AuditEvent

    trail.append(AuditEvent(ts=clock(), kind=kind, action_id=entry.id, knob=entry.knob,
                            target=entry.target, service=entry.service, rule=entry.rule,
                            before=before, after=after, outcome=outcome, detail=detail))


# -- presentation --------------------------------------------------------------------------
def _fmt_ts(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _verdict(e: "JournalEntry") -> str:
    vr = e.verify_result or {}
    verdict = vr.get("verdict")
    if not verdict:
        return "-"
    eff = vr.get("effect")
    if isinstance(eff, (int, float)):
        return f"{verdict} {eff * 100:+.1f}%"
    return str(verdict)


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
        from rich.table import Table

        console = Console()
        if not entries:
            console.print("no journal entries" + (f" in state {outcome!r}" if outcome else ""))
        else:
            table = Table(title="autotune history (newest first)")
            for col in ("id", "time", "knob", "target", "rule", "prior -> proposed", "state",
                        "verify"):
                table.add_column(col, overflow="fold")
            for e in entries:
                style = {"rolled_back": "yellow", "failed": "red", "drifted": "magenta",
                         "kept": "green"}.get(e.state, "")
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
        all_: Annotated[bool, typer.Option("--all", help="Undo every change still in place, newest first.")] = False,
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

        from autotune.audit.trail import AuditTrail
        from autotune.journal.journal import Journal, JournalError

        if (entry_id is None) == (not all_):
            fail("give exactly one of ID or --all")
        if entry_id is not None and (knob or target):
            fail("--knob/--target only go with --all")
        if local and os.geteuid() != 0:
            fail("--local writes kernel files directly and needs root; use the helper instead")
        cfg, db = _open(state, config)
        journal = Journal(db)
        if all_:
            entries = journal.rollback_candidates(knob=knob, target=target)
        else:
            try:
                entries = [journal.get(entry_id)]  # type: ignore[arg-type]
            except JournalError as err:
                fail(str(err))
        if not entries:
            typer.echo("nothing to roll back")
            return
        sock = helper_socket or cfg.agent.helper_socket
        try:
            writer = local_writer(root, cfg) if local else helper_writer(sock, cfg)
        except Unreachable as err:
            fail(f"helper unreachable at {sock}: {err}. Start it (systemctl start "
                 "autotune-helper.socket), pass --helper-socket PATH, or as root use --local")
        try:
            outcomes = rollback_entries(journal, entries, writer, force=force, trail=AuditTrail(db),
                                        single=not all_)
        except Unreachable as err:
            fail(f"helper went away during rollback: {err}; entries restored so far are journaled")
        finally:
            client = getattr(writer.actuator, "client", None)
            if client is not None:
                client.close()
        if json_out:
            print_json([o.model_dump() for o in outcomes])
        else:
            for o in outcomes:
                color = {"restored": "green", "already_prior": None, "gone": None}.get(o.result, "red")
                line = f"entry {o.entry_id} {o.knob} {o.target}: {o.result} - {o.reason}"
                if o.result == "restored":
                    line += f" (now {o.after!r}{', exact raw' if o.exact else ''})"
                typer.secho(line, fg=color)
            if any(o.result == "skipped_drift" for o in outcomes):
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
