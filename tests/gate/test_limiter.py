"""The control laws, without a server: feed latencies, watch the limit."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autotune.gate.limiter import (
    LimiterConfig,
    LimiterState,
    latency_target,
    update_limit,
    update_threshold,
)


def run(cfg: LimiterConfig, state: LimiterState, latencies, *, inflight=None) -> LimiterState:
    for lat in latencies:
        used = state.int_limit if inflight is None else inflight
        state = update_limit(state, cfg, latency_s=lat, inflight=used)
    return state


def test_gradient_grows_while_latency_is_flat_and_limit_is_used():
    cfg = LimiterConfig(max_limit=32)
    state = run(cfg, LimiterState(limit=2), [0.1] * 200)
    assert state.limit > 10


def test_gradient_shrinks_when_latency_inflates():
    cfg = LimiterConfig(max_limit=32)
    state = run(cfg, LimiterState(limit=2), [0.1] * 200)
    grown = state.limit
    state = run(cfg, state, [0.6] * 30)  # queueing: latency x6
    assert state.limit < grown * 0.6


def test_gradient_does_not_grow_an_idle_limit():
    cfg = LimiterConfig(max_limit=32)
    state = run(cfg, LimiterState(limit=8), [0.1] * 100, inflight=1)
    assert state.limit == pytest.approx(8)


def test_aimd_backs_off_over_target_and_creeps_up_under_it():
    cfg = LimiterConfig(law="aimd", target_s=0.5, max_limit=16)
    state = run(cfg, LimiterState(limit=8), [1.0] * 5)
    assert state.limit == pytest.approx(8 * 0.9**5)
    before = state.limit
    state = run(cfg, state, [0.1] * 20)
    assert before + 1 < state.limit < before + 6


def test_bad_latency_sample_is_ignored():
    cfg = LimiterConfig()
    s0 = LimiterState(limit=4)
    assert update_limit(s0, cfg, latency_s=math.nan, inflight=4) == s0
    assert update_limit(s0, cfg, latency_s=-1, inflight=4) == s0


def test_config_rejects_inverted_bounds():
    with pytest.raises(ValueError):
        LimiterConfig(min_limit=10, max_limit=2)


@given(
    st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=60),
    st.sampled_from(["gradient", "aimd"]),
    st.integers(min_value=0, max_value=100),
)
def test_limit_always_within_bounds(latencies, law, inflight):
    cfg = LimiterConfig(law=law, min_limit=2, max_limit=12, target_s=1.0)
    state = LimiterState(limit=5)
    for lat in latencies:
        state = update_limit(state, cfg, latency_s=lat, inflight=inflight)
        assert 2 <= state.limit <= 12


def test_latency_target_derived_from_long_average():
    cfg = LimiterConfig(tolerance=2.0)
    assert latency_target(LimiterState(limit=1), cfg) is None
    assert latency_target(LimiterState(limit=1, long_s=0.3), cfg) == pytest.approx(0.6)
    assert latency_target(LimiterState(limit=1, long_s=0.3), cfg.model_copy(update={"target_s": 1.0})) == 1.0


def test_threshold_lowers_when_latency_breaches_without_holding():
    cfg = LimiterConfig(threshold_step=5, min_threshold=20)
    t = update_threshold(40, cfg, latency_s=2.0, target_s=1.0, pressure_pct=30, held_for_pressure=False)
    assert t == 35
    # bounded below
    t = 22
    for _ in range(10):
        t = update_threshold(t, cfg, latency_s=2.0, target_s=1.0, pressure_pct=10, held_for_pressure=False)
    assert t == 20


def test_threshold_rises_when_latency_is_fine_but_gate_held():
    cfg = LimiterConfig(threshold_step=5, max_threshold=50)
    assert update_threshold(40, cfg, latency_s=0.2, target_s=1.0, pressure_pct=45, held_for_pressure=True) == 45
    assert update_threshold(48, cfg, latency_s=0.2, target_s=1.0, pressure_pct=45, held_for_pressure=True) == 50
    # fine latency and nothing held: leave it
    assert update_threshold(40, cfg, latency_s=0.2, target_s=1.0, pressure_pct=45, held_for_pressure=False) == 40
    # no target or no pressure reading: leave it
    assert update_threshold(40, cfg, latency_s=5, target_s=None, pressure_pct=45, held_for_pressure=True) == 40
    assert update_threshold(40, cfg, latency_s=5, target_s=1.0, pressure_pct=None, held_for_pressure=False) == 40
