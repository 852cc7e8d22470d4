"""Rule loading: every problem names FILE, RULE and FIELD; a half-valid set never loads."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from autotune.diagnose.rules import MetricCond, load_rules
from autotune.errors import ConfigError

GOOD = """
symptoms:
  - name: cpu_pressure
    metric: psi.cpu.some.avg10
    on: 20
    off: 10
rules:
  - name: raise-quota
    rationale: the service is throttled in {metric:svc.$service.cpu.throttled_pct} % of periods by its quota
    when:
      all:
        - symptom: cpu_pressure
        - metric: svc.$service.cpu.throttled_pct
          op: ">="
          value: {metric: svc.$service.cpu.quota_cores, factor: 2}
    actions:
      - knob: cgroup.cpu_quota
        target: service
        step: {factor: 1.5}
        bounds: {min: 0.1, max: host.ncpu}
"""


def write(d: Path, name: str, text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(textwrap.dedent(text))
    return p


def load_error(tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as exc:
        load_rules([tmp_path])
    return str(exc.value)


def test_good_file_loads_and_on_off_are_keys_not_booleans(tmp_path):
    write(tmp_path, "cpu.yaml", GOOD)
    rs = load_rules([tmp_path])
    assert [r.name for r in rs.rules] == ["raise-quota"]
    assert rs.symptoms[0].on == 20 and rs.symptoms[0].off == 10
    cond = rs.rules[0].when.all[1]
    assert isinstance(cond, MetricCond) and cond.value.factor == 2


def test_error_names_file_rule_and_field(tmp_path):
    p = write(tmp_path, "cpu.yaml", GOOD.replace("factor: 1.5", "factor: 0"))
    msg = load_error(tmp_path)
    assert f"{p}: rule 'raise-quota': actions.0.step.factor: Input should be greater than 0" in msg


def test_half_valid_set_is_refused(tmp_path):
    write(tmp_path, "a.yaml", GOOD)
    bad = write(tmp_path, "b.yaml", """
        rules:
          - name: other
            rationale: something long enough
            when: {all: [{metric: psi.cpu.some.avg10, op: ">", value: 1}]}
            actions: [{knob: sysctl, target: vm.swappiness, value: 10, colour: blue}]
    """)
    msg = load_error(tmp_path)
    assert f"{bad}: rule 'other': actions.0.colour: Extra inputs are not permitted" in msg


@pytest.mark.parametrize("mutation,expected", [
    (("symptom: cpu_pressure", "symptom: cpu_pressur"), "rule 'raise-quota': when: unknown symptom 'cpu_pressur'"),
    (("svc.$service.cpu.throttled_pct", "svc.$service.cpu.throttled"), "when.all.1.metric: unknown metric 'svc.$service.cpu.throttled'"),
    (("knob: cgroup.cpu_quota", "knob: cgroup.cpu_quotas"), "rule 'raise-quota': actions.0.knob: Input should be"),
    (("step: {factor: 1.5}", "step: {factor: 1.5, delta: 1}"), "actions.0.step: give exactly one of factor or delta"),
    (("step: {factor: 1.5}", "value: defer"), "rule 'raise-quota': actions.0"),  # ok for quota? no: value parsed fine
    (("op: \">=\"", "op: \"=>\""), "when.all.1.op: Input should be"),
    (("- symptom: cpu_pressure", "- sympton: cpu_pressure"), "when.all.0: a condition is one of"),
    (("max: host.ncpu", "max: host.cpus"), "actions.0.bounds.max: unknown metric 'host.cpus'"),
    (("on: 20\n    off: 10", "on: 10\n    off: 20"), "symptom 'cpu_pressure': (top level): off=20.0 must be on the recovered side"),
])
def test_specific_errors(tmp_path, mutation, expected):
    old, new = mutation
    assert old in GOOD
    write(tmp_path, "cpu.yaml", GOOD.replace(old, new))
    if new == "value: defer":  # a literal value on a numeric knob is allowed (checked by the knob)
        load_rules([tmp_path])
        return
    assert expected in load_error(tmp_path)


def test_duplicate_rule_names_across_files(tmp_path):
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yaml", GOOD.split("rules:")[0].replace("cpu_pressure", "other_sym") + "rules:" + GOOD.split("rules:")[1])
    msg = load_error(tmp_path)
    assert "b.yaml: rule 'raise-quota': name: duplicate (also in" in msg


def test_literal_targets_checked(tmp_path):
    write(tmp_path, "t.yaml", """
        rules:
          - name: thp-bad
            scope: host
            rationale: something long enough
            when: {all: [{metric: vmstat.compact_stall.rate, op: ">", value: 1}]}
            actions:
              - {knob: thp, target: defragment, value: madvise}
              - {knob: thp, target: defrag, step: {delta: 1}}
              - {knob: advice, target: service, value: "{nonsense}"}
    """)
    msg = load_error(tmp_path)
    assert "rule 'thp-bad': actions.0: thp target must be one of" in msg
    assert "rule 'thp-bad': actions.1: step needs a numeric knob" in msg
    assert "rule 'thp-bad': actions.2: unknown placeholder {nonsense}" in msg


def test_host_rule_cannot_target_service(tmp_path):
    write(tmp_path, "t.yaml", """
        rules:
          - name: host-svc
            scope: host
            rationale: host PSI {metric:psi.cpu.some.avg10} %
            when: {any: [{metric: psi.cpu.some.avg10, op: ">", value: 1}]}
            actions: [{knob: cgroup.cpu_weight, target: service, value: 200}]
    """)
    assert "rule 'host-svc': (top level): host-scoped rule cannot target 'service'" in load_error(tmp_path)


def test_bad_yaml_unknown_top_key_and_missing_dir(tmp_path):
    write(tmp_path / "r", "x.yaml", "rules: [unclosed\n")
    write(tmp_path / "r", "y.yaml", "rulez: []\n")
    with pytest.raises(ConfigError) as exc:
        load_rules([tmp_path / "r", tmp_path / "nope"])
    msg = str(exc.value)
    assert "x.yaml: not valid YAML" in msg
    assert "y.yaml: (top level): unknown key 'rulez'" in msg
    assert "nope: rule directory not found" in msg


def test_shipped_rule_pack_loads():
    rs = load_rules([Path(__file__).resolve().parents[2] / "rules"])
    assert len(rs.rules) >= 10
    assert all(len(r.rationale) > 40 for r in rs.rules)


def test_every_registered_knob_is_a_rule_knob_and_its_facts_decide(tmp_path):
    """The loader takes knob names, numeric-ness, advisory-ness and target checks from the
    knob registry: the knobs its old private list lacked load, and each knob's own target
    check is reported under the rule's file and field."""
    write(tmp_path, "ok.yaml", """
        rules:
          - name: newer-knobs
            scope: host
            rationale: compaction stalls {metric:vmstat.compact_stall.rate}/s
            when: {all: [{metric: vmstat.compact_stall.rate, op: ">", value: 1}]}
            actions:
              - {knob: cgroup.cpu_idle, target: /autotune/batch, value: "1"}
              - {knob: cgroup.io_weight, target: /autotune/batch, step: {factor: 0.5}}
              - {knob: cgroup.memory_low, target: /autotune/llm, value: 1G}
              - {knob: governor.epp, target: all, value: performance}
    """)
    (rule,) = load_rules([tmp_path]).rules
    assert [a.is_advisory for a in rule.actions] == [False] * 4
    write(tmp_path, "bad.yaml", """
        rules:
          - name: bad-targets
            scope: host
            rationale: something long enough
            when: {all: [{metric: vmstat.compact_stall.rate, op: ">", value: 1}]}
            actions:
              - {knob: governor.epp, target: policy0, value: performance}
              - {knob: cgroup.cpu_idle, target: /autotune/batch, step: {delta: 1}}
              - {knob: sysctl, target: vm/swappiness, value: 10}
              - {knob: cgroup.memory_low, target: llm, value: 1G}
    """)
    msg = load_error(tmp_path)
    assert "bad.yaml: rule 'bad-targets': actions.0: governor.epp target must be 'all'" in msg
    assert "bad.yaml: rule 'bad-targets': actions.1: step needs a numeric knob, not 'cgroup.cpu_idle'" in msg
    assert "bad.yaml: rule 'bad-targets': actions.2: sysctl target must be a key like 'vm.swappiness'" in msg
    assert "bad.yaml: rule 'bad-targets': actions.3: target for cgroup.memory_low is 'service'" in msg


