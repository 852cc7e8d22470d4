"""The SLO controller of the default rule pack (rules/slo.yaml) on the fixture host: slack low ->
upsize, slack high -> give back toward the start, a give-back that breaks the SLO is undone at
once and locks out further give-backs.

The service is a simulated plant on the writable fixture host: every tick it reads the llm
cgroup's live cpu quota (which the agent changes through the real knob), "runs" at the cores the
quota allows, writes the cgroup's cpu.stat / cpuacct.usage accordingly (throttled when the
quota is below its demand), and reports per-token latencies as a vLLM-style histogram reading.
The whole sample -> detect -> diagnose -> gate -> apply -> verify path is the agent's own.
"""

from __future__ import annotations

from pathlib import Path

from autotune.fix.actuator import LocalActuator
from autotune.agent.loop import Agent
from autotune.config import SLO, Config, LatencySource, Service
from autotune.diagnose.rules import load_rules
from autotune.store.db import open_db
from autotune.types import LatencyReading
from tests.agent.conftest import Clock, host, itl_reading, run_plant as run

REPO_RULES = Path(__file__).resolve().parents[2] / "rules"
CG = "/autotune-fixture/llm"
LE = (0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5)
BASE_ITL = 0.05  # seconds per token with all the CPU it wants
SLO_ITL = 0.075


class Plant:
    """A latency-critical service whose speed follows its live cpu quota."""

    def __init__(self, root: Path, cliff_quota: float | None = None) -> None:
        self.cpu = root / "sys/fs/cgroup/cpu" / CG.lstrip("/")
        self.acct = root / "sys/fs/cgroup/cpuacct" / CG.lstrip("/")
        self.demand = 0.0  # cores it would use unthrottled
        # a bursty service: under this quota its bursts are throttled and latency collapses
        # (ITL x4), although on average it uses only ``demand`` cores
        self.cliff_quota = cliff_quota
        self.periods = self.throttled = 0
        self.usage_ns = 0
        self.itl = BASE_ITL

    def quota(self) -> float:
        q = int(self.cpu.joinpath("cpu.cfs_quota_us").read_text())
        p = int(self.cpu.joinpath("cpu.cfs_period_us").read_text())
        return 2.0 if q < 0 else q / p

    def tick(self) -> None:
        q = self.quota()
        got = min(q, self.demand)
        if self.demand <= 0:
            self.itl = BASE_ITL
        elif self.cliff_quota is not None:
            self.itl = BASE_ITL if q >= self.cliff_quota else 4 * BASE_ITL
        else:
            self.itl = BASE_ITL * self.demand / max(got, 1e-3)
        self.periods += 10
        self.throttled += 5 if q < max(self.demand, self.cliff_quota or 0.0) else 0
        self.usage_ns += int(got * 1e9)
        self.cpu.joinpath("cpu.stat").write_text(
            f"nr_periods {self.periods}\nnr_throttled {self.throttled}\nthrottled_time 0\n")
        self.acct.joinpath("cpuacct.usage").write_text(f"{self.usage_ns}\n")


class Latency:
    """The plant's metrics page, as the latency sensor would turn it into one reading."""

    def __init__(self, plant: Plant) -> None:
        self.plant = plant

    def sample(self, now: float) -> LatencyReading:
        p = self.plant
        if p.demand <= 0:
            return LatencyReading(source="vllm:plant", ok=True, requests=0, tokens=0, running=0, waiting=0)
        return itl_reading(p.itl, LE, spread=(0.85, 0.3))


def make(tmp_path: Path, root: Path, plant: Plant) -> tuple[Agent, Clock]:
    cfg = Config.model_validate({
        "agent": {"sample_period_s": 1, "window_s": 10, "evaluate_every_s": 1, "mode": "apply",
                  "state_path": str(tmp_path / "state.db"), "rule_dirs": [str(REPO_RULES)],
                  "metrics_listen": None},
    }).model_copy(update={"services": [
        Service(name="llm", cgroup=CG, slo=SLO(itl_p95_s=SLO_ITL),
                latency=LatencySource(metrics_url="http://127.0.0.1:9/metrics"))]})
    h = host(root)
    clock = Clock()
    agent = Agent(cfg, host=h, db=open_db(cfg.state_path()), actuator=LocalActuator(h, cfg),
                  ruleset=load_rules(cfg.rule_dirs()), clock=clock, scrapers={"llm": Latency(plant)})
    agent.start()
    return agent, clock


