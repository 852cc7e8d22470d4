"""The neighbour's min_cpu_cores floor, as the gating step enforces it."""

import pytest

from autotune.diagnose.floor import CpuShare, clamp, guaranteed, reserve_from, shares_from, violation
from autotune.diagnose.gating import GateView, select_action
from autotune.config import Service, Verification
from autotune.types import Action, CgroupReading, ServiceReading, Snapshot

V = Verification(rule_cooldown_s=0, knob_cooldown_s=0, max_changes_per_hour=100)


def bench_shares(server_quota=0.5, server_w=100, neigh_w=100, neigh_cpus=None):
    """The benchmark's layout: a quota'd server and an unlimited neighbour with a 0.5 floor."""
    return {
        "llm": CpuShare(cgroup="/b/server", quota_cores=server_quota, weight=server_w),
        "neighbour": CpuShare(cgroup="/b/neighbour", weight=neigh_w, floor=0.5, cpus=neigh_cpus),
    }


def act(knob, target, value, rule="r"):
    return Action(knob=knob, target=target, proposed=value, rule=rule, rationale="x")


def test_guarantee_by_caps_and_by_weight():
    s = bench_shares()
    assert guaranteed("neighbour", s, 2) == pytest.approx(1.5)  # 2 cpus - server's 0.5 cap
    s = bench_shares(server_quota=None, server_w=300)
    assert guaranteed("neighbour", s, 2) == pytest.approx(0.5)  # 2 * 100 / 400
    s = bench_shares(server_quota=1.5, server_w=10000, neigh_w=1)
    assert guaranteed("neighbour", s, 2) == pytest.approx(0.5)  # the cap still leaves 0.5


def test_bench_rule_bounds_keep_the_floor():
    """The bench's own moves (quota up to 1.5, weights 10000 / 10) never trip the floor."""
    s = bench_shares(server_quota=1.5, server_w=10000)
    assert violation(act("cgroup.cpu_quota", "/b/server", "1.5"), bench_shares(), 2) is None
    assert violation(act("cgroup.cpu_weight", "/b/neighbour", "10"), s, 2) is None


def test_quota_past_the_floor_is_refused_with_figures():
    heavy = bench_shares(server_quota=1.5, server_w=10000)
    why = violation(act("cgroup.cpu_quota", "/b/server", "1.8"), heavy, 2)
    assert why is not None and "neighbour" in why and "0.20" in why and "0.5" in why
    assert violation(act("cgroup.cpu_quota", "/b/server", "max"), heavy, 2) is not None
    # with equal weights CFS alone already gives the neighbour 1 of the 2 cores
    assert violation(act("cgroup.cpu_quota", "/b/server", "max"), bench_shares(), 2) is None


def test_unlimited_server_needs_weights_that_keep_the_floor():
    s = bench_shares(server_quota=None)
    assert violation(act("cgroup.cpu_weight", "/b/server", "300"), s, 2) is None  # 0.5 exactly
    assert violation(act("cgroup.cpu_weight", "/b/server", "400"), s, 2) is not None
    assert violation(act("cgroup.cpu_weight", "/b/neighbour", "10"), s, 2) is not None
    assert violation(act("cgroup.cpu_idle", "/b/neighbour", "1"), s, 2) is not None


def test_floored_service_own_quota_and_cpuset():
    s = bench_shares()
    assert violation(act("cgroup.cpu_quota", "/b/neighbour", "0.3"), s, 2) is not None
    assert violation(act("cgroup.cpu_quota", "/b/neighbour", "0.6"), s, 2) is None
    # a disjoint cpuset for the server hands the neighbour cpu 1 whole
    assert violation(act("cgroup.cpuset", "/b/server", "0"), bench_shares(server_quota=None), 2) is None


def test_changes_that_do_not_lower_a_broken_floor_pass():
    s = bench_shares(server_quota=None, server_w=10000, neigh_w=10)  # already below 0.5
    assert violation(act("cgroup.cpu_weight", "/b/neighbour", "50"), s, 2) is None
    assert violation(act("cgroup.cpu_weight", "/b/server", "10000"), s, 2) is None


def test_other_knobs_and_unknown_targets_are_not_judged():
    s = bench_shares(server_quota=1.5)
    assert violation(act("cgroup.memory_max", "/b/server", "1G"), s, 2) is None
    assert violation(act("cgroup.cpu_quota", "/elsewhere", "2"), s, 2) is None
    assert violation(act("cgroup.cpu_quota", "/b/../x", "2"), s, 2) is None
    assert violation(act("cgroup.cpu_quota", "/b/server", "lots"), s, 2) is None


def test_gating_skips_the_breaking_action_and_takes_the_next():
    view = GateView(cpu_shares=bench_shares(server_quota=1.5, server_w=10000), ncpu=2)
    d = select_action([act("cgroup.cpu_quota", "/b/server", "2", rule="big"),
                       act("cgroup.cpu_weight", "/b/server", "400", rule="w")], view, 0, V)
    assert d.chosen is not None and d.chosen.rule == "w"
    assert any(k.startswith("big:") and r.startswith("cpu floor:") for k, r in d.skipped)


