"""Detector: durations, hysteresis (no flapping), persisted state, service expansion."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from autotune.detect.symptoms import DetectorState, SymptomSpec, detect, expand_specs

SPEC = SymptomSpec(name="cpu_pressure", metric="psi.cpu.some.avg10", op=">", on=20, off=10, for_s=10, clear_for_s=10)


def hist(values, start=0.0, step=1.0, metric="psi.cpu.some.avg10"):
    return [(start + i * step, {metric: v}) for i, v in enumerate(values)]


def names(symptoms):
    return [s.name for s in symptoms]


def test_activates_only_after_duration():
    h = hist([50] * 10)  # ts 0..9: 9 s of breach
    s, st = detect([SPEC], h, DetectorState(), now=9)
    assert s == []
    s, st = detect([SPEC], hist([50] * 11), DetectorState(), now=10)
    assert names(s) == ["cpu_pressure"]
    assert s[0].since_ts == 0 and s[0].value == 50 and s[0].threshold == 20


def test_breach_interrupted_restarts_timer():
    s, _ = detect([SPEC], hist([50] * 6 + [5] + [50] * 6), DetectorState(), now=12)
    assert s == []


def test_oscillation_around_threshold_does_not_flap():
    # once active, a value bouncing between 15 and 25 (inside the band / over on) never clears
    warm = hist([50] * 11)
    s, st = detect([SPEC], warm, DetectorState(), now=10)
    assert names(s) == ["cpu_pressure"]
    flips = 0
    was = True
    for i in range(200):
        ts = 11 + i
        v = 25 if i % 2 else 15
        s, st = detect([SPEC], [(ts, {"psi.cpu.some.avg10": v})], st, now=ts)
        if bool(s) != was:
            flips += 1
            was = bool(s)
    assert flips == 0


def test_value_inside_hysteresis_band_keeps_symptom_active():
    # 15 is below on=20 but above off=10: a symptom without hysteresis would clear here
    s, st = detect([SPEC], hist([50] * 11 + [15] * 60), DetectorState(), now=70)
    assert names(s) == ["cpu_pressure"]


def test_oscillation_across_both_thresholds_inactive_never_activates():
    # value alternating 5 / 30 each second never stays over `on` for 10 s
    s, st = detect([SPEC], hist([5, 30] * 50), DetectorState(), now=100)
    assert s == []


def test_clears_after_clear_for_s_below_off():
    h = hist([50] * 11 + [5] * 10)  # recovered from ts 11 to 20: 9 s
    s, st = detect([SPEC], h, DetectorState(), now=20)
    assert names(s) == ["cpu_pressure"]
    s, st = detect([SPEC], [(21, {"psi.cpu.some.avg10": 5})], st, now=21)
    assert s == []


def test_state_is_persistable_and_overlapping_windows_are_not_double_counted():
    s, st = detect([SPEC], hist([50] * 6), DetectorState(), now=5)
    st2 = DetectorState.model_validate_json(st.model_dump_json())
    # the same window passed again plus new points: old points are skipped
    s, st3 = detect([SPEC], hist([50] * 11), st2, now=10)
    assert names(s) == ["cpu_pressure"] and st3.tracks["cpu_pressure"].active_since == 0


def test_missing_metric_keeps_state():
    h = hist([50] * 5) + [(5 + i, {}) for i in range(3)] + hist([50] * 4, start=8)
    s, _ = detect([SPEC], h, DetectorState(), now=11)
    assert names(s) == ["cpu_pressure"]


def test_below_op():
    spec = SymptomSpec(name="low_mem", metric="mem.available_pct", op="<", on=10, off=15, for_s=0, clear_for_s=5)
    s, st = detect([spec], hist([5], metric="mem.available_pct"), DetectorState(), now=0)
    assert names(s) == ["low_mem"]


def test_service_specs_expand_from_metrics_and_config():
    spec = SymptomSpec(name="throttled", metric="svc.$service.cpu.throttled_pct", on=5, for_s=0, scope="service")
    h = [(0.0, {"svc.llm.cpu.throttled_pct": 40.0, "svc.my.db.cpu.throttled_pct": 0.0})]
    s, _ = detect([spec], h, DetectorState(), now=0)
    assert [(x.name, x.service) for x in s] == [("throttled", "llm")]
    concrete = expand_specs([spec, SPEC], ["a", "b"])
    assert [c.metric for c in concrete] == ["svc.a.cpu.throttled_pct", "svc.b.cpu.throttled_pct", "psi.cpu.some.avg10"]


@pytest.mark.parametrize("kw", [
    {"metric": "psi.cpu.some.avg99"},
    {"on": 10, "off": 20},  # off on the wrong side
    {"scope": "service"},  # service scope without $service
    {"metric": "svc.$service.cpu.throttled_pct"},  # host scope with $service
])
def test_bad_specs_rejected(kw):
    base = dict(name="x", metric="psi.cpu.some.avg10", on=20, off=10)
    with pytest.raises(ValidationError):
        SymptomSpec(**{**base, **kw})


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=120))
def test_property_activation_needs_a_full_breach_and_clearing_a_full_recovery(values):
    """Fed one sample per second, every on/off transition is justified by the preceding run."""
    st_ = DetectorState()
    active = False
    for ts, v in enumerate(values):
        s, st_ = detect([SPEC], [(float(ts), {"psi.cpu.some.avg10": v})], st_, now=float(ts))
        now_active = bool(s)
        if now_active and not active:
            run = values[ts - int(SPEC.for_s): ts + 1] if ts >= SPEC.for_s else []
            assert run and all(x > SPEC.on for x in run)
        if active and not now_active:
            run = values[ts - int(SPEC.clear_for_s): ts + 1] if ts >= SPEC.clear_for_s else []
            assert run and all(x < SPEC.off_threshold for x in run)
        active = now_active
