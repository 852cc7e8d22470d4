"""Stateful property test (issue 10): random sequences of apply, failed apply, kill -9 at every
failpoint, helper restart, operator change, ``rollback ID`` and ``rollback --all [--force]`` on
real v1 cgroups this test creates; after every ``rollback --all`` (and every restore_on_stop)
each target holds the value it would hold had the agent never acted, and a second run changes
nothing. The world, the actors and the checks are ``tests/stress/rollback_sequences.py`` (its
stress test runs 1,000 such sequences); here hypothesis chooses and shrinks the steps.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from tests.stress import rollback_sequences as rs

pytestmark = [pytest.mark.realkernel, pytest.mark.root]

pairs = st.integers(0, 3)
values = st.integers(0, 7)


@pytest.fixture(scope="module")
def rig():
    try:
        r = rs.Rig()
    except rs.Unsupported as err:
        pytest.skip(str(err))
    yield r
    r.close()


def test_rollback_all_restores_what_the_agent_changed_after_any_sequence(rig):
    class Sequences(RuleBasedStateMachine):
        w: rs.World | None = None

        @initialize()
        def world(self) -> None:
            self.w = rig.world()

        @rule(p=pairs, v=values)
        def apply(self, p, v):
            self.w.apply(p, v)

        @rule(p=pairs, v=values, point=st.sampled_from(rs.POINTS))
        def kill9(self, p, v, point):
            self.w.crash(p, v, point)

        @rule(p=pairs, v=values, fault=st.sampled_from(rs.FAULTS))
        def failed_apply(self, p, v, fault):
            self.w.failed_apply(p, v, fault)

        @rule(rollback=st.booleans(), crash=st.booleans())
        def verify(self, rollback, crash):
            self.w.verify(rollback, crash)

        @rule()
        def stop_restoring(self):
            self.w.stop()

        @rule(p=pairs, v=values)
        def operator_change(self, p, v):
            self.w.operator(p, v)

        @rule(p=pairs, v=values)
        def operator_between_episodes(self, p, v):
            self.w.operator_between(p, v)

        @rule(p=pairs, v=values)
        def episodes(self, p, v):
            self.w.episodes(p, v)

        @rule(keep_state=st.booleans())
        def helper_restart(self, keep_state):
            self.w.helper_restart(keep_state)

        @rule(p=pairs)
        def enable(self, p):
            self.w.enable(p)

        @rule(k=st.integers(0, 50))
        def rollback_id(self, k):
            self.w.rollback_id(k)

        @rule(force=st.booleans())
        def rollback_all(self, force):
            self.w.rollback_all(force=force)

        def teardown(self) -> None:
            if self.w is None:
                return
            try:
                self.w.finish()  # every sequence ends with a checked rollback --all
            finally:
                self.w.close()

    run_state_machine_as_test(Sequences, settings=settings(
        max_examples=12, stateful_step_count=12, deadline=None, database=None,
        suppress_health_check=list(HealthCheck)))
