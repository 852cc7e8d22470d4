"""The engine's context metrics reuse the metric vocabulary's SLO ratio (computed in one place)."""

from __future__ import annotations

import pytest

from autotune.config import SLO, Config, LatencySource, Service
from autotune.detect import metrics as vocab
from autotune.diagnose.engine import context_metrics
from autotune.diagnose.rules import RuleSet


def _config() -> Config:
    return Config(services=[
        Service(name="llm", cgroup="/autotune/llm", role="latency-critical",
                slo=SLO(p95_latency_s=0.5, p99_latency_s=2.0),
                latency=LatencySource(metrics_url="http://127.0.0.1:8000/metrics", flavor="vllm")),
        Service(name="batch", cgroup="/autotune/batch", role="neighbour"),
    ])


def test_slo_ratio_comes_from_detect_metrics(monkeypatch):
    cfg = _config()
    flat = {"svc.llm.latency.p95_s": 0.8, "svc.llm.latency.p99_s": 1.0}
    m = context_metrics(RuleSet(rules=[]), flat, cfg, lambda knob, target: None)
    assert {k: v for k, v in m.items() if ".slo." in k} == vocab.slo_ratios(flat, cfg.services) == {
        "svc.llm.slo.p95_ratio": pytest.approx(1.6), "svc.llm.slo.p99_ratio": pytest.approx(0.5),
        "svc.llm.slo.slack": pytest.approx(-0.6), "svc.llm.slo.ratio": pytest.approx(1.6),  # 1 - the binding (largest) ratio
        "svc.llm.slo.targets": 2.0, "svc.batch.slo.targets": 0.0}  # the batch declares no SLO
    seen = []
    monkeypatch.setattr("autotune.diagnose.engine.slo_ratios", lambda mm, svcs: seen.append(mm) or {})
    m = context_metrics(RuleSet(rules=[]), flat, cfg, lambda knob, target: None)
    assert seen and not any(".slo." in k for k in m)  # no second computation of the ratio


def test_a_ratio_already_derived_is_kept():
    cfg = _config()
    flat = {"svc.llm.latency.p95_s": 0.8, "svc.llm.slo.p95_ratio": 7.0}
    m = context_metrics(RuleSet(rules=[]), flat, cfg, lambda knob, target: None)
    assert m["svc.llm.slo.p95_ratio"] == 7.0
