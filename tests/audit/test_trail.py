from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from autotune.audit.trail import GENESIS, AuditEvent, AuditTrail, canonical_json, chain_hash
from autotune.store.db import open_db

from .conftest import T0, make_events


def _tamper(trail: AuditTrail, sql: str, args=()) -> None:
    """What an attacker does: drop the guard triggers, then edit."""
    conn = trail.db.conn
    conn.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
    conn.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
    conn.execute(sql, args)


def test_appended_chain_verifies_and_links(filled):
    rep = filled.verify()
    assert rep.ok and rep.first_bad_id is None
    assert rep.checked == len(make_events())
    evs = filled.query()
    assert evs[0].id == 1 and evs[0].prev_hash == GENESIS
    for a, b in zip(evs, evs[1:]):
        assert b.prev_hash == a.hash and b.id == a.id + 1
    assert rep.head_hash == evs[-1].hash


def test_hash_is_sha256_over_prev_and_canonical_json(filled):
    import hashlib

    ev = filled.query(limit=1)[0]
    row = ev.row()
    body = {k: v for k, v in row.items() if k not in ("prev_hash", "hash")}
    text = canonical_json(body)
    assert " " not in text.replace("cpu pressure", "")  # no whitespace separators
    assert hashlib.sha256((ev.prev_hash + text).encode()).hexdigest() == ev.hash


def test_triggers_refuse_update_and_delete(filled):
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        filled.db.conn.execute("UPDATE audit_events SET outcome='kept' WHERE id=3")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        filled.db.conn.execute("DELETE FROM audit_events WHERE id=3")
    assert filled.verify().ok


@pytest.mark.parametrize(
    "column,value",
    [("ts", T0 + 1.5), ("kind", "drift"), ("action_id", 99), ("knob", "thp2"), ("target", "/x"),
     ("service", "other"), ("rule", "r"), ("rationale", "made up"), ("before", "9"), ("after", "9"),
     ("outcome", "kept"), ("objective_before", 0.01), ("objective_after", 0.01),
     ("test", '{"p_value":0.5}'), ("detail", '{"duration_s":1.0}'), ("prev_hash", "f" * 64),
     ("hash", "e" * 64)],
)
def test_any_edited_field_is_detected_at_that_row(filled, column, value):
    _tamper(filled, f"UPDATE audit_events SET {column}=? WHERE id=5", [value])
    rep = filled.verify()
    assert not rep.ok
    assert rep.first_bad_id == 5
    assert rep.checked == 4


def test_edit_with_recomputed_row_hash_is_caught_at_next_row(filled):
    ev = filled.query(action_id=4, kind="verify")[0]  # hide a rollback
    assert ev.outcome == "rolled_back"
    row = ev.row() | {"outcome": "kept"}
    _tamper(filled, "UPDATE audit_events SET outcome='kept', hash=? WHERE id=?",
            [chain_hash(ev.prev_hash, row), ev.id])
    rep = filled.verify()
    assert not rep.ok and rep.first_bad_id == ev.id + 1
    assert "prev_hash" in rep.reason


@pytest.mark.parametrize("victim", [1, 7, "last"])
def test_deleted_row_is_detected(filled, victim):
    n = filled.verify().checked
    vid = n if victim == "last" else victim
    _tamper(filled, "DELETE FROM audit_events WHERE id=?", [vid])
    rep = filled.verify()
    assert not rep.ok
    assert rep.first_bad_id == (vid + 1 if victim != "last" else n)
    assert ("gap" in rep.reason) or ("truncated" in rep.reason)


def test_reordered_rows_are_detected(filled):
    # Swap the contents of rows 4 and 5 (ids stay in place) - what a reorder looks like on disk.
    cols = "ts,kind,action_id,knob,target,service,rule,rationale,before,after,outcome," \
           "objective_before,objective_after,test,detail,prev_hash,hash"
    conn = filled.db.conn
    r4 = conn.execute(f"SELECT {cols} FROM audit_events WHERE id=4").fetchone()
    r5 = conn.execute(f"SELECT {cols} FROM audit_events WHERE id=5").fetchone()
    sets = ",".join(f"{c}=?" for c in cols.split(","))
    _tamper(filled, f"UPDATE audit_events SET {sets} WHERE id=4", list(r5))
    conn.execute(f"UPDATE audit_events SET {sets} WHERE id=5", list(r4))
    rep = filled.verify()
    assert not rep.ok and rep.first_bad_id == 4


def test_renumbered_rows_are_detected(filled):
    # Delete row 3 and shift later ids down to hide the gap.
    _tamper(filled, "DELETE FROM audit_events WHERE id=3")
    filled.db.conn.execute("UPDATE audit_events SET id=id-1 WHERE id>3")
    rep = filled.verify()
    assert not rep.ok and rep.first_bad_id == 3


def test_file_edit_is_detected(tmp_path):
    path = tmp_path / "state.db"
    t = AuditTrail(open_db(path))
    t.append_many(make_events(3))
    t.append(AuditEvent(ts=T0 + 9e4, kind="apply", rationale="ORIGINAL-RATIONALE-TEXT"))
    t.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    t.db.conn.close()
    data = path.read_bytes()
    assert data.count(b"ORIGINAL-RATIONALE-TEXT") == 1
    path.write_bytes(data.replace(b"ORIGINAL-RATIONALE-TEXT", b"FORGED---RATIONALE-TEXT"))
    rep = AuditTrail(open_db(path)).verify()
    assert not rep.ok and "edited" in rep.reason


