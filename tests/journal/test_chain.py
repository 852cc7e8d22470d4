"""journal/chain.py: which writes of a target landed, its original value, what is ours. Pure."""

from __future__ import annotations

import pytest

from autotune.journal.chain import history, is_open, landed_from
from autotune.journal.journal import Journal
from autotune.knobs.base import KnobState
from autotune.store.db import open_db

eq = lambda a, b: a == b  # noqa: E731


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        self.t += 1
        return self.t


@pytest.fixture
def j(tmp_path):
    db = open_db(tmp_path / "state.db")
    yield Journal(db, clock=Clock())
    db.conn.close()


def st(v: str) -> KnobState:
    return KnobState(knob="k", target="/t", value=v, raw={"/t": v})


def plan(j: Journal, old: str, new: str):
    return j.plan(knob="k", target="/t", prior=st(old), proposed=new, rule="r")


def applied(j: Journal, old: str, new: str, then: str | None = None):
    e = j.mark_applied(plan(j, old, new).id, st(new))
    if then == "kept":
        e = j.mark_kept(e.id)
    elif then == "rolled_back":
        e = j.mark_rolled_back(e.id)
    return e


def test_landed_from_a_reading(j):
    e = plan(j, "1", "2")
    assert landed_from(e, "1", eq) is False
    assert landed_from(e, "2", eq) is True
    assert landed_from(e, "3", eq) is None and landed_from(e, None, eq) is None


def test_unknown_fates_are_read_from_the_next_prior_then_the_live_value(j):
    a = plan(j, "1", "2")  # next prior "2": landed
    b = j.mark_failed(plan(j, "2", "3").id, "HostError: gone away")  # next prior "2": never
    c = plan(j, "2", "4")  # newest: the live value decides
    h = history(j.entries(), "4", eq)
    assert h.landed == {a.id: True, b.id: False, c.id: True}
    assert h.inferred == {a.id: True, b.id: False, c.id: True}
    assert [e.id for e in h.run] == [a.id, c.id] and h.original.value == "1" and h.ours == "4"
    h = history(j.entries(), None, eq)  # not read: the newest stays unknown
    assert h.landed[c.id] is None and h.ours is None


def test_an_outside_change_breaks_the_run(j):
    a = applied(j, "1", "2", "kept")
    b = applied(j, "7", "8", "kept")  # someone set 7 after a
    h = history(j.entries(), "8", eq)
    assert [e.id for e in h.run] == [b.id] and h.original.value == "7" and h.ours == "8"
    assert [e.id for e in h.superseded] == [a.id]


def test_a_rolled_back_change_leaves_its_prior(j):
    a = applied(j, "1", "2", "rolled_back")
    b = applied(j, "1", "3", "kept")
    h = history(j.entries(), "3", eq)
    assert [e.id for e in h.run] == [a.id, b.id] and h.original.value == "1"
    assert [e.id for e in h.open_run()] == [b.id] and h.superseded == ()


def test_never_landed_entries_are_not_in_any_run_and_not_open(j):
    a = applied(j, "1", "2")
    b = j.mark_failed(plan(j, "2", "5").id, "refused: out of range", landed=False)
    h = history(j.entries(), "2", eq)
    assert [e.id for e in h.run] == [a.id] and h.ours == "2" and not is_open(b)
    assert h.newer_in_place(a) is None


def test_a_partial_write_is_ours_at_its_read_back(j):
    e = plan(j, "1", "2")
    j.mark_failed(e.id, "wrote '2' read back '2.5'", landed=True, applied=st("2.5"))
    h = history(j.entries(), "2.5", eq)
    assert h.ours == "2.5" and h.original.value == "1" and is_open(j.get(e.id))


def test_drift_leaves_nothing_known_in_place(j):
    a = applied(j, "1", "2")
    j.mark_drifted(a.id, "9")
    h = history(j.entries(), "9", eq)
    assert h.ours is None and [e.id for e in h.open_run()] == [a.id]


def test_a_drift_found_after_the_next_change_does_not_break_the_run(j):
    """A max -> 0.6, B 0.6 -> max; only then someone sets 0.75 and both are found drifted. B was
    made over A's value, so the run is [A, B] and its original is A's prior (not 0.6)."""
    a = applied(j, "max", "0.6", "kept")
    b = applied(j, "0.6", "max")
    j.mark_drifted(b.id, "0.75")
    j.mark_drifted(a.id, "0.75")
    h = history(j.entries(), "0.75", eq)
    assert [e.id for e in h.run] == [a.id, b.id] and h.original.value == "max" and h.ours is None


def test_a_run_undone_by_rollback_all_is_over_and_the_next_change_starts_a_new_one(j):
    """Issue 24 #1: 0.15 -> 0.22 -> 0.33; ``rollback --all`` writes 0.15 and settles both
    (newest first); the operator then sets 0.22 and the agent changes 0.22 -> 0.33. The second
    change was made over the operator's 0.22, not over anything the agent left: its own run,
    whose original is 0.22 (entry 1's 0.15 would be a stale episode)."""
    e1 = applied(j, "0.15", "0.22", "kept")
    e2 = applied(j, "0.22", "0.33", "kept")
    j.mark_rolled_back(e2.id)  # rollback --all: one write of 0.15, then each entry settled
    j.mark_rolled_back(e1.id)
    assert history(j.entries(), "0.15", eq).ours == "0.15"
    e3 = applied(j, "0.22", "0.33", "kept")
    h = history(j.entries(), "0.33", eq)
    assert [e.id for e in h.run] == [e3.id] and h.original.value == "0.22" and h.ours == "0.33"
    assert h.superseded == ()


def test_a_single_undo_leaves_the_run_below_it_in_place(j):
    """The verify stage undoes one entry (its own prior): the run under it is still ours."""
    x = applied(j, "1", "2", "kept")
    a = applied(j, "2", "3", "rolled_back")
    b = applied(j, "2", "4", "kept")
    h = history(j.entries(), "4", eq)
    assert [e.id for e in h.run] == [x.id, a.id, b.id] and h.original.value == "1"
    assert [e.id for e in h.open_run()] == [b.id, x.id]