def quota_entries(agent: Agent):
    return [e for e in agent.journal.entries() if e.knob == "cgroup.cpu_quota"]


def test_low_slack_raises_the_quota_and_high_slack_gives_it_back(tmp_path, host_root):
    plant = Plant(host_root)
    agent, clock = make(tmp_path, host_root, plant)
    plant.cpu.joinpath("cpu.cfs_quota_us").write_text("50000\n")  # 0.5 core
    plant.demand = 1.5
    run(agent, clock, plant, 60)
    up = [e for e in quota_entries(agent) if e.rule == "slo-raise-quota"]
    assert up and quota_entries(agent)[0].rule == "slo-raise-quota"
    assert plant.quota() >= 1.5 and plant.itl <= SLO_ITL  # the SLO holds again
    assert up[0].verify_result.verdict == "improved"  # judged on the dense slack series
    first = up[0]
    assert first.finished_ts - first.applied_ts <= 2 + 4 + 2  # decided early, not after 10 s
    # load drops: slack is high; one step at a time back to where the agent found it (0.5)
    plant.demand = 0.3
    run(agent, clock, plant, 120)
    back = [e for e in quota_entries(agent) if e.rule == "slo-give-back-quota"]
    assert len(back) >= 2 and all(e.verify_plan.mode == "guard" for e in back)
    assert all(e.verify_result.verdict == "held" and e.state == "kept" for e in back)
    assert plant.quota() == 0.5  # never past the start
    assert agent.trail.verify().ok


def test_a_breach_is_answered_without_waiting_for_a_full_before_window(tmp_path, host_root):
    """Over its SLO (slack < 0), a change that gives the service CPU goes in at once; a fresh
    agent used to wait for window_s (10 s) of samples first (gating.answers_breach)."""
    plant = Plant(host_root)
    agent, clock = make(tmp_path, host_root, plant)
    start = clock.t
    plant.cpu.joinpath("cpu.cfs_quota_us").write_text("50000\n")
    plant.demand = 1.5  # ITL 3x the base: 2x the SLO
    run(agent, clock, plant, 8)
    up = quota_entries(agent)
    assert up and up[0].rule == "slo-raise-quota", [(e.rule, e.applied_ts - start) for e in agent.journal.entries()]
    assert up[0].applied_ts - start <= 5
    run(agent, clock, plant, 20)
    assert plant.itl <= SLO_ITL and all(e.state != "rolled_back" for e in quota_entries(agent))


def test_a_give_back_that_breaks_the_slo_is_undone_at_once_and_locks_out(tmp_path, host_root):
    plant = Plant(host_root, cliff_quota=1.2)
    agent, clock = make(tmp_path, host_root, plant)
    plant.cpu.joinpath("cpu.cfs_quota_us").write_text("50000\n")
    plant.demand = 0.6
    run(agent, clock, plant, 200)
    back = [e for e in quota_entries(agent) if e.rule == "slo-give-back-quota"]
    assert back, [(e.rule, e.state) for e in agent.journal.entries()]
    first = back[0]
    assert first.state == "rolled_back" and first.verify_result.verdict == "violated"
    # undone at once: at the first early look (settle 2 s + 4 s), not after the 10 s window
    assert first.finished_ts - first.applied_ts <= 2 + 4 + 2
    assert plant.quota() >= 1.2  # back above the cliff
    # locked out: the next give-back comes no sooner than 30 s after the violation, and each
    # one in a row that breaks the SLO doubles the lockout (60 s after the second)
    assert len(back) >= 2 and all(e.verify_result.verdict == "violated" for e in back)
    assert back[1].planned_ts >= first.finished_ts + 30
    assert all(b.planned_ts >= a.finished_ts + 60 for a, b in zip(back[1:], back[2:]))
    locked = [ev for ev in agent.trail.query() if ev.kind == "recommendation"]
    assert locked  # the proposals were made and skipped, not silently dropped
