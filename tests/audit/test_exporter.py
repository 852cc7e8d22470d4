from __future__ import annotations

import shutil
import socket
import subprocess
import time

import httpx
import pytest
from prometheus_client import generate_latest

from autotune.audit.exporter import Exporter, parse_listen
from autotune.audit.trail import AuditEvent
from autotune.detect.metrics import derive_metrics
from prometheus_client.parser import text_string_to_metric_families

from autotune import histogram
from autotune.config import SLO, LatencySource, Service
from autotune.types import (Buckets, LatencyReading, PsiLine, PsiReading, ServiceReading, Snapshot,
                            Symptom)

from .conftest import make_events


def _snap(ts: float, pgmajfault: int) -> Snapshot:
    line = PsiLine(avg10_pct=12.5, avg60_pct=8.0, avg300_pct=3.0, total_usec=2_500_000)
    return Snapshot(
        ts=ts,
        psi={"cpu": PsiReading(some=line), "memory": PsiReading(some=line, full=line), "io": None},
        vmstat={"pgmajfault": pgmajfault, "pswpin": 0, "nr_free_pages": 5},
        meminfo_bytes={"MemAvailable": 1 << 30},
        services={"llm": ServiceReading(name="llm", latency=LatencyReading(
            source="t", ok=True, p50_s=0.1, p95_s=0.25, p99_s=0.4, ttft_p95_s=0.05, waiting=3))},
        missing=["cpufreq"],
    )


LE = (0.01, 0.02, 0.05, 0.1, 0.2)


def _lat_snap(ts: float, itl: tuple[float, ...] | None, *, requests: float = 1.0) -> Snapshot:
    """A snapshot whose latency reading carries one interval's histograms (itl counts per bucket)."""
    hist = {}
    if itl is not None:
        mid = sum(c * le for c, le in zip(itl, LE + (0.2,)))
        hist = {"itl": Buckets(le=LE, counts=itl, sum=mid),
                "e2e": Buckets(le=LE, counts=(0, 0, 0, 0, requests, 0), sum=0.15 * requests),
                "ttft": Buckets(le=LE, counts=(0, requests, 0, 0, 0, 0), sum=0.015 * requests)}
    lat = LatencyReading(source="t", ok=True, hist=hist, requests=requests if itl else 0.0,
                         tokens=sum(itl) if itl else 0.0, running=1 if itl else 0, waiting=0)
    return Snapshot(ts=ts, services={"llm": ServiceReading(name="llm", latency=lat)})


SVC = Service(name="llm", cmdline="serve", slo=SLO(p95_latency_s=0.3, itl_p95_s=0.05),
              latency=LatencySource(metrics_url="http://127.0.0.1:1/metrics"))


@pytest.fixture
def exp() -> Exporter:
    e = Exporter()
    e.update_snapshot(_snap(100.0, 1000))
    e.update_snapshot(_snap(102.0, 1100))
    e.update_symptoms([Symptom(name="cpu_pressure", service="llm", metric="psi.cpu.some.avg10",
                               value=42.0, threshold=20.0, since_ts=90.0)])
    for ev in make_events():
        e.observe_event(ev)
    e.observe_event(AuditEvent(ts=200.0, kind="refusal", knob="sysctl", outcome="refused"))
    return e