def test_a_rule_that_changes_something_must_cite_a_measured_figure(tmp_path):
    """No move without evidence: the rationale of a rule that changes something names the metric
    that justified it ({metric:...}); advice only informs and is exempt; an unknown metric in a
    rationale is an error like anywhere else."""
    write(tmp_path, "r.yaml", """
        rules:
          - name: blind-quota
            rationale: more quota is always better for the service
            when: {all: [{metric: psi.cpu.some.avg10, op: ">", value: 1}]}
            actions: [{knob: cgroup.cpu_quota, target: service, step: {factor: 1.5}}]
          - name: just-advice
            scope: host
            rationale: tell the operator something useful
            when: {all: [{metric: psi.cpu.some.avg10, op: ">", value: 1}]}
            actions: [{knob: advice, target: host, value: look at the host}]
          - name: typo-metric
            rationale: the service is throttled {metric:svc.$service.cpu.throttled} percent
            when: {all: [{metric: psi.cpu.some.avg10, op: ">", value: 1}]}
            actions: [{knob: cgroup.cpu_quota, target: service, step: {factor: 1.5}}]
    """)
    msg = load_error(tmp_path)
    assert ("rule 'blind-quota': (top level): rationale: a rule that changes something must cite the measured "
            "figure that justified it: add a {metric:NAME} placeholder (advice is exempt)") in msg
    assert "rule 'typo-metric': (top level): unknown metric 'svc.$service.cpu.throttled'" in msg
    assert "just-advice" not in msg
