"""Self-contained HTML audit report: summary tables plus one plot per action.

Plots show the service objective (p95 latency, ms) and host PSI ``some avg10`` (%) around each
change with apply / verify / rollback marked. Raw samples come from the samples store when it
still holds them (raw retention is hours); otherwise the plot falls back to the objective
before/after recorded in the audit events and says so. Everything is inlined (CSS, PNGs as
base64) so the file can be mailed or attached to a ticket.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from autotune.audit.export import iso
from autotune.audit.trail import FINAL_OUTCOMES, AuditEvent, AuditTrail
from autotune.detect.metrics import gauges
from autotune.types import Snapshot
from autotune.verify.objectives import unit as objective_unit

PSI_RESOURCES = ("cpu", "memory", "io")
MIN_WINDOW_S = 60.0
MAX_PLOTS = 100  # each plot costs ~0.1 s and ~60 KB; a 100k-event trail would be hours and GBs  # plot/SLO window each side of the apply when verification was quicker

Window = Callable[[float, float], list[Snapshot]]


class ActionStory(BaseModel):
    """All events of one journal action, in order, with the figures the report needs."""

    action_id: int
    events: list[AuditEvent]
    knob: str | None
    target: str | None
    service: str | None
    rule: str | None
    rationale: str | None
    outcome: str
    apply_ts: float | None
    verify_ts: float | None
    rollback_ts: float | None
    objective_before: float | None
    objective_after: float | None
    objective: str | None = None  # a metric name (verify/objectives.py) or a legacy "psi", "latency_p95"...

    @property
    def start_ts(self) -> float:
        return self.events[0].ts

    def window_s(self) -> float:
        end = self.rollback_ts or self.verify_ts
        if self.apply_ts is None or end is None:
            return MIN_WINDOW_S
        return max(MIN_WINDOW_S, end - self.apply_ts)


def stories(events: list[AuditEvent]) -> list[ActionStory]:
    """Group events by action_id; the outcome is the last final outcome (kept/rolled_back/failed)."""
    by: dict[int, list[AuditEvent]] = defaultdict(list)
    for e in events:
        if e.action_id is not None:
            by[e.action_id].append(e)
    out = []
    for aid, evs in sorted(by.items()):
        evs.sort(key=lambda e: e.id or 0)

        def first(attr: str) -> Any:
            return next((getattr(e, attr) for e in evs if getattr(e, attr) is not None), None)

        def ts_of(kind: str) -> float | None:
            return next((e.ts for e in evs if e.kind == kind), None)

        finals = [e.outcome for e in evs if e.outcome in FINAL_OUTCOMES]
        outcomes = [e.outcome for e in evs if e.outcome]
        outcome = finals[-1] if finals else (outcomes[-1] if outcomes else "pending")
        obj_after = next((e.objective_after for e in reversed(evs) if e.objective_after is not None), None)
        out.append(ActionStory(
            action_id=aid, events=evs, knob=first("knob"), target=first("target"),
            service=first("service"), rule=first("rule"), rationale=first("rationale"),
            outcome=outcome, apply_ts=ts_of("apply"), verify_ts=ts_of("verify"),
            rollback_ts=ts_of("rollback"), objective_before=first("objective_before"),
            objective_after=obj_after, objective=_objective_name(evs),
        ))
    return out


def _objective_name(evs: list[AuditEvent]) -> str | None:
    for e in evs:
        name = (e.detail or {}).get("objective") or (e.test or {}).get("objective")
        if name:
            return str(name)
    return None


def format_objective(name: str | None, v: float | None) -> str:
    """Objective values in their own unit: latency in ms, PSI in %, rates as plain numbers."""
    if v is None:
        return "–"
    unit = objective_unit(name)
    if name is None or unit == "s":
        return f"{v * 1000:.1f} ms"
    if unit == "%":
        return f"{v:.1f} % (PSI)"
    return f"{v:.3g} ({name})"


# -- samples -------------------------------------------------------------------------------
def objective_of(m: dict[str, float], service: str | None) -> float | None:
    """p95 latency (s) of ``service`` (or the first service reporting one); ``m`` is ``gauges(snap)``."""
    if service:
        return m.get(f"svc.{service}.latency.p95_s")
    return next((v for k, v in m.items() if k.startswith("svc.") and k.endswith(".latency.p95_s")), None)


def violation_s(snaps: list[Snapshot], service: str | None, slo_s: float) -> float:
    """Seconds whose sample showed the objective above the SLO (each sample counts until the next)."""
    total = 0.0
    for a, b in zip(snaps, snaps[1:]):
        v = objective_of(gauges(a), service)
        if v is not None and v > slo_s:
            total += b.ts - a.ts
    return total


def default_window(trail: AuditTrail) -> Window | None:
    """SampleStore(db).window if the samples component is installed, else None."""
    try:
        from autotune.store.samples import SampleStore
    except ImportError:
        return None
    try:
        store = SampleStore(trail.db)
    except Exception:  # noqa: BLE001 - a broken samples store must not stop the audit report
        return None
    return store.window


# -- plotting ------------------------------------------------------------------------------
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plot_action(story: ActionStory, snaps: list[Snapshot]) -> tuple[str, bool]:
    """Base64 PNG of objective + PSI around the action; second value: drawn from raw samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = story.apply_ts or story.start_ts
    w = story.window_s()
    fig, ax = plt.subplots(figsize=(8.6, 3.0))
    ax2 = ax.twinx()
    raw = False
    if snaps:
        xs = [s.ts - t0 for s in snaps]
        ms = [gauges(s) for s in snaps]
        obj = [objective_of(m, story.service) for m in ms]
        if any(v is not None for v in obj):
            ax.plot(xs, [v * 1000 if v is not None else float("nan") for v in obj],
                    color="#1f4e9c", lw=1.8, label="p95 latency (ms)")
            raw = True
        colors = {"cpu": "#d9822b", "memory": "#8e44ad", "io": "#7f8c8d"}
        for res in PSI_RESOURCES:
            vals = [m.get(f"psi.{res}.some.avg10") for m in ms]
            if any(v is not None for v in vals):
                ax2.plot(xs, [v if v is not None else float("nan") for v in vals], color=colors[res],
                         lw=1, alpha=0.8, label=f"PSI {res} some avg10 (%)")
                raw = True
    if not raw:
        latency = story.objective is None or objective_unit(story.objective) == "s"
        scale, unit = (1000.0, "ms") if latency else (1.0, "%" if objective_unit(story.objective) == "%" else "")
        name = "p95" if latency else (story.objective or "objective")
        if story.objective_before is not None:
            ax.hlines(story.objective_before * scale, -w, 0, color="#1f4e9c", lw=2.5,
                      label=f"{name} before ({unit})" if unit else f"{name} before")
        if story.objective_after is not None:
            ax.hlines(story.objective_after * scale, 0, w, color="#2e8b57", lw=2.5,
                      label=f"{name} after ({unit})" if unit else f"{name} after")
        ax.text(0.01, 0.04, "no raw samples kept for this period; levels from audit events",
                transform=ax.transAxes, fontsize=8, color="#666")
        lo = [v * scale for v in (story.objective_before, story.objective_after) if v is not None]
        if lo:
            ax.set_ylim(0, max(lo) * 1.35)
        if not latency:
            ax.set_ylabel(f"{name} ({unit})" if unit else name)
        ax2.set_yticks([])
    marks = [(story.apply_ts, "apply", "#2e8b57", "-"), (story.verify_ts, "verify", "#1f4e9c", "--"),
             (story.rollback_ts, "rollback", "#c0392b", "-")]
    for ts, label, color, style in marks:
        if ts is not None:  # legend entries, not text: verify and rollback are often 1 s apart
            ax.axvline(ts - t0, color=color, ls=style, lw=1.4, label=label)
    ax.set_xlim(-w, w * 2 if snaps else w)
    ax.set_xlabel("seconds from apply")
    if not ax.get_ylabel():
        ax.set_ylabel("p95 latency (ms)")
    if raw:
        ax2.set_ylabel("PSI some avg10 (%)")
        ax2.set_ylim(bottom=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    if handles[0] or handles2[0]:
        # Above the axes: inside, it hides the "before" data the reader compares against.
        ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=7.5, loc="lower left",
                  bbox_to_anchor=(0, 1.01), ncol=min(5, len(handles[1] + handles2[1])), frameon=False, borderaxespad=0)
    fig.tight_layout()
    return _png(fig), raw


