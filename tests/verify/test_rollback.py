"""The one rollback routine (verify/rollback.py) on a journal in a tmp DB and a fake actuator:
the plan, newest-first undo of stacked changes, drift, gone targets, failures, audit records.
(The plan and rollback-all tests moved here from tests/journal with the code.)"""

from __future__ import annotations

import pytest

from autotune.errors import HostError
from autotune.journal.journal import Journal
from autotune.knobs.base import ChangeResult, KnobState
from autotune.store.db import open_db
from autotune.verify.rollback import Rollback, candidates, plan


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeActuator:
    """Live values in a dict keyed by target; ``restore`` may be made to fail."""

    dry_run = False

    def __init__(self, live: dict[str, str | None], fail: Exception | None = None) -> None:
        self.live = live
        self.fail = fail
        self.writes: list[str] = []

    def same(self, knob):
        return lambda a, b: a == b

    def read(self, knob, target):
        v = self.live.get(target)
        return None if v is None else KnobState(knob=knob, target=target, value=v, raw={target: v})

    def restore(self, knob, target, state, *, force=False):
        if self.fail is not None:
            raise self.fail
        self.writes.append(state.value)
        before = self.read(knob, target)
        self.live[target] = state.value
        return ChangeResult(knob=knob, target=target, before=before, proposed=state.value,
                            after=self.read(knob, target), changed=True)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def j(tmp_path, clock):
    db = open_db(tmp_path / "state.db")
    yield Journal(db, clock=clock)
    db.conn.close()


def prior(value: str, target: str = "/a") -> KnobState:
    return KnobState(knob="cgroup.cpu_quota", target=target, value=value, raw={target: value})


def change(j: Journal, old: str, new: str, target: str = "/a", *, keep: bool = False):
    e = j.plan(knob="cgroup.cpu_quota", target=target, prior=prior(old, target), proposed=new,
               rule="r", service="batch")
    j.mark_applied(e.id, prior(new, target))
    if keep:
        j.mark_kept(e.id)
    return j.get(e.id)


def test_plan_skips_drift_unless_forced(j):
    e = change(j, "max", "1.5")
    assert plan(e, "1.5").action == "restore"
    assert plan(e, "1.5").restore.value == "max"
    assert plan(e, "max").action == "nothing"
    assert plan(e, None).action == "nothing"
    skip = plan(e, "0.7")
    assert skip.action == "skip_drift" and skip.restore is None
    forced = plan(e, "0.7", force=True)
    assert forced.action == "restore" and forced.restore.value == "max"


def test_all_restores_the_first_prior_once_per_target(j, clock):
    a = change(j, "max", "1.5", keep=True)
    clock.t += 10
    b = change(j, "1.5", "1.0", keep=True)
    act = FakeActuator({"/a": "1.0"})
    events: list[tuple] = []
    rb = Rollback(j, act, audit=lambda kind, **f: events.append((kind, f["action_id"], f["outcome"])),
                  by="operator", via="local")
    out = rb.all()
    assert [o.entry_id for o in out] == [b.id, a.id]
    assert [o.result for o in out] == ["restored", "restored"]
    # one write per target: the value before the first change, never an intermediate prior
    assert act.writes == ["max"] and act.live["/a"] == "max"
    assert {j.get(a.id).state, j.get(b.id).state} == {"rolled_back"}
    assert events == [("rollback", b.id, "rolled_back"), ("rollback", a.id, "rolled_back")]
    assert "operator rollback via local" in j.events(a.id)[-1].detail
    assert candidates(j) == [] and rb.all() == []


def test_restore_failure_is_journaled_and_the_entry_stays(j):
    a = change(j, "max", "1.5")
    events: list[str] = []
    (o,) = Rollback(j, FakeActuator({"/a": "1.5"}, fail=HostError("EPERM")),
                    audit=lambda kind, **f: events.append(kind), by="stop").all()
    assert o.result == "failed" and "EPERM" in o.reason
    assert j.get(a.id).state == "applied"
    assert "rollback failed" in j.events(a.id)[-1].detail
    assert events == ["error"]


