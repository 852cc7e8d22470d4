"""The shipped rule pack: each rule fires on a state built for it; a calm state fires nothing.

Parametrized over every rule in rules/, so a new rule without a fixture here fails.
Metrics go through the real detector (held constant for 60 s), then the engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.config import Config, Service
from autotune.detect.metrics import derive_metrics
from autotune.detect.symptoms import DetectorState, detect
from autotune.diagnose.engine import diagnose
from autotune.diagnose.rules import load_rules
from autotune.types import CpuTimes, PsiLine, PsiReading, Snapshot, StatReading

RULES = load_rules([Path(__file__).resolve().parents[2] / "rules"])

LLM = Service(name="llm", cgroup="/autotune/llm", role="latency-critical")
BATCH = Service(name="batch", cgroup="/autotune/batch", role="neighbour")
BOTH = Config(service=[LLM, BATCH])
NONE = Config()

# what read_current returns on a plain host; fixtures override entries
CURRENT = {
    ("cgroup.cpu_weight", "/autotune/llm"): "100",
    ("cgroup.cpu_weight", "/autotune/batch"): "100",
    ("cgroup.cpu_quota", "/autotune/llm"): "0.5",
    ("cgroup.cpuset", "/autotune/llm"): "0-1",
    ("cgroup.cpuset", "/autotune/batch"): "0-1",
    ("cgroup.memory_high", "/autotune/llm"): "4294967296",
    ("sysctl", "vm.swappiness"): "60",
    ("thp", "defrag"): "madvise",
    ("thp", "enabled"): "madvise",
    ("governor", "all"): "performance",
}

CALM = {
    "host.ncpu": 2.0,
    "psi.cpu.some.avg10": 0.5, "psi.cpu.some.avg60": 0.4, "psi.memory.some.avg10": 0.0,
    "vmstat.compact_stall.rate": 0.0, "vmstat.pgmajfault.rate": 3.0,
    "svc.llm.psi.cpu.some.avg10": 0.2, "svc.llm.cpu.throttled_pct": 0.0, "svc.llm.cpu.quota_cores": 0.5,
    "svc.llm.cpu.quota_util_pct": 40.0, "svc.llm.running_threads": 1.0, "svc.llm.cpuset.ncpu": 2.0,
    "svc.llm.majflt.rate": 0.0, "svc.llm.mem.high_events.rate": 0.0, "svc.llm.mem.max_bytes": 8e9,
    "svc.batch.cpu.usage_cores": 0.1,
}

# rule -> (config, metric overrides, current-value overrides, expected (knob, target, proposed) or None)
FIXTURES = {
    "host-cpu-contention-advice": (NONE, {"psi.cpu.some.avg10": 60.0}, {}, ("advice", "host", None)),
    "raise-service-cpu-weight": (BOTH, {"svc.llm.psi.cpu.some.avg10": 30.0}, {},
                                 ("cgroup.cpu_weight", "/autotune/llm", "200")),
    "lower-neighbour-cpu-weight": (BOTH, {"psi.cpu.some.avg10": 60.0, "svc.batch.cpu.usage_cores": 1.5}, {},
                                   ("cgroup.cpu_weight", "/autotune/batch", "50")),
    "pin-service-dedicated-cpus": (BOTH, {"psi.cpu.some.avg60": 50.0}, {},
                                   ("cgroup.cpuset", "/autotune/llm", "1")),
    "raise-service-cpu-quota": (BOTH, {"svc.llm.cpu.throttled_pct": 40.0}, {},
                                ("cgroup.cpu_quota", "/autotune/llm", "0.75")),
    "psi-gated-admission": (BOTH, {"psi.cpu.some.avg60": 50.0}, {}, ("admission", "llm", "threshold=40")),
    "prefault-model-weights": (BOTH, {"svc.llm.majflt.rate": 300.0}, {}, ("advice", "llm", None)),
    "host-majfault-advice": (NONE, {"vmstat.pgmajfault.rate": 2000.0}, {}, ("advice", "host", None)),
    "raise-service-memory-high": (BOTH, {"svc.llm.mem.high_events.rate": 25.0}, {},
                                  ("cgroup.memory_high", "/autotune/llm", "5368709120")),
    "lower-swappiness": (NONE, {"psi.memory.some.avg10": 30.0}, {}, ("sysctl", "vm.swappiness", "10")),
    "governor-performance": (BOTH, {}, {("governor", "all"): "powersave"}, ("governor", "all", "performance")),
    "thp-defrag-defer": (NONE, {"vmstat.compact_stall.rate": 20.0}, {("thp", "defrag"): "always"},
                         ("thp", "defrag", "defer+madvise")),
    "limit-intra-op-threads": (BOTH, {"svc.llm.running_threads": 8.0, "svc.llm.cpu.quota_cores": 2.0}, {},
                               ("advice", "llm", None)),
    "raise-quota-for-threads": (BOTH, {"svc.llm.running_threads": 4.0, "svc.llm.cpu.quota_cores": 1.0,
                                       "svc.llm.cpu.quota_util_pct": 99.0},
                                {("cgroup.cpu_quota", "/autotune/llm"): "1"},
                                ("cgroup.cpu_quota", "/autotune/llm", "1.5")),
}


def run(cfg: Config, metrics: dict[str, float], current: dict, now: float = 60.0):
    hist = [(float(t), metrics) for t in range(0, int(now) + 1)]
    symptoms, _ = detect(RULES.symptom_specs(cfg), hist, DetectorState(), now)
    actions = diagnose(RULES, metrics, symptoms, cfg, lambda k, t: current.get((k, t)), now, {})
    return symptoms, actions


@pytest.mark.parametrize("rule", [r.name for r in RULES.rules])
def test_each_rule_fires_on_its_fixture(rule):
    assert rule in FIXTURES, f"rule {rule!r} has no fixture in {__file__}: add one"
    cfg, overrides, cur_over, (knob, target, proposed) = FIXTURES[rule]
    _, actions = run(cfg, {**CALM, **overrides}, {**CURRENT, **cur_over})
    mine = [a for a in actions if a.rule == rule]
    assert mine, f"{rule} did not fire; got {[a.rule for a in actions]}"
    hit = [a for a in mine if a.knob == knob and a.target == target]
    assert hit, [(a.knob, a.target) for a in mine]
    if proposed is not None:
        assert hit[0].proposed == proposed
    assert hit[0].rationale and "{" not in hit[0].rationale
    assert "{" not in hit[0].proposed


@pytest.mark.parametrize("cfg", [NONE, BOTH], ids=["no-services", "llm+batch"])
def test_calm_state_fires_nothing(cfg):
    symptoms, actions = run(cfg, CALM, CURRENT)
    assert symptoms == [] and actions == []


def test_rule_already_at_target_value_is_silent():
    cfg, overrides, _, _ = FIXTURES["lower-swappiness"]
    _, actions = run(cfg, {**CALM, **overrides}, {**CURRENT, ("sysctl", "vm.swappiness"): "10"})
    assert [a for a in actions if a.rule == "lower-swappiness"] == []


def _psi_snapshot(ts: float, some_avg10: float, total_usec: int) -> Snapshot:
    line = PsiLine(avg10_pct=some_avg10, avg60_pct=some_avg10 * 0.8, avg300_pct=some_avg10 * 0.3, total_usec=total_usec)
    return Snapshot(ts=ts, psi={"cpu": PsiReading(some=line, full=PsiLine(avg10_pct=0, avg60_pct=0, avg300_pct=0, total_usec=0))},
                    stat=StatReading(total=CpuTimes(user_s=ts * 2, idle_s=0.0), per_cpu={"cpu0": CpuTimes(), "cpu1": CpuTimes()}))


def _pipeline(snaps: list[Snapshot], cfg: Config):
    hist = [(s.ts, derive_metrics(snaps[max(0, i - 10): i + 1])) for i, s in enumerate(snaps)]
    symptoms, _ = detect(RULES.symptom_specs(cfg), hist, DetectorState(), snaps[-1].ts)
    return symptoms, diagnose(RULES, hist[-1][1], symptoms, cfg, lambda k, t: None, snaps[-1].ts, {})


def test_four_burners_on_two_cores_with_no_services_gives_cpu_advice():
    # what this 2-core host shows with 4 CPU burners: cpu some avg10 ~55 %, stalls ~half the time
    snaps = [_psi_snapshot(float(t), 55.0, t * 500_000) for t in range(40)]
    symptoms, actions = _pipeline(snaps, NONE)
    assert "cpu_pressure" in {s.name for s in symptoms}
    assert any(a.rule == "host-cpu-contention-advice" and "CPU pressure 55 %" in a.proposed for a in actions)


def test_idle_host_says_nothing_about_cpu():
    snaps = [_psi_snapshot(float(t), 0.1, t * 1000) for t in range(40)]
    symptoms, actions = _pipeline(snaps, NONE)
    assert not [s for s in symptoms if "cpu" in s.name]
    assert not [a for a in actions if "cpu" in a.rule]
