"""Objectives are named series of the metric vocabulary: names, legacy names, the series being
derive_metrics' own values, the choice the verify stage makes, and how reports show them."""

from __future__ import annotations

import pytest

from autotune.detect.metrics import derive_metrics, is_known_metric
from autotune.types import CgroupReading, LatencyReading, PsiLine, PsiReading, ServiceReading, Snapshot
from autotune.verify.objectives import KINDS, LEGACY, choose, objective, objective_series, unit
from autotune.verify.stats import evaluate


def psi(total: int, avg10: float = 0.0) -> PsiReading:
    return PsiReading(some=PsiLine(avg10_pct=avg10, avg60_pct=0, avg300_pct=0, total_usec=total))


def snap(ts: float, *, host_total: int = 0, svc_total: int | None = None, usage: int | None = None,
         p95: float | None = None, probe: int = 0, svc: str = "llm") -> Snapshot:
    cg = CgroupReading(path=f"/a/{svc}", version=2, cpu_usage_usec=usage,
                       psi={"cpu": psi(svc_total)} if svc_total is not None else {})
    lat = LatencyReading(source=f"probe{probe}", ok=True, p95_s=p95) if p95 is not None else None
    return Snapshot(ts=ts, psi={"cpu": psi(host_total)},
                    services={svc: ServiceReading(name=svc, cgroup=cg, latency=lat)})


def test_every_objective_is_a_metric_of_the_vocabulary():
    for metric, kind in KINDS.items():
        assert is_known_metric(f"svc.llm.{metric}")
        assert kind.service_only or is_known_metric(metric)
    o = objective("svc.my.svc.psi.cpu.some.stall_pct")  # a service name may hold dots
    assert (o.service, o.kind.metric, o.direction) == ("my.svc", "psi.cpu.some.stall_pct", "lower_is_better")
    assert objective("psi.cpu.some.stall_pct").service is None
    assert objective("svc.batch.cpu.usage_cores").direction == "higher_is_better"
    for bad in ("latency.p95_s", "svc.llm.cpu.weight", "nope"):  # service-only / not an objective
        with pytest.raises(ValueError, match="svc.<s>.latency.p95_s"):
            objective(bad)


def test_series_are_derive_metrics_values_over_two_second_runs():
    w = [snap(100.0 + i, host_total=250_000 * i + (i % 3) * 7_000, svc_total=400_000 * i,
              usage=1_200_000 * i) for i in range(11)]
    for name in ("psi.cpu.some.stall_pct", "svc.llm.psi.cpu.some.stall_pct", "svc.llm.cpu.usage_cores"):
        expected = [derive_metrics(w[i - 2: i + 1])[name] for i in range(2, 11, 2)]
        assert objective(name).series(w) == pytest.approx(expected), name
    assert objective("svc.llm.psi.cpu.some.stall_pct").series(w) == pytest.approx([40.0] * 5)


def test_stall_pct_is_capped_at_100_and_falls_back_to_avg10():
    w = [snap(0, host_total=0), snap(2, host_total=2_100_000)]  # jitter: 105 % of wall time
    assert objective_series("psi.cpu.some.stall_pct", w) == pytest.approx([100.0])
    short = [Snapshot(ts=t, psi={"cpu": psi(0, avg10=float(t))}) for t in (0.0, 0.5, 1.0, 1.5)]
    assert objective_series("psi.cpu.some.stall_pct", short) == [0.0]  # runs < 2 s: avg10 instead