def test_shares_from_a_snapshot():
    cg = CgroupReading(path="/b/neighbour/", version=1, cpu_weight=10, cpuset_cpus=[0, 1])
    snap = Snapshot(ts=1.0, services={"neighbour": ServiceReading(name="neighbour", cgroup=cg),
                                      "llm": ServiceReading(name="llm")})
    svcs = [Service(name="neighbour", role="neighbour", cgroup="/b/neighbour", min_cpu_cores=0.5),
            Service(name="llm", cgroup="/b/server")]
    s = shares_from(snap, svcs)
    assert list(s) == ["neighbour"]  # no cgroup reading for llm: nothing to judge it by
    assert s["neighbour"] == CpuShare(cgroup="/b/neighbour", weight=10, cpus=frozenset({0, 1}), floor=0.5)
    assert shares_from(None, svcs) == {}


def test_cpu_used_outside_the_services_is_reserved():
    """Run 2 of the GPT-2 bench: quota 1.5 of 2 cores left the neighbour 0.44, not 0.5, because
    the load generator, gate and agent (~0.06 core) run outside both cgroups."""
    s = bench_shares(server_quota=1.5, server_w=10000)
    assert guaranteed("neighbour", s, 2, reserve=0.06) == pytest.approx(0.44)
    assert violation(act("cgroup.cpu_quota", "/b/server", "1.5"), bench_shares(server_w=10000), 2, 0.06) is not None
    m = {"cpu.util_pct": 100.0, "svc.llm.cpu.usage_cores": 1.5, "svc.neighbour.cpu.usage_cores": 0.44}
    svcs = [Service(name="llm", cgroup="/b/server"), Service(name="neighbour", role="neighbour", cgroup="/b/n")]
    assert reserve_from(m, svcs, 2) == pytest.approx(0.06)
    assert reserve_from({}, svcs, 2) == 0.0
    assert reserve_from({**m, "cpu.util_pct": 50.0}, svcs, 2) == 0.0  # never negative


def test_a_too_large_step_is_cut_to_what_keeps_the_floor():
    s = bench_shares(server_w=10000)  # server at 0.5 core
    a = act("cgroup.cpu_quota", "/b/server", "1.5").model_copy(update={"current": "0.5"})
    cut = clamp(a, s, 2, reserve=0.06)
    assert cut is not None and cut.proposed == "1.44" and "step cut from 1.5 to 1.44" in cut.rationale
    assert violation(cut, s, 2, 0.06) is None
    at_cap = bench_shares(server_quota=1.44, server_w=10000)
    again = act("cgroup.cpu_quota", "/b/server", "4.32").model_copy(update={"current": "1.44"})
    assert clamp(again, at_cap, 2, reserve=0.06) is None  # no useful step left: refused
    w = act("cgroup.cpu_weight", "/b/neighbour", "10").model_copy(update={"current": "100"})
    unlimited = bench_shares(server_quota=None, server_w=100)
    cutw = clamp(w, unlimited, 2)  # weight share must stay >= 0.5 of 2 cores: 100 -> 34 at most
    assert cutw is not None and 33 <= int(cutw.proposed) <= 34
    assert clamp(act("thp", "always", "never"), s, 2) is None


def test_gating_takes_the_cut_step():
    view = GateView(cpu_shares=bench_shares(server_w=10000), ncpu=2, cpu_reserve=0.06)
    a = act("cgroup.cpu_quota", "/b/server", "1.5").model_copy(update={"current": "0.5"})
    d = select_action([a], view, 0, V)
    assert d.chosen is not None and d.chosen.proposed == "1.44"


def test_floor_asks_the_knob_how_a_change_moves_cpu():
    """No knob names in the floor: a knob that declares a cpu_share effect is judged and cut at
    its own step (``decimals``); one that declares none is not judged."""
    from autotune.knobs import KNOBS, register_knob
    from autotune.knobs.cgroup.cpu_weight import CpuWeight

    class Tenths(CpuWeight):
        name = "test.weight_tenths"
        decimals = 1

        def cpu_share(self, value):
            return {"weight": round(float(value) * 10)}

    register_knob(Tenths())
    try:
        s = bench_shares(server_quota=None)
        assert violation(act("test.weight_tenths", "/b/server", "30"), s, 2) is None  # weight 300
        assert violation(act("test.weight_tenths", "/b/server", "40"), s, 2) is not None
        cut = clamp(act("test.weight_tenths", "/b/server", "40").model_copy(update={"current": "10"}), s, 2)
        assert cut is not None and cut.proposed == "30"  # 30.0 rounds toward the current value
        assert violation(act("cgroup.memory_max", "/b/server", "1"), s, 2) is None
    finally:
        del KNOBS["test.weight_tenths"]


def test_capping_an_unlimited_neighbour_is_cut_at_its_floor():
    """A neighbour found unlimited ("max") capped to 0.2 cores with a 0.5-core floor: the step
    is cut to what keeps the floor instead of refused for want of a numeric start."""
    from autotune.diagnose.floor import CpuShare, clamp
    from autotune.types import Action

    shares = {"llm": CpuShare(cgroup="/llm", quota_cores=1.5),
              "batch": CpuShare(cgroup="/batch", quota_cores=None, floor=0.5)}
    a = Action(knob="cgroup.cpu_quota", target="/batch", service="llm", current="max", proposed="0.2",
               rule="cap-neighbour-cpu", rationale="test")
    cut = clamp(a, shares, ncpu=2)
    assert cut is not None and float(cut.proposed) == 0.5
