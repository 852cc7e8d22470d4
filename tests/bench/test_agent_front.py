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
