"""Append-only, hash-chained audit trail of every decision the agent makes.

Each event's ``hash`` is SHA-256 over the previous event's hash plus the event's canonical JSON
(sorted keys, no whitespace, floats as ``repr``; ``test``/``detail`` hashed as their stored
canonical JSON text). Editing a field, deleting a row or reordering rows breaks the chain;
``verify`` names the first bad row. SQLite triggers refuse UPDATE/DELETE so ordinary use cannot
rewrite history; an attacker who drops the triggers or edits the file is caught by the chain.
A chain rewritten from the edit onwards is only caught against a head hash kept elsewhere
(``verify().head_hash``), which is why ``autotune audit verify`` prints it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import sqlite_utils
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autotune.errors import InvalidValue
from autotune.store.db import db_path, describe, ensure_wal, migrate

COMPONENT = "audit"
GENESIS = "0" * 64

# Kinds the agent writes; others matching KIND_RE are accepted so new stages need no change here.
KINDS = (
    "recommendation", "apply", "verify", "rollback", "refusal", "drift",
    "agent_start", "agent_stop", "ruleset_change", "model_change", "error",
)
KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Outcomes that close an action (counted once per action by the exporter / report).
FINAL_OUTCOMES = ("kept", "rolled_back", "failed")

# Column order is part of the on-disk format; the hash covers exactly these (minus the hashes).
COLUMNS = (
    "id", "ts", "kind", "action_id", "knob", "target", "service", "rule", "rationale",
    "before", "after", "outcome", "objective_before", "objective_after", "test", "detail",
    "prev_hash", "hash",
)
HASHED = COLUMNS[:-2]


def _v1(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE audit_events ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,"
        " action_id INTEGER, knob TEXT, target TEXT, service TEXT, rule TEXT, rationale TEXT,"
        " before TEXT, after TEXT, outcome TEXT, objective_before REAL, objective_after REAL,"
        " test TEXT, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)"
    )
    for col in ("ts", "action_id", "knob", "kind"):
        db.execute(f"CREATE INDEX audit_events_{col} ON audit_events({col})")
    for op in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER audit_events_no_{op.lower()} BEFORE {op} ON audit_events "
            "BEGIN SELECT RAISE(ABORT, 'audit trail is append-only'); END"
        )


MIGRATIONS = [_v1]


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, floats as repr; NaN/inf refused (they do not round-trip)."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except ValueError as err:
        raise InvalidValue(f"audit event: non-finite number in JSON field ({err}); store null instead") from err
    except TypeError as err:
        raise InvalidValue(f"audit event: value not JSON-serialisable ({err})") from err


def chain_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """hash = sha256(prev_hash + canonical JSON of the hashed columns), hex."""
    body = canonical_json({k: row[k] for k in HASHED})
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


class AuditEvent(BaseModel):
    """One audit row. ``id``/``prev_hash``/``hash`` are filled by ``AuditTrail.append``.

    Conventions (read by report/exporter/CLI): ``detail["symptoms"]`` = list of Symptom dicts,
    ``detail["duration_s"]`` = verification duration (verify events), ``test`` = the statistical
    test (name, statistic, p_value, n_before, n_after, ...), objective values in seconds.
    """

    model_config = ConfigDict(extra="forbid")

    id: int | None = None
    ts: float
    kind: str
    action_id: int | None = None
    knob: str | None = None
    target: str | None = None
    service: str | None = None
    rule: str | None = None
    rationale: str | None = None
    before: str | None = None
    after: str | None = None
    outcome: str | None = None
    objective_before: float | None = None
    objective_after: float | None = None
    test: dict[str, Any] | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    prev_hash: str | None = None
    hash: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        """The trail never fails on a value: a non-finite number (NaN/inf do not round-trip
        through JSON) becomes null and its place is listed in ``detail["non_finite"]``; a value
        JSON cannot hold (a model, a tuple, a set) becomes its JSON form or its text."""
        if not isinstance(data, dict):
            return data
        out, bad = dict(data), []
        for name in ("objective_before", "objective_after"):
            v = out.get(name)
            if isinstance(v, float) and not math.isfinite(v):
                out[name], _ = None, bad.append(name)
        for name in ("test", "detail"):
            if out.get(name) is not None:
                out[name] = _plain(out[name], name, bad)
        if bad:
            detail = dict(out.get("detail") or {})
            detail["non_finite"] = sorted(set(detail.get("non_finite") or []) | set(bad))
            out["detail"] = detail
        return out

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if not KIND_RE.match(v):
            raise ValueError(f"kind {v!r} must be lower_snake_case, e.g. one of {', '.join(KINDS)}")
        return v

    @field_validator("ts", "objective_before", "objective_after")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number (use null for 'unknown')")
        return v

    def row(self) -> dict[str, Any]:
        """The stored column values (test/detail as canonical JSON text)."""
        d = self.model_dump()
        d["test"] = None if self.test is None else canonical_json(self.test)
        d["detail"] = canonical_json(self.detail)
        return d

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "AuditEvent":
        d = dict(zip(COLUMNS, row))
        d["test"] = None if d["test"] is None else json.loads(d["test"])
        d["detail"] = json.loads(d["detail"]) if d["detail"] else {}
        return cls.model_validate(d)


def _plain(v: Any, where: str, bad: list[str]) -> Any:
    """``v`` as plain JSON values (see AuditEvent._storable); ``bad`` collects the places of
    non-finite numbers replaced by None."""
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        bad.append(where)
        return None
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, dict):
        return {str(k): _plain(x, f"{where}.{k}", bad) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        items = sorted(v, key=str) if isinstance(v, (set, frozenset)) else v
        return [_plain(x, f"{where}[{i}]", bad) for i, x in enumerate(items)]
    if isinstance(v, BaseModel):
        return _plain(v.model_dump(), where, bad)
    return str(v)


class VerifyReport(BaseModel):
    ok: bool
    checked: int
    first_bad_id: int | None = None
    reason: str | None = None
    head_hash: str = GENESIS  # hash of the last good row; keep a copy elsewhere to detect rewrites


class AuditTrail:
    """The ``audit_events`` table in a state DB from ``autotune.store.db.open_db``."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        migrate(db, COMPONENT, MIGRATIONS)
        self._lock = threading.Lock()  # one connection may be shared by the agent's threads

    # writing ------------------------------------------------------------------------------
    def append(self, event: AuditEvent) -> int:
        """Append one event atomically; returns its id. Safe across processes (BEGIN IMMEDIATE)."""
        return self.append_many([event])[-1]

    def append_many(self, events: Iterable[AuditEvent]) -> list[int]:
        """Append events in ONE transaction (all or none). Used by bulk import and the bench.

        Inside a caller's open transaction (e.g. the journal recording the same step) this
        joins it through a SAVEPOINT, so action row and audit row commit together.
        """
        evs = list(events)
        if not evs:
            return []
        conn = self.db.conn
        with self._lock:
            ensure_wal(self.db)
            outer = conn.in_transaction
            conn.execute("SAVEPOINT audit_append" if outer else "BEGIN IMMEDIATE")
            try:
                ids = self._insert_locked(evs)
            except BaseException:
                if outer:
                    conn.execute("ROLLBACK TO audit_append")
                    conn.execute("RELEASE audit_append")
                else:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("RELEASE audit_append" if outer else "COMMIT")
        return ids

    def _insert_locked(self, evs: list[AuditEvent]) -> list[int]:
        conn = self.db.conn
        last = conn.execute("SELECT id, hash FROM audit_events ORDER BY id DESC LIMIT 1").fetchone()
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='audit_events'").fetchone()
        next_id = max(last[0] if last else 0, seq[0] if seq else 0) + 1
        prev = last[1] if last else GENESIS
        ids = []
        placeholders = ",".join("?" * len(COLUMNS))
        for ev in evs:
            row = ev.row()
            row["id"] = next_id
            row["prev_hash"] = prev
            row["hash"] = chain_hash(prev, row)
            conn.execute(
                f"INSERT INTO audit_events({','.join(COLUMNS)}) VALUES ({placeholders})",
                [row[c] for c in COLUMNS],
            )
            ids.append(next_id)
            prev = row["hash"]
            next_id += 1
        return ids

    # reading ------------------------------------------------------------------------------
    def verify(self) -> VerifyReport:
        """Walk the chain from the first row: ids consecutive from 1, prev_hash links, hashes.

        A table or page that cannot be read raises StateError (naming the file): an unreadable
        trail is never reported as a verified one.
        """
        try:
            return self._verify()
        except sqlite3.DatabaseError as err:
            raise describe(err, db_path(self.db)) from err

    def _verify(self) -> VerifyReport:
        expected_id, prev, checked = 1, GENESIS, 0
        cur = self.db.conn.execute(f"SELECT {','.join(COLUMNS)} FROM audit_events ORDER BY id")
        for raw in cur:
            row = dict(zip(COLUMNS, raw))
            rid = row["id"]
            bad = None
            if rid != expected_id:
                bad = f"id gap: expected id {expected_id}, found {rid} (rows deleted)"
            elif row["prev_hash"] != prev:
                bad = "prev_hash does not match the previous row's hash (row deleted, inserted or reordered)"
            else:
                try:
                    ok = chain_hash(prev, row) == row["hash"]
                except InvalidValue:
                    ok = False
                if not ok:
                    bad = "hash mismatch: row content was edited"
            if bad:
                return VerifyReport(ok=False, checked=checked, first_bad_id=rid, reason=bad, head_hash=prev)
            prev, expected_id, checked = row["hash"], expected_id + 1, checked + 1
        seq = self.db.conn.execute("SELECT seq FROM sqlite_sequence WHERE name='audit_events'").fetchone()
        if seq and seq[0] > checked:
            return VerifyReport(
                ok=False, checked=checked, first_bad_id=checked + 1, head_hash=prev,
                reason=f"tail truncated: {seq[0]} events were appended, {checked} remain",
            )
        return VerifyReport(ok=True, checked=checked, head_hash=prev)

    def query(
        self,
        since: float | None = None,
        until: float | None = None,
        knob: str | None = None,
        target: str | None = None,
        outcome: str | None = None,
        rule: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
        *,
        action_id: int | None = None,
        service: str | None = None,
    ) -> list[AuditEvent]:
        """Matching events oldest first; with ``limit`` the most recent ``limit`` of them.

        ``since``/``until`` are unix seconds, inclusive; other filters are exact matches.
        """
        where, args = self._where(since, until, knob=knob, target=target, outcome=outcome,
                                  rule=rule, kind=kind, action_id=action_id, service=service)
        sql = f"SELECT {','.join(COLUMNS)} FROM audit_events{where} ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        rows = self.db.conn.execute(sql, args).fetchall()
        return [AuditEvent.from_row(r) for r in reversed(rows)]

    def counts(self, group_by: Sequence[str], **filters: Any) -> dict[tuple[Any, ...], int]:
        """COUNT(*) grouped by columns (e.g. ("kind", "knob", "outcome")) for exporter/report."""
        bad = [c for c in group_by if c not in HASHED]
        if bad:
            raise ValueError(f"cannot group audit events by {bad}")
        where, args = self._where(filters.pop("since", None), filters.pop("until", None), **filters)
        cols = ",".join(group_by)
        rows = self.db.conn.execute(
            f"SELECT {cols}, COUNT(*) FROM audit_events{where} GROUP BY {cols}", args
        ).fetchall()
        return {tuple(r[:-1]): int(r[-1]) for r in rows}

    def action_ids(self) -> set[int]:
        """Every journal entry id some event records (``action_id``)."""
        rows = self.db.conn.execute("SELECT DISTINCT action_id FROM audit_events"
                                    " WHERE action_id IS NOT NULL").fetchall()
        return {int(r[0]) for r in rows}

    def last(self) -> AuditEvent | None:
        row = self.db.conn.execute(
            f"SELECT {','.join(COLUMNS)} FROM audit_events ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return AuditEvent.from_row(row) if row else None

    @staticmethod
    def _where(since: float | None, until: float | None, **eq: Any) -> tuple[str, list[Any]]:
        clauses, args = [], []
        if since is not None:
            clauses.append("ts >= ?")
            args.append(float(since))
        if until is not None:
            clauses.append("ts <= ?")
            args.append(float(until))
        for col, val in eq.items():
            if val is None:
                continue
            if col not in HASHED:
                raise ValueError(f"unknown audit filter {col!r}")
            clauses.append(f"{col} = ?")
            args.append(val)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args