def test_values_follow_snapshot_symptoms_and_events(exp):
    g = exp.registry.get_sample_value
    assert g("autotune_psi_avg_ratio", {"resource": "cpu", "kind": "some", "window": "10s"}) == 0.125
    assert g("autotune_psi_avg_ratio", {"resource": "memory", "kind": "full", "window": "300s"}) == 0.03
    assert g("autotune_psi_stall_seconds_total", {"resource": "cpu", "kind": "some"}) == 2.5
    assert g("autotune_vmstat_events_total", {"counter": "pgmajfault"}) == 1100
    assert g("autotune_vmstat_events_total", {"counter": "nr_free_pages"}) is None  # not a key counter
    assert g("autotune_service_latency_seconds", {"service": "llm", "kind": "e2e", "quantile": "0.95"}) == 0.25
    assert g("autotune_service_latency_seconds", {"service": "llm", "kind": "ttft", "quantile": "0.95"}) == 0.05
    assert g("autotune_symptom_active", {"symptom": "cpu_pressure", "service": "llm",
                                         "metric": "psi.cpu.some.avg10"}) == 1
    assert g("autotune_symptoms_active") == 1
    verdicts = [e for e in make_events() if e.kind == "verify"]
    for outcome in ("kept", "rolled_back"):
        want = sum(e.knob == "thp" and e.outcome == outcome for e in verdicts)
        assert g("autotune_actions_total", {"knob": "thp", "outcome": outcome}) == want > 0
    assert g("autotune_rollbacks_total", {"knob": "thp"}) == 1  # one verdict, one rollback event
    assert g("autotune_verification_duration_seconds_count") == 12
    assert g("autotune_verification_duration_seconds_sum") == pytest.approx(12 * 34.5)
    assert g("autotune_process_resident_memory_bytes") > 1e6
    assert g("autotune_helper_refusals_total", {"knob": "sysctl"}) == 1
    assert g("autotune_build_info", {"version": __import__("autotune").__version__,
                                     "python": __import__("platform").python_version()}) == 1


def test_gauges_are_the_metric_vocabulary_over_the_window(exp):
    m = derive_metrics([_snap(100.0, 1000), _snap(102.0, 1100)])  # what the fixture fed, in order
    g = exp.registry.get_sample_value
    psi = {k: v for k, v in m.items() if k.startswith("psi.") and ".avg" in k}
    assert len(psi) == 9  # cpu some, memory some + full; io absent
    for name, v in psi.items():
        _, res, kind, avg = name.split(".")
        assert g("autotune_psi_avg_ratio", {"resource": res, "kind": kind, "window": avg[3:] + "s"}) == v / 100, name
    page = generate_latest(exp.registry).decode()
    assert page.count("autotune_psi_avg_ratio{") == len(psi)
    assert g("autotune_memory_available_bytes") == m["mem.available_bytes"]
    for q, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
        assert g("autotune_service_latency_seconds", {"service": "llm", "kind": "e2e", "quantile": q}) == \
            m[f"svc.llm.latency.{key}_s"]
    assert g("autotune_service_requests_waiting", {"service": "llm"}) == m["svc.llm.latency.waiting"]


def test_counters_are_raw_not_rates(exp):
    """A counter reset shows as the raw value (Prometheus' rate() handles resets); no *_per_second."""
    exp.update_snapshot(_snap(104.0, 10))
    g = exp.registry.get_sample_value
    assert g("autotune_vmstat_events_total", {"counter": "pgmajfault"}) == 10
    page = generate_latest(exp.registry).decode()
    assert "per_second" not in page and "_rate" not in page


def test_page_follows_prometheus_naming(exp):
    """Base units, _total on every counter, ratios only (no percent), no _created series."""
    exp.update_snapshot(_lat_snap(104.0, (1, 2, 3, 0, 0, 0)))
    fams = list(text_string_to_metric_families(generate_latest(exp.registry).decode()))
    names = {f.name for f in fams}
    assert not [n for n in names if n.endswith("_created")]
    assert not [s.name for f in fams for s in f.samples if s.name.endswith("_created")]
    assert not [n for n in names if "pct" in n or "percent" in n]
    for f in fams:
        if f.type == "counter":
            assert all(s.name.endswith("_total") for s in f.samples), f.name
        if f.type == "gauge" and f.samples:
            assert "quantile" not in f.samples[0].labels and "le" not in f.samples[0].labels, f.name


