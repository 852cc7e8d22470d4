"""Crash-safe action journal: every change is recorded durably BEFORE the write.

Lifecycle of an entry (``events`` keeps every transition with its time and detail)::

    planned -> applied -> verifying -> kept | rolled_back | failed
       |          `-------------`---> drifted (someone else changed the value)
       `-> failed | drifted (the write did not land, or its fate is unknown)

``landed`` says whether the entry's write reached the target: True (``mark_applied``, or a
failed write that left a value behind), False (refused before writing, or a reading showed
the prior), None (not known yet: planned, or a write that failed in a way that may have
landed). Rollback never restores the prior of an entry whose write never landed; an unknown
one is settled by reading (``journal/chain.py``).

``plan`` commits the prior KnobState (the raw restore record) in its own transaction; with
``synchronous=FULL`` (open_db) the commit is fsynced, so a kill -9 right after ``plan`` leaves
the entry on disk. At start ``reconcile`` compares each unfinished entry with the live value:
prior -> the write never landed (planned) or was already undone (applied/verifying); proposed
-> the write landed: keep it for re-verification; anything else -> drift: the (knob, target)
becomes ``unmanaged`` and is never written again until an operator calls ``enable_target``.
``autotune rollback`` settles planned entries the same way when it meets them first.

The journal knows nothing of knobs or the helper: it stores ``KnobState`` records (the prior
and the read-back) and the ``VerifyResult``, and asks callbacks for live values. Value
comparison defaults to string equality; pass the knob's ``same``. Undoing entries is
``autotune/verify/rollback.py``'s job; the journal only records the transitions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlite_utils
from pydantic import BaseModel

from autotune.errors import AutotuneError
from autotune.journal.chain import history
from autotune.journal.entry import (TRANSITIONS, UNFINISHED, JournalEntry, JournalEvent, ReconcileOutcome, State,
                                     UnmanagedTarget)
from autotune.knobs.base import KnobState
from autotune.store.db import migrate, transaction
from autotune.types import ReadCurrent, Same, VerifyPlan, VerifyResult

COMPONENT = "journal"


class JournalError(AutotuneError):
    """Unknown entry or a transition the lifecycle does not allow."""


def _v1(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE journal_entries ("
        " id INTEGER PRIMARY KEY, ts REAL NOT NULL, knob TEXT NOT NULL, target TEXT NOT NULL,"
        " service TEXT, rule TEXT NOT NULL, rationale TEXT NOT NULL DEFAULT '',"
        " symptoms TEXT NOT NULL DEFAULT '[]', prior TEXT NOT NULL, proposed TEXT NOT NULL,"
        " applied TEXT, state TEXT NOT NULL, objective_before TEXT, objective_after TEXT,"
        " verify_result TEXT, error TEXT, planned_ts REAL NOT NULL, applied_ts REAL,"
        " verifying_ts REAL, finished_ts REAL, updated_ts REAL NOT NULL)"
    )
    db.execute("CREATE INDEX journal_entries_target ON journal_entries(knob, target, ts)")
    db.execute("CREATE INDEX journal_entries_state ON journal_entries(state)")
    db.execute("CREATE INDEX journal_entries_ts ON journal_entries(ts)")
    db.execute(
        "CREATE TABLE journal_events (id INTEGER PRIMARY KEY,"
        " entry_id INTEGER NOT NULL REFERENCES journal_entries(id), ts REAL NOT NULL,"
        " from_state TEXT, to_state TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '')"
    )
    db.execute("CREATE INDEX journal_events_entry ON journal_events(entry_id)")
    db.execute(
        "CREATE TABLE journal_unmanaged (knob TEXT NOT NULL, target TEXT NOT NULL,"
        " since_ts REAL NOT NULL, reason TEXT NOT NULL, entry_id INTEGER,"
        " PRIMARY KEY (knob, target))"
    )


def _v2(db: sqlite_utils.Database) -> None:
    # how the change is verified (types.VerifyPlan as JSON); NULL on older rows = compare
    db.execute("ALTER TABLE journal_entries ADD COLUMN verify_plan TEXT")


def _v3(db: sqlite_utils.Database) -> None:
    """``landed``: 1 the write reached the target, 0 it never did, NULL not known yet."""
    db.execute("ALTER TABLE journal_entries ADD COLUMN landed INTEGER")
    db.execute("UPDATE journal_entries SET landed=1 WHERE applied_ts IS NOT NULL")
    # failures that certainly happened before any write; other old failures stay unknown
    db.execute("UPDATE journal_entries SET landed=0 WHERE applied_ts IS NULL AND state='failed'"
               " AND (error LIKE 'refused:%' OR error LIKE 'nothing written:%'"
               " OR error LIKE 'not applied before crash%')")


MIGRATIONS = [_v1, _v2, _v3]




def _dump(obj: Any) -> str | None:
    if obj is None:
        return None
    if isinstance(obj, BaseModel):
        return obj.model_dump_json()
    return json.dumps(obj, default=lambda o: o.model_dump() if isinstance(o, BaseModel) else str(o))


def _as_dict(state: Any) -> dict[str, Any]:
    if isinstance(state, BaseModel):
        return state.model_dump()
    if isinstance(state, Mapping):
        return dict(state)
    raise TypeError(f"expected a KnobState or dict, got {type(state).__name__}")


def knob_state(state: Any, knob: str, target: str) -> KnobState:
    """A KnobState from a model or a dict; rows written before the journal was typed (and callers
    passing a bare ``{"value": ...}``) may lack knob/target, which are the entry's."""
    if isinstance(state, KnobState):
        return state
    return KnobState.model_validate({"knob": knob, "target": target, **_as_dict(state)})


