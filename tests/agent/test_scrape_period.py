"""The latency page at its own period ([service.latency] scrape_every_s): read at most once per
sample, the snapshots between two scrapes carry no reading, the window's metrics still show the
newest one, each reading counts once, and the SLO controller reacts as soon as with a scrape on
every sample."""

from __future__ import annotations

from pathlib import Path

from autotune.fix.actuator import LocalActuator
from autotune.agent.loop import Agent
from autotune.config import SLO, Config, LatencySource, Service
from autotune.detect.metrics import derive_metrics
from autotune.diagnose.rules import load_rules
from autotune.store.db import open_db
from autotune.verify.objectives import objective
from tests.agent.conftest import Clock, host
from tests.fixtures.hosts import writable_copy
from tests.agent.test_slo_controller import CG, REPO_RULES, SLO_ITL, Latency, Plant


class Counting(Latency):
    def __init__(self, plant: Plant) -> None:
        super().__init__(plant)
        self.calls = 0

    def sample(self, now: float):
        self.calls += 1
        return super().sample(now)


def make(tmp_path: Path, root: Path, plant: Plant, *, period: float, scrape_every: float):
    cfg = Config.model_validate({
        "agent": {"sample_period_s": period, "window_s": 10, "evaluate_every_s": 1, "mode": "apply",
                  "state_path": str(tmp_path / f"state-{scrape_every}.db"), "rule_dirs": [str(REPO_RULES)],
                  "metrics_listen": None},
    }).model_copy(update={"services": [
        Service(name="llm", cgroup=CG, slo=SLO(itl_p95_s=SLO_ITL),
                latency=LatencySource(metrics_url="http://127.0.0.1:9/metrics", scrape_every_s=scrape_every))]})
    h = host(root)
    clock = Clock()
    scraper = Counting(plant)
    agent = Agent(cfg, host=h, db=open_db(cfg.state_path()), actuator=LocalActuator(h, cfg),
                  ruleset=load_rules(cfg.rule_dirs()), clock=clock, scrapers={"llm": scraper})
    agent.start()
    return agent, clock, scraper


def run(agent: Agent, clock: Clock, plant: Plant, seconds: float, period: float) -> None:
    """The daemon's cadence on a fake clock: a sample every ``period``, evaluate and verify
    once a second after that second's sample."""
    for i in range(round(seconds / period)):
        clock.t += period
        if i % round(1 / period) == 0:
            plant.tick()
        agent.guarded("sample", agent.sample)
        if (i + 1) % round(1 / period) == 0:
            agent.guarded("evaluate", agent.evaluate)
            agent.guarded("verify", agent.verify)


def test_the_page_is_read_at_its_own_period_and_each_reading_counts_once(tmp_path, host_root):
    plant = Plant(host_root)
    plant.cpu.joinpath("cpu.cfs_quota_us").write_text("-1\n")  # no quota: the SLO holds, nothing to change
    plant.demand = 0.4
    agent, clock, scraper = make(tmp_path, host_root, plant, period=0.25, scrape_every=1.0)
    run(agent, clock, plant, 8, 0.25)
    window = list(agent.window)
    assert len(window) == 32 and scraper.calls == 8
    read = [s for s in window if s.services["llm"].latency is not None]
    assert len(read) == 8
    assert window[-1].services["llm"].latency is None  # between two scrapes
    svc = agent.cfg.services
    m = derive_metrics(window[-6:], services=svc)  # ends between scrapes: the newest reading shows
    assert m["svc.llm.slo.slack"] > 0 and m["svc.llm.latency.running"] == 2
    # each reading's tokens once: the window's last 6 snapshots hold one or two scrapes
    assert m["svc.llm.latency.tokens"] == 40 * sum(1 for s in window[-5:] if s.services["llm"].latency)
    # the verifier's slack series: one value per scrape after the window's first snapshot
    series = objective("svc.llm.slo.slack", slo_of=svc).series(window)
    assert len(series) == sum(1 for s in window[1:] if s.services["llm"].latency)


def _first_raise(tmp_path: Path, root: Path, scrape_every: float, offset: float) -> float:
    """Seconds from the breach to the first quota raise, the breach ``offset`` s into a scrape
    period."""
    plant = Plant(root)
    plant.cpu.joinpath("cpu.cfs_quota_us").write_text("50000\n")  # 0.5 core
    plant.demand = 0.4
    agent, clock, _ = make(tmp_path, root, plant, period=0.5, scrape_every=scrape_every)
    run(agent, clock, plant, 20 + offset, 0.5)
    breach = clock.t
    plant.demand = 1.5  # three times what the quota allows: the SLO breaks at once
    run(agent, clock, plant, 30, 0.5)
    raised = [e for e in agent.journal.entries() if e.rule == "slo-raise-quota"]
    assert raised, "the controller never raised the quota"
    return min(e.planned_ts for e in raised) - breach


def test_the_slo_controller_reacts_as_soon_with_the_page_on_its_own_period(tmp_path):
    """Detection looks once per evaluation (every second here): a page read every second is
    as fresh there as one read on every 0.5-s sample, whatever the breach's phase."""
    def slowest(scrape_every: float) -> float:
        runs = []
        for k in range(2):  # the breach at either phase of a 1-s period
            d = tmp_path / f"{scrape_every}-{k}"
            runs.append(_first_raise(d, writable_copy("hybrid-local", d / "host"), scrape_every, offset=k * 0.5))
        return max(runs)

    assert slowest(1.0) <= slowest(0.5)
