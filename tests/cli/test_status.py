"""status: its flat readings (the human PSI table, load, memory) are the metric vocabulary's."""

from __future__ import annotations

from typer.testing import CliRunner

from autotune.cli.main import app
from autotune.cli.status import psi_rows
from autotune.detect.metrics import derive_metrics
from autotune.host import Host
from autotune.sensors.collect import collect
from tests.fixtures.hosts import writable_copy


def test_human_readings_equal_derive_metrics(tmp_path):
    root = writable_copy("v2-docs", tmp_path)
    snap = collect(Host(root), [])
    m = derive_metrics([snap])
    rows = psi_rows(snap)
    assert rows["cpu"] == [m.get(f"psi.cpu.{line}.{avg}") for line in ("some", "full")
                           for avg in ("avg10", "avg60", "avg300")]
    assert rows["irq"][:3] == [None] * 3 and rows["irq"][3] == m["psi.irq.full.avg10"]  # irq has only 'full'
    out = CliRunner().invoke(app, ["status", "--root", str(root)]).stdout
    assert f"load {m['load.1']:.2f} {m['load.5']:.2f} {m['load.15']:.2f}" in out
    assert f"memory available {m['mem.available_bytes'] / 2**30:.1f} / {m['mem.total_bytes'] / 2**30:.1f} GiB" in out
    assert f"{m['psi.cpu.some.avg10']:.2f}" in out


def test_status_names_each_controllers_group_and_how_it_was_found(tmp_path):
    import json

    from tests.fixtures.hosts.cgroup_trees import Proc, hybrid, v1_lines

    paths = {"cpu": "/serve/llm", "cpuacct": "/serve/llm", "memory": "/mem/llm"}
    root = hybrid(tmp_path / "host", {"cpu": {"/serve/llm": [300]}, "cpuacct": {"/serve/llm": [300]},
                                     "memory": {"/mem/llm": [300]}, "cpuset": {"/": [300]},
                                     "unified": {"/serve/llm": [300]}},
                  [Proc(300, "llama-server", ["llama-server"], v1_lines(paths, "/serve/llm"))])
    (root / "proc/stat").write_text("cpu  1 0 1 100 0 0 0 0 0 0\ncpu0 1 0 1 100 0 0 0 0 0 0\n")
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[[service]]\nname = "llm"\ncmdline = "llama-server"\n')
    out = CliRunner().invoke(app, ["status", "--root", str(root), "-c", str(cfg)], env={"COLUMNS": "200"}).stdout
    assert "  cgroup /serve/llm  (cpu, cpuacct, unified)\n         /mem/llm  (memory)\n" in out
    assert "  found: from processes (pid 300)\n" in out
    assert "  no cpuset cgroup: its process is in the root cgroup (cpuset)\n" in out
    data = json.loads(CliRunner().invoke(app, ["status", "--root", str(root), "-c", str(cfg), "--json"]).stdout)
    cg = data["metrics"]["services"]["llm"]["cgroups"]
    assert (cg["cpu"], cg["memory"], cg["cpuset"], cg["how"]) == ("/serve/llm", "/mem/llm", None,
                                                                 "from processes (pid 300)")


# -- the latency source and the SLO fields it can measure ---------------------------------------
def _llama_config(tmp_path, metrics_url: str, slo: str = "itl_p95_s = 0.1", extra: str = "") -> str:
    p = tmp_path / "llama.toml"
    p.write_text(f'[agent]\nstate_path = "{tmp_path / "state.db"}"\n'
                 f'[[service]]\nname = "llm"\ncgroup = "/autotune/llm"\n[service.slo]\n{slo}\n'
                 f'[service.latency]\nmetrics_url = "{metrics_url}"\n{extra}')
    return str(p)


def test_config_check_says_which_slo_fields_the_declared_source_can_measure(tmp_path):
    cfg = _llama_config(tmp_path, "http://127.0.0.1:8080/metrics", slo="itl_p95_s = 0.1\nitl_mean_s = 0.08",
                        extra='flavor = "llamacpp"\n')
    out = CliRunner().invoke(app, ["config", "check", cfg])
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert ("llm: itl_p95_s cannot be measured from a llama.cpp metrics page (no histograms): not counted; "
            "itl_mean_s or probe_url can") in lines
    assert ("llm: itl_mean_s (mean time per generated token) measured from a llama.cpp metrics page: counted"
            in lines)
    # flavor auto: decided at the first scrape, said so
    auto = _llama_config(tmp_path, "http://127.0.0.1:8080/metrics")
    out = CliRunner().invoke(app, ["config", "check", auto])
    assert "llm: itl_p95_s (inter-token latency p95): counted until the first scrape" in out.stdout


