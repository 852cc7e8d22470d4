"""The shipped rule pack: each rule fires on a state built for it; a calm state fires nothing.

Parametrized over every rule in rules/, so a new rule without a fixture here fails.
Metrics go through the real detector (held constant for 60 s), then the engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.config import SLO, Config, LatencySource, Service, Threads
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
# an SLO-controlled service: per-token latency target 0.1 s, read from a metrics page
LLM_SLO = Service(name="llm", cgroup="/autotune/llm", role="latency-critical", slo=SLO(itl_p95_s=0.1),
                  latency=LatencySource(metrics_url="http://127.0.0.1:8000/metrics"))
SLO_BOTH = Config(service=[LLM_SLO, BATCH])
# a service whose compute threads the agent may set (a systemd drop-in + restart)
LEVER = Threads(unit="llama-server.service", env="LLAMA_ARG_THREADS")
LEVER_SLO = Config(service=[LLM_SLO.model_copy(update={"threads": LEVER}), BATCH])
LEVER_PLAIN = Config(service=[LLM.model_copy(update={"threads": LEVER}), BATCH])
OVER = {"svc.llm.latency.itl_p95_s": 0.16}  # 1.6x its target: slack -0.6
AMPLE = {"svc.llm.latency.itl_p95_s": 0.05}  # half its target: slack 0.5
BUSY = {"svc.llm.psi.cpu.some.avg10": 30.0, "svc.batch.cpu.usage_cores": 1.5}
# interference: the service stalls on memory, hardly waits for a CPU, next to a memory-heavy
# neighbour (8 GB, 6 GB of it page cache) burning 1.5 cores
MEMSTALL = {"svc.llm.psi.memory.some.avg10": 20.0, "svc.llm.psi.cpu.some.avg10": 1.0,
            "svc.llm.psi.io.some.avg10": 0.5, "svc.llm.mem.cgroup_version": 2.0, "svc.llm.mem.usage_bytes": 2e9,
            "svc.llm.mem.refault.rate": 900.0, "svc.llm.cpu.usage_cores": 0.8, "svc.llm.cpu.weight": 100.0,
            "svc.batch.mem.usage_bytes": 8e9, "svc.batch.mem.anon_bytes": 2e9, "svc.batch.mem.file_bytes": 6e9,
            "svc.batch.cpu.usage_cores": 1.5, "mem.total_bytes": 24e9}
MEMCALM = {**MEMSTALL, "svc.llm.psi.memory.some.avg10": 0.2}

# what read_current returns on a plain host; fixtures override entries
CURRENT = {
    ("cgroup.cpu_weight", "/autotune/llm"): "100",
    ("cgroup.cpu_weight", "/autotune/batch"): "100",
    ("cgroup.cpu_quota", "/autotune/llm"): "0.5",
    ("cgroup.cpuset", "/autotune/llm"): "0-1",
    ("cgroup.cpuset", "/autotune/batch"): "0-1",
    ("cgroup.memory_high", "/autotune/llm"): "4294967296",
    ("cgroup.memory_high", "/autotune/batch"): "max",
    ("cgroup.memory_max", "/autotune/batch"): "max",
    ("cgroup.memory_low", "/autotune/llm"): "0",
    ("cgroup.cpu_quota", "/autotune/batch"): "max",
    ("cgroup.io_weight", "/autotune/batch"): "100",
    ("sysctl", "vm.swappiness"): "60",
    ("thp", "defrag"): "madvise",
    ("thp", "enabled"): "madvise",
    ("governor", "all"): "performance",
    ("threads", "llm"): "default",
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
    "lower-swappiness": (NONE, {"psi.memory.some.avg10": 30.0, "mem.swap_total_bytes": 2e9}, {},
                         ("sysctl", "vm.swappiness", "10")),
    "governor-performance": (BOTH, {"cpu.util_pct": 35.0}, {("governor", "all"): "powersave"},
                             ("governor", "all", "performance")),
    "thp-defrag-defer": (NONE, {"vmstat.compact_stall.rate": 20.0}, {("thp", "defrag"): "always"},
                         ("thp", "defrag", "defer+madvise")),
    "limit-intra-op-threads": (BOTH, {"svc.llm.running_threads": 8.0, "svc.llm.cpu.quota_cores": 2.0}, {},
                               ("advice", "llm", None)),
    # a fixed pool of 2 in a one-CPU cpuset, over its SLO: no quota or weight can give it 2 CPUs
    "match-threads-to-cpus": (LEVER_SLO, {**OVER, "svc.llm.threads.pool": 2.0, "svc.llm.cpu.weight": 100.0,
                                          "svc.llm.cpuset.ncpu": 1.0}, {}, ("threads", "llm", "1")),
    # a fixed pool of 2 under a 0.5-core quota, over its SLO: shrunk when nothing ranks before it
    "match-threads-to-given-cpus": (LEVER_SLO, {**OVER, "svc.llm.threads.pool": 2.0, "svc.llm.cpu.weight": 100.0},
                                    {}, ("threads", "llm", "1")),
    # a fixed pool of 2 under a 0.5-core quota, over its SLO and throttled: the quota to 2 cores at once
    "slo-raise-quota-to-pool": (LEVER_SLO, {**OVER, "svc.llm.threads.pool": 2.0, "svc.llm.cpu.weight": 100.0,
                                            "svc.llm.cpu.throttled_pct": 40.0}, {},
                                ("cgroup.cpu_quota", "/autotune/llm", "2")),
    # one thread using its core on an idle 2-CPU host with no quota: restart it with 2
    "raise-threads-to-cpus": (LEVER_PLAIN, {"svc.llm.threads.pool": 1.0, "svc.llm.cpu.quota_cores": 4.0,
                                            "svc.llm.cpu.weight": 100.0, "svc.llm.cpu.usage_cores": 0.95,
                                            "svc.llm.latency.tokens": 400.0}, {},
                              ("threads", "llm", "2")),
    "raise-quota-for-threads": (BOTH, {"svc.llm.running_threads": 4.0, "svc.llm.cpu.quota_cores": 1.0,
                                       "svc.llm.cpu.quota_util_pct": 99.0},
                                {("cgroup.cpu_quota", "/autotune/llm"): "1"},
                                ("cgroup.cpu_quota", "/autotune/llm", "1.5")),
    # the SLO controller (rules/slo.yaml): upsize on low slack, proportional quota step
    "slo-raise-quota": (SLO_BOTH, {**OVER, "svc.llm.cpu.throttled_pct": 40.0}, {},
                        ("cgroup.cpu_quota", "/autotune/llm", "0.8")),
    "slo-raise-weight": (SLO_BOTH, {**OVER, **BUSY}, {}, ("cgroup.cpu_weight", "/autotune/llm", "400")),
    "slo-lower-neighbour-weight": (SLO_BOTH, {**OVER, **BUSY}, {},
                                   ("cgroup.cpu_weight", "/autotune/batch", "25")),
    "slo-dedicate-cpus": (SLO_BOTH, {**OVER, **BUSY, "svc.llm.cpu.weight": 4000.0}, {},
                          ("cgroup.cpuset", "/autotune/llm", "1")),
    # interference (rules/interference.yaml): memory and CPU-time caps on the neighbours, protection
    "protect-service-memory": (SLO_BOTH, {**OVER, **MEMSTALL}, {}, ("cgroup.memory_low", "/autotune/llm", "2500000000")),
    "cap-neighbour-memory": (SLO_BOTH, {**OVER, **MEMSTALL}, {},
                             ("cgroup.memory_high", "/autotune/batch", "6000000000")),
    "cap-neighbour-memory-v1": (SLO_BOTH, {**OVER, **MEMSTALL, "svc.llm.mem.cgroup_version": 1.0}, {},
                                ("cgroup.memory_max", "/autotune/batch", "6000000000")),
    "cap-neighbour-cpu": (SLO_BOTH, {**OVER, **MEMSTALL}, {}, ("cgroup.cpu_quota", "/autotune/batch", "0.75")),
    "lower-neighbour-io-weight": (SLO_BOTH, {**OVER, "svc.llm.psi.io.some.avg10": 30.0}, {},
                                  ("cgroup.io_weight", "/autotune/batch", "25")),
    "give-back-neighbour-cpu": (SLO_BOTH, {**AMPLE, **MEMCALM}, {("cgroup.cpu_quota", "/autotune/batch"): "0.5"},
                                ("cgroup.cpu_quota", "/autotune/batch", "1")),
    "give-back-neighbour-memory": (SLO_BOTH, {**AMPLE, **MEMCALM},
                                   {("cgroup.memory_high", "/autotune/batch"): "6000000000"},
                                   ("cgroup.memory_high", "/autotune/batch", "9000000000")),
    "give-back-service-memory-low": (SLO_BOTH, {**AMPLE, **MEMCALM},
                                     {("cgroup.memory_low", "/autotune/llm"): "2500000000"},
                                     ("cgroup.memory_low", "/autotune/llm", "0")),
    # ... and give back toward where the agent found each value (ORIGINS below)
    "slo-give-back-cpus": (SLO_BOTH, AMPLE, {("cgroup.cpuset", "/autotune/batch"): "0"},
                           ("cgroup.cpuset", "/autotune/batch", "0-1")),
    "slo-give-back-neighbour-weight": (SLO_BOTH, AMPLE, {("cgroup.cpu_weight", "/autotune/batch"): "25"},
                                       ("cgroup.cpu_weight", "/autotune/batch", "50")),
    "slo-give-back-weight": (SLO_BOTH, AMPLE, {("cgroup.cpu_weight", "/autotune/llm"): "1600"},
                             ("cgroup.cpu_weight", "/autotune/llm", "800")),
    "slo-give-back-quota": (SLO_BOTH, {**AMPLE, "svc.llm.cpu.usage_cores": 0.4},
                            {("cgroup.cpu_quota", "/autotune/llm"): "2"},
                            ("cgroup.cpu_quota", "/autotune/llm", "1.5")),
}

# the journal's "value before the agent's changes" for the give-back fixtures
ORIGINS = {
    ("cgroup.cpuset", "/autotune/batch"): "0-1",
    ("cgroup.cpuset", "/autotune/llm"): "0-1",
    ("cgroup.cpu_weight", "/autotune/batch"): "100",
    ("cgroup.cpu_weight", "/autotune/llm"): "100",
    ("cgroup.cpu_quota", "/autotune/llm"): "0.5",
    ("cgroup.cpu_quota", "/autotune/batch"): "max",
    ("cgroup.memory_high", "/autotune/batch"): "max",
    ("cgroup.memory_low", "/autotune/llm"): "0",
}


def run(cfg: Config, metrics: dict[str, float], current: dict, now: float = 60.0,
        origins: dict | None = None):
    from autotune.detect.metrics import slo_ratios

    metrics = {**metrics, **slo_ratios(metrics, cfg.services)}  # as derive_metrics adds them
    hist = [(float(t), metrics) for t in range(0, int(now) + 1)]
    symptoms, _ = detect(RULES.symptom_specs(cfg), hist, DetectorState(), now)
    actions = diagnose(RULES, metrics, symptoms, cfg, lambda k, t: current.get((k, t)), now, {},
                       origins=lambda k, t: (origins or {}).get((k, t)))
    return symptoms, actions


@pytest.mark.parametrize("rule", [r.name for r in RULES.rules])
def test_each_rule_fires_on_its_fixture(rule):
    assert rule in FIXTURES, f"rule {rule!r} has no fixture in {__file__}: add one"
    cfg, overrides, cur_over, (knob, target, proposed) = FIXTURES[rule]
    _, actions = run(cfg, {**CALM, **overrides}, {**CURRENT, **cur_over}, origins=ORIGINS)
    mine = [a for a in actions if a.rule == rule]
    assert mine, f"{rule} did not fire; got {[a.rule for a in actions]}"
    hit = [a for a in mine if a.knob == knob and a.target == target]
    assert hit, [(a.knob, a.target) for a in mine]
    if proposed is not None:
        assert hit[0].proposed == proposed
    assert hit[0].rationale and "{" not in hit[0].rationale
    assert "{" not in hit[0].proposed


@pytest.mark.parametrize("cfg,extra", [(NONE, {}), (BOTH, {}), (SLO_BOTH, {"svc.llm.latency.itl_p95_s": 0.09})],
                         ids=["no-services", "llm+batch", "slo-slack-10pct"])
def test_calm_state_fires_nothing(cfg, extra):
    symptoms, actions = run(cfg, {**CALM, **extra}, CURRENT, origins=ORIGINS)
    assert symptoms == [] and actions == []


POOL_STARVED = {**CALM, **OVER, **BUSY, "svc.llm.threads.pool": 2.0, "svc.llm.cpu.weight": 100.0,
                "svc.llm.cpu.throttled_pct": 40.0}


@pytest.mark.parametrize("floor", [None, 0.5])
def test_a_fixed_pool_is_given_its_cpus_before_it_is_cut(floor):
    """Pool 2, a 0.5-core quota, two CPUs it could have (1.5 beside a neighbour's 0.5-core floor):
    the quota and weight steps rank before the restart with fewer threads (llama.cpp cut to one
    thread held no load above 2.5 req/s here; two threads held it with 1.5 cores' worth)."""
    cfg = Config(service=[LEVER_SLO.services[0], BATCH.model_copy(update={"min_cpu_cores": floor})])
    _, actions = run(cfg, POOL_STARVED, CURRENT)
    ranked = [(a.rule, a.proposed) for a in actions if not a.advisory]
    assert ranked[0] == ("slo-raise-quota-to-pool", "2")  # the pool's cores in one step
    rules = [r for r, _ in ranked]
    assert "match-threads-to-cpus" not in rules
    assert rules.index("match-threads-to-given-cpus") > max(
        rules.index(r) for r in ("slo-raise-weight", "slo-lower-neighbour-weight"))


@pytest.mark.parametrize("why", ["cpuset", "floor"])
def test_a_fixed_pool_that_cannot_be_given_its_cpus_is_cut_first(why):
    """One CPU in its cpuset, or a neighbour's 1-core floor on a 2-CPU host: no step can give the
    pool of 2 its CPUs, so the restart with one thread comes first."""
    cfg, metrics = LEVER_SLO, POOL_STARVED
    if why == "cpuset":
        metrics = {**metrics, "svc.llm.cpuset.ncpu": 1.0}
    else:
        cfg = Config(service=[cfg.services[0], BATCH.model_copy(update={"min_cpu_cores": 1.0})])
    _, actions = run(cfg, metrics, CURRENT)
    top = [a for a in actions if not a.advisory][0]
    assert (top.rule, top.knob, top.proposed) == ("match-threads-to-cpus", "threads", "1")
    assert "could give it more than 1" in " ".join(top.rationale.split())


def test_give_back_needs_a_change_to_give_back():
    """Ample slack on values the agent never changed (no origin): nothing to give back."""
    _, actions = run(SLO_BOTH, {**CALM, **AMPLE}, {**CURRENT, ("cgroup.cpu_weight", "/autotune/batch"): "25"})
    assert actions == []


def test_give_back_stops_at_the_start_value():
    _, actions = run(SLO_BOTH, {**CALM, **AMPLE}, {**CURRENT, ("cgroup.cpu_weight", "/autotune/batch"): "80"},
                     origins=ORIGINS)
    [a] = [a for a in actions if a.rule == "slo-give-back-neighbour-weight"]
    assert a.proposed == "100"  # x2 would be 160: clamped at where the agent found it
    assert a.verify.mode == "guard" and a.verify.lockout_s == 30


def test_slo_controlled_service_gets_no_psi_rules():
    """PSI-driven upsizes (cpu.yaml) stay out of an SLO-controlled service's way."""
    metrics = {**CALM, "svc.llm.psi.cpu.some.avg10": 30.0, "svc.llm.cpu.throttled_pct": 40.0,
               "svc.llm.latency.itl_p95_s": 0.09}
    _, actions = run(SLO_BOTH, metrics, CURRENT, origins=ORIGINS)
    assert actions == []
    _, plain = run(BOTH, metrics, CURRENT)
    assert {"raise-service-cpu-weight", "raise-service-cpu-quota"} <= {a.rule for a in plain}


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


def test_declared_services_get_no_advice_to_declare_them():
    """The host advice says to declare [[service]] entries: not once they are declared."""
    _, actions = run(BOTH, {**CALM, "psi.cpu.some.avg10": 60.0}, CURRENT)
    assert not [a for a in actions if a.rule == "host-cpu-contention-advice"]
    _, actions = run(NONE, {**CALM, "psi.cpu.some.avg10": 60.0}, CURRENT)
    assert [a for a in actions if a.rule == "host-cpu-contention-advice"]


def test_no_rationale_claims_a_duration_a_short_sample_did_not_have():
    """`recommend --duration 10` caps every symptom's for_s to the observation: texts must state
    what was measured (avg60 is the kernel's own one-minute average), never 'for half a minute'."""
    import re

    texts = [r.rationale for r in RULES.rules] + [s.description for s in RULES.symptoms]
    for t in texts:
        assert not re.search(r"half a minute|for over|for \d+ ?s\b", t), t
    _, actions = run(BOTH, {**CALM, "psi.cpu.some.avg60": 50.0}, CURRENT)
    pin = next(a for a in actions if a.rule == "pin-service-dedicated-cpus")
    assert "50 % of the last minute" in pin.rationale


# -- interference: only what can help ------------------------------------------------------------
def test_memory_stall_gets_memory_levers_not_cpu_weights():
    """A service stalling on memory (not waiting for a CPU) gets protection and caps on the
    neighbours' memory and CPU time, never a cpu weight step: weights cannot help it."""
    _, actions = run(SLO_BOTH, {**CALM, **OVER, **MEMSTALL}, CURRENT, origins=ORIGINS)
    rules = [a.rule for a in actions]
    assert rules[:3] == ["protect-service-memory", "cap-neighbour-memory", "cap-neighbour-cpu"]
    assert not [a for a in actions if a.knob == "cgroup.cpu_weight"]
    cap = next(a for a in actions if a.rule == "cap-neighbour-memory")
    assert "20 % of the time" in cap.rationale and "CPU wait" in cap.rationale


def test_cpu_contention_gets_no_memory_levers():
    """CPU-time contention (the service waits for a CPU, no memory stall) keeps the CPU rules."""
    _, actions = run(SLO_BOTH, {**CALM, **OVER, **BUSY}, CURRENT, origins=ORIGINS)
    assert {a.rule for a in actions} >= {"slo-raise-weight", "slo-lower-neighbour-weight"}
    assert not [a for a in actions if a.knob.startswith("cgroup.memory") or a.rule == "cap-neighbour-cpu"]


def test_no_swappiness_change_without_swap():
    for swap in ({}, {"mem.swap_total_bytes": 0.0}):
        _, actions = run(NONE, {**CALM, "psi.memory.some.avg10": 30.0, **swap}, CURRENT)
        assert not [a for a in actions if a.rule == "lower-swappiness"], swap


def test_no_memory_low_on_cgroup_v1():
    """cgroup v1 has no memory.low: the v1 cap is proposed, the protection never is."""
    _, actions = run(SLO_BOTH, {**CALM, **OVER, **MEMSTALL, "svc.llm.mem.cgroup_version": 1.0}, CURRENT,
                     origins=ORIGINS)
    rules = {a.rule for a in actions}
    assert "cap-neighbour-memory-v1" in rules
    assert not rules & {"protect-service-memory", "cap-neighbour-memory"}


def test_unreadable_knob_is_not_proposed():
    """A lever the host lacks (no io weight file: reads fail) is not proposed at all."""
    current = {k: v for k, v in CURRENT.items() if k[0] != "cgroup.io_weight"}
    _, actions = run(SLO_BOTH, {**CALM, **OVER, "svc.llm.psi.io.some.avg10": 30.0}, current, origins=ORIGINS)
    assert not [a for a in actions if a.knob == "cgroup.io_weight"]


def test_neighbour_memory_cap_never_under_its_anonymous_memory():
    """Stepping from 3 GB with 2.8 GB of it anonymous: the cap stops at 1.25 x 2.8 GB."""
    m = {**CALM, **OVER, **MEMSTALL, "svc.batch.mem.usage_bytes": 3e9, "svc.batch.mem.anon_bytes": 2.8e9}
    _, actions = run(SLO_BOTH, m, CURRENT, origins=ORIGINS)
    [cap] = [a for a in actions if a.rule == "cap-neighbour-memory"]
    assert int(cap.proposed) >= int(1.25 * 2.8e9) - 4096
    # already capped at the bound: nothing left to cut
    _, again = run(SLO_BOTH, m, {**CURRENT, ("cgroup.memory_high", "/autotune/batch"): cap.proposed},
                   origins=ORIGINS)
    assert not [a for a in again if a.rule == "cap-neighbour-memory"]


def test_give_back_to_unlimited_ends_at_the_start_value():
    """A neighbour quota found unlimited is given back by doubling, and at the host's CPU
    count the step is the original "max" itself."""
    _, actions = run(SLO_BOTH, {**CALM, **AMPLE, **MEMCALM}, {**CURRENT, ("cgroup.cpu_quota", "/autotune/batch"): "1.5"},
                     origins=ORIGINS)
    [a] = [a for a in actions if a.rule == "give-back-neighbour-cpu"]
    assert a.proposed == "max" and a.verify.mode == "guard"


def test_no_restart_that_would_not_change_the_pool():
    """One thread under a 0.5-core quota, over its SLO: restarting it with one thread changes
    nothing (and one thread has no sibling to wait for), so the lever stays still; so does a pool
    that follows its quota."""
    _, actions = run(LEVER_SLO, {**CALM, **OVER, "svc.llm.threads.pool": 1.0, "svc.llm.cpu.weight": 100.0}, CURRENT)
    assert not [a for a in actions if a.knob == "threads"]
    follows = Config(service=[LLM_SLO.model_copy(update={"threads": LEVER.model_copy(update={"pool": "follows-quota"})}),
                              BATCH])
    _, actions = run(follows, {**CALM, **OVER, "svc.llm.threads.pool": 2.0, "svc.llm.cpu.weight": 100.0}, CURRENT)
    assert not [a for a in actions if a.knob == "threads"]


def test_no_restart_to_more_threads_without_a_latency_to_judge_it_by():
    metrics = {**CALM, "svc.llm.threads.pool": 1.0, "svc.llm.cpu.quota_cores": 4.0, "svc.llm.cpu.weight": 100.0,
               "svc.llm.cpu.usage_cores": 0.95}
    _, actions = run(LEVER_PLAIN, metrics, CURRENT)
    assert not [a for a in actions if a.knob == "threads"]
    _, actions = run(LEVER_PLAIN, {**metrics, "svc.llm.latency.tokens": 400.0}, CURRENT)
    assert [a.proposed for a in actions if a.knob == "threads"] == ["2"]


def test_page_cache_streaming_neighbour_gets_capped_without_a_service_stall():
    """Host memory pressure while the neighbours hold over a tenth of the host's memory as page
    cache: the service's own memory PSI stays low (reclaim runs in kswapd, outside its cgroup),
    yet the neighbours' memory (v1: the hard limit) and CPU time get capped; without the page
    cache, nothing of the kind."""
    m = {**CALM, **OVER, **MEMSTALL, "svc.llm.psi.memory.some.avg10": 0.5, "svc.llm.mem.cgroup_version": 1.0,
         "psi.memory.some.avg10": 30.0}
    _, actions = run(SLO_BOTH, m, CURRENT, origins=ORIGINS)
    assert {"cap-neighbour-memory-v1", "cap-neighbour-cpu"} <= {a.rule for a in actions}
    _, quiet = run(SLO_BOTH, {**m, "svc.batch.mem.file_bytes": 1e9}, CURRENT, origins=ORIGINS)
    assert not {"cap-neighbour-memory-v1", "cap-neighbour-cpu"} & {a.rule for a in quiet}


def test_spent_weights_move_on_to_a_cpu_cap_on_the_neighbours():
    """CPU contention after the weight steps (service weight 1600): the neighbours' CPU time is
    capped (Heracles) before their CPUs are taken away (dedicated CPUs, priority 60)."""
    _, actions = run(SLO_BOTH, {**CALM, **OVER, **BUSY, "svc.llm.cpu.weight": 1600.0, "svc.llm.cpu.usage_cores": 0.8},
                     CURRENT, origins=ORIGINS)
    rules = [a.rule for a in actions]
    assert "cap-neighbour-cpu" in rules and rules.index("cap-neighbour-cpu") < rules.index("slo-dedicate-cpus")
