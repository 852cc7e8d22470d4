"""The agent's log says, at start, which SLO fields each service's declared latency source can
and cannot measure, one line each; with flavor auto, again once the first scrape tells it."""

from __future__ import annotations

import logging
from pathlib import Path

from autotune.fix.actuator import LocalActuator
from autotune.agent.loop import Agent
from autotune.config import SLO, Config, LatencySource, Service
from autotune.diagnose.rules import load_rules
from autotune.sensors.latency import LatencyScraper
from autotune.store.db import open_db
from tests.agent.conftest import Clock, host

PAGE = Path(__file__).resolve().parents[1] / "fixtures/metrics/llamacpp_slots_1.prom"
CANNOT = ("llm: itl_p95_s cannot be measured from a llama.cpp metrics page (no histograms): not counted; "
          "itl_mean_s or probe_url can")


def agent_for(tmp_path: Path, root: Path, latency: LatencySource, scrapers=None) -> Agent:
    cfg = Config.model_validate({"agent": {"mode": "recommend", "state_path": str(tmp_path / "s.db"),
                                           "metrics_listen": None}}).model_copy(update={"services": [
        Service(name="llm", cgroup="/autotune-fixture/llm", slo=SLO(itl_p95_s=0.1, itl_mean_s=0.08),
                latency=latency)]})
    h = host(root)
    return Agent(cfg, host=h, db=open_db(cfg.state_path()), actuator=LocalActuator(h, cfg),
                 ruleset=load_rules(cfg.rule_dirs()), clock=Clock(), scrapers=scrapers or {})


def test_start_logs_each_slo_field_and_whether_the_source_can_measure_it(tmp_path, host_root, caplog):
    agent = agent_for(tmp_path, host_root, LatencySource(metrics_url="http://127.0.0.1:9/metrics", flavor="llamacpp"))
    with caplog.at_level(logging.INFO, logger="autotune.agent.loop"):
        agent.start()
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("llm: ")]
    assert lines == [
        (logging.WARNING, CANNOT),
        (logging.INFO, "llm: itl_mean_s (mean time per generated token) measured from a llama.cpp metrics page: counted"),
    ]


def test_flavor_auto_is_logged_again_once_the_first_scrape_tells_it(tmp_path, host_root, canned_http, caplog):
    srv = canned_http({("GET", "/metrics"): PAGE.read_bytes()})
    latency = LatencySource(metrics_url=f"{srv.url}/metrics")
    agent = agent_for(tmp_path, host_root, latency, scrapers={"llm": LatencyScraper(latency.metrics_url)})
    with caplog.at_level(logging.INFO, logger="autotune.agent.loop"):
        agent.start()
        assert CANNOT not in caplog.text and "counted until the first scrape" in caplog.text
        agent.sample()
        agent.sample()  # once, not every sample
    assert caplog.text.count(CANNOT) == 1
