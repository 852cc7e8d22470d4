"""The threads lever in the loop: the default rule pack restarts a service whose fixed pool is
larger than its CPUs with fewer threads, through its declared systemd drop-in (a fake
``systemctl`` on PATH), journals the prior setting first, verifies the change on the service's
own latency and, when it made things worse, rolls it back (the drop-in removed and the unit
restarted again).

The service is a simulated plant on the writable fixture host (one CPU in its cpuset): it
reads its thread count from the drop-in the knob writes (2 by its own default) and its quota
from its cgroup, writes each thread's CPU time into /proc (so the agent OBSERVES the pool), and
reports per-token latencies. A pool of several threads larger than the CPUs it gets collapses
(x6), as llama.cpp's did here (22-26x); one thread just runs at the speed its quota allows.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from autotune.fix.actuator import LocalActuator
from autotune.agent.loop import Agent
from autotune.config import SLO, Config, LatencySource, Service, Threads
from autotune.diagnose.rules import load_rules
from autotune.knobs.threads import DROPIN, parse
from autotune.store.db import open_db
from autotune.types import LatencyReading
from tests.agent.conftest import Clock, host, itl_reading, run_plant as run
from tests.fixtures.hosts.build_v2_docs import pid_stat
from tests.knobs.test_threads_knob import FAKE_SYSTEMCTL, calls

REPO_RULES = Path(__file__).resolve().parents[2] / "rules"
CG = "/autotune-fixture/llm"
UNIT = "llama-server.service"
LE = (0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5)
BASE_ITL, SLO_ITL = 0.05, 0.075
HZ = os.sysconf("SC_CLK_TCK")
LEVER = Threads(unit=UNIT, env="LLAMA_ARG_THREADS")


class Plant:
    """A llama.cpp-like server: a fixed pool read from its drop-in at each (re)start."""

    def __init__(self, root: Path, *, one_thread_itl: float | None = None) -> None:
        self.root = root
        self.cpu = root / "sys/fs/cgroup/cpu" / CG.lstrip("/")
        self.acct = root / "sys/fs/cgroup/cpuacct" / CG.lstrip("/")
        self.pid = int((root / "PID").read_text())
        self.dropin = root / f"etc/systemd/system/{UNIT}.d/{DROPIN}"
        self.one_thread_itl = one_thread_itl  # a server whose single thread is slower still
        self.periods = self.throttled = self.usage_ns = 0
        self.thread_cpu: dict[int, float] = {}
        self.itl = BASE_ITL

    def threads(self) -> int:
        v = parse(LEVER, self.dropin.read_text() if self.dropin.exists() else None)
        return 2 if v == "default" else int(v)

    def quota(self) -> float:
        q = int(self.cpu.joinpath("cpu.cfs_quota_us").read_text())
        return 1.0 if q < 0 else min(1.0, q / int(self.cpu.joinpath("cpu.cfs_period_us").read_text()))

    def tick(self) -> None:
        n, cores = self.threads(), self.quota()  # one CPU in its cpuset
        # a pool of several threads on fewer CPUs waits at its barriers; one thread just runs slower
        self.itl = BASE_ITL * 6.0 if n > 1 and n > cores * 1.25 else BASE_ITL / min(1.0, cores)
        if n == 1 and self.one_thread_itl is not None:
            self.itl = self.one_thread_itl
        tids = [self.pid + 1000 * n + i for i in range(n)]  # a restart starts new threads
        task = self.root / f"proc/{self.pid}/task"
        for t in task.iterdir():
            if int(t.name) != self.pid and int(t.name) not in tids:
                (t / "stat").unlink()
                t.rmdir()
        for tid in tids:
            self.thread_cpu[tid] = self.thread_cpu.get(tid, 0.0) + cores / n
            (task / str(tid)).mkdir(exist_ok=True)
            (task / str(tid) / "stat").write_text(pid_stat(tid, "llama-worker", "R", 0, 0,
                                                           int(self.thread_cpu[tid] * HZ), 0, n + 1, 0))
        self.periods += 10
        self.throttled += 8 if n > cores else 0
        self.usage_ns += int(cores * 1e9)
        self.cpu.joinpath("cpu.stat").write_text(
            f"nr_periods {self.periods}\nnr_throttled {self.throttled}\nthrottled_time 0\n")
        self.acct.joinpath("cpuacct.usage").write_text(f"{self.usage_ns}\n")


class Latency:
    def __init__(self, plant: Plant) -> None:
        self.plant = plant

    def sample(self, now: float) -> LatencyReading:
        return itl_reading(self.plant.itl, LE, spread=(0.85, 0.3))


@pytest.fixture
def systemd(tmp_path, host_root, monkeypatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "systemctl"
    fake.write_text(FAKE_SYSTEMCTL.format(python=sys.executable, dropin=DROPIN))
    fake.chmod(0o755)
    (bindir / "root").write_text(str(host_root))
    (host_root / "etc/systemd/system").mkdir(parents=True)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    return bindir


def make(tmp_path: Path, root: Path, plant: Plant) -> tuple[Agent, Clock]:
    cfg = Config.model_validate({
        "agent": {"sample_period_s": 1, "window_s": 10, "evaluate_every_s": 1, "mode": "apply",
                  "state_path": str(tmp_path / "state.db"), "rule_dirs": [str(REPO_RULES)],
                  "metrics_listen": None},
        "search": {"enabled": False},
    }).model_copy(update={"services": [
        Service(name="llm", cgroup=CG, slo=SLO(itl_p95_s=SLO_ITL), threads=LEVER,
                latency=LatencySource(metrics_url="http://127.0.0.1:9/metrics"))]})
    h = host(root)
    clock = Clock()
    agent = Agent(cfg, host=h, db=open_db(cfg.state_path()), actuator=LocalActuator(h, cfg),
                  ruleset=load_rules(cfg.rule_dirs()), clock=clock, scrapers={"llm": Latency(plant)})
    agent.start()
    return agent, clock


def threads_entries(agent: Agent):
    return [e for e in agent.journal.entries() if e.knob == "threads"]


def test_a_pool_larger_than_its_cpus_is_restarted_smaller_and_kept(tmp_path, host_root, systemd):
    plant = Plant(host_root)
    agent, clock = make(tmp_path, host_root, plant)
    plant.cpu.joinpath("cpu.cfs_quota_us").write_text("50000\n")  # 0.5 core for 2 threads
    run(agent, clock, plant, 45)
    [e] = threads_entries(agent)
    assert (e.rule, e.target, e.prior_value, e.proposed) == ("match-threads-to-cpus", "llm", "default", "1")
    assert "fixed pool of 2 compute threads" in e.rationale  # observed from its tasks, not declared
    assert e.state == "kept" and e.verify_result.verdict == "improved"
    assert plant.threads() == 1 and plant.itl == BASE_ITL
    assert calls(systemd)[:2] == ["daemon-reload", f"restart {UNIT} | [Service] Environment=LLAMA_ARG_THREADS=1"]
    applied = [ev for ev in agent.trail.query() if ev.kind == "apply" and ev.knob == "threads"]
    assert applied and applied[0].before == "default" and applied[0].after == "1"
    assert agent.trail.verify().ok


def test_a_restart_that_made_latency_worse_is_rolled_back_with_another_restart(tmp_path, host_root, systemd):
    plant = Plant(host_root, one_thread_itl=BASE_ITL * 12)  # this server's one thread is slower still
    agent, clock = make(tmp_path, host_root, plant)
    plant.cpu.joinpath("cpu.cfs_quota_us").write_text("50000\n")
    run(agent, clock, plant, 45)
    e = threads_entries(agent)[0]
    assert e.state == "rolled_back" and e.verify_result.verdict == "regressed"
    assert not plant.dropin.exists() and plant.threads() == 2  # the unit's own setting is back
    assert calls(systemd)[:4] == ["daemon-reload", f"restart {UNIT} | [Service] Environment=LLAMA_ARG_THREADS=1",
                                  "daemon-reload", f"restart {UNIT} | no drop-in"]
    # no second restart within the knob's ten minutes
    run(agent, clock, plant, 60)
    assert len(threads_entries(agent)) == 1