def test_status_names_the_latency_source_its_reading_and_what_it_can_measure(tmp_path):
    import json
    from pathlib import Path

    from tests.agent.conftest import CannedHttp

    page = (Path(__file__).parents[1] / "fixtures/metrics/llamacpp_slots_1.prom").read_bytes()
    srv = CannedHttp({("GET", "/metrics"): page})
    try:
        cfg = _llama_config(tmp_path, f"{srv.url}/metrics")  # flavor auto, no agent ran: one scrape
        out = CliRunner().invoke(app, ["status", "--config", cfg])
        js = json.loads(CliRunner().invoke(app, ["status", "--config", cfg, "--json"]).stdout)
    finally:
        srv.close()
    assert out.exit_code == 0, out.output
    assert (f"latency source of llm: metrics page {srv.url}/metrics (flavor auto); detected llamacpp; "
            "last reading ok (status (one scrape))") in out.stdout
    assert ("llm: itl_p95_s cannot be measured from a llama.cpp metrics page (no histograms): not counted; "
            "itl_mean_s or probe_url can") in out.stdout
    lat = js["latency"]["llm"]
    assert lat["page_flavor"] == "llamacpp" and lat["last_reading"]["ok"] is True
    assert [(a["field"], a["counted"]) for a in lat["slo"]] == [("itl_p95_s", False)]


def test_status_shows_the_running_agents_last_reading_and_its_error(tmp_path):
    import json

    from autotune.store.db import open_db
    from autotune.store.samples import SampleStore
    from autotune.types import LatencyReading, ServiceReading, Snapshot

    cfg = _llama_config(tmp_path, "http://127.0.0.1:9/metrics", slo="ttft_p95_s = 2.0",
                        extra='probe_url = "http://127.0.0.1:9"\n')
    reading = LatencyReading(source="http://127.0.0.1:9/metrics + probe:http://127.0.0.1:9", ok=False,
                             error="http://127.0.0.1:9/metrics: cannot scrape (ConnectError: refused)")
    db = open_db(tmp_path / "state.db")
    SampleStore(db).append(Snapshot(ts=1000.0, services={"llm": ServiceReading(name="llm", latency=reading)}))
    db.conn.close()
    out = CliRunner().invoke(app, ["status", "--config", cfg])
    assert out.exit_code == 0, out.output
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("latency source of llm"))
    assert "metrics page http://127.0.0.1:9/metrics (flavor auto) + probe http://127.0.0.1:9" in line
    assert "last reading failed: http://127.0.0.1:9/metrics: cannot scrape" in line and "(agent, " in line
    assert "llm: ttft_p95_s (time to first token p95) measured from the active probe" in out.stdout
    js = json.loads(CliRunner().invoke(app, ["status", "--config", cfg, "--json"]).stdout)
    assert js["latency"]["llm"]["last_reading"]["from"] == "agent"


def _strict(text: str):
    """json.loads that refuses NaN/Infinity, as jq or Go would."""
    import json

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_status_json_is_strict_json_on_a_hostile_root(tmp_path):
    """Issue 24 #2: avg10=1e999 printed Infinity (invalid JSON); now the reading is missing
    with its reason and the document parses strictly."""
    root = writable_copy("v2-docs", tmp_path)
    (root / "proc/pressure/cpu").write_text("some avg10=1e999 avg60=0.00 avg300=0.00 total=5\n"
                                           "full avg10=nan avg60=0.00 avg300=0.00 total=5\n")
    (root / "proc/loadavg").write_text("-1.5 0.10 0.07 1/93 9815\n")
    r = CliRunner().invoke(app, ["status", "--root", str(root), "--json"])
    assert r.exit_code == 0, r.output
    doc = _strict(r.stdout)
    m = doc["metrics"]
    assert m["psi"]["cpu"] is None and m["loadavg"] is None
    assert any("avg10_pct = inf" in x for x in m["missing"])
    assert any("load1 = -1.5" in x for x in m["missing"])


def test_print_json_writes_non_finite_numbers_as_null(capsys):
    from autotune.cli.common import print_json

    print_json({"a": float("inf"), "b": [1.0, float("nan")], "c": {"d": -float("inf")}, "e": (2,)})
    assert _strict(capsys.readouterr().out) == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": [2]}
