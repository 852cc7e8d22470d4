"""A real Prometheus scrapes a real agent run; every query of the Grafana dashboard must answer.

    python -m bench.dashboard_scrape                      # 2 minutes, results in bench/out/dashboard-scrape
    python -m bench.dashboard_scrape --duration 30 --out /tmp/ds

Starts, each in its own process group and each stopped at the end: the reference server
(``autotune workload serve --model tiny``), ``autotune gate`` in front of it, the agent
(``autotune run --mode recommend``, a service with a full SLO and the server's ``/metrics`` as
latency source), Debian's ``prometheus`` scraping the agent's exporter, the gate's
``/gate/metrics`` and the server's ``/metrics`` every 2 s, and a closed-loop load through the
gate. After ``--duration`` seconds it evaluates every query of docs/grafana-dashboard.json
(variables set to the three instances) through Prometheus' HTTP API, checks the template
variables, and for the agent's latency panels how much of the run had points (``coverage``:
share of 2 s steps with a value from 10 s after load starts). Writes ``summary.json`` and
``table.md`` (the names bench/results/ tracks); exit status 0 when every panel query returned
at least one series.

No root, no cgroups, no host settings touched. Needs the workload extra (torch, transformers)
and ``prometheus`` on PATH (Debian package ``prometheus``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from autotune.workload import harness

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "docs" / "grafana-dashboard.json"
SCRAPE_S = 2
RATE_INTERVAL = "20s"  # Grafana's $__rate_interval at a 2 s scrape: >= 4 scrapes
# PromQL words that are not metric names (functions are recognised by the "(" after them)
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
             "unless", "offset", "inf", "nan"}


# -- the dashboard ----------------------------------------------------------------------------
def dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def queries(dash: dict) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and annotation, in dashboard order."""
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((f"{p['title']} [{t['refId']}]", t["expr"]))
    for a in dash.get("annotations", {}).get("list", []):
        if "expr" in a:
            out.append((f"annotation {a['name']}", a["expr"]))
    return out


def variable_queries(dash: dict) -> dict[str, str]:
    """Template variable name -> its ``label_values(...)`` query."""
    return {v["name"]: v["query"] for v in dash["templating"]["list"] if v.get("type") == "query"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression, read loosely: strings, label matchers, ranges and
    grouping clauses removed; what is left that is a name and not a function call is a metric."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", s):
        name, call = m.group(1), m.group(2)
        if not call and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def label_values_metric(query: str) -> str:
    m = re.fullmatch(r"\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*(\w+)\s*\)\s*", query)
    if not m:
        raise ValueError(f"not a label_values(metric, label) query: {query!r}")
    return m.group(1)


def substitute(expr: str, variables: dict[str, str], range_s: float) -> str:
    """Grafana's variables for one evaluation: ``$name`` -> its value, ranges -> durations."""
    s = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", f"{int(range_s)}s")
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        s = s.replace(f"${name}", value)  # one instance: its dots match themselves in a regex
    return s


# -- processes --------------------------------------------------------------------------------
class Procs:
    """Started processes, each in its own session so stopping one stops its children too (the
    harness's spawn and stop, autotune/workload/harness.py)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        (self.logs / f"{name}.log").unlink(missing_ok=True)
        p = harness.spawn(argv, None, self.logs / f"{name}.log", env=env, cwd=REPO)
        self.procs.append((name, p))
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 15) -> None:
        harness.stop(p, timeout_s=timeout)

    def stop_all(self) -> None:
        for _, p in reversed(self.procs):
            self.stop(p)


def wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")


def agent_config(path: Path, *, state: Path, agent_port: int, server_port: int) -> None:
    """A service with every SLO target (so every SLO series exists); the ITL target is tight
    so the SLO controller's symptom fires and the symptom panel has something to show."""
    path.write_text(f"""\
[agent]
mode = "recommend"
sample_period_s = 1.0
window_s = 15.0
evaluate_every_s = 2.0
state_path = "{state}"
metrics_listen = "127.0.0.1:{agent_port}"

[[service]]
name = "llm"
role = "latency-critical"
cmdline = "workload serve .*--port {server_port}"

[service.slo]
p95_latency_s = 5.0
p99_latency_s = 10.0
ttft_p95_s = 2.0
itl_p95_s = 0.002

[service.latency]
metrics_url = "http://127.0.0.1:{server_port}/metrics"
""")


