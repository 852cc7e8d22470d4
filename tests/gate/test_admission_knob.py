"""The admission knob against a live gate app (read / validate / change / restore)."""

from __future__ import annotations

import socket

import pytest

from autotune.errors import InvalidValue, TargetGone
from autotune.gate.core import Gate, GateSettings
from autotune.gate.limiter import LimiterConfig
from autotune.gate.proxy import build_app
from autotune.host import Host
from autotune.knobs.admission import AdmissionKnob, parse_value

HOST = Host("/")  # unused by this knob: its target is a URL


@pytest.fixture
def gate_url(run_app):
    gate = Gate(GateSettings(threshold_pct=40, limit=4, adaptive=False, limiter=LimiterConfig(max_limit=16)))
    srv = run_app(build_app(gate, "http://127.0.0.1:9"))
    return gate, srv.url


def test_read_reports_normalized_settings(gate_url):
    gate, url = gate_url
    st = AdmissionKnob().read(HOST, url)
    assert st.value == "threshold=40,limit=4,min_limit=1,max_limit=16,min_threshold=10,max_threshold=90,adaptive=off"
    assert st.raw == {"gate_config": st.value}


def test_change_partial_value_and_restore(gate_url):
    gate, url = gate_url
    knob = AdmissionKnob()
    recorded = []
    res = knob.change(HOST, url, "limit=6, threshold=55.0", before_write=lambda s, p: recorded.append(s))
    assert res.changed and res.proposed == ("threshold=55,limit=6,min_limit=1,max_limit=16,min_threshold=10,"
                                            "max_threshold=90,adaptive=off")
    assert gate.settings.limit == 6 and gate.settings.threshold_pct == 55
    assert recorded and recorded[0].value.startswith("threshold=40,limit=4")
    knob.restore(HOST, res.before)
    assert gate.settings.limit == 4 and gate.settings.threshold_pct == 40


def test_same_value_and_dry_run_do_not_write(gate_url):
    gate, url = gate_url
    knob = AdmissionKnob()
    assert not knob.change(HOST, url, "threshold=40,limit=4").changed
    res = knob.change(HOST, url, "limit=8", dry_run=True)
    assert not res.changed and res.dry_run and gate.settings.limit == 4


def test_threshold_off(gate_url):
    gate, url = gate_url
    AdmissionKnob().change(HOST, url, "threshold=off")
    assert gate.settings.threshold_pct is None


@pytest.mark.parametrize("bad", ["limit=0", "threshold=120", "threshold=abc", "speed=3", "limit", "",
                                 "limit=40", "min_limit=8,max_limit=2", "min_threshold=80,max_threshold=20",
                                 "min_threshold=101", "threshold=95"])
def test_invalid_values_rejected(gate_url, bad):
    _, url = gate_url
    with pytest.raises(InvalidValue):
        AdmissionKnob().validate(HOST, url, bad)


def test_parse_value_normalizes():
    assert parse_value(" threshold=40.50 ,adaptive=TRUE") == {"threshold": "40.5", "adaptive": "on"}


def test_no_gate_is_target_gone():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TargetGone):
        AdmissionKnob(timeout=1).read(HOST, f"http://127.0.0.1:{port}")


def test_adaptive_gate_moving_its_own_threshold_is_not_drift():
    """The benchmark's autotune row: the agent set threshold 90, the adaptive gate then moved it
    to 68, and the agent called that drift and gave the gate up. With adaptive on, threshold
    and limit are the gate's controller state; only the bounds and the mode are ours."""
    knob = AdmissionKnob()
    ours = "threshold=90,limit=4,min_limit=1,max_limit=64,min_threshold=90,max_threshold=95,adaptive=on"
    moved = "threshold=92,limit=9,min_limit=1,max_limit=64,min_threshold=90,max_threshold=95,adaptive=on"
    assert knob.same(ours, moved)
    assert not knob.same(ours, moved.replace("min_threshold=90", "min_threshold=10"))  # someone re-bounded it
    assert not knob.same(ours.replace("on", "off"), moved.replace("on", "off"))  # static gate: exact values
    assert not knob.same(ours, moved.replace("threshold=92", "threshold=off"))  # pressure hold switched off


def test_bounds_steer_an_adaptive_gate(run_app):
    gate = Gate(GateSettings(threshold_pct=24, limit=4, adaptive=True))
    url = run_app(build_app(gate, "http://127.0.0.1:9")).url
    knob = AdmissionKnob()
    res = knob.change(HOST, url, "min_threshold=90")  # live threshold 24 is clamped up with it
    assert res.changed and "threshold=90," in res.proposed
    assert gate.settings.limiter.min_threshold == 90 and gate.settings.threshold_pct == 90
    for _ in range(50):  # slow requests under pressure would lower it; the bound holds
        gate.settings.threshold_pct = gate.settings.threshold_pct  # (validated assignment)
        gate._adapt(10.0, 1)
    assert gate.settings.threshold_pct >= 90
    knob.restore(HOST, res.before)
    assert gate.settings.limiter.min_threshold == 10 and gate.settings.threshold_pct == 24
