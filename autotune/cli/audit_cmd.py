"""`autotune audit`: list, show, verify and report on the hash-chained audit trail."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from autotune.cli.common import (ConfigOpt, fail, fit_or_split, is_narrow, load_config_or_exit, print_block,
                                 print_json, require_extra)

audit_app = typer.Typer(help="Inspect the tamper-evident audit trail of every agent decision.",
                        no_args_is_help=True)

StateOpt = Annotated[
    Optional[Path],
    typer.Option("--state", envvar="AUTOTUNE_STATE", help="State database (default: the agent's)."),
]
SinceOpt = Annotated[Optional[str], typer.Option("--since", help="ISO time, unix seconds or age like 2h, 7d.")]
UntilOpt = Annotated[Optional[str], typer.Option("--until", help="ISO time, unix seconds or age like 30m.")]


@audit_app.callback()
def _audit(ctx: typer.Context, state: StateOpt = None) -> None:
    ctx.obj = {"state": state}


def _trail(ctx: typer.Context):
    from autotune.audit.trail import AuditTrail
    from autotune.config import default_state_path
    from autotune.store.db import open_db

    path = (ctx.obj or {}).get("state") or default_state_path()
    if not Path(path).exists():
        fail(f"no state database at {path}; start the agent first or pass --state PATH")
    return AuditTrail(open_db(path, read_only=True))


def _when(text: str | None, opt: str) -> float | None:
    from autotune.audit.export import parse_when

    if text is None:
        return None
    try:
        return parse_when(text, time.time())
    except ValueError as err:
        fail(f"{opt}: {err}")
    return None


@audit_app.command("list")
def list_cmd(
    ctx: typer.Context,
    since: SinceOpt = None,
    until: UntilOpt = None,
    knob: Annotated[Optional[str], typer.Option(help="Exact knob name, e.g. cgroup.cpu_quota.")] = None,
    target: Annotated[Optional[str], typer.Option(help="Exact target (cgroup path, sysctl key...).")] = None,
    outcome: Annotated[Optional[str], typer.Option(help="kept, rolled_back, failed, applied, refused...")] = None,
    rule: Annotated[Optional[str], typer.Option(help="Rule name.")] = None,
    kind: Annotated[Optional[str], typer.Option(help="recommendation, apply, verify, rollback, refusal...")] = None,
    limit: Annotated[int, typer.Option(help="Most recent N matches (0 = all).")] = 200,
    json_out: Annotated[bool, typer.Option("--json", help="JSON array on stdout.")] = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="CSV on stdout (empty cell = null).")] = False,
) -> None:
    """Audit events, oldest first, filtered."""
    from autotune.audit import export

    if json_out and csv_out:
        fail("choose one of --json and --csv")
    events = _trail(ctx).query(
        since=_when(since, "--since"), until=_when(until, "--until"), knob=knob, target=target,
        outcome=outcome, rule=rule, kind=kind, limit=limit or None,
    )
    if json_out:
        sys.stdout.write(export.to_json(events) + "\n")
        return
    if csv_out:
        sys.stdout.write(export.to_csv(events))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    rows = [_row(e) for e in events]
    if is_narrow(console):
        console.print(f"audit events ({len(events)}), oldest first")
        for e, r in zip(events, rows):
            head = f"[bold]#{e.id}[/]  {export.iso(e.ts)}  {e.kind}  {escape(_s(e.outcome))}"
            if e.action_id is not None:
                head += f"  action {e.action_id}"
            lines = []
            if r["knob"] or r["target"]:
                what = " ".join(x for x in (r["knob"], r["target"]) if x)
                what += f": {r['change']}" if r["change"] else ""
                lines += fit_or_split(what, f"(rule {r['rule']})", console.width - 4) if r["rule"] else [what]
            if r["objective"]:
                lines.append(f"objective {r['objective'].replace('→', ' → ')}")
            d = e.detail or {}
            why = d.get("reason") or d.get("error") or d.get("line")
            if why and e.kind in ("refusal", "error", "drift", "blocked"):
                lines.append(str(why))
            print_block(console, head, lines)
        return
    table = Table(title=f"audit events ({len(events)})", show_lines=False)
    for col in ("id", "time", "kind", "action", "knob", "target", "before→after", "outcome", "objective", "rule"):
        table.add_column(col, overflow="fold")
    for e, r in zip(events, rows):
        table.add_row(str(e.id), export.iso(e.ts), e.kind, _s(e.action_id), r["knob"], r["target"],
                      r["change"], _s(e.outcome), r["objective"], r["rule"])
    console.print(table)


def _row(e) -> dict[str, str]:
    """The cells of one event: knob/target/rule of a recommendation come from its first
    action ("+N more" when it proposed several); objective values carry their unit."""
    from autotune.verify.objectives import show

    knob, target, rule = _s(e.knob), _s(e.target), _s(e.rule)
    change = f"{e.before or ''}→{e.after or ''}" if (e.before or e.after) else ""
    actions = (e.detail or {}).get("actions") or []
    if e.kind == "recommendation" and actions and not knob:
        first = actions[0]
        more = f" (+{len(actions) - 1} more)" if len(actions) > 1 else ""
        knob, target, rule = first.get("knob", ""), f"{first.get('target', '')}{more}", first.get("rule", "")
        if not first.get("advisory"):
            change = f"{first.get('current') or '?'}→{first.get('proposed', '')}"
    obj = ""
    if e.objective_before is not None or e.objective_after is not None:
        name = (e.detail or {}).get("objective")
        obj = f"{show(name, e.objective_before)}→{show(name, e.objective_after)}"
    return {"knob": knob, "target": target, "rule": rule, "change": change, "objective": obj}


@audit_app.command("show")
def show_cmd(ctx: typer.Context, action_id: Annotated[int, typer.Argument(help="Journal action id.")],
             json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """One action's full story: symptoms, rule, rationale, values, verification, rollback."""
    from autotune.audit.export import iso
    from autotune.verify.objectives import show

    events = _trail(ctx).query(action_id=action_id)
    if not events:
        fail(f"no audit events for action {action_id}; see `autotune audit list`", code=1)
    if json_out:
        print_json([e.model_dump(mode="json") for e in events])
        return
    from rich.console import Console
    from rich.panel import Panel
    from rich.pretty import Pretty

    con = Console()
    first = events[0]
    head = [f"[bold]action {action_id}[/]  knob={first.knob}  target={first.target}  service={first.service}",
            f"rule: {first.rule}", f"rationale: {first.rationale or '-'}"]
    con.print(Panel("\n".join(head), title="action"))
    for e in events:
        lines = [f"{iso(e.ts)}  outcome={e.outcome or '-'}"]
        if e.before is not None or e.after is not None:
            lines.append(f"value: {e.before} → {e.after}")
        if e.objective_before is not None or e.objective_after is not None:
            name = e.detail.get("objective")
            lines.append(f"objective {name or '?'}: before {show(name, e.objective_before)}  "
                         f"after {show(name, e.objective_after)}")
        if e.rationale and e.rationale != first.rationale:
            lines.append(f"rationale: {e.rationale}")
        con.print(Panel("\n".join(lines), title=f"#{e.id} {e.kind}", title_align="left"))
        for key in ("symptoms",):
            if e.detail.get(key):
                con.print(Pretty(e.detail[key]), style="dim")
        if e.test:
            con.print("  test:", Pretty(e.test))
        rest = {k: v for k, v in e.detail.items() if k != "symptoms"}
        if rest:
            con.print("  detail:", Pretty(rest))


