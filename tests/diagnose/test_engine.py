"""Engine semantics: steps and bounds, cooldowns, ordering, targets, roles, missing inputs."""

from __future__ import annotations

import textwrap

import pytest

from autotune.config import Config, Service
from autotune.diagnose.engine import diagnose, render, same_value
from autotune.diagnose.rules import load_rules
from autotune.types import Symptom

RULES = """
symptoms:
  - {name: throttled, scope: service, metric: svc.$service.cpu.throttled_pct, on: 10}
  - {name: hot, metric: psi.cpu.some.avg10, on: 20}
rules:
  - name: quota-up
    priority: 80
    cooldown_s: 100
    role: latency-critical
    rationale: throttled {metric:svc.$service.cpu.throttled_pct} percent
    when: {all: [{symptom: throttled}]}
    actions:
      - {knob: cgroup.cpu_quota, target: service, step: {factor: 1.5}, bounds: {min: 0.1, max: host.ncpu}}
  - name: weight-down
    priority: 60
    role: latency-critical
    rationale: neighbours use {metric:neighbours.cpu.usage_cores} cores so lower them
    when: {all: [{symptom: hot}, {metric: neighbours.cpu.usage_cores, op: ">", value: 0.5}]}
    actions:
      - {knob: cgroup.cpu_weight, target: neighbours, step: {delta: -60}, bounds: {min: 10}}
  - name: tell-host
    scope: host
    priority: 10
    rationale: the host is under pressure now
    when: {any: [{symptom: hot}, {symptom: throttled}]}
    actions:
      - {knob: advice, target: host, value: "pressure {metric:psi.cpu.some.avg10} on {ncpu} cpus"}
"""

CFG = Config(service=[
    Service(name="llm", cgroup="/a/llm"),
    Service(name="web", unit="web.service"),
    Service(name="batch", cgroup="/a/batch", role="neighbour"),
    Service(name="etl", exe="etl", role="neighbour"),  # no cgroup: cannot be targeted by cgroup knobs
])


@pytest.fixture()
def rs(tmp_path):
    (tmp_path / "r.yaml").write_text(textwrap.dedent(RULES))
    return load_rules([tmp_path])


def sym(name, service=None, value=50.0):
    return Symptom(name=name, service=service, metric="x", value=value, threshold=10, since_ts=0)


def current(values):
    return lambda knob, target: values.get((knob, target))


M = {"host.ncpu": 2.0, "psi.cpu.some.avg10": 60.0, "svc.llm.cpu.throttled_pct": 40.0,
     "svc.batch.cpu.usage_cores": 0.4, "svc.etl.cpu.usage_cores": 0.4}


def test_step_bounds_ordering_and_targets(rs):
    cur = {("cgroup.cpu_quota", "/a/llm"): "1.5", ("cgroup.cpu_quota", "/system.slice/web.service"): "0.5",
           ("cgroup.cpu_weight", "/a/batch"): "100"}
    acts = diagnose(rs, M, [sym("throttled", "llm"), sym("hot")], CFG, current(cur), now=1000)
    got = [(a.rule, a.knob, a.target, a.current, a.proposed) for a in acts]
    assert got == [
        ("quota-up", "cgroup.cpu_quota", "/a/llm", "1.5", "2"),  # 2.25 clamped to host.ncpu
        ("weight-down", "cgroup.cpu_weight", "/a/batch", "100", "40"),  # sum of neighbours 0.8 > 0.5
        ("tell-host", "advice", "host", None, "pressure 60 on 2 cpus"),
    ]
    assert acts[0].service == "llm" and acts[0].rationale == "throttled 40 percent"
    assert acts[1].service == "llm"  # made for llm, so judged by llm's objective, not batch's
    assert acts[2].advisory and acts[0].evidence == {"x": 50.0}


def test_unit_only_service_maps_to_system_slice(rs):
    cur = {("cgroup.cpu_quota", "/system.slice/web.service"): "0.5"}
    m = {**M, "svc.web.cpu.throttled_pct": 30.0}
    acts = diagnose(rs, m, [sym("throttled", "web")], CFG, current(cur), now=0)
    assert [(a.target, a.proposed) for a in acts if a.rule == "quota-up"] == [("/system.slice/web.service", "0.75")]


