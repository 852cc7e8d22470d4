"""`autotune demo`'s pure parts: event lines (80 columns), its policy and config, host values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autotune.audit.trail import AuditEvent
from autotune.config import load_config
from autotune.demo.feed import WIDTH, Feed, line
from autotune.workload import harness, hostvalues
from autotune.workload.hostvalues import compare
from autotune.demo.session import config_toml, policy_toml
from autotune.helper.policy import load_policy
from autotune.host import Host

LLM, BATCH = "/autotune-demo-1/llm", "/autotune-demo-1/batch"
SLACK_LOW = {"name": "slo_slack_low", "service": "llm", "metric": "svc.llm.slo.slack", "value": -0.38,
             "threshold": 0.05, "since_ts": 1.0}
PSI = {"name": "cpu_pressure", "service": None, "metric": "psi.cpu.some.avg10", "value": 81.3,
       "threshold": 20, "since_ts": 1.0}


def ev(kind: str, **kw) -> AuditEvent:
    return AuditEvent(ts=1.0, kind=kind, **kw)


def test_each_kind_of_event_is_one_line_in_words():
    feed = Feed({LLM: "llm", BATCH: "batch"})
    out = feed.lines(ev("recommendation", outcome="proposed", detail={"symptoms": [SLACK_LOW, PSI]}))
    assert out == [("symptom", "llm: SLO slack -38 % (under 5 % is a breach)"),
                   ("symptom", "host: cpu_pressure 81.3 (limit 20)")]
    # an already announced symptom is not repeated; one that went away is 'cleared'
    assert feed.lines(ev("recommendation", detail={"symptoms": [SLACK_LOW]})) == [
        ("cleared", "host: cpu_pressure")]
    applied = ev("apply", action_id=3, knob="cgroup.cpu_quota", target=LLM, before="0.5", after="1.25",
                 outcome="applied", rule="slo-raise-quota", detail={"symptoms": [SLACK_LOW]})
    assert feed.lines(applied) == [("action", "#3 llm cpu quota 0.5 -> 1.25 cores (slo-raise-quota)")]
    kept = ev("verify", action_id=3, knob="cgroup.cpu_quota", target=LLM, outcome="kept",
              objective_before=-0.38, objective_after=0.12,
              detail={"verdict": "improved", "objective": "svc.llm.slo.slack"})
    assert feed.lines(kept) == [("verdict", "#3 kept: improved, -38 % slack -> +12 % slack")]
    psi = ev("verify", action_id=4, knob="cgroup.cpu_weight", target=BATCH, outcome="rolled_back",
             objective_before=73.68, objective_after=80.0,
             detail={"verdict": "regressed", "objective": "svc.llm.psi.cpu.some.stall_pct"})
    assert feed.lines(psi) == [("verdict", "#4 regressed, so undone, 73.7 % -> 80.0 %")]
    undo = ev("rollback", action_id=4, knob="cgroup.cpu_weight", target=BATCH, before="25", after="100",
              outcome="rolled_back", detail={"by": "operator"})
    assert feed.lines(undo) == [("rollback", "#4 batch cpu weight 25 -> 100 (by operator)")]
    refused = ev("refusal", knob="governor", target="all", outcome="refused",
                 detail={"op": "read", "code": "unknown_knob", "reason": "not allowed"})
    assert feed.lines(refused) == [("policy", "governor all is not in the helper's policy: left alone")]
    assert feed.lines(ev("agent_start", detail={"mode": "apply", "actuator": "HelperActuator"})) == [
        ("agent", "started: apply mode, writes through HelperActuator")]


def test_lines_fit_80_columns():
    long = "x" * 200
    out = line(123.4, "symptom", long)
    assert len(out) == WIDTH and out.endswith("…") and out.startswith(" 123s symptom  ")
    assert line(5, "agent", "stopped") == "   5s agent    stopped"


def test_the_demo_policy_and_config_validate_and_agree(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_toml(base="autotune-demo-1", ncpu=2, uid=os.geteuid(),
                                  knobs=["cgroup.cpu_quota", "cgroup.cpu_weight", "cgroup.cpuset"]))
    pol = load_policy(policy, require_root_owned=False)
    cfg_path = tmp_path / "autotune.toml"
    cfg_path.write_text(config_toml(base="autotune-demo-1", url="http://127.0.0.1:1", slo_itl_s=0.03,
                                    db=tmp_path / "s.db", sock=tmp_path / "h.sock"))
    cfg = load_config(cfg_path)
    assert cfg.agent.mode == "apply" and cfg.service("llm").slo.itl_p95_s == 0.03
    assert cfg.service("batch").min_cpu_cores == 0.5
    assert pol.peers.uids == [os.geteuid()]
    for knob in ("cgroup.cpu_quota", "cgroup.cpu_weight", "cgroup.cpuset"):
        assert pol.knob[knob].subtrees == ["/autotune-demo-1"]
    assert set(pol.knob) == {"cgroup.cpu_quota", "cgroup.cpu_weight", "cgroup.cpuset"}  # nothing else
    assert all(s.cgroup.startswith("/autotune-demo-1/") for s in cfg.services)


def test_host_values_of_a_fixture_tree_and_compare(host_tree):
    host = Host(host_tree("hybrid-local"))
    vals = hostvalues.read(host, cgroup_dirs=harness.base_dirs(host, "autotune-demo-1", under_root=True)).values
    assert vals["cpu v1 /autotune-demo-1"] == "absent"
    assert all(isinstance(v, str) and v for v in vals.values())
    rows = compare(vals, {**vals, "vm.swappiness": "10"})
    assert [r for r in rows if not r[3]] == [("vm.swappiness", vals["vm.swappiness"], "10", False)]


@pytest.mark.parametrize("args, message", [
    (["--duration", "0"], "must be more than 0 seconds"),
    (["--model", "huge"], "--model must be tiny or gpt2"),
])
def test_bad_demo_options_are_one_line(args, message):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "autotune", "demo", *args], capture_output=True, text=True,
                       timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
