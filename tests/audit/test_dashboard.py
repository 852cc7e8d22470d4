"""The three /metrics pages (agent exporter, gate, workload server) pass promtool, and every
metric the Grafana dashboard queries is exported by one of them. No servers, no torch: the
pages come from the same registries the processes serve."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from prometheus_client import generate_latest

from autotune.audit.exporter import Exporter
from autotune.gate.core import Gate, GateSettings
from autotune.workload.metrics import ServerMetrics
from bench.dashboard_scrape import (dashboard, label_values_metric, metric_names, queries, substitute,
                                    variable_queries)

from .test_exporter import SVC, _lat_snap, _snap

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count"),
            "gauge": ("",), "info": ("_info",), "untyped": ("",)}


def agent_page() -> str:
    e = Exporter(services=[SVC], knobs=["thp", "cgroup.cpu_quota"])
    e.update_snapshot(_snap(100.0, 1000))
    for t, itl in ((101.0, (1, 2, 3, 0, 0, 0)), (102.0, (0, 4, 3, 1, 0, 0))):
        e.update_snapshot(_lat_snap(t, itl).model_copy(update={"psi": _snap(t, 1).psi, "vmstat": {"pgmajfault": 5}}))
    return generate_latest(e.registry).decode()


def gate_page() -> str:
    g = Gate(GateSettings(threshold_pct=40.0, adaptive=False), None)
    g.queue_wait.observe(0.01)
    g.upstream_latency.observe(0.4)
    g.upstream_first_byte.observe(0.05)
    return generate_latest(g.registry).decode()


def server_page() -> str:
    m = ServerMetrics("gpt2-tiny")
    for h, v in ((m.e2e, 0.5), (m.ttft, 0.05), (m.queue, 0.0)):
        m.labels(h).observe(v)
    m.token_gap(0.03)
    m.labels(m.running).set(1)
    m.labels(m.waiting).set(0)
    m.labels(m.threads).set(1)
    m.labels(m.prompt_tokens).inc(5)
    m.labels(m.generation_tokens).inc(3)
    m.success.labels(model_name=m.model_name, finished_reason="stop").inc()
    return generate_latest(m.registry).decode()


PAGES = {"agent": agent_page, "gate": gate_page, "server": server_page}


def exported(page: str) -> set[str]:
    """Series names a page declares (# TYPE lines, expanded by type), with or without samples."""
    out = set()
    for name, typ in re.findall(r"^# TYPE (\S+) (\S+)$", page, re.M):
        base = name.removesuffix({"counter": "_total", "info": "_info"}.get(typ, ""))
        out |= {base + s for s in SUFFIXES[typ]}
    return out


def promtool(page: str) -> list[str]:
    r = subprocess.run(["promtool", "check", "metrics"], input=page, capture_output=True, text=True, timeout=60)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package 'prometheus')")
@pytest.mark.parametrize("endpoint", sorted(PAGES))
def test_promtool_check_metrics(endpoint):
    problems = promtool(PAGES[endpoint]())
    if endpoint == "server":  # vLLM's own names contain ':' (promtool lints it); nothing else may be wrong
        assert problems and all(p.startswith("vllm:") and "should not contain ':'" in p for p in problems), problems
    else:
        assert not problems, problems


def test_promtool_catches_what_the_agent_page_must_not_have():
    """The check above can fail: promtool flags a counter without _total and a quantile label
    on a gauge (what a gauge named *_p95_seconds relabelled with quantile would be)."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed")
    bad = ('# HELP x_seconds l\n# TYPE x_seconds gauge\nx_seconds{quantile="0.95"} 1\n'
           "# HELP y_events e\n# TYPE y_events counter\ny_events 1\n")
    assert len(promtool(bad)) == 2


def test_metric_names_reads_promql_loosely():
    assert metric_names('sum by (le, instance) (rate(foo_bucket{a="b",c=~"x|y"}[$__rate_interval]))') == {"foo_bucket"}
    assert metric_names('histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_seconds_bucket[5m])))') == \
        {"vllm:e2e_seconds_bucket"}
    assert metric_names("a_sum / on(service) b_count * 1e9 > bool 0") == {"a_sum", "b_count"}
    assert metric_names('x{l="rate(y)"} or vector(0)') == {"x"}


def test_dashboard_queries_only_exported_metrics():
    dash = dashboard()
    used = {n for _, e in queries(dash) for n in metric_names(e)}
    used |= {label_values_metric(q) for q in variable_queries(dash).values()}
    have = set().union(*(exported(page()) for page in PAGES.values()))
    assert used - have == set(), sorted(used - have)
    # the panels the issue asks for: window latency by kind, SLO, gate histograms, vLLM names
    assert {"autotune_service_latency_seconds", "autotune_service_slo_slack_ratio",
            "autotune_gate_queue_wait_seconds_bucket", "autotune_gate_upstream_latency_seconds_bucket",
            "autotune_gate_admitted_total", "autotune_gate_deferred_total", "autotune_gate_rejected_total",
            "vllm:request_success_total", "vllm:generation_tokens_total", "vllm:num_requests_running",
            "vllm:num_requests_waiting", "autotune_workload_intra_op_threads"} <= used
    exprs = " ".join(e for _, e in queries(dash))
    for kind in ("e2e", "ttft", "itl"):
        assert f'autotune_service_latency_seconds{{instance=~"$instance",kind="{kind}"}}' in exprs


def test_every_query_uses_its_endpoints_variable():
    """Agent panels filter on $instance, gate panels on $gate, server panels on $server: a
    dashboard over many hosts must not mix them."""
    owner = {"autotune_gate_": "$gate", "vllm:": "$server", "autotune_workload_": "$server", "autotune_": "$instance"}
    for where, expr in queries(dashboard()):
        for name in metric_names(expr):
            var = next(v for prefix, v in owner.items() if name.startswith(prefix))
            assert f'instance=~"{var}"' in expr, (where, name)
        assert "$" not in substitute(expr, {"instance": "a:1", "gate": "b:2", "server": "c:3"}, 60), where