def _unaudited(trail) -> list:
    """Journaled changes (writes that landed) that no audit event records: the trail is
    checked against the journal, not only against itself. A state DB holding no journal (a bare
    trail) has nothing to check against; one whose journal tables are gone is refused
    (StateError from the journal's schema check)."""
    from autotune.journal.journal import COMPONENT, Journal
    from autotune.store.db import schema_version

    if schema_version(trail.db, COMPONENT) == 0:
        return []
    journal = Journal(trail.db)
    recorded = trail.action_ids()
    return [journal.get(i) for i in journal.landed_ids() if i not in recorded]


@audit_app.command("verify")
def verify_cmd(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Check the hash chain and that every journaled change has audit events; exit 1 naming
    the first bad row or the changes missing from the trail."""
    from autotune.store.db import read_note

    trail = _trail(ctx)
    rep = trail.verify()
    missing = _unaudited(trail)
    unread = read_note(trail.db)  # part of the DB (its -wal) could not be read: never say OK
    if json_out:
        gaps = {"ok": False, "unaudited": [e.id for e in missing]} if missing else {}
        print_json({**rep.model_dump(), **gaps, **({"ok": False, "unread": unread} if unread else {})})
    elif rep.ok and unread:
        typer.secho(f"audit trail verified only up to its last checkpoint ({rep.checked} events, "
                    f"head {rep.head_hash}): {unread}", fg="yellow", err=True)
    elif rep.ok and not missing:
        typer.echo(f"audit trail OK: {rep.checked} events, head {rep.head_hash}")
    elif not rep.ok:
        typer.secho(f"audit trail BROKEN at event id {rep.first_bad_id}: {rep.reason} "
                    f"({rep.checked} events before it verify)", fg="red", err=True)
    if missing and not json_out:
        shown = ", ".join(f"{e.id} ({e.knob} on {e.target}, {e.state})" for e in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        typer.secho(f"audit trail INCOMPLETE: {len(missing)} journaled change(s) have no audit "
                    f"event: entry {shown}{more} (see `autotune history`)", fg="red", err=True)
    if not rep.ok or unread or missing:
        raise typer.Exit(1)


@audit_app.command("report")
def report_cmd(
    ctx: typer.Context,
    html: Annotated[Path, typer.Option("--html", help="Output HTML file (self-contained).")],
    since: SinceOpt = None,
    until: UntilOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Self-contained HTML report: summary tables and a plot per action."""
    require_extra("report", what="audit report --html")
    problem = _unwritable(html)
    if problem:
        fail(f"--html {html}: {problem}")
    from autotune.review.report import write_report

    cfg = load_config_or_exit(config)  # service SLOs for "time in SLO violation"
    slos = {s.name: s.slo.p95_latency_s for s in cfg.services if s.slo.p95_latency_s}
    trail = _trail(ctx)
    try:
        n = write_report(trail, html, since=_when(since, "--since"), until=_when(until, "--until"), slos=slos)
    except OSError as err:
        fail(f"--html {html}: cannot write ({err.strerror or err})")
    typer.echo(f"wrote {html} ({n} actions)")


def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be written as a new or replaced file, checked before any work."""
    import os

    if path.is_dir():
        return "is a directory; give a file name such as report.html"
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return f"directory {parent} does not exist"
    if path.exists() and not os.access(path, os.W_OK):
        return "exists and is not writable"
    if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {parent} is not writable"
    return None


def _s(v: object) -> str:
    return "" if v is None else str(v)


def _num(v: float | None) -> str:
    return "?" if v is None else f"{v:.4g}"


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