# -- HTML ----------------------------------------------------------------------------------
CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px auto;max-width:1000px;
color:#222;line-height:1.4;padding:0 16px}
h1{font-size:22px;margin-bottom:2px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:13px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f3f5f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.action{border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:16px 0;page-break-inside:avoid}
.action h3{margin:0 0 6px;font-size:15px}
.tag{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;color:#fff;background:#888}
.kept{background:#2e8b57}.rolled_back{background:#c0392b}.failed{background:#8e1b1b}.pending{background:#888}
.applied{background:#1f4e9c}.refused{background:#d9822b}
.kv{font-size:13px;margin:4px 0}.kv b{display:inline-block;min-width:110px;color:#555;font-weight:600}
img{max-width:100%;height:auto;display:block;margin-top:6px}
.ok{color:#2e8b57;font-weight:600}.bad{color:#c0392b;font-weight:600}
"""


def _e(v: Any) -> str:
    if isinstance(v, float):  # 4 significant digits: p=0.5763 reads better than 0.5762732440843475
        v = f"{v:.4g}"
    return html.escape("" if v is None else str(v))


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v * 1000:.1f} ms"


def build_html(
    trail: AuditTrail,
    *,
    since: float | None = None,
    until: float | None = None,
    window: Window | None = None,
    slos: dict[str, float] | None = None,
    now: float | None = None,
    max_plots: int = MAX_PLOTS,
) -> tuple[str, int]:
    """The report page and the number of actions in it (plots for the latest ``max_plots``)."""
    now = time.time() if now is None else now
    events = trail.query(since=since, until=until)
    acts = stories(events)
    chain = trail.verify()
    slos = slos or {}

    by_knob: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    outcomes: list[str] = []
    for a in acts:
        by_knob[a.knob or "-"][a.outcome] += 1
        if a.outcome not in outcomes:
            outcomes.append(a.outcome)
    outcomes.sort(key=lambda o: (o not in FINAL_OUTCOMES, o))
    refusals = sum(e.kind == "refusal" for e in events)
    rollbacks = sum(a.rollback_ts is not None or a.outcome == "rolled_back" for a in acts)

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>autotune audit report</title>"
             f"<style>{CSS}</style></head><body>",
             "<h1>autotune audit report</h1>",
             f"<p class='meta'>generated {_e(iso(now))} · period "
             f"{_e(iso(since) if since else 'start')} → {_e(iso(until) if until else 'now')} · "
             f"{len(events)} events, {len(acts)} actions · chain: "
             + (f"<span class='ok'>verified ({chain.checked} events)</span>" if chain.ok else
                f"<span class='bad'>BROKEN at event {chain.first_bad_id}: {_e(chain.reason)}</span>")
             + "</p>"]

    parts.append("<h2>Summary</h2><table id='by-knob'><tr><th>knob</th>"
                 + "".join(f"<th>{_e(o)}</th>" for o in outcomes) + "<th>total</th></tr>")
    for knob in sorted(by_knob):
        row = by_knob[knob]
        parts.append(f"<tr><td>{_e(knob)}</td>" + "".join(f"<td class='num'>{row.get(o, 0)}</td>" for o in outcomes)
                     + f"<td class='num'>{sum(row.values())}</td></tr>")
    parts.append("</table>")
    parts.append(f"<table id='totals'><tr><th>actions</th><td class='num'>{len(acts)}</td></tr>"
                 f"<tr><th>rollbacks</th><td class='num'>{rollbacks}</td></tr>"
                 f"<tr><th>helper refusals</th><td class='num'>{refusals}</td></tr></table>")

    # per-action plots (and the SLO table that needs the same samples)
    slo_rows, sections = [], []
    plotted = acts[-max_plots:] if max_plots > 0 else []
    for a in plotted:
        snaps: list[Snapshot] = []
        w = a.window_s()
        t0 = a.apply_ts or a.start_ts
        if window is not None:
            try:
                snaps = window(t0 - w, t0 + 2 * w)
            except Exception:  # noqa: BLE001 - missing/odd samples only cost the plot detail
                snaps = []
        slo = slos.get(a.service or "")
        if slo is not None and snaps:
            before = violation_s([s for s in snaps if s.ts < t0], a.service, slo)
            after = violation_s([s for s in snaps if t0 <= s.ts <= t0 + w], a.service, slo)
            slo_rows.append((a, slo, before, after, w))
        png, raw = plot_action(a, snaps)
        sections.append(_action_html(a, png, raw))

    parts.append("<h2>Time in SLO violation</h2>")
    if slo_rows:
        parts.append("<table id='slo'><tr><th>action</th><th>service</th><th>SLO p95</th><th>window</th>"
                     "<th>before</th><th>after</th></tr>")
        for a, slo, before, after, w in slo_rows:
            parts.append(f"<tr><td>#{a.action_id}</td><td>{_e(a.service)}</td><td class='num'>{_ms(slo)}</td>"
                         f"<td class='num'>{w:.0f} s</td><td class='num'>{before:.0f} s</td>"
                         f"<td class='num'>{after:.0f} s</td></tr>")
        tb, ta = sum(r[2] for r in slo_rows), sum(r[3] for r in slo_rows)
        parts.append(f"<tr><th colspan='4'>total</th><th class='num'>{tb:.0f} s</th>"
                     f"<th class='num'>{ta:.0f} s</th></tr></table>")
    else:
        parts.append("<p class='meta'>Not available: needs a service SLO (p95_latency_s in the config) and raw "
                     "samples around the actions (kept for agent.raw_retention_h).</p>")
    parts.append("<h2>Actions</h2>")
    if len(plotted) < len(acts):
        parts.append(f"<p class='meta'>Showing the latest {len(plotted)} of {len(acts)} actions; narrow the "
                     "period with --since/--until to see others.</p>")
    parts.extend(sections or ["<p class='meta'>No actions in this period.</p>"])
    parts.append("</body></html>")
    return "".join(parts), len(acts)


def _action_html(a: ActionStory, png: str, raw: bool) -> str:
    change = f"{_e(a.events[0].before)} → {_e(a.events[0].after)}"
    for e in a.events:
        if e.before is not None or e.after is not None:
            change = f"{_e(e.before)} → {_e(e.after)}"
            break
    symptoms = next((e.detail.get("symptoms") for e in a.events if e.detail.get("symptoms")), None)
    sym = ", ".join(f"{_e(s.get('name'))}={_e(s.get('value'))}" if isinstance(s, dict) else _e(s)
                    for s in symptoms) if symptoms else "–"
    test = next((e.test for e in reversed(a.events) if e.test), None)
    test_s = ", ".join(f"{_e(k)}={_e(v)}" for k, v in test.items()) if test else "–"
    timeline = " · ".join(f"{_e(e.kind)}{'(' + _e(e.outcome) + ')' if e.outcome else ''} "
                          f"{_e(iso(e.ts)[11:19])}" for e in a.events)
    return (
        f"<div class='action' id='action-{a.action_id}'><h3>#{a.action_id} {_e(a.knob)} on {_e(a.target)} "
        f"<span class='tag {_e(a.outcome)}'>{_e(a.outcome)}</span></h3>"
        f"<div class='kv'><b>service</b>{_e(a.service or '–')}</div>"
        f"<div class='kv'><b>rule</b>{_e(a.rule or '–')}</div>"
        f"<div class='kv'><b>rationale</b>{_e(a.rationale or '–')}</div>"
        f"<div class='kv'><b>symptoms</b>{sym}</div>"
        f"<div class='kv'><b>change</b>{change}</div>"
        f"<div class='kv'><b>objective</b>{_e(format_objective(a.objective, a.objective_before))} → "
        f"{_e(format_objective(a.objective, a.objective_after))}</div>"
        f"<div class='kv'><b>test</b>{test_s}</div>"
        f"<div class='kv'><b>timeline</b>{timeline}</div>"
        f"<img alt='objective and PSI around action {a.action_id}' data-raw='{int(raw)}' "
        f"src='data:image/png;base64,{png}'></div>"
    )


def write_report(
    trail: AuditTrail,
    path: str | Path,
    *,
    since: float | None = None,
    until: float | None = None,
    slos: dict[str, float] | None = None,
    window: Window | None = None,
    max_plots: int = MAX_PLOTS,
) -> int:
    """Write the HTML report to ``path``; returns the number of actions. Uses the samples store
    for plots when ``window`` is not given and it is available."""
    if window is None:
        window = default_window(trail)
    page, n = build_html(trail, since=since, until=until, window=window, slos=slos, max_plots=max_plots)
    Path(path).write_text(page, encoding="utf-8")
    return n
