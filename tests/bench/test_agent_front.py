"""The benchmarks' agent row: the default rule pack, a config that only declares the services,
their SLO and the neighbour's floor, and what that pack proposes for a throttled server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from autotune.agent.pipeline import evaluate  # noqa: E402
from autotune.config import default_rule_dir, load_config  # noqa: E402
from autotune.detect.metrics import slo_ratios  # noqa: E402
from autotune.detect.symptoms import DetectorState  # noqa: E402
from autotune.diagnose.rules import load_rules  # noqa: E402
from bench import agent_front as af  # noqa: E402


class FakeCg:
    def __init__(self, path: str) -> None:
        self.path = path

    def cpu_cgroup_path(self) -> str:
        return self.path


@pytest.fixture
def setup(tmp_path):
    doc = af.agent_config(server_cg=FakeCg("/b-1/server"), neighbour_cg=FakeCg("/b-1/neighbour"),
                          server_url="http://127.0.0.1:9000", slo={"itl_p95_s": 0.08},
                          state_path=tmp_path / "s.db", metrics_port=9999)
    path = tmp_path / "c.toml"
    assert af.write_config(path, doc, header="test") is None
    cfg = load_config(path)
    return cfg, load_rules(cfg.rule_dirs())


def test_config_declares_services_slo_floor_and_nothing_else(setup):
    cfg, rules = setup
    llm, nb = cfg.service("llm"), cfg.service("neighbour")
    assert (llm.role, llm.cgroup, llm.slo.itl_p95_s) == ("latency-critical", "/b-1/server", 0.08)
    assert llm.latency.metrics_url == "http://127.0.0.1:9000/metrics"
    assert (nb.role, nb.cgroup, nb.min_cpu_cores) == ("neighbour", "/b-1/neighbour", af.NEIGHBOUR_FLOOR_CORES)
    assert cfg.agent.mode == "apply" and cfg.agent.metrics_listen == "127.0.0.1:9999"
    assert cfg.rule_dirs() == [default_rule_dir()]  # the shipped pack, unchanged
    assert cfg.verification == type(cfg.verification)()  # default verification, nothing tuned
    assert not (REPO / "bench" / "agent_rules.yaml").exists()  # no pack written for the benchmark


def test_default_pack_raises_a_throttled_server_over_its_slo(setup):
    cfg, rules = setup
    m = {"svc.llm.cpu.throttled_pct": 80.0, "svc.llm.cpu.quota_cores": 0.5, "svc.llm.psi.cpu.some.avg10": 50.0,
         "svc.llm.latency.itl_p95_s": 0.16, "svc.neighbour.cpu.usage_cores": 1.5, "host.ncpu": 2.0}
    m.update(slo_ratios(m, cfg.services))  # as derive_metrics adds them
    hist = [(float(t), dict(m)) for t in range(0, 11)]
    cur = {("cgroup.cpu_quota", "/b-1/server"): "0.5", ("cgroup.cpu_weight", "/b-1/server"): "100",
           ("cgroup.cpu_weight", "/b-1/neighbour"): "100"}
    _, actions, _ = evaluate(rules, cfg, hist, DetectorState(), lambda k, t: cur.get((k, t)), now=10.0)
    got = {(a.knob, a.target): a.proposed for a in actions}
    assert got[("cgroup.cpu_quota", "/b-1/server")] == "1"  # 2x its target: 2x the quota
    assert got[("cgroup.cpu_weight", "/b-1/server")] == "400"
    assert got[("cgroup.cpu_weight", "/b-1/neighbour")] == "25"
    assert {a.rule for a in actions} >= {"slo-raise-quota", "slo-raise-weight", "slo-lower-neighbour-weight"}


def test_llamacpp_row_config_measures_every_slo_field_and_declares_the_lever(tmp_path):
    """The llama.cpp agent rows' config as a llama.cpp user writes it: its /metrics page (flavor
    llamacpp) plus a probe; the SLO on fields those can measure (`autotune config check` accepts
    it and every field counts); the fixed pool it was started with; the restart path the rows
    with the threads lever declare."""
    from autotune import slo as slo_table
    from autotune.knobs.threads import ThreadsKnob
    from bench import colocation as co
    from bench import engines

    class Cg(FakeCg):
        dirs = {"cpu": "/sys/fs/cgroup/cpu/b-1/server", "memory": "/sys/fs/cgroup/memory/b-1/server"}

    args = co.parse_args(["--engine", "llamacpp"])
    srv = engines.Server(engines.LLAMACPP, Cg("/b-1/server"), model="llama60m", max_concurrency=2, max_tokens=16,
                         out=tmp_path)
    srv.proc, srv.url, srv.threads = object(), "http://127.0.0.1:9001", args.server_threads  # as if started
    threads = engines.LLAMACPP.agent_threads(srv.threads)
    threads.update(srv.restart_path(tmp_path / "threads.env", tmp_path / "restarts.log"))
    doc = af.agent_config(server_cg=Cg("/b-1/server"), neighbour_cg=FakeCg("/b-1/neighbour"),
                          server_url=srv.url, slo=co.agent_slo(args, args.slo), state_path=tmp_path / "s.db",
                          metrics_port=9999, latency=engines.LLAMACPP.agent_latency(srv.url), threads=threads)
    path = tmp_path / "c.toml"
    assert af.write_config(path, doc, header="test") is None  # `autotune config check` accepts it
    llm = load_config(path).service("llm")
    assert (llm.latency.metrics_url, llm.latency.flavor, llm.latency.probe_url) == (
        "http://127.0.0.1:9001/metrics", "llamacpp", "http://127.0.0.1:9001")
    got = {a.field: (a.source, a.counted) for a in slo_table.assess(llm)}
    assert got == {"ttft_p95_s": ("probe", True), "itl_mean_s": ("llamacpp", True)}
    assert (llm.slo.ttft_p95_s, llm.slo.itl_mean_s) == (args.slo.ttft_p95_s, args.slo.itl_p95_s / 2)
    th = llm.threads
    assert (th.count, th.pool, th.env, th.has_lever) == (int(args.server_threads), "fixed", "LLAMA_ARG_THREADS", True)
    cmd = th.restart_command
    assert cmd[1].endswith("bench/restart_server.py") and Path(cmd[1]).is_file()
    assert cmd[cmd.index("--health") + 1] == "http://127.0.0.1:9001/health"
    assert [cmd[i + 1] for i, x in enumerate(cmd) if x == "--cgroup"] == list(Cg.dirs.values())
    serve = cmd[cmd.index("--") + 1:]  # the harness's own start, same port, {threads} for the knob's N
    assert serve[serve.index("--engine") + 1] == "llamacpp" and serve[serve.index("--port") + 1] == "9001"
    assert serve[serve.index("--threads") + 1] == "{threads}"
    assert ThreadsKnob().service_target(llm) == "llm"  # the lever exists for the agent
    # the reference server's rows: its pool follows the quota, no restart path
    gpt2 = af.agent_config(server_cg=FakeCg("/b-1/server"), neighbour_cg=FakeCg("/b-1/neighbour"),
                           server_url="http://h:1", slo={"itl_p95_s": 0.1}, state_path=tmp_path / "t.db",
                           metrics_port=9998)
    assert gpt2["service"][0]["threads"] == {"pool": "follows-quota"}
