"""The verify stage's windows around a write that takes seconds (the threads knob restarts the
service): the before-window ends where the write began, not where it ended, so samples taken
while the service was restarting count in neither window."""

from __future__ import annotations

from autotune.config import Config
from autotune.journal.journal import Journal
from autotune.knobs.base import KnobState
from autotune.store.db import open_db
from autotune.store.samples import SampleStore
from autotune.types import Snapshot, VerifyPlan
from autotune.verify.stage import Verifier


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def test_samples_taken_during_a_restart_are_in_neither_window(tmp_path):
    db = open_db(tmp_path / "s.db")
    clock = Clock()
    journal, samples = Journal(db, clock=clock), SampleStore(db)
    for t in range(80, 131):  # one snapshot a second; 100..107 while the write was restarting it
        samples.append(Snapshot(ts=float(t)))
    e = journal.plan(knob="threads", target="llm", prior=KnobState(knob="threads", target="llm", value="default"),
                     proposed="1", rule="r", service="llm", verify_plan=VerifyPlan(window_s=10.0, settle_s=10.0))
    clock.t = 108.0  # the restart returned 8 s later
    e = journal.mark_applied(e.id, KnobState(knob="threads", target="llm", value="1"))
    v = Verifier(Config(), journal=journal, samples=samples, actuator=None, audit=lambda *a, **k: None,
                 on_failure=lambda *a: None)
    before, after = v._entry_windows(e, e.applied_ts, 10.0, 10.0, 130.0)
    assert [s.ts for s in before] == [float(t) for t in range(90, 100)]
    assert [s.ts for s in after] == [float(t) for t in range(118, 131)]