def _result(result: Any) -> VerifyResult | None:
    if result is None or isinstance(result, VerifyResult):
        return result
    return VerifyResult.model_validate(_as_dict(result))


def _eq(a: str | None, b: str | None) -> bool:
    return a == b


class Journal:
    """The action journal on a state DB. Thread-safe (store.db.transaction); every method
    commits before returning."""

    def __init__(self, db: sqlite_utils.Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        migrate(db, COMPONENT, MIGRATIONS)

    @contextmanager
    def _tx(self) -> Iterator[None]:
        with transaction(self.db):
            yield

    # -- write-ahead ----------------------------------------------------------------------
    def plan(
        self,
        *,
        knob: str,
        target: str,
        prior: Any,
        proposed: str,
        rule: str,
        rationale: str = "",
        service: str | None = None,
        symptoms: Iterable[Any] = (),
        objective_before: Mapping[str, Any] | None = None,
        verify_plan: VerifyPlan | None = None,
    ) -> JournalEntry:
        """Durably record the prior value (KnobState or dict) BEFORE anything is written.

        Raises JournalError for an unmanaged (drifted) target, so nothing can clobber it."""
        if "value" not in _as_dict(prior):
            raise JournalError(f"journal plan {knob} {target}: prior state has no 'value'")
        prior_s = knob_state(prior, knob, target)
        syms = [_as_dict(s) for s in symptoms]
        now = self.clock()
        with self._tx():
            um = self.db.execute("SELECT reason FROM journal_unmanaged WHERE knob=? AND target=?",
                                 [knob, target]).fetchone()
            if um is not None:  # safety net: drifted targets are never written again
                raise JournalError(
                    f"{knob} on {target} is unmanaged ({um[0]}); an operator must re-enable it "
                    "(Journal.enable_target) before autotune changes it again"
                )
            cur = self.db.execute(
                "INSERT INTO journal_entries (ts, knob, target, service, rule, rationale, symptoms,"
                " prior, proposed, state, objective_before, planned_ts, updated_ts, verify_plan)"
                " VALUES (?,?,?,?,?,?,?,?,?,'planned',?,?,?,?)",
                [now, knob, target, service, rule, rationale, json.dumps(syms), _dump(prior_s),
                 proposed, _dump(objective_before), now, now,
                 verify_plan.model_dump_json() if verify_plan is not None else None],
            )
            eid = int(cur.lastrowid)
            self._event(eid, None, "planned", f"prior={prior_s.value!r} proposed={proposed!r}", now)
        return self.get(eid)

    def write_ahead(self, **meta: Any) -> "WriteAhead":
        """A ``before_write`` hook for ``Knob.change``: plans an entry with ``meta``
        (rule, rationale, service, symptoms) the moment the prior value is known."""
        return WriteAhead(self, meta)

    # -- transitions ----------------------------------------------------------------------
    def _event(self, eid: int, frm: str | None, to: str, detail: str, ts: float) -> None:
        self.db.execute(
            "INSERT INTO journal_events(entry_id, ts, from_state, to_state, detail) VALUES (?,?,?,?,?)",
            [eid, ts, frm, to, detail],
        )

    def _transition(self, eid: int, to: State, detail: str = "", **fields: Any) -> JournalEntry:
        now = self.clock()
        with self._tx():
            row = self.db.execute("SELECT state FROM journal_entries WHERE id=?", [eid]).fetchone()
            if row is None:
                raise JournalError(f"journal entry {eid} does not exist")
            frm = row[0]
            if to not in TRANSITIONS[frm]:
                raise JournalError(f"journal entry {eid}: cannot go from {frm} to {to}")
            cols = {"state": to, "updated_ts": now, **fields}
            if to == "applied":
                cols.setdefault("applied_ts", now)
            elif to == "verifying":
                cols["verifying_ts"] = now
            elif to in ("kept", "rolled_back", "failed", "drifted"):
                cols["finished_ts"] = now
            sets = ", ".join(f"{k}=?" for k in cols)
            self.db.execute(f"UPDATE journal_entries SET {sets} WHERE id=?", [*cols.values(), eid])
            self._event(eid, frm, to, detail, now)
        return self.get(eid)

    def mark_applied(self, entry_id: int, applied: Any, detail: str = "") -> JournalEntry:
        """The write landed; ``applied`` is the KnobState (or dict) read back after it."""
        e = self.get(entry_id)
        fields: dict[str, Any] = {"landed": 1}
        if applied is not None:
            fields["applied"] = _dump(knob_state(applied, e.knob, e.target))
        return self._transition(entry_id, "applied", detail, **fields)

    def mark_verifying(
        self, entry_id: int, objective_before: Mapping[str, Any] | None = None
    ) -> JournalEntry:
        extra = {"objective_before": _dump(objective_before)} if objective_before is not None else {}
        return self._transition(entry_id, "verifying", "", **extra)

    def mark_kept(self, entry_id: int, *, result: Any = None,
                  objective_after: Mapping[str, Any] | None = None, detail: str = "") -> JournalEntry:
        return self._transition(entry_id, "kept", detail, verify_result=_dump(_result(result)),
                                objective_after=_dump(objective_after))

    def mark_rolled_back(self, entry_id: int, *, result: Any = None,
                         objective_after: Mapping[str, Any] | None = None,
                         detail: str = "") -> JournalEntry:
        extra: dict[str, Any] = {}
        if result is not None:
            extra["verify_result"] = _dump(_result(result))
        if objective_after is not None:
            extra["objective_after"] = _dump(objective_after)
        return self._transition(entry_id, "rolled_back", detail, **extra)

    def mark_failed(self, entry_id: int, error: str, *, landed: bool | None = None,
                    applied: Any = None) -> JournalEntry:
        """The change failed. ``landed``: False it never touched the target, True it left a
        value there (``applied``: the state read back, what rollback will take as ours), None
        keep what is known (an applied entry stays landed)."""
        return self._transition(entry_id, "failed", error, error=error,
                                **self._landed_fields(entry_id, landed, applied))

    def mark_drifted(self, entry_id: int, current: str | None, detail: str = "", *,
                     landed: bool | None = None, disable: bool = True) -> JournalEntry:
        """Someone else changed the target: journal it and (``disable``) stop managing it.
        ``disable=False`` for an old change found overwritten after the agent moved on."""
        e = self.get(entry_id)
        why = detail or (f"live value {current!r} is neither prior {e.prior_value!r} "
                         f"nor ours {e.expected_value!r}")
        out = self._transition(entry_id, "drifted", why, error=why,
                               **self._landed_fields(entry_id, landed, None))
        if disable:
            self.disable_target(e.knob, e.target, reason=f"drift on entry {entry_id}: {why}",
                                entry_id=entry_id)
        return out

    def set_landed(self, entry_id: int, landed: bool, detail: str, *,
                   applied: Any = None) -> JournalEntry:
        """Record what a reading showed about a write whose fate was unknown (no state change)."""
        fields = self._landed_fields(entry_id, landed, applied)
        now = self.clock()
        with self._tx():
            st = self.db.execute("SELECT state FROM journal_entries WHERE id=?", [entry_id]).fetchone()
            if st is None:
                raise JournalError(f"journal entry {entry_id} does not exist")
            sets = ", ".join(f"{k}=?" for k in fields)
            self.db.execute(f"UPDATE journal_entries SET {sets}, updated_ts=? WHERE id=?",
                            [*fields.values(), now, entry_id])
            self._event(entry_id, st[0], st[0], detail, now)
        return self.get(entry_id)

    def _landed_fields(self, entry_id: int, landed: bool | None, applied: Any) -> dict[str, Any]:
        if landed is None and applied is None:
            return {}
        e = self.get(entry_id)
        if landed is False and (e.landed or applied is not None):
            raise JournalError(f"journal entry {entry_id}: its write landed; it cannot be "
                               "marked as never applied")
        out: dict[str, Any] = {"landed": 0 if landed is False else 1}
        if applied is not None:
            out["applied"] = _dump(knob_state(applied, e.knob, e.target))
        return out

    # -- queries --------------------------------------------------------------------------
    _COLS = ("id, ts, knob, target, service, rule, rationale, symptoms, prior, proposed, applied,"
             " state, objective_before, objective_after, verify_result, error, planned_ts,"
             " applied_ts, verifying_ts, finished_ts, verify_plan, landed")

    @staticmethod
    def _row(r: tuple[Any, ...]) -> JournalEntry:
        (eid, ts, knob, target, service, rule, rationale, symptoms, prior, proposed, applied,
         state, ob, oa, vr, error, pts, ats, vts, fts, vp, landed) = r
        lj = lambda s: json.loads(s) if s is not None else None  # noqa: E731
        return JournalEntry(
            id=eid, ts=ts, knob=knob, target=target, service=service, rule=rule,
            rationale=rationale, symptoms=json.loads(symptoms),
            prior=knob_state(json.loads(prior), knob, target), proposed=proposed,
            applied=knob_state(lj(applied), knob, target) if applied is not None else None,
            state=state, objective_before=lj(ob), objective_after=lj(oa),
            verify_result=_result(lj(vr)), error=error, planned_ts=pts, applied_ts=ats,
            verifying_ts=vts, finished_ts=fts, landed=None if landed is None else bool(landed),
            verify_plan=VerifyPlan.model_validate_json(vp) if vp else VerifyPlan(),
        )

    def get(self, entry_id: int) -> JournalEntry:
        r = self.db.execute(f"SELECT {self._COLS} FROM journal_entries WHERE id=?", [entry_id]).fetchone()
        if r is None:
            raise JournalError(f"journal entry {entry_id} does not exist")
        return self._row(r)

    def entries(
        self,
        *,
        states: Iterable[str] | None = None,
        knob: str | None = None,
        target: str | None = None,
        since_ts: float | None = None,
        newest_first: bool = False,
        limit: int | None = None,
    ) -> list[JournalEntry]:
        where, args = self._where(knob=knob, target=target, since_ts=since_ts)
        if states is not None:
            st = list(states)
            where.append(f"state IN ({','.join('?' * len(st))})")
            args.extend(st)
        sql = f"SELECT {self._COLS} FROM journal_entries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts DESC, id DESC" if newest_first else " ORDER BY ts, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [self._row(r) for r in self.db.execute(sql, args).fetchall()]

    @staticmethod
    def _where(*, knob: str | None = None, rule: str | None = None, target: str | None = None,
               since_ts: float | None = None) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        args: list[Any] = []
        for col, val in (("knob", knob), ("rule", rule), ("target", target)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        if since_ts is not None:
            where.append("ts>=?")
            args.append(since_ts)
        return where, args

    def events(self, entry_id: int | None = None) -> list[JournalEvent]:
        sql = "SELECT id, entry_id, ts, from_state, to_state, detail FROM journal_events"
        args: list[Any] = []
        if entry_id is not None:
            sql += " WHERE entry_id=?"
            args.append(entry_id)
        rows = self.db.execute(sql + " ORDER BY id", args).fetchall()
        return [JournalEvent(id=r[0], entry_id=r[1], ts=r[2], from_state=r[3], to_state=r[4],
                             detail=r[5]) for r in rows]

    def verified(self, limit: int | None = None) -> list[JournalEntry]:
        """Entries that went through verification (they carry a verify_result), newest first."""
        sql = f"SELECT {self._COLS} FROM journal_entries WHERE verify_result IS NOT NULL ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [self._row(r) for r in self.db.execute(sql).fetchall()]

    def verified_marker(self) -> tuple[int, int | None]:
        """(count, newest id) of verified entries: changes when there is something new to learn."""
        n, last = self.db.execute(
            "SELECT COUNT(*), MAX(id) FROM journal_entries WHERE verify_result IS NOT NULL").fetchone()
        return int(n), last

    def unfinished(self) -> list[JournalEntry]:
        return self.entries(states=UNFINISHED)

    # cooldown / rate limit: every attempt counts (a failing fix must not be hammered)
    def in_flight(self, target: str, knob: str | None = None) -> JournalEntry | None:
        """The unfinished entry on ``target`` (planned/applied/verifying), if any."""
        found = self.entries(states=UNFINISHED, target=target, knob=knob, newest_first=True, limit=1)
        return found[0] if found else None

    def last_change_ts(self, knob: str | None = None, rule: str | None = None,
                       target: str | None = None) -> float | None:
        """When the newest matching change was planned (unix s), or None."""
        where, args = self._where(knob=knob, rule=rule, target=target)
        sql = "SELECT MAX(ts) FROM journal_entries" + (" WHERE " + " AND ".join(where) if where else "")
        r = self.db.execute(sql, args).fetchone()
        return float(r[0]) if r and r[0] is not None else None

    def origin(self, knob: str, target: str, same: Same | None = None) -> str | None:
        """The value ``target`` had before the agent's changes that are still in effect (the
        original of its newest run, ``journal/chain.py``), None when none is: where a give-back
        stops. Someone else setting the target (a drift, or a change made over another value
        than the agent left) starts a new run."""

        h = history(self.entries(knob=knob, target=target), None, same or _eq)
        in_effect = any(e.state in ("applied", "verifying", "kept") for e in h.run)
        return h.original.value if in_effect and h.original is not None else None

    def lockout_until(self, service: str) -> float | None:
        """When the newest give-back that broke ``service``'s SLO stops locking out further
        give-backs, None when there is none. The lockout is its rule's lockout_s, doubled for
        each give-back in a row that broke the SLO (at most 16x): a service whose slack looks
        ample but is not stops being probed every half minute."""
        rows = self.db.execute(
            f"SELECT {self._COLS} FROM journal_entries WHERE service=? AND verify_plan IS NOT NULL"
            " AND verify_result IS NOT NULL ORDER BY id DESC LIMIT 50", [service]).fetchall()
        newest: JournalEntry | None = None
        streak = 0
        for r in rows:
            e = self._row(r)
            if e.verify_plan.mode != "guard" or e.verify_result is None:
                continue
            if e.verify_result.verdict != "violated":
                break  # a give-back that held ends the streak
            newest = newest or e
            streak += 1
        if newest is None:
            return None
        return (newest.finished_ts or newest.ts) + newest.verify_plan.lockout_s * min(16, 2 ** (streak - 1))

    def last_applied_ts(self, before: float | None = None) -> float | None:
        """When the host last changed under the agent's hand (any target): the newest write
        that landed or rollback that restored a value, optionally the newest before
        ``before``. Measurements of "the current allocation" start after it."""
        cond, args = ("", []) if before is None else (" AND t < ?", [before])
        r = self.db.execute(
            "SELECT MAX(t) FROM (SELECT applied_ts AS t FROM journal_entries WHERE applied_ts IS NOT NULL"
            " UNION ALL SELECT finished_ts FROM journal_entries WHERE state='rolled_back'"
            " AND applied_ts IS NOT NULL AND finished_ts IS NOT NULL) WHERE t IS NOT NULL" + cond,
            args).fetchone()
        return float(r[0]) if r and r[0] is not None else None

    def landed_ids(self) -> list[int]:
        """Ids of the entries whose write reached the target (the changes the agent made)."""
        rows = self.db.execute("SELECT id FROM journal_entries WHERE landed=1 OR applied_ts IS NOT"
                               " NULL ORDER BY id").fetchall()
        return [int(r[0]) for r in rows]

    def changes_since(self, ts: float, *, applied_only: bool = False) -> int:
        """Changes planned at or after ``ts``; ``applied_only`` counts only ones that landed."""
        sql = "SELECT COUNT(*) FROM journal_entries WHERE ts>=?"
        if applied_only:
            sql += " AND applied_ts IS NOT NULL"
        return int(self.db.execute(sql, [ts]).fetchone()[0])

    # -- unmanaged targets ----------------------------------------------------------------
    def disable_target(self, knob: str, target: str, *, reason: str,
                       entry_id: int | None = None) -> None:
        with self._tx():
            self.db.execute(
                "INSERT INTO journal_unmanaged(knob, target, since_ts, reason, entry_id)"
                " VALUES (?,?,?,?,?) ON CONFLICT(knob, target) DO NOTHING",
                [knob, target, self.clock(), reason, entry_id],
            )

    def enable_target(self, knob: str, target: str) -> bool:
        """Operator only: hand a drifted target back to the agent. True if it was disabled."""
        with self._tx():
            n = self.db.execute("DELETE FROM journal_unmanaged WHERE knob=? AND target=?",
                                [knob, target]).rowcount
        return n > 0

    def unmanaged(self, knob: str | None = None, target: str | None = None) -> list[UnmanagedTarget]:
        where, args = self._where(knob=knob, target=target)
        sql = "SELECT knob, target, since_ts, reason, entry_id FROM journal_unmanaged"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [UnmanagedTarget(knob=r[0], target=r[1], since_ts=r[2], reason=r[3], entry_id=r[4])
                for r in self.db.execute(sql + " ORDER BY since_ts", args).fetchall()]

    def is_unmanaged(self, knob: str, target: str) -> bool:
        return bool(self.unmanaged(knob=knob, target=target))

    # -- crash recovery -------------------------------------------------------------------
    def reconcile(self, read_current: ReadCurrent, *, same: Same | None = None,
                  same_for: Callable[[str], Same] | None = None) -> list[ReconcileOutcome]:
        """Run at start: settle every planned/applied/verifying entry against the live value.

        ``same`` (or per-knob ``same_for(knob)``) compares normalized values; default ``==``.
        ``read_current`` returning None (or raising) means the target is gone.
        """
        out = []
        for e in self.unfinished():
            eq = same_for(e.knob) if same_for else (same or _eq)
            try:
                cur = read_current(e.knob, e.target)
            except Exception as err:  # noqa: BLE001 - a vanished target is not an agent error
                cur, why = None, f"unreadable at reconcile: {err}"
            else:
                why = "target gone at reconcile"
            if cur is None:
                e2 = self._transition(e.id, "failed", why, error=why)
                out.append(self._outcome(e2, "gone", cur, why))
            elif eq(cur, e.prior_value):
                if e.state == "planned":
                    why = "not applied before crash (live value is still the prior)"
                    e2 = self._transition(e.id, "failed", why, error=why, landed=0)
                    out.append(self._outcome(e2, "not_applied", cur, why))
                else:
                    # applied but back at prior: a rollback landed before the crash, or someone
                    # reverted it; either way nothing of ours is in place.
                    why = "live value already back at prior at reconcile"
                    e2 = self._transition(e.id, "rolled_back", why)
                    out.append(self._outcome(e2, "already_restored", cur, why))
            elif eq(cur, e.expected_value):
                if e.state == "planned":
                    # no read-back was recorded; expected_value falls back to ``proposed``
                    e2 = self._transition(e.id, "applied", "write landed before crash", landed=1)
                else:
                    e2 = e
                    self.note(e.id, "reconcile: value still ours; needs re-verification")
                out.append(self._outcome(e2, "reverify", cur, "value is ours; re-verify"))
            else:
                e2 = self.mark_drifted(e.id, cur)
                out.append(self._outcome(e2, "drift", cur, e2.error or "drift"))
        return out

    def note(self, eid: int, detail: str) -> None:
        """An event on the entry without a state change (e.g. a failed rollback attempt)."""
        with self._tx():
            st = self.db.execute("SELECT state FROM journal_entries WHERE id=?", [eid]).fetchone()[0]
            self._event(eid, st, st, detail, self.clock())

    @staticmethod
    def _outcome(e: JournalEntry, outcome: str, cur: str | None, detail: str) -> ReconcileOutcome:
        return ReconcileOutcome(entry_id=e.id, knob=e.knob, target=e.target, outcome=outcome,  # type: ignore[arg-type]
                                state=e.state, current=cur, detail=detail)


class WriteAhead:
    """Callable passed as ``Knob.change(before_write=...)``; ``.entry`` is the planned entry."""

    def __init__(self, journal: Journal, meta: dict[str, Any]) -> None:
        self.journal = journal
        self.meta = meta
        self.entry: JournalEntry | None = None

    def __call__(self, before: KnobState, proposed: str) -> None:
        self.entry = self.journal.plan(knob=before.knob, target=before.target, prior=before,
                                       proposed=proposed, **self.meta)
