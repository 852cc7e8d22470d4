"""A fixed compute-thread pool as a constraint (autotune/diagnose/pool.py): through the real rule
pack and engine, a fixed pool of 2 threads is never given one CPU; a quota step under the pool
is guarded or refused; the learned search explores no quota under the pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.diagnose import pool
from autotune.diagnose.search.state import Search
from autotune.config import SLO, Config, LatencySource, Service, Threads
from autotune.detect.metrics import pool_facts, slo_ratios
from autotune.detect.symptoms import DetectorState, detect
from autotune.diagnose.engine import diagnose
from autotune.diagnose.rules import load_rules
from autotune.journal.journal import Journal
from autotune.store.db import open_db
from autotune.types import Action, VerifyPlan

RULES = load_rules([Path(__file__).resolve().parents[2] / "rules"])
SLO_ITL = SLO(itl_p95_s=0.1)
PAGE = LatencySource(metrics_url="http://127.0.0.1:8000/metrics")
BATCH = Service(name="batch", cgroup="/autotune/batch", role="neighbour")


def llm(threads: Threads | None = None, *, slo: bool = True) -> Service:
    return Service(name="llm", cgroup="/autotune/llm", slo=SLO_ITL if slo else SLO(),
                   latency=PAGE if slo else None, threads=threads)


# over its SLO, its weight already raised, a busy neighbour: slo-dedicate-cpus fires (2 CPUs)
DEDICATE = {"svc.llm.latency.itl_p95_s": 0.16, "svc.llm.cpu.weight": 4000.0, "svc.llm.psi.cpu.some.avg10": 30.0,
            "svc.batch.cpu.usage_cores": 1.5, "svc.batch.cpu.weight": 100.0, "svc.llm.cpuset.ncpu": 2.0,
            "psi.cpu.some.avg10": 40.0, "psi.cpu.some.avg60": 50.0}
CURRENT = {("cgroup.cpu_weight", "/autotune/llm"): "4000", ("cgroup.cpu_weight", "/autotune/batch"): "100",
           ("cgroup.cpuset", "/autotune/llm"): "0-1", ("cgroup.cpuset", "/autotune/batch"): "0-1",
           ("cgroup.cpu_quota", "/autotune/llm"): "max"}


def proposals(cfg: Config, metrics: dict[str, float], ncpu: int = 2):
    """What the agent would consider: the real pack through detect + diagnose, then the pool
    screen every proposal goes through (Agent.evaluate)."""
    cpus = f"0-{ncpu - 1}"
    m = {"host.ncpu": float(ncpu), **metrics}
    m.update(slo_ratios(m, cfg.services))
    m.update(pool_facts(m, cfg.services))
    hist = [(float(t), m) for t in range(61)]
    symptoms, _ = detect(RULES.symptom_specs(cfg), hist, DetectorState(), 60.0)
    cur = {**CURRENT, ("cgroup.cpuset", "/autotune/llm"): cpus, ("cgroup.cpuset", "/autotune/batch"): cpus}
    actions = diagnose(RULES, m, symptoms, cfg, lambda k, t: cur.get((k, t)), 60.0, {})
    kept, refused = pool.screen(actions, pool.pools_from(m, cfg.services), cfg.services)
    return actions, kept, refused


def cpusets(actions, target="/autotune/llm"):
    return [a.proposed for a in actions if a.knob == "cgroup.cpuset" and a.target == target]


def test_without_a_pool_the_dedicate_rule_gives_the_service_one_of_two_cpus():
    """The hazard itself: what the shipped rule did for a llama.cpp --threads 2 server."""
    actions, kept, _ = proposals(Config(service=[llm(), BATCH]), DEDICATE)
    assert cpusets(actions) == ["1"] and cpusets(kept) == ["1"]


@pytest.mark.parametrize("how", ["declared", "observed"])
def test_a_fixed_pool_of_two_is_never_given_one_cpu(how):
    threads = Threads(count=2) if how == "declared" else None
    metrics = DEDICATE if how == "declared" else {**DEDICATE, "svc.llm.threads.pool": 2.0}
    cfg = Config(service=[llm(threads), BATCH])
    actions, kept, _ = proposals(cfg, metrics)
    assert not [a for a in actions if a.rule == "slo-dedicate-cpus"]  # silent: no layout leaves it 2
    assert cpusets(actions) == [] and cpusets(actions, "/autotune/batch") == []
    assert {"slo-raise-weight", "slo-lower-neighbour-weight"} & {a.rule for a in kept}  # the rest still acts
    # the same pool without an SLO, under sustained host pressure (cpu.yaml's pin rule)
    plain = Config(service=[llm(threads, slo=False), BATCH])
    actions, kept, _ = proposals(plain, metrics)
    assert "pin-service-dedicated-cpus" not in {a.rule for a in actions}
    assert cpusets(kept) == []


def test_on_four_cpus_the_dedicated_set_is_sized_to_the_pool():
    four = {**DEDICATE, "svc.llm.cpuset.ncpu": 4.0}
    _, kept, _ = proposals(Config(service=[llm(Threads(count=2)), BATCH]), four, ncpu=4)
    assert cpusets(kept) == ["2-3"] and cpusets(kept, "/autotune/batch") == ["0-1"]
    _, kept, _ = proposals(Config(service=[llm(Threads(count=3)), BATCH]), four, ncpu=4)
    assert cpusets(kept) == ["1-3"] and cpusets(kept, "/autotune/batch") == ["0"]
    # ... unless the neighbours' floor needs more CPUs than that leaves them: silent
    floored = BATCH.model_copy(update={"min_cpu_cores": 1.5})
    actions, _, _ = proposals(Config(service=[llm(Threads(count=3)), floored]), four, ncpu=4)
    assert cpusets(actions) == [] and cpusets(actions, "/autotune/batch") == []


def test_a_pool_that_follows_its_quota_is_no_constraint():
    cfg = Config(service=[llm(Threads(count=2, pool="follows-quota")), BATCH])
    _, kept, refused = proposals(cfg, DEDICATE)
    assert cpusets(kept) == ["1"] and refused == []


POOL2 = {"llm": pool.Pool(service="llm", threads=2, declared=True, guardable=True)}
SERVICES = {"llm": llm(Threads(count=2)), "batch": BATCH}


def act(knob: str, current: str | None, proposed: str, *, mode: str = "compare", target: str = "/autotune/llm"):
    return Action(knob=knob, target=target, service="llm", current=current, proposed=proposed, rule="r",
                  rationale="why", verify=VerifyPlan(mode=mode, window_s=10.0, settle_s=2.0))


def test_no_cpuset_or_affinity_narrower_than_the_pool():
    out, why = pool.check(act("cgroup.cpuset", "0-1", "1"), POOL2, SERVICES)
    assert out is None and "fixed pool of 2 compute threads (declared)" in why and "1 CPU(s)" in why
    assert pool.check(act("affinity", "0-1", "0", target="llm"), POOL2, SERVICES)[0] is None
    # widening, or a layout that keeps two CPUs, passes untouched
    for cur, new in (("1", "0-1"), ("0-1", "2-3"), ("0-3", "0-1")):
        a = act("cgroup.cpuset", cur, new)
        assert pool.check(a, POOL2, SERVICES) == (a, None)
    # a neighbour's cpuset is not the pool's business
    n = act("cgroup.cpuset", "0-1", "0", target="/autotune/batch")
    assert pool.check(n, POOL2, SERVICES) == (n, None)


def test_a_quota_step_under_the_pool_is_guarded_or_refused():
    down = act("cgroup.cpu_quota", "2", "1.5")
    out, why = pool.check(down, POOL2, SERVICES)
    assert out is not None and out.verify.mode == "guard" and out.verify.lockout_s > 0
    assert "guarded" in why and "guarded" in out.rationale
    # a give-back is already a guard; a step up (even one still under the pool) is not a step down
    for a in (act("cgroup.cpu_quota", "2", "1.5", mode="guard"), act("cgroup.cpu_quota", "0.5", "1"),
              act("cgroup.cpu_quota", "max", "3")):
        assert pool.check(a, POOL2, SERVICES) == (a, None)
    # no SLO to guard with: refused
    bare = {"llm": POOL2["llm"].model_copy(update={"guardable": False})}
    out, why = pool.check(down, bare, SERVICES)
    assert out is None and "no SLO" in why


def test_pools_come_from_the_metrics_and_outlive_an_idle_window():
    cfg = [llm(), BATCH]
    m = {"svc.llm.threads.pool": 2.0, "svc.llm.threads.pool_fixed": 1.0, "svc.llm.threads.pool_declared": 0.0}
    seen = pool.pools_from(m, cfg, now=100.0)
    assert seen["llm"].threads == 2 and not seen["llm"].declared and seen["llm"].guardable
    assert pool.pools_from({**m, "svc.llm.threads.pool_fixed": 0.0}, cfg) == {}
    assert pool.remember(seen, {}, now=100.0 + pool.MEMORY_S - 1) == seen
    assert pool.remember(seen, {}, now=100.0 + pool.MEMORY_S + 1) == {}


def test_the_learned_search_explores_no_quota_under_the_pool(tmp_path):
    cfg = Config(agent={"state_path": str(tmp_path / "s.db")}, service=[llm(), BATCH.model_copy(update={"min_cpu_cores": 0.5})])
    db = open_db(cfg.state_path())
    search = Search(cfg, db, Journal(db), ncpu=4)
    [svc] = search.services()
    assert min(a.quota_cores for a in search.candidates(svc) if a.quota_cores is not None) < 2
    search.pools = {"llm": pool.Pool(service="llm", threads=2, declared=False, guardable=True)}
    quotas = {a.quota_cores for a in search.candidates(svc)}
    assert None in quotas and min(q for q in quotas if q is not None) == 2.0
    search.pools = {"llm": pool.Pool(service="llm", threads=4, declared=True, guardable=True)}
    assert {a.quota_cores for a in search.candidates(svc)} == {None}  # only "unlimited" is wide enough


def test_a_single_thread_is_no_pool_constraint():
    """One thread has no sibling to wait for: under less CPU it only runs slower."""
    m = {"svc.llm.threads.pool": 1.0, "svc.llm.threads.pool_fixed": 1.0}
    assert pool.pools_from(m, [llm(), BATCH]) == {}
    _, kept, _ = proposals(Config(service=[llm(Threads(count=1)), BATCH]), DEDICATE)
    assert cpusets(kept) == ["1"]
