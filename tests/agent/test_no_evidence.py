"""No move without evidence: a service gets its first change from a symptom measured on it or
from a measured trial, never from its configuration alone.

The plant of test_learning (a latency-critical service at a static half-core quota next to a
neighbour burning both CPUs of the fixture host) with an SLO, the default rule pack and the
learned search on. The live run this reproduces: llama.cpp behind `metrics_url`, the SLO
unreadable, and the only two changes were the search's "no trial yet: start from the generous
extreme" (quota 0.5 -> 1.5, the neighbour's weight 100 -> 35).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from autotune.fix.actuator import LocalActuator
from autotune.diagnose.search.state import RULE
from autotune.agent.loop import Agent
from autotune.config import SLO, Config, LatencySource, Service
from autotune.diagnose.rules import load_rules
from autotune.sensors.latency import LatencyScraper
from autotune.store.db import open_db
from tests.agent.conftest import Clock, host, run_plant
from tests.agent.test_search import LLM, NB, SLO_ITL, Latency, Plant

REPO_RULES = Path(__file__).resolve().parents[2] / "rules"

IDLE_PAGE = b"""# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="1.0"} 5
vllm:e2e_request_latency_seconds_bucket{le="+Inf"} 5
vllm:e2e_request_latency_seconds_sum 2.5
vllm:e2e_request_latency_seconds_count 5
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running 0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting 0
# TYPE vllm:request_success_total counter
vllm:request_success_total 5
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total 200
"""


def make(tmp_path: Path, root: Path, scraper) -> Agent:
    cfg = Config.model_validate({
        "agent": {"sample_period_s": 1, "window_s": 10, "evaluate_every_s": 1, "mode": "apply",
                  "state_path": str(tmp_path / "state.db"), "rule_dirs": [str(REPO_RULES)], "metrics_listen": None},
    }).model_copy(update={"services": [
        Service(name="llm", cgroup=LLM, slo=SLO(itl_p95_s=SLO_ITL),
                latency=LatencySource(metrics_url="http://127.0.0.1:9/metrics", flavor="vllm")),
        Service(name="neighbour", role="neighbour", cgroup=NB, min_cpu_cores=0.5)]})
    h = host(root)
    agent = Agent(cfg, host=h, db=open_db(cfg.state_path()), actuator=LocalActuator(h, cfg),
                  ruleset=load_rules(cfg.rule_dirs()), clock=Clock(), scrapers={"llm": scraper})
    agent.start()
    return agent


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nothing_changed(agent: Agent, plant: Plant) -> None:
    assert agent.journal.entries() == []
    assert plant.llm.joinpath("cpu.cfs_quota_us").read_text().strip() == "50000"
    assert plant.nb.joinpath("cpu.shares").read_text().strip() == "1024"
    assert agent.search.trials("llm") == []
    p = agent.search.proposals.get("llm")
    assert p is None or (p.allocation is None and p.status == "waiting")


def test_an_slo_whose_source_answers_nothing_moves_nothing(tmp_path, host_root):
    """The service is starved (throttled at its half core) but its latency is not measured: the
    SLO is declared, so the PSI rules stand aside, and the SLO controller has no slack to act
    on; the search has no trial. Nothing is applied."""
    plant = Plant(host_root, demand=1.0)
    scraper = LatencyScraper(f"http://127.0.0.1:{_closed_port()}/metrics", flavor="vllm", timeout=1.0)
    agent = make(tmp_path, host_root, scraper)
    try:
        run_plant(agent, agent.clock, plant, 90)
    finally:
        agent.stop()
    last = agent.window[-1].services["llm"].latency
    assert not last.ok and "cannot scrape" in last.error
    _nothing_changed(agent, plant)


def test_a_source_that_answers_while_no_request_flows_moves_nothing(tmp_path, host_root, canned_http):
    """The page answers and says: nothing running, waiting or finished. Idle slack is 1 by
    definition, not a measurement of the allocation: no trial, no give-back (nothing was taken),
    no change."""
    srv = canned_http({("GET", "/metrics"): IDLE_PAGE})
    plant = Plant(host_root, demand=0.0)
    agent = make(tmp_path, host_root, LatencyScraper(f"{srv.url}/metrics", flavor="vllm"))
    try:
        run_plant(agent, agent.clock, plant, 90)
    finally:
        agent.stop()
    last = agent.window[-1].services["llm"].latency
    assert last.ok and last.requests == 0 and last.running == 0
    _nothing_changed(agent, plant)


def test_a_measured_breach_brings_the_first_change_and_its_rationale_carries_the_figure(tmp_path, host_root):
    plant = Plant(host_root, demand=1.0)  # at its half core: per-token latency 1.4x its SLO
    agent = make(tmp_path, host_root, Latency(plant))
    run_plant(agent, agent.clock, plant, 60)
    entries = agent.journal.entries()
    assert entries, "a measured breach must bring a change"
    first = min(entries, key=lambda e: e.ts)
    assert first.rule.startswith("slo-raise"), first.rule  # the SLO controller, on the measured slack
    m = re.search(r"at ([0-9.]+) x its latency target", first.rationale)
    assert m and float(m.group(1)) > 1.0, first.rationale  # the measured ratio, not a placeholder
    trials = agent.search.trials("llm")
    for e in entries:
        assert "{metric:" not in e.rationale, e.rationale
        if e.rule == RULE:  # the search moves only after a measured trial, and cites it
            assert trials and e.ts >= trials[0].ts, (e.ts, trials[0].ts if trials else None)
            assert "measured: newest trial" in e.rationale and "slo.slack" in e.rationale, e.rationale
