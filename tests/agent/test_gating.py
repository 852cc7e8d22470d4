from autotune.diagnose.gating import GateView, answers_breach, select_action
from autotune.config import Verification
from autotune.types import Action, VerifyPlan

V = Verification(rule_cooldown_s=100, knob_cooldown_s=50, max_changes_per_hour=3)


def act(rule="r1", knob="cgroup.cpu_quota", target="/a", prio=50, advisory=False, score=None):
    return Action(knob=knob, target=target, proposed="1", rule=rule, rationale="x",
                  priority=prio, advisory=advisory, score=score)


def test_highest_priority_wins_and_one_per_tick():
    d = select_action([act("low", prio=10), act("high", prio=90, target="/b")], GateView(), 1000, V)
    assert d.chosen.rule == "high"
    assert any("one change per tick" in r for _, r in d.skipped)


def test_score_outranks_priority():
    d = select_action([act("a", prio=90, score=0.1), act("b", prio=10, score=0.9, target="/b")], GateView(), 0, V)
    assert d.chosen.rule == "b"


def test_advisory_never_chosen():
    d = select_action([act(advisory=True)], GateView(), 0, V)
    assert d.chosen is None and "advisory" in d.skipped[0][1]


def test_in_flight_target_blocks_any_knob_on_it():
    view = GateView(in_flight=frozenset({("cgroup.cpu_weight", "/a")}))
    assert select_action([act()], view, 0, V).chosen is None
    assert select_action([act(target="/b")], view, 0, V).chosen is not None


def test_unmanaged_blocks():
    view = GateView(unmanaged=frozenset({("cgroup.cpu_quota", "/a")}))
    d = select_action([act()], view, 0, V)
    assert d.chosen is None and "drift" in d.skipped[0][1]


def test_cooldowns_and_rate_limit():
    assert select_action([act()], GateView(last_rule_ts={"r1": 950}), 1000, V).chosen is None
    assert select_action([act()], GateView(last_rule_ts={"r1": 850}), 1000, V).chosen is not None
    assert select_action([act()], GateView(last_knob_ts={"cgroup.cpu_quota": 980}), 1000, V).chosen is None
    assert select_action([act()], GateView(changes_last_hour=3), 1000, V).chosen is None
    assert select_action([act()], GateView(changes_last_hour=2), 1000, V).chosen is not None


def test_a_restart_knob_waits_its_interval_and_holds_the_service_while_verified():
    """threads restarts the service: at most one change per Knob.min_interval_s (600 s), however
    short [verification] knob_cooldown_s is, and no other change to that service while its
    restart is verified (the latency must show the restart alone)."""
    restart = act(knob="threads", target="llm")
    assert select_action([restart], GateView(last_knob_ts={"threads": 500}), 1000, V).chosen is None
    assert select_action([restart], GateView(last_knob_ts={"threads": 399}), 1000, V).chosen is not None
    quota = act().model_copy(update={"service": "llm"})
    d = select_action([quota], GateView(restarting=frozenset({"llm"})), 1000, V)
    assert d.chosen is None and "restarted by a change still being verified" in d.skipped[0][1]
    assert select_action([quota.model_copy(update={"service": "other"})], GateView(restarting=frozenset({"llm"})),
                         1000, V).chosen is not None


def test_actuator_routes_admission_service_to_its_gate(tmp_path):
    from autotune.fix.actuator import DryRunActuator
    from autotune.config import Config, Service
    from autotune.host import Host

    cfg = Config(service=[Service(name="llm", cgroup="/a", admission_url="http://127.0.0.1:9/"),
                          Service(name="nogate", cgroup="/b")])
    act = DryRunActuator(Host(tmp_path), cfg)
    assert act._target("admission", "llm") == "http://127.0.0.1:9/"
    assert act._target("admission", "http://x:1") == "http://x:1"
    assert act.read("admission", "nogate") is None  # no gate: target gone, not a crash


def test_only_a_compared_cpu_give_to_a_service_over_its_slo_answers_a_breach():
    """Such a change skips the wait for a before-window; a take (guard), another lever (a
    cpuset can hurt), or a service within its SLO does not."""
    give = Action(knob="cgroup.cpu_quota", target="/llm", service="llm", proposed="1", rule="slo-raise-quota",
                  rationale="x", verify=VerifyPlan(mode="compare"))
    over, within = {"svc.llm.slo.slack": -0.3}, {"svc.llm.slo.slack": 0.02}
    assert answers_breach(give, over)
    assert answers_breach(give.model_copy(update={"knob": "cgroup.cpu_weight"}), over)
    assert not answers_breach(give, within) and not answers_breach(give, {})
    assert not answers_breach(give.model_copy(update={"verify": VerifyPlan(mode="guard")}), over)
    assert not answers_breach(give.model_copy(update={"knob": "cgroup.cpuset"}), over)
    assert not answers_breach(give.model_copy(update={"service": None}), over)
