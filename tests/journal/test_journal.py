from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from autotune.knobs.base import KnobState
from autotune.journal.journal import Journal, JournalError
from autotune.store.db import open_db, schema_version
from autotune.types import VerifyResult


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def db(tmp_path):
    d = open_db(tmp_path / "state.db")
    yield d
    d.conn.close()


@pytest.fixture
def j(db, clock):
    return Journal(db, clock=clock)


def prior(value: str, target: str = "/autotune/batch") -> KnobState:
    return KnobState(knob="cgroup.cpu_quota", target=target, value=value,
                     raw={f"/sys/fs/cgroup/cpu{target}/cpu.cfs_quota_us": "-1"})


def plan(j: Journal, old: str = "max", new: str = "1.5", target: str = "/autotune/batch"):
    return j.plan(knob="cgroup.cpu_quota", target=target, prior=prior(old, target), proposed=new,
                  rule="throttle_neighbour", rationale="llm starved", service="batch",
                  symptoms=[{"name": "cpu_pressure", "value": 42.0}])


def test_migration_idempotent_versioned(db):
    Journal(db)
    Journal(db)
    assert schema_version(db, "journal") == 3  # v2: verify_plan, v3: the ``landed`` column


def test_lifecycle_records_every_transition(j, clock):
    e = plan(j)
    assert e.state == "planned" and e.prior.raw and e.prior_value == "max"
    clock.t += 1
    j.mark_applied(e.id, prior("1.5"))
    clock.t += 1
    j.mark_verifying(e.id, objective_before={"name": "latency_p95", "median": 0.5})
    clock.t += 30
    done = j.mark_kept(e.id, result={"verdict": "improved"}, objective_after={"median": 0.3})
    assert done.state == "kept" and done.applied_ts == 1001 and done.finished_ts == 1032
    assert done.verify_result == VerifyResult(verdict="improved")
    assert [ev.to_state for ev in j.events(e.id)] == ["planned", "applied", "verifying", "kept"]
    with pytest.raises(JournalError, match="cannot go from kept to verifying"):
        j.mark_verifying(e.id)


def test_cooldown_queries(j, clock):
    a = plan(j, target="/a")
    assert j.in_flight("/a").id == a.id and j.in_flight("/b") is None
    j.mark_applied(a.id, prior("1.5", "/a"))
    j.mark_kept(a.id)
    assert j.in_flight("/a") is None
    clock.t = 2000.0
    b = plan(j, target="/b")
    j.mark_failed(b.id, "EINVAL")
    assert j.last_change_ts(target="/a") == 1000.0
    assert j.last_change_ts(rule="throttle_neighbour") == 2000.0
    assert j.last_change_ts(knob="sysctl") is None
    assert j.changes_since(1500.0) == 1
    assert j.changes_since(0, applied_only=True) == 1


