"""The capability table (autotune/slo.py): which SLO field each declared latency source can
measure, the one line each says, and slo.targets counting only those (so the PSI rules come back
for a service whose SLO its source cannot measure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune import slo
from autotune.config import SLO, Config, LatencySource, Service
from autotune.detect.metrics import slo_ratios
from autotune.diagnose.engine import diagnose
from autotune.diagnose.rules import load_rules
from autotune.types import Symptom

FIELDS = ("p95_latency_s", "p99_latency_s", "ttft_p95_s", "itl_p95_s", "itl_mean_s")
ALL = SLO(**{f: 1.0 for f in FIELDS})
PAGE = "http://127.0.0.1:8080/metrics"
PROBE = "http://127.0.0.1:8080"

# source -> the fields it can measure (every field of config.SLO is a column)
EXPECTED = {
    "vllm": set(FIELDS),
    "autotune": set(FIELDS),
    "tgi": set(FIELDS) - {"ttft_p95_s"},  # no TTFT histogram
    "llamacpp": {"itl_mean_s"},  # counters only: no percentile at all
    "probe": set(FIELDS),  # sampled by its own short streamed requests
    "llamacpp+probe": set(FIELDS),
    "none": set(),
}


def svc(source: str, **slo_fields: float) -> Service:
    latency = None
    if source == "probe":
        latency = LatencySource(probe_url=PROBE)
    elif source == "llamacpp+probe":
        latency = LatencySource(metrics_url=PAGE, flavor="llamacpp", probe_url=PROBE)
    elif source != "none":
        latency = LatencySource(metrics_url=PAGE, flavor=source)
    return Service(name="llm", cgroup="/autotune/llm", slo=SLO(**slo_fields) if slo_fields else ALL, latency=latency)


def test_the_table_covers_every_slo_field_of_the_config():
    assert set(slo.FIELDS) == set(SLO.model_fields)


@pytest.mark.parametrize("source", EXPECTED)
@pytest.mark.parametrize("field", FIELDS)
def test_each_source_x_each_field(source, field):
    service = svc(source, **{field: 0.5})
    (a,) = slo.assess(service)
    assert a.field == field and a.counted is (field in EXPECTED[source]) and not a.pending
    assert slo.counted(service) == ([field] if a.counted else [])
    assert a.line.startswith(f"llm: {field} ") and "\n" not in a.line
    assert ("counted" if a.counted else "not counted") in a.line
    flat = {f"svc.llm.{slo.FIELDS[field].metric}": 0.8}
    assert slo_ratios(flat, [service])["svc.llm.slo.targets"] == (1.0 if a.counted else 0.0)
    # a figure the source cannot measure is no target, even when a number turns up for it
    assert (f"svc.llm.{slo.FIELDS[field].ratio}" in slo_ratios(flat, [service])) is a.counted


def test_the_llamacpp_users_config_says_what_is_wrong_and_what_would_do():
    (a,) = slo.assess(svc("llamacpp", itl_p95_s=0.1))
    assert a.line == ("llm: itl_p95_s cannot be measured from a llama.cpp metrics page (no histograms): "
                      "not counted; itl_mean_s or probe_url can")
    (b,) = slo.assess(svc("llamacpp", itl_mean_s=0.1))
    assert b.line == "llm: itl_mean_s (mean time per generated token) measured from a llama.cpp metrics page: counted"
    (c,) = slo.assess(svc("llamacpp+probe", ttft_p95_s=2.0))
    assert c.source == "probe" and "the active probe (a sample of its own short requests" in c.line
    (d,) = slo.assess(svc("llamacpp+probe", itl_mean_s=0.1))
    assert d.source == "llamacpp"  # the page sees every request: it goes first
    (e,) = slo.assess(svc("none", itl_p95_s=0.1))
    assert "has no latency source" in e.line and not e.counted


def test_flavor_auto_is_decided_by_the_first_scrape():
    service = Service(name="llm", cgroup="/x", slo=SLO(itl_p95_s=0.1), latency=LatencySource(metrics_url=PAGE))
    (a,) = slo.assess(service)
    assert a.counted and a.pending and "first scrape" in a.line and "llamacpp cannot" in a.line
    assert slo_ratios({}, [service])["svc.llm.slo.targets"] == 1.0
    assert slo.counted(service, detected="vllm") == ["itl_p95_s"]
    assert slo.counted(service, detected="llamacpp") == []
    assert slo_ratios({}, [service], {"llm": "llamacpp"})["svc.llm.slo.targets"] == 0.0


def test_the_psi_rules_come_back_for_an_slo_its_source_cannot_measure():
    """The llama.cpp user's config: itl_p95_s on a llama.cpp page. Not a target, so the service
    is not SLO-controlled and the PSI-driven rules act on the pressure measured on it; with
    itl_mean_s, which the page measures, the SLO controller owns it and they stand aside."""
    rules = load_rules([Path(__file__).resolve().parents[1] / "rules"])
    nb = Service(name="batch", role="neighbour", cgroup="/autotune/batch")
    m = {"host.ncpu": 2.0, "psi.cpu.some.avg10": 60.0, "svc.llm.psi.cpu.some.avg10": 30.0,
         "svc.batch.cpu.usage_cores": 1.5, "svc.llm.cpu.weight": 100.0}
    sym = [Symptom(name="cpu_pressure", metric="psi.cpu.some.avg10", value=60.0, threshold=20.0, since_ts=0.0)]
    cur = {("cgroup.cpu_weight", "/autotune/llm"): "100", ("cgroup.cpu_weight", "/autotune/batch"): "100"}

    def fired(service: Service) -> set[str]:
        cfg = Config(service=[service, nb])
        metrics = {**m, **slo_ratios(m, cfg.services, {"llm": "llamacpp"})}
        acts = diagnose(rules, metrics, sym, cfg, lambda k, t: cur.get((k, t)), now=0.0)
        return {a.rule for a in acts}

    llama = LatencySource(metrics_url=PAGE)  # flavor auto, detected llamacpp
    blind = fired(Service(name="llm", cgroup="/autotune/llm", slo=SLO(itl_p95_s=0.1), latency=llama))
    assert {"raise-service-cpu-weight", "lower-neighbour-cpu-weight"} <= blind
    owned = fired(Service(name="llm", cgroup="/autotune/llm", slo=SLO(itl_mean_s=0.1), latency=llama))
    assert not owned & {"raise-service-cpu-weight", "lower-neighbour-cpu-weight"}


@pytest.mark.parametrize("detected", [None, "vllm", "tgi", "llamacpp"])
@pytest.mark.parametrize("latency", [
    None, LatencySource(), LatencySource(metrics_url=PAGE), LatencySource(probe_url=PROBE),
    LatencySource(metrics_url=PAGE, probe_url=PROBE), LatencySource(metrics_url=PAGE, flavor="tgi"),
    LatencySource(metrics_url=PAGE, flavor="llamacpp", probe_url=PROBE)])
def test_counted_is_assess_without_its_lines(latency, detected):
    service = Service(name="llm", cgroup="/x", slo=ALL, latency=latency)
    assert slo.counted(service, detected) == [a.field for a in slo.assess(service, detected) if a.counted]
