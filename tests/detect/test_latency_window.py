"""Latency over a detection window: merged per-scrape histograms, SLO ratios and slack."""

from __future__ import annotations

import numpy as np
import pytest

from autotune import histogram
from autotune.config import SLO, LatencySource, Service
from autotune.detect.metrics import derive_metrics, is_known_metric
from autotune.types import Buckets, LatencyReading, ServiceReading, Snapshot

LE = (0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.5, 1.0, 2.0)


def _buckets(values: list[float]) -> Buckets:
    counts = [0.0] * (len(LE) + 1)
    for v in values:
        counts[next((i for i, le in enumerate(LE) if v <= le), len(LE))] += 1
    return Buckets(le=LE, counts=tuple(counts), sum=float(sum(values)))


def _snap(ts: float, itl: list[float], *, ttft: list[float] = (), requests: float = 0.0,
          running: float = 1.0, hist: bool = True, **last) -> Snapshot:
    lat = LatencyReading(
        source="vllm:test", ok=True, requests=requests, tokens=float(len(itl)), running=running, waiting=0.0,
        itl_samples=float(len(itl)), ttft_samples=float(len(ttft)),
        hist={"itl": _buckets(itl), "ttft": _buckets(list(ttft))} if hist else {}, **last)
    return Snapshot(ts=ts, services={"llm": ServiceReading(name="llm", latency=lat)})


def _llm(**slo) -> Service:
    return Service(name="llm", cgroup="/llm", slo=SLO(**slo),
                   latency=LatencySource(metrics_url="http://127.0.0.1:1/metrics"))


def test_window_p95_merges_every_scrape_after_the_first():
    rng = np.random.default_rng(1)
    chunks = [list(rng.uniform(0.03, 0.09, 40)) for _ in range(5)]
    chunks[3] = list(rng.uniform(0.12, 0.19, 40))  # one slow second
    window = [_snap(float(i), c) for i, c in enumerate(chunks)]
    m = derive_metrics(window)
    # the first snapshot's interval lies before the window: it is left out
    pooled = [v for c in chunks[1:] for v in c]
    want = histogram.quantile(0.95, histogram.merge(_buckets(c) for c in chunks[1:]))
    assert m["svc.llm.latency.itl_p95_s"] == pytest.approx(want)
    assert abs(m["svc.llm.latency.itl_p95_s"] - np.quantile(pooled, 0.95)) < 0.025  # within a bucket
    assert m["svc.llm.latency.tokens"] == 160.0 and m["svc.llm.latency.itl_samples"] == 160.0
    assert m["svc.llm.latency.itl_mean_s"] == pytest.approx(np.mean(pooled))
    # one scrape alone is its own interval
    one = derive_metrics([window[3]])
    assert one["svc.llm.latency.itl_p95_s"] > 0.12 and one["svc.llm.latency.tokens"] == 40.0


def test_without_histograms_the_last_reading_is_used():
    window = [_snap(0.0, [0.05], hist=False, itl_p95_s=0.07), _snap(1.0, [0.05], hist=False, itl_p95_s=0.09)]
    assert derive_metrics(window)["svc.llm.latency.itl_p95_s"] == 0.09


def test_slack_is_one_minus_the_binding_ratio():
    window = [_snap(0.0, [0.05] * 10, ttft=[0.3]), _snap(1.0, [0.05] * 10, ttft=[0.3], requests=1)]
    m = derive_metrics(window, services=[_llm(itl_p95_s=0.1, ttft_p95_s=0.25)])
    itl_ratio = m["svc.llm.latency.itl_p95_s"] / 0.1
    ttft_ratio = m["svc.llm.latency.ttft_p95_s"] / 0.25
    assert ttft_ratio > 1 > itl_ratio  # the first token is late, the tokens are not
    assert m["svc.llm.slo.itl_p95_ratio"] == pytest.approx(itl_ratio)
    assert m["svc.llm.slo.slack"] == pytest.approx(1 - ttft_ratio)
    assert m["svc.llm.slo.targets"] == 2.0


def test_idle_service_has_full_slack_and_busy_without_data_has_none():
    idle = [_snap(0.0, [], running=0.0), _snap(1.0, [], running=0.0)]
    assert derive_metrics(idle, services=[_llm(itl_p95_s=0.1)])["svc.llm.slo.slack"] == 1.0
    busy = [_snap(0.0, [], running=2.0), _snap(1.0, [], running=2.0)]
    m = derive_metrics(busy, services=[_llm(itl_p95_s=0.1)])
    assert "svc.llm.slo.slack" not in m and m["svc.llm.slo.targets"] == 1.0


def test_a_service_without_latency_source_is_not_slo_controlled():
    svc = Service(name="llm", cgroup="/llm", slo=SLO(itl_p95_s=0.1))
    assert derive_metrics([_snap(0.0, [0.05])], services=[svc])["svc.llm.slo.targets"] == 0.0


@pytest.mark.parametrize("name", ["svc.$service.slo.slack", "svc.$service.slo.itl_p95_ratio",
                                  "svc.$service.latency.itl_p95_s", "svc.$service.slo.targets",
                                  "svc.x.latency.tokens"])
def test_new_names_are_known(name):
    assert is_known_metric(name)


def test_every_kind_has_p50_p95_p99_over_the_window():
    """ttft and itl have the same three quantiles as e2e (the exporter's summary); without
    histograms a quantile the reading does not carry is absent, not an error."""
    window = [_snap(0.0, [0.5]), _snap(1.0, [0.03, 0.05, 0.07] * 10, ttft=[0.1, 0.3]),
              _snap(2.0, [0.09] * 5, ttft=[0.15])]
    m = derive_metrics(window)
    for kind in ("ttft", "itl"):
        merged = histogram.merge(r.services["llm"].latency.hist[kind] for r in window[1:])
        for q in (50, 95, 99):
            name = f"svc.llm.latency.{kind}_p{q}_s"
            assert is_known_metric(name) and m[name] == pytest.approx(histogram.quantile(q / 100, merged)), name
    plain = derive_metrics([_snap(0.0, [0.05], hist=False, itl_p95_s=0.07)])
    assert plain["svc.llm.latency.itl_p95_s"] == 0.07 and "svc.llm.latency.itl_p99_s" not in plain


def test_quantiles_at_once_are_each_quantile():
    b = Buckets(le=(0.01, 0.05, 0.1, 0.5), counts=(3, 0, 10, 6, 1), sum=2.0)
    qs = (0.0, 0.2, 0.5, 0.95, 0.99, 1.0)
    # cumulative (3, 3, 13, 19, 20): linear inside the bucket holding the rank, +Inf -> 0.5
    assert histogram.quantiles(qs, b) == pytest.approx([0.0, 0.055, 0.085, 0.5, 0.5, 0.5])
    assert histogram.quantiles(qs, Buckets(le=(0.1,), counts=(0, 0))) == [None] * len(qs)
    with pytest.raises(ValueError):
        histogram.quantiles((0.5, 1.5), b)