def test_no_change_without_the_figure_its_rationale_cites(rs):
    """No move without evidence: the symptom says web is throttled, but its throttled share (the
    figure the rule's rationale cites) was not measured: no change. Advice still comes."""
    cur = {("cgroup.cpu_quota", "/system.slice/web.service"): "0.5"}
    acts = diagnose(rs, M, [sym("throttled", "web")], CFG, current(cur), now=0)
    assert not [a for a in acts if a.rule == "quota-up"]
    assert [a.rule for a in acts if a.advisory] == ["tell-host"]
    m = {**M, "svc.web.cpu.throttled_pct": 30.0}
    (a,) = [a for a in diagnose(rs, m, [sym("throttled", "web")], CFG, current(cur), now=0) if a.rule == "quota-up"]
    assert a.rationale == "throttled 30 percent"


def test_no_action_at_bound_unlimited_or_unreadable(rs):
    s = [sym("throttled", "llm")]
    for value in ("2", "max", None):  # at the bound, unlimited, unreadable
        acts = diagnose(rs, M, s, CFG, current({("cgroup.cpu_quota", "/a/llm"): value}), now=0)
        assert [a for a in acts if a.rule == "quota-up"] == [], value


def test_cooldown_per_rule(rs):
    cur = current({("cgroup.cpu_quota", "/a/llm"): "0.5"})
    s = [sym("throttled", "llm")]
    assert not [a for a in diagnose(rs, M, s, CFG, cur, now=1050, cooldowns={"quota-up": 1000}) if a.rule == "quota-up"]
    assert [a for a in diagnose(rs, M, s, CFG, cur, now=1100, cooldowns={"quota-up": 1000}) if a.rule == "quota-up"]


def test_role_filter_and_service_symptom_binding(rs):
    # a throttled neighbour does not trigger the latency-critical rule
    acts = diagnose(rs, M, [sym("throttled", "batch")], CFG, current({}), now=0)
    assert [a.rule for a in acts] == ["tell-host"]  # host rule sees any service's symptom


def test_missing_metric_means_condition_false(rs):
    m = {k: v for k, v in M.items() if not k.endswith("usage_cores")}
    acts = diagnose(rs, m, [sym("hot")], CFG, current({("cgroup.cpu_weight", "/a/batch"): "100"}), now=0)
    assert [a.rule for a in acts] == ["tell-host"]


def test_read_current_exception_is_a_missing_reading(rs):
    def boom(knob, target):
        raise OSError("gone")

    acts = diagnose(rs, M, [sym("throttled", "llm"), sym("hot")], CFG, boom, now=0)
    assert [a.rule for a in acts] == ["tell-host"]


def test_render_and_compare():
    assert render("{dedicated_cpus}|{shared_cpus}", {"host.ncpu": 4.0}, None) == "2-3|0-1"
    assert render("{dedicated_cpus}", {"host.ncpu": 1.0}, None) is None  # nothing to dedicate
    assert render("{threads_hint}", {"host.ncpu": 4.0, "svc.s.cpu.quota_cores": 2.5}, "s") == "2"
    assert render("{metric:svc.$service.x}", {}, "s") is None
    assert same_value("cgroup.cpuset", "0-3", "0,1,2,3")
    assert same_value("cgroup.cpu_quota", "1.5", "1.501")
    assert not same_value("sysctl", "60", "10")
    assert not same_value("thp", None, "madvise")


def test_admission_partial_proposal_matches_live_settings():
    from autotune.diagnose.engine import same_value

    live = "threshold=40,limit=4,min_limit=1,max_limit=64,adaptive=on"
    assert same_value("admission", live, "threshold=40")
    assert same_value("admission", live, "threshold=40.0")
    assert not same_value("admission", live, "threshold=30")
    assert not same_value("admission", live, "bogus=1")
