from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from autotune.audit.export import from_csv, from_json, parse_when
from autotune.audit.trail import AuditEvent, AuditTrail, chain_hash
from autotune.cli.main import app
from autotune.store.db import open_db

from .conftest import T0, make_events

runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()


@pytest.fixture
def state(tmp_path):
    path = tmp_path / "state.db"
    AuditTrail(open_db(path)).append_many(make_events())
    return path


def run(state, *args):
    return runner.invoke(app, ["audit", "--state", str(state), *args])


def test_parse_when_relative_iso_and_unix():
    now = 1_000_000.0
    assert parse_when("2h", now) == now - 7200
    assert parse_when("7d", now) == now - 7 * 86400
    assert parse_when("30m", now) == now - 1800
    assert parse_when("1700000000", now) == 1_700_000_000.0
    assert parse_when("2023-11-14T22:13:20Z", now) == 1_700_000_000.0
    with pytest.raises(ValueError, match="relative age"):
        parse_when("yesterday", now)


def test_list_json_filters_exactly(state):
    r = run(state, "list", "--json", "--knob", "thp", "--outcome", "rolled_back", "--limit", "0")
    assert r.exit_code == 0, r.output
    got = from_json(r.stdout)
    want = [e for e in make_events() if e.knob == "thp" and e.outcome == "rolled_back"]
    assert len(got) == len(want) > 0
    assert all(e.knob == "thp" and e.outcome == "rolled_back" for e in got)


def test_list_since_until_and_kind(state):
    since, until = T0 + 1200, T0 + 3000
    r = run(state, "list", "--json", "--since", str(since), "--until",
            str(until), "--kind", "apply")
    got = from_json(r.stdout)
    assert [e.ts for e in got] == [e.ts for e in make_events() if since <= e.ts <= until and e.kind == "apply"]


def test_relative_since_excludes_old_events(state):
    AuditTrail(open_db(state)).append(AuditEvent(ts=time.time() - 60, kind="drift", knob="thp"))
    got = from_json(run(state, "list", "--json", "--since", "2h").stdout)
    assert [e.kind for e in got] == ["drift"]


def test_json_and_csv_exports_round_trip_and_rehash(state):
    stored = AuditTrail(open_db(state)).query()
    for flag, parse in (("--json", from_json), ("--csv", from_csv)):
        r = run(state, "list", flag, "--limit", "0")
        assert r.exit_code == 0
        back = parse(r.stdout)
        assert back == stored
        for e in back:  # an export can be verified offline
            assert chain_hash(e.prev_hash, e.row()) == e.hash


def test_table_output_and_bad_options(state):
    r = run(state, "list", "--knob", "thp")
    assert r.exit_code == 0 and "audit events" in r.stdout and "thp" in r.stdout
    assert run(state, "list", "--json", "--csv").exit_code == 2
    r = run(state, "list", "--since", "last tuesday")
    assert r.exit_code == 2 and "--since" in r.stderr


def test_show_tells_one_actions_story(state):
    r = run(state, "show", "4")
    assert r.exit_code == 0, r.output
    for word in ("recommendation", "apply", "verify", "rollback", "cpu_pressure", "mann_whitney_u",
                 "cpu pressure 42 %", "1 → 2"):
        assert word in r.stdout, word
    assert run(state, "show", "999").exit_code == 1
    assert len(json.loads(run(state, "show", "4", "--json").stdout)) == 4


def test_verify_exit_codes_name_the_first_bad_row(state):
    r = run(state, "verify")
    assert r.exit_code == 0 and "OK: 40 events" in r.stdout
    db = open_db(state)
    db.conn.execute("DROP TRIGGER audit_events_no_delete")
    db.conn.execute("DELETE FROM audit_events WHERE id=17")
    r = run(state, "verify")
    assert r.exit_code == 1
    assert "event id 18" in r.stderr and "gap" in r.stderr
    assert json.loads(run(state, "verify", "--json").stdout)["first_bad_id"] == 18


def test_missing_state_is_a_clear_error(tmp_path):
    r = run(tmp_path / "nope.db", "verify")
    assert r.exit_code == 2 and "no state database" in r.stderr
    assert not (tmp_path / "nope.db").exists()


def test_report_command_writes_html(state, tmp_path):
    out = tmp_path / "r.html"
    r = run(state, "report", "--html", str(out), "--since", str(T0 + 5000))
    assert r.exit_code == 0, r.output
    assert out.read_text().count("class='action'") == sum(
        1 for a in range(1, 13) if T0 + a * 600 >= T0 + 5000)


def _journaled(path, n: int, *, audit: bool):
    """``n`` changes that landed, journaled; with ``audit`` each gets its apply event."""
    from autotune.journal.journal import Journal
    from autotune.knobs.base import KnobState

    db = open_db(path)
    j, trail = Journal(db), AuditTrail(db)
    ids = []
    for i in range(n):
        prior = KnobState(knob="cgroup.cpu_quota", target="/llm", value=str(i), raw={})
        e = j.plan(knob="cgroup.cpu_quota", target="/llm", prior=prior, proposed=str(i + 1), rule="r")
        j.mark_applied(e.id, {"value": str(i + 1)})
        if audit:
            trail.append(AuditEvent(ts=T0 + i, kind="apply", action_id=e.id, outcome="applied"))
        ids.append(e.id)
    trail.append(AuditEvent(ts=T0 + n, kind="agent_stop"))
    db.conn.close()
    return ids


def test_verify_checks_the_trail_against_the_journal(tmp_path):
    """Issue 24: a change applied and journaled whose audit events failed left a trail that
    verified OK. ``audit verify`` now names every journaled change with no audit event."""
    ok, gap = tmp_path / "ok.db", tmp_path / "gap.db"
    _journaled(ok, 3, audit=True)
    assert run(ok, "verify").exit_code == 0
    ids = _journaled(gap, 2, audit=False)
    r = run(gap, "verify")
    assert r.exit_code == 1 and "INCOMPLETE: 2 journaled change(s)" in r.stderr
    assert f"entry {ids[0]} (cgroup.cpu_quota on /llm, applied)" in r.stderr
    doc = json.loads(run(gap, "verify", "--json").stdout)
    assert doc["ok"] is False and doc["unaudited"] == ids


def test_verify_refuses_a_db_whose_journal_table_was_dropped(tmp_path):
    """Issue 24 #4: ``audit verify`` said OK on a DB whose journal table was dropped."""
    path = tmp_path / "state.db"
    _journaled(path, 1, audit=True)
    db = open_db(path)
    db.conn.execute("DROP TABLE journal_events")
    db.conn.close()
    from autotune.errors import StateError

    r = run(path, "verify")  # `autotune` (cli.main) prints a StateError as one line, exit 2
    assert isinstance(r.exception, StateError) and "journal_events are missing" in str(r.exception)