def test_kill9_right_after_plan_keeps_entry(tmp_path):
    path = tmp_path / "state.db"
    code = textwrap.dedent(f"""
        import os, signal, sys
        from autotune.store.db import open_db
        from autotune.journal.journal import Journal
        j = Journal(open_db({str(path)!r}))
        e = j.plan(knob="sysctl", target="vm.swappiness", prior={{"knob": "sysctl",
                   "target": "vm.swappiness", "value": "60", "raw": {{"/proc/sys/vm/swappiness": "60"}}}},
                   proposed="10", rule="r", rationale="why")
        print(e.id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr
    eid = int(p.stdout.split()[0])
    j = Journal(open_db(path))
    e = j.get(eid)
    assert e.state == "planned" and e.prior.raw == {"/proc/sys/vm/swappiness": "60"}
    out = j.reconcile(lambda knob, target: "60")
    assert out[0].outcome == "not_applied" and j.get(eid).state == "failed"


def test_reconcile_prior_proposed_drift_gone(j):
    a = plan(j, target="/a")  # crashed before write
    b = plan(j, target="/b")  # crashed after write, before mark_applied
    c = plan(j, target="/c")
    j.mark_applied(c.id, prior("1.5", "/c"))
    j.mark_verifying(c.id)  # crashed while verifying
    d = plan(j, target="/d")
    j.mark_applied(d.id, prior("1.5", "/d"))  # someone else set 0.7 meanwhile
    e = plan(j, target="/e")  # cgroup removed
    live = {"/a": "max", "/b": "1.5", "/c": "1.5", "/d": "0.7", "/e": None}
    out = {o.target: o for o in j.reconcile(lambda knob, t: live[t])}
    assert out["/a"].outcome == "not_applied" and j.get(a.id).state == "failed"
    assert "not applied before crash" in j.get(a.id).error
    assert out["/b"].outcome == "reverify" and j.get(b.id).state == "applied"
    assert out["/c"].outcome == "reverify" and j.get(c.id).state == "verifying"
    assert out["/d"].outcome == "drift" and j.get(d.id).state == "drifted"
    assert out["/e"].outcome == "gone" and j.get(e.id).state == "failed"
    assert [(u.knob, u.target) for u in j.unmanaged()] == [("cgroup.cpu_quota", "/d")]
    assert j.is_unmanaged("cgroup.cpu_quota", "/d")
    again = j.reconcile(lambda knob, t: live[t])  # only ours-in-place entries remain open
    assert sorted((o.target, o.outcome) for o in again) == [("/b", "reverify"), ("/c", "reverify")]
    with pytest.raises(JournalError, match="unmanaged"):
        plan(j, target="/d")
    assert j.enable_target("cgroup.cpu_quota", "/d") and not j.is_unmanaged("cgroup.cpu_quota", "/d")
    assert not j.enable_target("cgroup.cpu_quota", "/d")
    assert plan(j, target="/d").state == "planned"


def test_reconcile_uses_knob_tolerance(j):
    a = plan(j, old="max", new="1.5")
    out = j.reconcile(lambda k, t: "1.50", same=lambda x, y: x == y or (
        x not in (None, "max") and y not in (None, "max") and abs(float(x) - float(y)) < 1e-6))
    assert out[0].outcome == "reverify" and j.get(a.id).state == "applied"


def test_reconcile_applied_back_at_prior_is_rolled_back(j):
    a = plan(j)
    j.mark_applied(a.id, prior("1.5"))
    out = j.reconcile(lambda k, t: "max")
    assert out[0].outcome == "already_restored" and j.get(a.id).state == "rolled_back"


def test_write_ahead_hook_plans_before_write(j):
    from autotune.host import Host
    from autotune.knobs.base import Knob

    order = []

    class Fake(Knob):
        name = "fake"
        value = "a"

        def read(self, host, target):
            return KnobState(knob="fake", target=target, value=self.value, raw={"/x": self.value})

        def validate(self, host, target, value):
            return value

        def write(self, host, target, value):
            order.append(("write", j.entries()[-1].state))
            self.value = value

    hook = j.write_ahead(rule="r", rationale="because")
    res = Fake().change(Host.__new__(Host), "t", "b", before_write=hook)
    assert res.changed and order == [("write", "planned")]
    assert hook.entry.prior == KnobState(knob="fake", target="t", value="a", raw={"/x": "a"})


def test_rows_written_before_the_journal_was_typed_still_load(j, db):
    """prior/applied without knob/target, a verify_result with only some fields, an unknown
    key and a legacy objective name: all load as KnobState / VerifyResult."""
    import json

    db.execute(
        "INSERT INTO journal_entries (ts, knob, target, service, rule, prior, proposed, applied,"
        " state, objective_before, verify_result, planned_ts, updated_ts) VALUES"
        " (1, 'sysctl', 'vm.swappiness', NULL, 'r', ?, '10', ?, 'kept', ?, ?, 1, 1)",
        [json.dumps({"value": "60", "raw": {"/proc/sys/vm/swappiness": "60\n"}}),
         json.dumps({"value": "10"}), json.dumps({"objective": "psi", "median": 20.0, "n": 9}),
         json.dumps({"verdict": "improved", "effect": -0.3, "objective": "psi", "old_key": 1})])
    [e] = j.entries()
    assert e.prior == KnobState(knob="sysctl", target="vm.swappiness", value="60",
                                raw={"/proc/sys/vm/swappiness": "60\n"})
    assert e.applied.value == "10" and e.expected_value == "10" and e.prior_value == "60"
    assert e.verify_result == VerifyResult(verdict="improved", effect=-0.3, objective="psi")
    assert e.objective_before["objective"] == "psi"


def test_partial_results_and_states_are_validated_on_write(j):
    a = plan(j)
    j.mark_applied(a.id, {"value": "1.5"})  # a bare dict: knob/target are the entry's
    assert j.get(a.id).applied == KnobState(knob="cgroup.cpu_quota", target="/autotune/batch", value="1.5")
    with pytest.raises(ValueError):
        j.mark_kept(a.id, result={"verdict": "great"})
    assert j.get(a.id).state == "applied"


def test_origin_is_the_value_before_the_changes_still_in_effect(j):
    assert j.origin("cgroup.cpu_quota", "/autotune/batch") is None  # never changed
    a = plan(j, "0.5", "1")
    assert j.origin("cgroup.cpu_quota", "/autotune/batch") is None  # planned, not landed yet
    j.mark_applied(a.id, prior("1", "/autotune/batch"))
    j.mark_kept(a.id)
    b = plan(j, "1", "1.5")
    j.mark_applied(b.id, prior("1.5", "/autotune/batch"))
    assert j.origin("cgroup.cpu_quota", "/autotune/batch") == "0.5"  # before A, not B
    j.mark_rolled_back(b.id)
    assert j.origin("cgroup.cpu_quota", "/autotune/batch") == "0.5"  # A still in effect
    j.mark_rolled_back(a.id)
    assert j.origin("cgroup.cpu_quota", "/autotune/batch") is None  # nothing left in effect
    c = plan(j, "0.5", "2")
    j.mark_applied(c.id, prior("2", "/autotune/batch"))
    j.mark_drifted(c.id, "0.7")
    j.enable_target("cgroup.cpu_quota", "/autotune/batch")
    d = plan(j, "0.7", "1")
    j.mark_applied(d.id, prior("1", "/autotune/batch"))
    assert j.origin("cgroup.cpu_quota", "/autotune/batch") == "0.7"  # the operator's value


def test_lockout_after_a_give_back_that_broke_the_slo(j, clock):
    from autotune.types import VerifyPlan, VerifyResult

    assert j.lockout_until("batch") is None
    e = j.plan(knob="cgroup.cpu_quota", target="/autotune/batch", prior=prior("1.5", "/autotune/batch"),
               proposed="1.2", rule="give-back", service="batch",
               verify_plan=VerifyPlan(mode="guard", lockout_s=30))
    assert j.get(e.id).verify_plan.mode == "guard"
    j.mark_applied(e.id, prior("1.2", "/autotune/batch"))
    j.mark_rolled_back(e.id, result=VerifyResult(verdict="violated"))
    done = j.get(e.id).finished_ts
    assert j.lockout_until("batch") == pytest.approx(done + 30)


def test_v3_migration_fills_landed_for_old_rows(tmp_path):
    """A journal written before the ``landed`` column: applied rows landed, failures known to
    be refused before writing did not, other failures stay unknown."""
    from autotune.journal import journal as jm
    from autotune.store.db import migrate

    db = open_db(tmp_path / "old.db")
    migrate(db, "journal", jm.MIGRATIONS[:1])
    rows = [("applied", 5.0, None), ("failed", None, "refused: out of range"),
            ("failed", None, "nothing written: live value already '1'"),
            ("failed", None, "HostError: helper closed the connection"), ("planned", None, None)]
    for state, ats, error in rows:
        db.execute("INSERT INTO journal_entries (ts, knob, target, rule, prior, proposed, state,"
                   " error, planned_ts, applied_ts, updated_ts) VALUES (1,'k','/t','r',?,?,?,?,1,?,1)",
                   ['{"value": "1"}', "2", state, error, ats])
    j = Journal(db)
    assert [e.landed for e in j.entries()] == [True, False, False, None, None]
    assert schema_version(db, "journal") == 3


def test_landed_flags_follow_the_transitions(j):
    a = plan(j)
    assert a.landed is None
    assert j.mark_applied(a.id, prior("1.5")).landed is True
    with pytest.raises(JournalError, match="landed"):
        j.mark_failed(a.id, "x", landed=False)
    assert j.mark_failed(a.id, "verification keeps failing").landed is True  # stays landed
    b = plan(j, target="/b")
    assert j.set_landed(b.id, False, "a reading shows the prior").landed is False
    assert j.events(b.id)[-1].detail == "a reading shows the prior"
    c = plan(j, target="/c")
    c = j.mark_failed(c.id, "wrote 1.5 read back 1.4", landed=True, applied=prior("1.4", "/c"))
    assert c.landed is True and c.expected_value == "1.4"
    assert j.mark_drifted(c.id, "0.7", disable=False).state == "drifted"  # failed -> drifted
    assert not j.is_unmanaged("cgroup.cpu_quota", "/c")


def test_reconcile_records_whether_the_write_landed(j):
    a = plan(j, target="/a")
    b = plan(j, target="/b")
    j.reconcile(lambda knob, t: {"/a": "max", "/b": "1.5"}[t])
    assert (j.get(a.id).landed, j.get(b.id).landed) == (False, True)


def test_origin_after_someone_else_set_the_target_is_their_value(j):
    """A change made over another value than the agent left starts a new run (chain.py), drift
    recorded or not; an undone run is over even when the operator sets a value it once held."""
    a = plan(j, "0.5", "1")
    j.mark_kept(j.mark_applied(a.id, prior("1", "/autotune/batch")).id)
    b = plan(j, "0.7", "1.5")  # the operator had set 0.7
    j.mark_applied(b.id, prior("1.5", "/autotune/batch"))
    assert j.origin("cgroup.cpu_quota", "/autotune/batch") == "0.7"
    j.mark_rolled_back(b.id)
    j.mark_rolled_back(a.id)
    c = plan(j, "1", "2")  # the operator set 1 (a's value) after both were undone
    j.mark_applied(c.id, prior("2", "/autotune/batch"))
    assert j.origin("cgroup.cpu_quota", "/autotune/batch") == "1"
