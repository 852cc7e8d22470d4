"""The autotune row's config and rules: valid for the agent, and bounded as documented."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from autotune.agent.pipeline import evaluate  # noqa: E402
from autotune.config import load_config  # noqa: E402
from autotune.detect.symptoms import DetectorState  # noqa: E402
from autotune.diagnose.rules import load_rules  # noqa: E402
from bench import agent_front as af  # noqa: E402

GATE = "http://127.0.0.1:8123"


class FakeCg:
    def __init__(self, path: str) -> None:
        self.path = path

    def cpu_cgroup_path(self) -> str:
        return self.path


@pytest.fixture
def setup(tmp_path):
    rules = tmp_path / "rules"
    af.write_rules(rules, gate_url=GATE)
    cfg_path = af.write_config(tmp_path / "c.toml", server_cg=FakeCg("/b-1/server"),
                               neighbour_cg=FakeCg("/b-1/neighbour"), server_url="http://127.0.0.1:9000",
                               slo_p95_s=1.25, rules_dir=rules, state_path=tmp_path / "s.db", metrics_port=9999)
    return load_config(cfg_path), load_rules([rules])


def test_config_names_both_roles_with_slo_floor_and_short_windows(setup):
    cfg, _ = setup
    llm, nb = cfg.service("llm"), cfg.service("neighbour")
    assert (llm.role, llm.cgroup, llm.slo.p95_latency_s) == ("latency-critical", "/b-1/server", 1.25)
    assert llm.latency.metrics_url == "http://127.0.0.1:9000/metrics"
    assert (nb.role, nb.cgroup, nb.min_cpu_cores) == ("neighbour", "/b-1/neighbour", af.NEIGHBOUR_FLOOR_CORES)
    assert cfg.agent.mode == "apply" and cfg.verification.settle_s == 4 and cfg.verification.window_s == 15
    assert cfg.agent.metrics_listen == "127.0.0.1:9999"


def history(**over: float) -> list[tuple[float, dict[str, float]]]:
    m = {"svc.llm.cpu.throttled_pct": 80.0, "svc.llm.cpu.quota_cores": 0.5, "svc.llm.psi.cpu.some.avg10": 50.0,
         "svc.llm.latency.p95_s": 3.0, "svc.neighbour.cpu.usage_cores": 1.5, "host.ncpu": 2.0,
         "svc.llm.slo.p95_ratio": 2.4}
    m.update(over)
    return [(float(t), dict(m)) for t in range(0, 11)]


def actions_for(setup, current: dict[tuple[str, str], str], **over: float):
    cfg, rules = setup
    _, actions, _ = evaluate(rules, cfg, history(**over), DetectorState(),
                             lambda knob, target: current.get((knob, target)), now=10.0)
    return {(a.knob, a.target): a.proposed for a in actions}


def test_rules_stay_inside_their_bounds(setup):
    cur = {("cgroup.cpu_quota", "/b-1/server"): "0.5", ("cgroup.cpu_weight", "/b-1/server"): "100",
           ("cgroup.cpu_weight", "/b-1/neighbour"): "100", ("admission", GATE): "threshold=40,limit=4"}
    got = actions_for(setup, cur)
    assert float(got[("cgroup.cpu_quota", "/b-1/server")]) == pytest.approx(1.5)  # 0.5 x 3, capped
    assert float(got[("cgroup.cpu_weight", "/b-1/server")]) == pytest.approx(400)
    assert float(got[("cgroup.cpu_weight", "/b-1/neighbour")]) == pytest.approx(25)
    assert ("admission", GATE) not in got  # quota not at its cap yet
    # at the caps: no quota/weight proposals beyond the bounds; the gate is relaxed
    cur.update({("cgroup.cpu_quota", "/b-1/server"): "1.5", ("cgroup.cpu_weight", "/b-1/server"): "10000",
                ("cgroup.cpu_weight", "/b-1/neighbour"): "10"})
    got = actions_for(setup, cur, **{"svc.llm.cpu.quota_cores": 1.5})
    assert not any(k[0].startswith("cgroup.") for k in got), got
    assert got[("admission", GATE)] == "min_threshold=90"


def test_only_the_documented_knobs(setup):
    _, rules = setup
    knobs = {(a.knob, a.target) for r in rules.rules for a in r.actions}
    assert knobs == {("cgroup.cpu_quota", "service"), ("cgroup.cpu_weight", "service"),
                     ("cgroup.cpu_weight", "neighbours"), ("admission", GATE)}