def test_appending_after_a_reopen_continues_the_chain(tmp_path):
    path = tmp_path / "state.db"
    AuditTrail(open_db(path)).append_many(make_events(2))
    t = AuditTrail(open_db(path))
    new_id = t.append(AuditEvent(ts=T0 + 1e5, kind="agent_stop"))
    assert new_id == len(make_events(2)) + 1
    assert t.verify().ok


def test_append_joins_an_open_transaction_and_rolls_back_with_it(trail):
    conn = trail.db.conn
    conn.execute("BEGIN IMMEDIATE")
    trail.append(AuditEvent(ts=T0, kind="apply"))
    conn.execute("ROLLBACK")
    assert trail.query() == []
    conn.execute("BEGIN IMMEDIATE")
    trail.append(AuditEvent(ts=T0, kind="apply"))
    conn.execute("COMMIT")
    assert trail.verify().ok and trail.verify().checked == 1


def test_bad_events_are_refused_clearly(trail):
    with pytest.raises(ValueError, match="lower_snake_case"):
        AuditEvent(ts=T0, kind="Apply!")
    with pytest.raises(ValueError, match="finite"):
        AuditEvent(ts=float("nan"), kind="verify")
    assert trail.query() == [] and trail.verify().ok


def test_the_trail_never_fails_on_a_value(trail):
    """Issue 24 #2: an inf reading made the recommendation and apply events of a change fail
    (a traceback, no row). A non-finite number is stored as null and its place listed; a value
    JSON cannot hold is stored as its JSON form or text; the chain verifies."""
    from autotune.types import Symptom

    sym = Symptom(name="cpu_pressure", metric="psi.cpu.some.avg10", value=float("inf"),
                  threshold=5.0, since_ts=T0)
    trail.append(AuditEvent(ts=T0, kind="recommendation", objective_before=float("nan"),
                            detail={"symptoms": [sym.model_dump()], "cpus": {3, 1}, "model": sym},
                            test={"p_value": float("-inf")}))
    (ev,) = trail.query()
    assert ev.objective_before is None and ev.test == {"p_value": None}
    assert ev.detail["symptoms"][0]["value"] is None and ev.detail["cpus"] == [1, 3]
    assert ev.detail["model"]["value"] is None
    assert ev.detail["non_finite"] == ["detail.model.value", "detail.symptoms[0].value",
                                       "objective_before", "test.p_value"]
    assert trail.verify().ok and trail.verify().checked == 1


def test_query_filters_return_exactly_the_matching_events(filled):
    evs = make_events()
    got = filled.query(knob="thp")
    assert [e.id for e in got] == [i + 1 for i, e in enumerate(evs) if e.knob == "thp"]
    assert all(e.outcome == "rolled_back" for e in filled.query(outcome="rolled_back"))
    assert len(filled.query(outcome="rolled_back")) == sum(e.outcome == "rolled_back" for e in evs)
    since, until = T0 + 1200, T0 + 3000
    got = filled.query(since=since, until=until, kind="verify")
    want = [i + 1 for i, e in enumerate(evs) if since <= e.ts <= until and e.kind == "verify"]
    assert [e.id for e in got] == want and want
    assert [e.id for e in filled.query(limit=3)] == [len(evs) - 2, len(evs) - 1, len(evs)]
    assert {e.kind for e in filled.query(action_id=4)} == {"recommendation", "apply", "verify", "rollback"}
    assert filled.query(target="/nope") == []
    assert filled.query(rule="rule_thp") == filled.query(knob="thp")


def test_counts_group_by(filled):
    c = filled.counts(("kind", "outcome"))
    assert c[("rollback", "rolled_back")] == 3
    with pytest.raises(ValueError):
        filled.counts(("hash; DROP TABLE x",))


APPENDER = r"""
import sys, time
from autotune.audit.trail import AuditEvent, AuditTrail
from autotune.store.db import open_db
t = AuditTrail(open_db(sys.argv[1]))
i = 0
while True:
    t.append(AuditEvent(ts=time.time(), kind="apply", action_id=i, rationale="x" * 200,
                        detail={"writer": sys.argv[2], "i": i}))
    i += 1
    if i == 5:
        print("ready", flush=True)
"""


def _spawn(path, tag):
    return subprocess.Popen([sys.executable, "-c", APPENDER, str(path), tag],
                            stdout=subprocess.PIPE, text=True)


def test_kill_9_during_appends_leaves_a_verifying_chain(tmp_path):
    path = tmp_path / "state.db"
    AuditTrail(open_db(path))  # migrate first so writers don't race on it
    for _ in range(3):
        p = _spawn(path, "k")
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.05 + 0.07 * _)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    t = AuditTrail(open_db(path))
    rep = t.verify()
    assert rep.ok, rep
    assert rep.checked >= 15


def test_concurrent_processes_append_one_chain(tmp_path):
    path = tmp_path / "state.db"
    AuditTrail(open_db(path))
    procs = [_spawn(path, tag) for tag in ("a", "b", "c")]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    time.sleep(0.4)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    t = AuditTrail(open_db(path))
    rep = t.verify()
    assert rep.ok, rep
    writers = {e.detail["writer"] for e in t.query()}
    assert writers == {"a", "b", "c"}
