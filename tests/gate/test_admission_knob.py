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
    assert st.value == "threshold=40,limit=4,min_limit=1,max_limit=16,adaptive=off"
    assert st.raw == {"gate_config": st.value}


def test_change_partial_value_and_restore(gate_url):
    gate, url = gate_url
    knob = AdmissionKnob()
    recorded = []
    res = knob.change(HOST, url, "limit=6, threshold=55.0", before_write=lambda s, p: recorded.append(s))
    assert res.changed and res.proposed == "threshold=55,limit=6,min_limit=1,max_limit=16,adaptive=off"
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
                                 "limit=40", "min_limit=8,max_limit=2"])
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