def test_abort_on_stops_the_whole_run(j):
    change(j, "max", "1.5")
    rb = Rollback(j, FakeActuator({"/a": "1.5"}, fail=HostError("socket closed")), by="operator",
                  abort_on=(HostError,))
    with pytest.raises(HostError, match="socket closed"):
        rb.all()


def test_drift_is_skipped_marked_and_audited(j):
    a = change(j, "max", "1.5", keep=True)
    events: list[tuple] = []
    (o,) = Rollback(j, FakeActuator({"/a": "0.7"}), audit=lambda kind, **f: events.append(
        (kind, f["outcome"], f["before"])), by="operator").all()
    assert o.result == "skipped_drift" and "not clobbering" in o.reason
    assert j.get(a.id).state == "drifted" and j.is_unmanaged("cgroup.cpu_quota", "/a")
    assert events == [("drift", "skipped", "0.7")]


def test_back_at_prior_settles_an_in_place_entry(j):
    a = change(j, "max", "1.5", keep=True)
    act = FakeActuator({"/a": "max"})
    (o,) = Rollback(j, act, by="operator").all()
    assert o.result == "already_prior" and act.writes == []
    assert j.get(a.id).state == "rolled_back"


def test_gone_target_fails_an_unfinished_entry_and_leaves_a_kept_one(j):
    a = change(j, "max", "1.5")
    b = change(j, "max", "1.5", target="/b", keep=True)
    out = Rollback(j, FakeActuator({}), by="stop").all()
    assert [o.result for o in out] == ["gone", "gone"]
    assert j.get(a.id).state == "failed" and j.get(b.id).state == "kept"


def test_single_entry_refused_under_a_newer_change(j, clock):
    old = change(j, "max", "1.5")
    clock.t += 1
    change(j, "1.5", "1.0")
    act = FakeActuator({"/a": "1.0"})
    (o,) = Rollback(j, act, by="operator").entries([old], single=True)
    assert o.result == "blocked" and "newer entry" in o.reason and act.writes == []
    # a newer PLANNED entry whose write may have landed blocks too (it is settled first)
    clock.t += 1
    j.plan(knob="cgroup.cpu_quota", target="/a", prior=prior("1.0"), proposed="0.5", rule="r")
    act.live["/a"] = "0.5"  # the crash came after the write
    (o,) = Rollback(j, act, by="operator").entries([old], single=True)
    assert o.result == "blocked" and "newer entry 3" in o.reason and act.writes == []
    assert j.get(3).state == "applied" and j.get(3).landed is True


def test_read_back_that_is_not_the_prior_fails(j):
    change(j, "max", "1.5")

    class Stuck(FakeActuator):
        def restore(self, knob, target, state, *, force=False):
            self.writes.append(state.value)  # the write "lands" but the value stays

    (o,) = Rollback(j, Stuck({"/a": "1.5"}), by="operator").all()
    assert o.result == "failed" and "reads back '1.5'" in o.reason


def test_settle_and_figures_reach_journal_and_audit(j):
    from autotune.types import VerifyResult

    a = change(j, "max", "1.5")
    j.mark_verifying(a.id)
    events: list[dict] = []
    result = VerifyResult(verdict="regressed", effect=0.5)
    o = Rollback(j, FakeActuator({"/a": "1.5"}), audit=lambda kind, **f: events.append(f),
                 by="verify").entry(j.get(a.id), why="verification regressed",
                                    settle={"result": result, "objective_after": {"median": 3.0}},
                                    figures={"objective_before": 2.0, "objective_after": 3.0})
    assert o.result == "restored" and o.exact is True
    e = j.get(a.id)
    assert e.state == "rolled_back" and e.verify_result == result
    assert e.objective_after == {"median": 3.0}
    [ev] = events
    assert ev["objective_after"] == 3.0 and ev["detail"]["by"] == "verify"
    assert ev["detail"]["reason"].startswith("verification regressed; ")