def test_latency_quantiles_cover_the_detection_window():
    """Quantiles merge every interval in the last window_s (not the last scrape); _count/_sum are
    cumulative; the series stays present at every scrape while the window holds data."""
    e = Exporter(process=False, window_s=4, sample_period_s=1, services=[SVC])
    g = e.registry.get_sample_value
    q95 = {"service": "llm", "kind": "itl", "quantile": "0.95"}
    slow, fast = (0, 0, 0, 0, 10, 0), (10, 0, 0, 0, 0, 0)
    e.update_snapshot(_lat_snap(0.0, None))
    e.update_snapshot(_lat_snap(1.0, slow))
    for t in range(2, 5):  # the window (4 intervals) now holds the slow interval and three empty ones
        e.update_snapshot(_lat_snap(float(t), None))
        assert g("autotune_service_latency_seconds", q95) == pytest.approx(0.195), t  # present every scrape
    e.update_snapshot(_lat_snap(5.0, fast))  # window = intervals 2..5: the slow one left it
    want = histogram.quantile(0.95, Buckets(le=LE, counts=fast))
    assert g("autotune_service_latency_seconds", q95) == pytest.approx(want)
    for t in range(6, 10):
        e.update_snapshot(_lat_snap(float(t), None))
    assert g("autotune_service_latency_seconds", q95) is None  # nothing observed in the window: absent
    cnt = {"service": "llm", "kind": "itl"}
    assert g("autotune_service_latency_seconds_count", cnt) == 20  # every interval since the start
    assert g("autotune_service_latency_seconds_sum", cnt) == pytest.approx(10 * 0.2 + 10 * 0.01)
    assert g("autotune_service_latency_seconds_count", {"service": "llm", "kind": "e2e"}) == 2
    # idle service: slack 1, no ratios; the SLO targets are always there
    assert g("autotune_service_slo_slack_ratio", {"service": "llm"}) == 1.0
    assert g("autotune_service_slo_ratio", {"service": "llm", "target": "itl_p95"}) is None
    assert g("autotune_service_slo_target_seconds", {"service": "llm", "target": "itl_p95"}) == 0.05
    assert g("autotune_service_slo_target_seconds", {"service": "llm", "target": "p95"}) == 0.3
    assert g("autotune_service_slo_target_seconds", {"service": "llm", "target": "ttft_p95"}) is None


def test_a_snapshot_between_two_scrapes_keeps_the_latency_series():
    """The page has its own period: a snapshot without a reading of its own still exports the
    window's latency and whether the source answered at its last scrape."""
    e = Exporter(process=False, window_s=4, sample_period_s=1, services=[SVC])
    g = e.registry.get_sample_value
    e.update_snapshot(_lat_snap(0.0, None))
    e.update_snapshot(_lat_snap(1.0, (0, 0, 0, 0, 10, 0)))
    e.update_snapshot(Snapshot(ts=2.0, services={"llm": ServiceReading(name="llm")}))  # not scraped
    assert g("autotune_service_latency_up", {"service": "llm"}) == 1
    assert g("autotune_service_latency_seconds", {"service": "llm", "kind": "itl", "quantile": "0.95"}) == \
        pytest.approx(0.195)
    assert g("autotune_service_latency_seconds_count", {"service": "llm", "kind": "itl"}) == 10


def test_slo_ratio_and_slack_follow_the_vocabulary():
    e = Exporter(process=False, window_s=2, sample_period_s=1, services=[SVC])
    snaps = [_lat_snap(0.0, None), _lat_snap(1.0, (0, 0, 0, 10, 0, 0)), _lat_snap(2.0, (0, 0, 10, 0, 0, 0))]
    for s in snaps:
        e.update_snapshot(s)
    m = derive_metrics(snaps, services=[SVC])
    g = e.registry.get_sample_value
    for target, key in (("itl_p95", "itl_p95_ratio"), ("p95", "p95_ratio")):
        assert g("autotune_service_slo_ratio", {"service": "llm", "target": target}) == m[f"svc.llm.slo.{key}"]
    assert g("autotune_service_slo_slack_ratio", {"service": "llm"}) == m["svc.llm.slo.slack"] < 0
    for kind in ("e2e", "ttft", "itl"):
        for q in ("0.5", "0.95", "0.99"):
            assert g("autotune_service_latency_seconds", {"service": "llm", "kind": kind, "quantile": q}) is not None


