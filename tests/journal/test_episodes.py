"""Property test of the journal's episode logic (journal/chain.py) through the code that uses
it: random sequences of agent writes (the real ``Applier``), writes that fail in every way the
journal distinguishes, kill -9 after planning or after writing (then the next agent start's
``reconcile``), verify-stage undos, operator writes and ``rollback --all`` / ``rollback ID``
(the real ``Rollback``) on an in-memory target. After every ``rollback --all`` the target holds
what it would hold had the agent never acted (its first value, replaced by each operator
write), nothing is left open, and a second ``rollback --all`` writes nothing.

Operator writes come in two kinds. Between episodes (right after a ``rollback --all`` settled
everything) the operator may write ANY value, the agent's own included: issue 24's stale episode
(0.15 -> 0.22 -> 0.33, rollback, the operator sets 0.22, the agent 0.22 -> 0.33, rollback wrote
0.15). During an episode the operator writes values the agent never proposes, since a write of
exactly the value a write of unknown fate proposed cannot be told apart from that write by anyone.
The same sequences on real cgroups, with real helper and agent processes, are
``tests/stress/test_rollback_stress.py``.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from autotune.fix.apply import Applier
from autotune.config import Config
from autotune.errors import HostError, NotSent
from autotune.errors import PolicyRefused
from autotune.journal.journal import Journal
from autotune.knobs.base import ChangeResult, KnobState
from autotune.store.db import open_db
from autotune.types import Action
from autotune.verify.rollback import Rollback

KNOB, TARGET = "cgroup.cpu_quota", "/svc"
INITIAL = "max"
AGENT = ("0.15", "0.22", "0.33", "0.5")
OPERATOR = ("0.7", "0.9", "1.1")  # during an episode: never an agent value
FAULTS = ("refused", "not_sent", "partial", "lost_after_write", "unknown_landed", "unknown_not")
PARTIAL = {v: v + "5" for v in AGENT}  # a write that left another value ("0.155")


class Crash(BaseException):
    """kill -9: nothing after this point runs (not an Exception: the Applier does not catch it)."""


class World:
    """One target in a dict; the actuator the Applier and Rollback write through."""

    dry_run = False

    def __init__(self) -> None:
        self.value = INITIAL
        self.fault: str | None = None
        self.crash: str | None = None  # after_plan | after_write
        self.unreadable = False
        self.writes = 0

    def same(self, knob):
        return lambda a, b: a == b

    def read(self, knob, target):
        if self.unreadable:
            raise HostError("helper gone (simulated)")
        return KnobState(knob=knob, target=target, value=self.value, raw={"cpu.max": self.value})

    def _write(self, value: str) -> None:
        self.value = value
        self.writes += 1

    def apply(self, knob, target, value, *, expect_before, request_id):
        before = self.read(knob, target)
        if self.crash == "after_plan":
            raise Crash
        fault, self.fault = self.fault, None
        if fault == "refused":
            raise PolicyRefused("out_of_range", f"{value} is outside the policy (simulated)")
        if fault == "not_sent":
            raise NotSent("helper unreachable (simulated)")
        if fault == "unknown_not":  # the helper died before writing; the read-back fails too
            self.unreadable = True
            raise HostError("connection lost (simulated)")
        self._write(PARTIAL[value] if fault == "partial" else value)
        if self.crash == "after_write":
            raise Crash
        if fault == "partial":
            raise PolicyRefused("host_error", f"wrote {value!r}, read back {self.value!r}")
        if fault == "lost_after_write":
            raise HostError("connection lost after the write (simulated)")
        if fault == "unknown_landed":
            self.unreadable = True
            raise HostError("connection lost after the write (simulated)")
        return ChangeResult(knob=knob, target=target, before=before, proposed=value,
                            after=self.read(knob, target), changed=True)

    def restore(self, knob, target, state, *, force=False):
        before = self.read(knob, target)
        self._write(state.value)
        return ChangeResult(knob=knob, target=target, before=before, proposed=state.value,
                            after=self.read(knob, target), changed=True)


class Episodes(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.t = 1000.0
        self.db = open_db(":memory:")
        self.journal = Journal(self.db, clock=self.clock)
        self.w = World()
        self.baseline = INITIAL  # the value had the agent never acted
        self.between = True  # a rollback --all settled everything since the agent last acted
        self.operator_last = False  # the operator wrote after the agent last changed the value
        self.log: list[str] = []
        verifier = SimpleNamespace(summary=lambda *a, **k: {}, due=lambda e: self.t + 10)
        self.applier = Applier(Config(), host=None, journal=self.journal, actuator=self.w,
                               verifier=verifier, audit=lambda *a, **k: None,
                               on_failure=lambda *a: None, on_success=lambda *a: None)

    def clock(self) -> float:
        self.t += 1.0
        return self.t

    def teardown(self) -> None:
        if hasattr(self, "db"):
            self.db.conn.close()

    # -- the agent --------------------------------------------------------------------------
    def _agent_start(self) -> None:
        """What a (re)started agent does first: settle unfinished entries by reading."""
        self.w.unreadable = False
        self.journal.reconcile(lambda k, t: self.w.read(k, t).value)

    def _agent_wrote(self, before: str) -> None:
        if self.w.value != before:
            self.operator_last = False

    def _may_act(self) -> bool:
        return (self.journal.in_flight(TARGET, KNOB) is None
                and not self.journal.is_unmanaged(KNOB, TARGET))

    def _apply(self, value: str, *, fault: str | None = None, crash: str | None = None) -> None:
        self._agent_start()
        if not self._may_act():
            return
        self.w.fault, self.w.crash = fault, crash
        self.between = False
        before = self.w.value
        try:
            self.applier.apply(Action(knob=KNOB, target=TARGET, proposed=value, rule="r",
                                      rationale="property"), symptoms=[], now=self.t, window=[])
        except Crash:
            self.log.append(f"apply {value} killed {crash}; live {self.w.value}")
            return
        finally:
            self.w.fault = self.w.crash = None
            self._agent_wrote(before)
        self.log.append(f"apply {value} fault={fault}; live {self.w.value}")

    @rule(v=st.sampled_from(AGENT))
    def apply(self, v):
        self._apply(v)

    @rule(v=st.sampled_from(AGENT), fault=st.sampled_from(FAULTS))
    def failed_apply(self, v, fault):
        self._apply(v, fault=fault)

    @rule(v=st.sampled_from(AGENT), point=st.sampled_from(("after_plan", "after_write")))
    def kill9(self, v, point):
        self._apply(v, crash=point)

    @rule(regressed=st.booleans())
    def verify(self, regressed):
        """The verify stage on the change in flight: kept, or undone alone (its own prior)."""
        self._agent_start()
        e = self.journal.in_flight(TARGET, KNOB)
        if e is None or e.state == "planned":
            return
        if regressed:
            before = self.w.value
            Rollback(self.journal, self.w, by="verify").entry(e, why="verification regressed")
            self._agent_wrote(before)
        else:
            self.journal.mark_kept(e.id)
        self.log.append(f"verify #{e.id} {'undo' if regressed else 'keep'}; live {self.w.value}")

    # -- the operator -----------------------------------------------------------------------
    @rule(v=st.sampled_from(OPERATOR))
    def operator_during(self, v):
        self.w.value = self.baseline = v
        self.operator_last = True
        self.log.append(f"operator {v}")

    @precondition(lambda self: self.between)
    @rule(v=st.sampled_from(AGENT + OPERATOR + (INITIAL,)))
    def operator_between_episodes(self, v):
        self.w.value = self.baseline = v
        self.operator_last = True
        self.log.append(f"operator (between episodes) {v}")

    @precondition(lambda self: self.between)
    @rule(k=st.integers(0, 7))
    def operator_sets_a_value_of_the_last_episode(self, k):
        """The interesting case: a value the target held while the agent's last run was in
        place (a prior of one of its entries) comes back by the operator's hand."""
        priors = [e.prior_value for e in self.journal.entries()[-4:]]
        if priors:
            self.operator_between_episodes(priors[k % len(priors)])

    @rule(vs=st.lists(st.sampled_from(AGENT), min_size=1, max_size=3))
    def episode(self, vs):
        """The agent's controller stepping: changes verified and kept one after another."""
        for v in vs:
            self._apply(v)
            self.verify(regressed=False)

    @rule()
    def enable(self):
        self.journal.enable_target(KNOB, TARGET)

    @rule(k=st.integers(0, 30))
    def rollback_id(self, k):
        self.w.unreadable = False
        entries = self.journal.entries()
        if entries:
            e = entries[k % len(entries)]
            before = self.w.value
            out = Rollback(self.journal, self.w, by="operator").entries([e], single=True)
            self._agent_wrote(before)
            self.log.append(f"rollback {e.id}: {out[0].result}; live {self.w.value}")

    @rule()
    def rollback_all(self):
        self.w.unreadable = False
        out = Rollback(self.journal, self.w, by="operator").all()
        self.log.append(f"rollback --all: {[(o.entry_id, o.result) for o in out]}; live {self.w.value}")
        assert self.w.value == self.baseline, self._why(f"holds {self.w.value!r}, "
                                                        f"expected {self.baseline!r}")
        left = [e.id for e in self.journal.entries()
                if e.state in ("planned", "applied", "verifying", "kept")]
        assert not left, self._why(f"entries {left} still open")
        writes = self.w.writes
        again = Rollback(self.journal, self.w, by="operator").all()
        assert self.w.writes == writes and all(o.result == "left_alone" for o in again), \
            self._why(f"a second rollback --all did {again}")
        self.between = True

    def _why(self, what: str) -> str:
        return f"after rollback --all the target {what}\nsteps:\n  " + "\n  ".join(self.log)

    @invariant()
    def ours_is_what_is_in_place(self):
        """While the agent's last run is fully known and nobody else wrote since the agent did,
        chain.py's ``ours`` is the live value."""
        from autotune.journal.chain import history

        if not hasattr(self, "journal") or self.w.unreadable or self.operator_last:
            return
        es = self.journal.entries()
        if es and all(e.landed is not None and e.state not in ("planned", "drifted", "failed")
                      for e in es):
            h = history(es, self.w.value, lambda a, b: a == b)
            if h.open_run():
                assert h.ours == self.w.value, self._why(f"ours {h.ours!r} != live {self.w.value!r}")


Episodes.TestCase.settings = settings(max_examples=int(os.environ.get("AUTOTUNE_EPISODES", "300")), stateful_step_count=30, deadline=None,
                                      database=None, suppress_health_check=list(HealthCheck))
TestEpisodes = Episodes.TestCase


def test_the_issue_24_sequence():
    """The reproduction as one fixed sequence of the machine above."""
    m = Episodes()
    m.start()
    m.operator_between_episodes("0.15")
    for v in ("0.22", "0.33"):
        m.apply(v)
        m.verify(regressed=False)
    m.rollback_all()
    assert m.w.value == "0.15"
    m.operator_between_episodes("0.22")
    m.apply("0.33")
    m.verify(regressed=False)
    m.rollback_all()  # asserts the operator's 0.22 is back, not the first episode's 0.15
    assert m.w.value == "0.22"
    m.teardown()