# -- issue 10, defect 1: a planned entry whose write may have landed is settled by reading ---
def planned(j: Journal, old: str, new: str, target: str = "/a"):
    """The agent died after planning (and maybe after writing), before mark_applied."""
    return j.plan(knob="cgroup.cpu_quota", target=target, prior=prior(old, target), proposed=new,
                  rule="r")


def audit_log(events: list):
    return lambda kind, **f: events.append((kind, f["action_id"], f["outcome"]))


def test_planned_whose_write_landed_is_rolled_back_by_all(j):
    e = planned(j, "1.8", "0.2")
    assert [c.id for c in candidates(j)] == [e.id]  # not "nothing to roll back"
    act = FakeActuator({"/a": "0.2"})  # the crash came right after the helper's write
    events: list = []
    (o,) = Rollback(j, act, audit=audit_log(events), by="operator").all()
    assert o.result == "restored" and act.writes == ["1.8"] and act.live["/a"] == "1.8"
    e = j.get(e.id)
    assert e.state == "rolled_back" and e.landed is True and e.applied_ts is not None
    assert events == [("reconcile", e.id, "applied"), ("rollback", e.id, "rolled_back")]
    assert candidates(j) == [] and Rollback(j, act, by="operator").all() == []


def test_planned_whose_write_never_landed_is_failed_not_applied(j):
    e = planned(j, "1.8", "0.2")
    act = FakeActuator({"/a": "1.8"})  # the crash came before the write
    events: list = []
    (o,) = Rollback(j, act, audit=audit_log(events), by="operator").all()
    assert o.result == "not_applied" and act.writes == []
    e = j.get(e.id)
    assert e.state == "failed" and e.landed is False and "not applied" in e.error
    assert events == [("reconcile", e.id, "not_applied")]
    assert candidates(j) == [] and Rollback(j, act, by="operator").all() == []


def test_planned_with_another_value_is_drift_left_alone_unless_forced(j):
    e = planned(j, "1.8", "0.2")
    act = FakeActuator({"/a": "0.7"})  # an operator set 0.7 (or the write left something else)
    events: list = []
    rb = Rollback(j, act, audit=audit_log(events), by="operator")
    (o,) = rb.all()
    assert o.result == "skipped_drift" and act.writes == [] and "not clobbering" in o.reason
    assert j.get(e.id).state == "drifted" and j.is_unmanaged("cgroup.cpu_quota", "/a")
    assert events == [("drift", e.id, "skipped")]
    # reported once: later runs leave it alone quietly (exit 0 in the CLI), no new audit row
    (o,) = rb.all()
    assert o.result == "left_alone" and events == [("drift", e.id, "skipped")]
    (o,) = rb.all(force=True)
    assert o.result == "restored" and act.live["/a"] == "1.8" and j.get(e.id).state == "rolled_back"


@pytest.mark.parametrize("live,result,state,value", [
    ("0.2", "restored", "rolled_back", "1.8"), ("1.8", "not_applied", "failed", "1.8")])
def test_rollback_id_settles_a_planned_entry(j, live, result, state, value):
    e = planned(j, "1.8", "0.2")
    act = FakeActuator({"/a": live})
    (o,) = Rollback(j, act, by="operator").entries([e], single=True)
    assert (o.result, j.get(e.id).state, act.live["/a"]) == (result, state, value)


# -- issue 10, defect 2: a failed write that never landed is never restored ---------------------
def failed(j: Journal, old: str, new: str, *, landed: bool | None, target: str = "/a"):
    e = planned(j, old, new, target)
    return j.mark_failed(e.id, "HostError: helper unreachable", landed=landed)