def prometheus_config(path: Path, *, agent: str, gate: str, server: str) -> None:
    path.write_text(f"""\
global: {{scrape_interval: {SCRAPE_S}s, evaluation_interval: {SCRAPE_S}s}}
scrape_configs:
  - job_name: autotune
    static_configs: [{{targets: ['{agent}']}}]
  - job_name: autotune-gate
    metrics_path: /gate/metrics
    static_configs: [{{targets: ['{gate}']}}]
  - job_name: inference
    static_configs: [{{targets: ['{server}']}}]
""")


# -- Prometheus' API --------------------------------------------------------------------------
def query(api: str, expr: str, at: float) -> list[dict]:
    r = httpx.get(f"{api}/api/v1/query", params={"query": expr, "time": f"{at:.3f}"}, timeout=30).json()
    if r.get("status") != "success":
        raise RuntimeError(f"query failed: {expr}: {r.get('error')}")
    return r["data"]["result"]


def coverage(api: str, expr: str, start: float, end: float) -> float:
    """Share of SCRAPE_S steps in [start, end] at which the expression had any finite value."""
    r = httpx.get(f"{api}/api/v1/query_range", params={"query": expr, "start": f"{start:.3f}",
                  "end": f"{end:.3f}", "step": f"{SCRAPE_S}s"}, timeout=30).json()
    steps = {float(ts) for s in r["data"]["result"] for ts, v in s["values"] if math.isfinite(float(v))}
    total = int((end - start) // SCRAPE_S) + 1
    return len(steps) / total if total > 0 else 0.0


def load_loop(url: str, deadline: float, procs: Procs, *, concurrency: int) -> int:
    """Back-to-back load batches through the gate until ``deadline``; returns batches run."""
    batches = 0
    while time.monotonic() < deadline:
        p = procs.start(f"load-{batches}", [sys.executable, "-m", "autotune", "workload", "load", "--url", url,
                                            "--requests", "12", "--concurrency", str(concurrency), "--stream",
                                            "--max-tokens", "32", "--seed", str(batches)])
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            procs.stop(p)
        batches += 1
    return batches


# -- the run ----------------------------------------------------------------------------------
def run(duration_s: float, out: Path, *, concurrency: int = 2) -> dict:
    prom = shutil.which("prometheus")
    if prom is None:
        raise RuntimeError("prometheus not on PATH (Debian package 'prometheus')")
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    ports = {k: harness.free_port() for k in ("server", "gate", "agent", "prometheus")}
    inst = {k: f"127.0.0.1:{ports[k]}" for k in ports}
    py = [sys.executable, "-m", "autotune"]
    procs = Procs(logs)
    try:
        server = procs.start("server", [*py, "workload", "serve", "--model", "tiny", "--threads", "1",
                                        "--port", str(ports["server"]), "--log-level", "warning"])
        gate = procs.start("gate", [*py, "gate", "--listen", inst["gate"], "--upstream",
                                    f"http://{inst['server']}", "--pressure", "system"])
        wait_http(f"http://{inst['server']}/metrics", server, 180, "workload server")
        wait_http(f"http://{inst['gate']}/gate/status", gate, 60, "gate")
        cfg = out / "agent.toml"
        agent_config(cfg, state=out / "state.db", agent_port=ports["agent"], server_port=ports["server"])
        agent = procs.start("agent", [*py, "run", "--mode", "recommend", "--config", str(cfg),
                                      "--duration", str(duration_s + 120)])
        prometheus_config(out / "prometheus.yml", agent=inst["agent"], gate=inst["gate"], server=inst["server"])
        tsdb = out / "tsdb"
        shutil.rmtree(tsdb, ignore_errors=True)
        prometheus = procs.start("prometheus", [prom, f"--config.file={out / 'prometheus.yml'}",
                                                f"--storage.tsdb.path={tsdb}",
                                                f"--web.listen-address={inst['prometheus']}"])
        wait_http(f"http://{inst['agent']}/metrics", agent, 60, "agent")
        api = f"http://{inst['prometheus']}"
        wait_http(f"{api}/-/ready", prometheus, 60, "prometheus")
        t0 = time.time()
        batches = load_loop(f"http://{inst['gate']}", time.monotonic() + duration_s, procs,
                            concurrency=concurrency)
        t1 = time.time()
        time.sleep(SCRAPE_S + 1)  # one more scrape of the last state
        return evaluate(api, t0, t1, inst, batches, duration_s)
    finally:
        procs.stop_all()


def evaluate(api: str, t0: float, t1: float, inst: dict[str, str], batches: int, duration_s: float) -> dict:
    dash = dashboard()
    variables = {"instance": inst["agent"], "gate": inst["gate"], "server": inst["server"]}
    at = t1
    up = {r["metric"]["job"]: r["value"][1] for r in query(api, "up", at)}
    created = {r["metric"]["job"]: int(float(r["value"][1]))
               for r in query(api, 'count by (job) ({__name__=~".+_created"})', at)}
    result: dict = {"duration_s": duration_s, "load_batches": batches, "instances": inst, "up": up,
                    "created_series": created, "variables": {}, "queries": []}
    for name, q in variable_queries(dash).items():
        r = query(api, f"group by (instance) ({label_values_metric(q)})", at)
        found = sorted(x["metric"].get("instance", "") for x in r)
        result["variables"][name] = {"query": q, "instances": found, "ok": variables[name] in found}
    window_start = t0 + 10  # the first completions, an agent sample and a scrape after load starts
    for where, expr in queries(dash):
        e = substitute(expr, variables, t1 - t0)
        series = query(api, e, at)
        vals = [float(s["value"][1]) for s in series]
        row = {"where": where, "expr": expr, "series": len(series),
               "finite": sum(math.isfinite(v) for v in vals), "ok": bool(series)}
        if "autotune_service_" in expr:
            row["coverage"] = round(coverage(api, e, window_start, t1), 3)
        if where.startswith("annotation"):  # a filter by design: empty unless a rollback happened
            row["series_unfiltered"] = len(query(api, re.sub(r"\s*>\s*0\s*$", "", e), at))
        result["queries"].append(row)
    result["ok"] = all(q["ok"] for q in result["queries"] if not q["where"].startswith("annotation")) and \
        all(v["ok"] for v in result["variables"].values())
    return result


def markdown(result: dict) -> str:
    lines = [f"Real scrape: {result['duration_s']:.0f} s run, {result['load_batches']} load batches, "
             f"up = {result['up']}, *_created series by job = {result['created_series']}", "",
             "| panel [query] | expression | series | finite | coverage |", "|---|---|---|---|---|"]
    for q in result["queries"]:
        cov = q.get("coverage")
        extra = f" ({q['series_unfiltered']} without `> 0`)" if "series_unfiltered" in q else ""
        expr = q["expr"].replace("|", "\\|")
        lines.append(f"| {q['where']} | `{expr}` | {q['series']}{extra} | {q['finite']} | "
                     f"{'' if cov is None else f'{cov:.0%}'} |")
    lines += ["", "| variable | query | instances | ok |", "|---|---|---|---|"]
    for name, v in result["variables"].items():
        lines.append(f"| {name} | `{v['query']}` | {', '.join(v['instances'])} | {v['ok']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of load with everything running")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "dashboard-scrape")
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args(argv)
    result = run(args.duration, args.out, concurrency=args.concurrency)
    (args.out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "table.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
