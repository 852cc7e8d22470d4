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
from autotune.types import (LatencyReading, PsiLine, PsiReading, ServiceReading, Snapshot, Symptom)

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
    assert g("autotune_psi_avg_percent", {"resource": "cpu", "kind": "some", "window": "10s"}) == 12.5
    assert g("autotune_psi_avg_percent", {"resource": "memory", "kind": "full", "window": "300s"}) == 3.0
    assert g("autotune_psi_stall_seconds_total", {"resource": "cpu", "kind": "some"}) == 2.5
    assert g("autotune_vmstat_rate_per_second", {"counter": "pgmajfault"}) == 50.0
    assert g("autotune_vmstat_rate_per_second", {"counter": "nr_free_pages"}) is None  # not a key counter
    assert g("autotune_service_latency_seconds", {"service": "llm", "percentile": "p95"}) == 0.25
    assert g("autotune_service_ttft_p95_seconds", {"service": "llm"}) == 0.05
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


def test_gauges_and_rates_are_the_metric_vocabulary(exp):
    m = derive_metrics([_snap(100.0, 1000), _snap(102.0, 1100)])  # what the fixture fed, in order
    g = exp.registry.get_sample_value
    psi = {k: v for k, v in m.items() if k.startswith("psi.") and ".avg" in k}
    assert len(psi) == 9  # cpu some, memory some + full; io absent
    for name, v in psi.items():
        _, res, kind, avg = name.split(".")
        assert g("autotune_psi_avg_percent", {"resource": res, "kind": kind, "window": avg[3:] + "s"}) == v, name
    page = generate_latest(exp.registry).decode()
    assert page.count("autotune_psi_avg_percent{") == len(psi)
    assert g("autotune_vmstat_rate_per_second", {"counter": "pgmajfault"}) == m["vmstat.pgmajfault.rate"]
    assert g("autotune_memory_available_bytes") == m["mem.available_bytes"]
    for pct in ("p50", "p95", "p99"):
        assert g("autotune_service_latency_seconds", {"service": "llm", "percentile": pct}) == \
            m[f"svc.llm.latency.{pct}_s"]
    assert g("autotune_service_ttft_p95_seconds", {"service": "llm"}) == m["svc.llm.latency.ttft_p95_s"]
    assert g("autotune_service_requests_waiting", {"service": "llm"}) == m["svc.llm.latency.waiting"]


def test_counter_reset_gives_no_rate(exp):
    exp.update_snapshot(_snap(104.0, 10))
    assert exp.registry.get_sample_value("autotune_vmstat_rate_per_second", {"counter": "pgmajfault"}) is None


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
        assert 'autotune_psi_avg_percent{kind="some",resource="cpu",window="10s"} 12.5' in body
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
                    q = 'autotune_psi_avg_percent{resource="cpu",kind="some",window="10s"}'
                    psi = httpx.get(api, params={"query": q}, timeout=2).json()["data"]["result"]
                    if psi:
                        break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        assert up == 1, "Prometheus never saw the exporter up"
        assert float(psi[0]["value"][1]) == 12.5
    finally:
        proc.kill()
        proc.wait(timeout=10)
        exp.stop()


def test_grafana_dashboard_uses_only_exported_metrics(exp):
    import json
    import re
    from pathlib import Path

    dash = json.loads((Path(__file__).parents[2] / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dash["annotations"]["list"]]
    used = {m for e in exprs for m in re.findall(r"autotune_[a-z0-9_]+", e)}
    page = generate_latest(exp.registry).decode()
    exported = set(re.findall(r"^(autotune_[a-z0-9_]+)", page, re.M))
    assert used and used <= exported, used - exported