@pytest.mark.parametrize("landed", [None, False])  # unknown (unreadable after the error) / known
def test_failed_entry_is_not_replayed_by_a_second_rollback_all(j, clock, landed):
    a = change(j, "1.8", "0.2")  # A 1.8 -> 0.2 applied
    clock.t += 1
    b = failed(j, "0.2", "1.8", landed=landed)  # B 0.2 -> 1.8 failed: the helper was unreachable
    act = FakeActuator({"/a": "0.2"})
    rb = Rollback(j, act, by="operator")
    out = rb.all()
    assert act.live["/a"] == "1.8" and act.writes == ["1.8"]
    assert {o.entry_id: o.result for o in out}[a.id] == "restored"
    assert j.get(b.id).landed is False and j.get(b.id).state == "failed"
    assert candidates(j) == []
    assert rb.all() == [] and act.live["/a"] == "1.8" and act.writes == ["1.8"]  # not 0.2


def test_stale_failed_entries_force_ends_at_the_true_original(j, clock):
    # 2.0 was set long ago; two changes of it failed; an operator set 1.8; A 1.8 -> 0.2 landed
    f1 = failed(j, "2.0", "0.5", landed=None)  # unknown, but the next prior says: never landed
    clock.t += 1
    f0 = failed(j, "2.0", "1.0", landed=False)
    clock.t += 1
    a = change(j, "1.8", "0.2")
    act = FakeActuator({"/a": "0.2"})
    events: list = []
    out = Rollback(j, act, audit=audit_log(events), by="operator").all(force=True)
    assert act.live["/a"] == "1.8" and act.writes == ["1.8"]  # 180000, not 200000
    assert {o.entry_id: o.result for o in out} == {a.id: "restored", f1.id: "not_applied"}
    assert j.get(f0.id).state == "failed" and j.get(f1.id).landed is False
    assert not [e for e in events if e[0] == "drift"]


def test_stale_failed_entries_without_force_exit_clean_and_add_no_drift_rows(j, clock):
    failed(j, "2.0", "1.0", landed=False)
    clock.t += 1
    change(j, "1.8", "0.2")
    act = FakeActuator({"/a": "0.2"})
    events: list = []
    rb = Rollback(j, act, audit=audit_log(events), by="operator")
    assert [o.result for o in rb.all()] == ["restored"]
    for _ in range(3):
        assert rb.all() == []
    assert [e[0] for e in events] == ["rollback"] and act.live["/a"] == "1.8"


def test_legacy_failed_entry_after_an_old_rollback_is_not_taken_for_landed(j, clock):
    """A DB from before the ``landed`` column: the buggy rollback already restored A (writing
    1.8, which is also B's proposed value); B's fate is unknown and the live value proves
    nothing. B must not be 'restored' to 0.2: the target holds A's original, so B is settled."""
    a = change(j, "1.8", "0.2")
    clock.t += 1
    b = failed(j, "0.2", "1.8", landed=None)
    clock.t += 1
    j.mark_rolled_back(a.id)
    act = FakeActuator({"/a": "1.8"})
    out = Rollback(j, act, by="operator").all()
    assert act.writes == [] and act.live["/a"] == "1.8"
    assert [(o.entry_id, o.result) for o in out] == [(b.id, "already_prior")]
    assert Rollback(j, act, by="operator").all() == [] and act.writes == []


def test_failed_write_that_landed_partly_is_restored(j):
    e = planned(j, "1.8", "0.2")
    j.mark_failed(e.id, "HostError: wrote '0.2' but read back '0.25'", landed=True,
                  applied=prior("0.25"))
    act = FakeActuator({"/a": "0.25"})
    (o,) = Rollback(j, act, by="operator").all()
    assert o.result == "restored" and act.live["/a"] == "1.8"
    assert j.get(e.id).state == "rolled_back"


