"""What `autotune demo` prints while it runs: one line per audit event, at most 80 columns.

``Feed.lines(event)`` is pure (an AuditEvent in, lines out) apart from remembering which
symptoms it has already announced; ``follow`` tails the agent's audit trail (read-only) and hands
every new event to it. Targets are shown by service name (the demo knows which cgroup is whose),
knobs by a short label, objective values with their unit (``verify/objectives.show``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from autotune.verify.objectives import show

WIDTH = 80
KNOB_LABELS = {
    "cgroup.cpu_quota": "cpu quota", "cgroup.cpu_weight": "cpu weight", "cgroup.cpuset": "cpus",
    "cgroup.cpu_idle": "cpu idle", "cgroup.memory_high": "memory.high", "cgroup.memory_max": "memory.max",
}
UNITS = {"cgroup.cpu_quota": " cores"}


def fit(text: str, width: int = WIDTH) -> str:
    """``text`` on one line of at most ``width`` columns (cut with an ellipsis)."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def line(elapsed_s: float, tag: str, text: str, width: int = WIDTH) -> str:
    """'  42s action   #3 llm cpu quota 0.5 -> 1.25 cores (slo-raise-quota)'."""
    head = f"{elapsed_s:4.0f}s {tag:<8} "
    return head + fit(text, width - len(head))


def symptom_text(s: dict) -> str:
    """One symptom (a Symptom dict from an event's detail) in words."""
    who = s.get("service") or "host"
    value, threshold, metric = s.get("value"), s.get("threshold"), s.get("metric", "")
    if metric.endswith(".slo.slack") and isinstance(value, int | float):
        if s.get("name") == "slo_slack_low":
            return f"{who}: SLO slack {value * 100:+.0f} % (under {threshold * 100:.0f} % is a breach)"
        return f"{who}: SLO slack {value * 100:+.0f} % (ample)"
    shown = f"{value:.3g}" if isinstance(value, int | float) else "?"
    limit = f"{threshold:g}" if isinstance(threshold, int | float) else "?"
    return f"{who}: {s.get('name')} {shown} (limit {limit})"


class Feed:
    """Audit events -> (tag, text) lines. ``names``: target (cgroup path) -> service name."""

    def __init__(self, names: dict[str, str] | None = None) -> None:
        self.names = names or {}
        self.active: set[tuple[str, str | None]] = set()

    def _what(self, ev) -> str:
        """'llm cpu quota' for a service's cgroup, else 'governor all'."""
        if ev.target in self.names:
            return f"{self.names[ev.target]} {KNOB_LABELS.get(ev.knob, ev.knob)}"
        return f"{ev.knob} {ev.target or '?'}"

    def _change(self, ev, before: str | None, after: str | None) -> str:
        return f"{before or '?'} -> {after or '?'}{UNITS.get(ev.knob, '')}"

    def _symptoms(self, symptoms: list[dict]) -> list[tuple[str, str]]:
        out = []
        now = {(s.get("name", ""), s.get("service")) for s in symptoms}
        for s in symptoms:
            key = (s.get("name", ""), s.get("service"))
            if key not in self.active:
                out.append(("symptom", symptom_text(s)))
        for name, svc in sorted(self.active - now, key=str):
            out.append(("cleared", f"{svc or 'host'}: {name}"))
        self.active = now
        return out

    def lines(self, ev) -> list[tuple[str, str]]:
        d = ev.detail or {}
        aid = f"#{ev.action_id} " if ev.action_id is not None else ""
        k = ev.kind
        if k == "agent_start":
            return [("agent", f"started: {d.get('mode', '?')} mode, writes through "
                              f"{d.get('actuator', '?')}")]
        if k == "agent_stop":
            return [("agent", "stopped")]
        if k == "recommendation":
            return self._symptoms(d.get("symptoms") or [])
        if k == "apply":
            out = self._symptoms(d.get("symptoms") or []) if d.get("symptoms") is not None else []
            if ev.outcome == "applied":
                out.append(("action", f"{aid}{self._what(ev)} {self._change(ev, ev.before, ev.after)} "
                                      f"({ev.rule})"))
            else:
                out.append(("failed", f"{aid}{self._what(ev)} -> {ev.after}: {d.get('error', ev.outcome)}"))
            return out
        if k == "refusal" and d.get("op") == "read":
            return [("policy", f"{self._what(ev)} is not in the helper's policy: left alone")]
        if k == "refusal":
            return [("refused", f"{aid}{self._what(ev)} -> {ev.after}: helper said "
                                f"{d.get('code') or 'no'} ({d.get('reason', '')})")]
        if k == "verify":
            obj = d.get("objective")
            figures = ""
            if ev.objective_before is not None or ev.objective_after is not None:
                figures = f", {show(obj, ev.objective_before)} -> {show(obj, ev.objective_after)}"
            verdict = d.get("verdict") or d.get("reason") or ""
            if ev.outcome == "kept":
                return [("verdict", f"{aid}kept: {verdict}{figures}")]
            if ev.outcome in ("rolled_back", "restored"):
                return [("verdict", f"{aid}{verdict}, so undone{figures}")]
            return [("verdict", f"{aid}{ev.outcome}: {d.get('reason') or verdict}")]
        if k == "rollback":
            return [("rollback", f"{aid}{self._what(ev)} {self._change(ev, ev.before, ev.after)} "
                                 f"(by {d.get('by', '?')})")]
        if k == "drift":
            return [("drift", f"{aid}{self._what(ev)} changed by someone else "
                              f"({d.get('reason', '')}); left alone")]
        if k == "error":
            what = d.get("stage") or self._what(ev)
            return [("error", f"{what}: {d.get('error') or d.get('reason') or ev.outcome}")]
        return []


def follow(db_path: Path, feed: Feed, say: Callable[[str, str], None], stop: threading.Event,
           poll_s: float = 0.5) -> None:
    """Print every audit event of the state DB at ``db_path`` as it is appended, until ``stop``
    (then once more, so the last events are not lost). Each poll opens the DB read-only afresh:
    a connection kept across the agent's exit (its checkpoint removes the -wal) could be left
    reading a stale snapshot."""
    import sqlite3

    from autotune.errors import StateError

    last = 0
    while True:
        final = stop.is_set()
        try:
            for ev in _after(db_path, last) if db_path.exists() else ():
                last = max(last, ev.id or 0)
                for tag, text in feed.lines(ev):
                    say(tag, text)
        except (sqlite3.Error, StateError) as err:  # not made yet, or mid-checkpoint: next poll
            if final:
                say("error", f"audit trail unreadable: {err}")
        if final:
            return
        stop.wait(poll_s)


def _after(db_path: Path, last_id: int) -> list:
    """Audit events with id > ``last_id``, oldest first (none while the table does not exist)."""
    from autotune.audit.trail import COLUMNS, AuditEvent
    from autotune.store.db import open_db

    db = open_db(db_path, probe=True)
    try:
        if "audit_events" not in db.table_names():
            return []
        rows = db.execute(f"SELECT {','.join(COLUMNS)} FROM audit_events WHERE id > ? ORDER BY id",
                          [last_id]).fetchall()
    finally:
        db.conn.close()
    return [AuditEvent.from_row(r) for r in rows]


def clock(t0: float) -> Callable[[], float]:
    """Seconds since ``t0`` (monotonic)."""
    return lambda: time.monotonic() - t0