def test_latency_reading_repeated_between_samples_counts_once():
    w = [snap(float(i), p95=0.5 + 0.1 * (i // 3), probe=i // 3) for i in range(9)]
    assert objective_series("svc.llm.latency.p95_s", w) == pytest.approx([0.5, 0.6, 0.7])


def test_legacy_names_resolve_to_metrics():
    assert set(LEGACY) == {"psi", "latency_p95", "requests", "throughput"}
    with_cg = [snap(float(i), svc_total=100 * i) for i in range(3)]
    host_only = [Snapshot(ts=float(i), psi={"cpu": psi(0)}) for i in range(3)]
    assert objective("psi", "llm", with_cg).name == "svc.llm.psi.cpu.some.stall_pct"
    assert objective("psi", "llm", host_only).name == "psi.cpu.some.stall_pct"  # v1-only host
    assert objective("psi").name == "psi.cpu.some.stall_pct"
    assert objective("latency_p95", "llm").name == "svc.llm.latency.p95_s"
    assert objective("throughput", "b").name == "svc.b.cpu.usage_cores"
    with pytest.raises(ValueError, match="name the service"):
        objective("latency_p95")


def test_evaluate_keeps_the_name_it_was_given():
    w = [snap(float(i), host_total=100_000 * i) for i in range(13)]
    assert evaluate("psi.cpu.some.stall_pct", w[:7], w[6:]).objective == "psi.cpu.some.stall_pct"
    assert evaluate("psi", w[:7], w[6:], "llm").objective == "psi"  # an old row re-evaluated


def test_choose_prefers_latency_then_service_psi_then_host_psi():
    lat = [snap(float(i), svc_total=10 * i, p95=0.1 * i, probe=i) for i in range(6)]
    assert choose("llm", lat, has_latency=True).name == "svc.llm.latency.p95_s"
    assert choose("llm", lat[:4], has_latency=True).name == "svc.llm.psi.cpu.some.stall_pct"
    assert choose("llm", lat, has_latency=False).name == "svc.llm.psi.cpu.some.stall_pct"
    no_cg = [snap(float(i)).model_copy(update={"services": {}}) for i in range(6)]
    assert choose("llm", no_cg, has_latency=False).name == "psi.cpu.some.stall_pct"
    assert choose(None, lat, has_latency=True).name == "psi.cpu.some.stall_pct"


def test_reports_show_new_and_legacy_names_in_their_unit():
    from autotune.review.report import format_objective

    assert unit("svc.llm.latency.p95_s") == unit("latency_p95") == "s"
    assert unit("svc.llm.psi.cpu.some.stall_pct") == unit("psi") == "%"
    assert unit("svc.b.cpu.usage_cores") == "cores" and unit("nope") == "" and unit(None) == ""
    assert format_objective("svc.llm.latency.p95_s", 0.25) == "250.0 ms"
    assert format_objective("psi.cpu.some.stall_pct", 19.9) == "19.9 % (PSI)"
    assert format_objective("svc.llm.psi.cpu.some.stall_pct", 19.9) == "19.9 % (PSI)"
    assert format_objective("latency_p95", 0.25) == "250.0 ms"  # rows journaled before


# -- per-token latency: every token a sample ---------------------------------------------------
def _itl_snap(ts: float, itl: float, n: int = 40):
    from autotune.types import Buckets, LatencyReading, ServiceReading, Snapshot

    le = tuple(round(0.005 * i, 3) for i in range(1, 80))
    counts = [0.0] * (len(le) + 1)
    for i in range(n):
        v = itl * (0.8 + 0.4 * i / n)
        counts[next((k for k, b in enumerate(le) if v <= b), len(le))] += 1
    lat = LatencyReading(source="vllm:t", ok=True, tokens=n, itl_samples=n, requests=1, running=1, waiting=0,
                         hist={"itl": Buckets(le=le, counts=tuple(counts), sum=itl * n)})
    return Snapshot(ts=ts, services={"llm": ServiceReading(name="llm", latency=lat)})


def test_per_token_objective_is_chosen_when_tokens_flow_and_tells_a_small_shift():
    from autotune.verify import stats
    from autotune.verify.objectives import choose

    before = [_itl_snap(float(t), 0.060) for t in range(6)]
    after = [_itl_snap(10.0 + t, 0.050) for t in range(6)]
    obj = choose("llm", before + after, has_latency=True)
    assert obj.name == "svc.llm.latency.itl_p95_s"
    assert obj.observations(before) == 200  # 5 intervals x 40 tokens (the first lies before the window)
    r = stats.evaluate(obj.name, before, after, "llm")
    assert r.verdict == "improved" and r.p_value < 0.001  # a 17 % faster token, seen in 200 vs 200
    assert r.quantile == 0.95 and r.after_median < r.before_median
    few = [_itl_snap(float(t), 0.060, n=5) for t in range(6)]
    assert choose("llm", few, has_latency=True).name != "svc.llm.latency.itl_p95_s"  # too few tokens