def test_an_operator_change_between_two_agent_changes_is_the_original(j, clock):
    """A 1.8 -> 0.2; an operator sets 0.7; B 0.7 -> 0.4. The agent's last change was made over
    the operator's 0.7, so --all restores 0.7 (one write) and reports A as superseded."""
    a = change(j, "1.8", "0.2", keep=True)
    clock.t += 1
    b = change(j, "0.7", "0.4", keep=True)
    act = FakeActuator({"/a": "0.4"})
    events: list = []
    out = Rollback(j, act, audit=audit_log(events), by="operator").all()
    assert act.writes == ["0.7"]
    assert {o.entry_id: o.result for o in out} == {b.id: "restored", a.id: "superseded"}
    assert j.get(a.id).state == "drifted" and not j.is_unmanaged("cgroup.cpu_quota", "/a")
    assert Rollback(j, act, by="operator").all() == []


def test_gone_target_is_reported_without_writing(j):
    e = planned(j, "1.8", "0.2")
    (o,) = Rollback(j, FakeActuator({}), by="operator").all()
    assert o.result == "gone" and j.get(e.id).state == "failed"


def test_rollback_all_after_an_operator_write_between_episodes_restores_the_operators_value(j, clock):
    """Issue 24 #1, the reproduction: the agent changes 0.15 -> 0.22 -> 0.33; ``rollback --all``
    restores 0.15; the operator sets 0.22; the agent acts again (0.22 -> 0.33); the next
    ``rollback --all`` must write the operator's 0.22, not the first episode's 0.15."""
    act = FakeActuator({"/a": "0.33"})
    change(j, "0.15", "0.22", keep=True)
    clock.t += 1
    change(j, "0.22", "0.33", keep=True)
    clock.t += 1
    Rollback(j, act, by="operator").all()
    assert act.live["/a"] == "0.15"
    clock.t += 1
    act.live["/a"] = "0.22"  # the operator
    clock.t += 1
    e3 = change(j, "0.22", "0.33", keep=True)
    act.live["/a"] = "0.33"
    out = Rollback(j, act, by="operator").all()
    assert act.live["/a"] == "0.22" and act.writes[-1] == "0.22"
    assert [(o.entry_id, o.result) for o in out] == [(e3.id, "restored")]


def test_rollback_id_of_a_change_someone_overwrote_never_takes_their_same_value_for_ours(j, clock):
    """A 0.15 -> 0.22; the operator sets 0.7 (rollback --all reports the drift and leaves it);
    later the operator sets 0.22, A's old value. ``rollback A`` must not restore 0.15: the 0.22
    in place is the operator's (the journal knows A was overwritten)."""
    a = change(j, "0.15", "0.22", keep=True)
    clock.t += 1
    act = FakeActuator({"/a": "0.7"})
    assert [o.result for o in Rollback(j, act, by="operator").all()] == ["skipped_drift"]
    clock.t += 1
    act.live["/a"] = "0.22"
    (o,) = Rollback(j, act, by="operator").entries([j.get(a.id)], single=True)
    assert act.live["/a"] == "0.22" and act.writes == [] and o.result == "skipped_drift"


def test_rollback_id_of_a_superseded_change_is_not_ours_either(j, clock):
    """A 0.15 -> 0.22 (kept); the operator sets 0.7 unseen; B 0.7 -> 0.9 is undone by verify
    (0.7 back); the operator sets 0.22. ``rollback A``: A was overwritten before B, so the
    0.22 is not A's."""
    a = change(j, "0.15", "0.22", keep=True)
    clock.t += 1
    b = change(j, "0.7", "0.9")
    act = FakeActuator({"/a": "0.9"})
    clock.t += 1
    assert Rollback(j, act, by="verify").entry(j.get(b.id)).result == "restored"
    clock.t += 1
    act.live["/a"] = "0.22"
    (o,) = Rollback(j, act, by="operator").entries([j.get(a.id)], single=True)
    assert act.live["/a"] == "0.22" and act.writes == ["0.7"] and o.result == "skipped_drift"