def test_counters_with_known_labels_start_at_zero():
    e = Exporter(process=False, knobs=["thp", "sysctl"])
    g = e.registry.get_sample_value
    assert g("autotune_actions_total", {"knob": "thp", "outcome": "rolled_back"}) == 0
    assert g("autotune_rollbacks_total", {"knob": "sysctl"}) == 0
    assert g("autotune_helper_refusals_total", {"knob": "thp"}) == 0
    assert g("autotune_audit_events_total", {"kind": "verify"}) == 0
    e.observe_event(AuditEvent(ts=1.0, kind="verify", knob="thp", outcome="kept", detail={"duration_s": 3}))
    assert g("autotune_actions_total", {"knob": "thp", "outcome": "kept"}) == 1
    assert g("autotune_audit_events_total", {"kind": "verify"}) == 1


def test_for_config_takes_window_services_and_knobs():
    from autotune.config import Config
    from autotune.knobs import KNOBS

    cfg = Config.model_validate({"agent": {"window_s": 6, "sample_period_s": 2}, "service": [SVC.model_dump()]})
    e = Exporter.for_config(cfg, process=False)
    assert e._s.window.maxlen == 4  # 3 intervals of 2 s
    g = e.registry.get_sample_value
    assert all(g("autotune_rollbacks_total", {"knob": k}) == 0 for k in KNOBS)
    e.update_snapshot(_lat_snap(0.0, None))
    assert g("autotune_service_slo_target_seconds", {"service": "llm", "target": "itl_p95"}) == 0.05


def test_prime_from_trail_matches_observing_events(filled, exp):
    primed = Exporter(process=False)
    primed.prime_from_trail(filled)
    for knob in ("thp", "sysctl", "cgroup.cpu_quota"):
        for outcome in ("kept", "rolled_back"):
            lab = {"knob": knob, "outcome": outcome}
            assert primed.registry.get_sample_value("autotune_actions_total", lab) == \
                exp.registry.get_sample_value("autotune_actions_total", lab)


def test_parse_listen():
    assert parse_listen("127.0.0.1:9753") == ("127.0.0.1", 9753)
    assert parse_listen("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("localhost")


def test_page_passes_promtool(exp):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (Debian package 'prometheus')")
    page = generate_latest(exp.registry)
    r = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True, timeout=30)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
    assert not (r.stdout + r.stderr).strip(), (r.stdout + r.stderr).decode()  # no lint warnings


def test_http_server_serves_metrics(exp):
    addr, port = exp.start("127.0.0.1:0")
    try:
        body = httpx.get(f"http://{addr}:{port}/metrics", timeout=5).text
        assert 'autotune_psi_avg_ratio{kind="some",resource="cpu",window="10s"} 0.125' in body
    finally:
        exp.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_real_prometheus_scrapes_the_exporter(exp, tmp_path):
    prom = shutil.which("prometheus")
    if not prom:
        pytest.skip("prometheus server not installed (Debian package 'prometheus')")
    _, port = exp.start("127.0.0.1:0")
    prom_port = _free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: autotune\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
    )
    proc = subprocess.Popen(
        [prom, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        api = f"http://127.0.0.1:{prom_port}/api/v1/query"
        deadline, up, psi = time.time() + 40, None, None
        while time.time() < deadline:
            try:
                res = httpx.get(api, params={"query": "up{job='autotune'}"}, timeout=2).json()["data"]["result"]
                if res and res[0]["value"][1] == "1":
                    up = 1
                    q = 'autotune_psi_avg_ratio{resource="cpu",kind="some",window="10s"}'
                    psi = httpx.get(api, params={"query": q}, timeout=2).json()["data"]["result"]
                    if psi:
                        break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        assert up == 1, "Prometheus never saw the exporter up"
        assert float(psi[0]["value"][1]) == 0.125
    finally:
        proc.kill()
        proc.wait(timeout=10)
        exp.stop()
