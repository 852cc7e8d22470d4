"""When nothing can be done, one line says why and what would unblock it: in `recommend` (text
and JSON, the action marked blocked), in the agent's log once at INFO, in the audit trail once
per episode; and the audit trail's proposals are rows per episode, not per tick."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autotune.diagnose import blocked
from autotune.fix.actuator import LocalActuator
from autotune.diagnose.floor import CpuShare
from autotune.diagnose.gating import GateView
from autotune.agent.loop import EPISODE_CLEAR_S, Agent, proposal_episodes
from autotune.cli.main import app
from autotune.config import Config, Service
from autotune.diagnose.rules import load_rules
from autotune.store.db import open_db
from autotune.types import Action
from tests.agent.conftest import Clock, host
from tests.fixtures.hosts import writable_copy

LLM_CG = "/autotune-fixture/llm"
BATCH_CG = "/autotune-fixture/batch"
MARK = "autotune-fixture-llm"  # in the fixture process's command line
RULES = """
symptoms:
  - name: busy
    scope: service
    role: latency-critical
    metric: svc.$service.processes
    op: ">"
    on: 0
    for_s: 0
    clear_for_s: 0
rules:
  - name: raise-quota
    role: latency-critical
    priority: 90
    cooldown_s: 0
    rationale: test rule, more quota for {service} ({metric:svc.$service.processes} processes)
    when: {all: [{symptom: busy}]}
    actions:
      - knob: cgroup.cpu_quota
        target: service
        step: {factor: 2}
        bounds: {min: 0.1, max: host.ncpu}
"""
FLOOR_LINE = ("raise-quota for llm blocked: would leave batch 1.60 guaranteed cores (was 1.80), below its "
              "min_cpu_cores 1.9: lower batch's min_cpu_cores or give the host more CPUs")
NO_CGROUP = ("llm: busy (processes 1) but no cgroup to act on (its process is in the root cgroup (cpu)): "
             "declare `cgroup =` or run the server in its own cgroup")


def _rules(tmp_path: Path) -> Path:
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    (d / "test.yaml").write_text(RULES)
    return d


def floored_tree(tmp_path: Path) -> Path:
    """hybrid-local (2 CPUs, llm at 0.2 cores) with a neighbour cgroup 'batch' beside it."""
    root = writable_copy("hybrid-local", tmp_path)
    for h in ("cpu", "cpuacct"):
        base = root / "sys/fs/cgroup" / h
        shutil.copytree(base / LLM_CG.lstrip("/"), base / BATCH_CG.lstrip("/"))
        (base / BATCH_CG.lstrip("/") / "cgroup.procs").write_text("")
    (root / "sys/fs/cgroup/cpu" / BATCH_CG.lstrip("/") / "cpu.cfs_quota_us").write_text("-1\n")
    return root


def rootless_tree(tmp_path: Path) -> Path:
    """hybrid-local with its server process in the root cgroup of every hierarchy."""
    root = writable_copy("hybrid-local", tmp_path)
    pid = (root / "PID").read_text().strip()
    (root / f"proc/{pid}/cgroup").write_text(
        "9:name=systemd:/\n4:memory:/\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n")
    for h in ("cpu", "cpuacct", "cpuset", "memory", "unified"):
        procs = root / "sys/fs/cgroup" / h / "cgroup.procs"
        procs.write_text(procs.read_text() + f"{pid}\n")
    return root


def floored_cfg(tmp_path: Path, mode: str = "apply") -> Config:
    return Config.model_validate({
        "agent": {"sample_period_s": 1, "window_s": 4, "evaluate_every_s": 1, "mode": mode,
                  "state_path": str(tmp_path / "state.db"), "rule_dirs": [str(_rules(tmp_path))],
                  "metrics_listen": None},
        "verification": {"window_s": 4, "settle_s": 0},
        "service": [{"name": "llm", "cgroup": LLM_CG},
                    {"name": "batch", "role": "neighbour", "cgroup": BATCH_CG, "min_cpu_cores": 1.9}]})


def rootless_cfg(tmp_path: Path) -> Config:
    return Config.model_validate({
        "agent": {"sample_period_s": 1, "window_s": 4, "evaluate_every_s": 1, "mode": "recommend",
                  "state_path": str(tmp_path / "state.db"), "rule_dirs": [str(_rules(tmp_path))],
                  "metrics_listen": None},
        "service": [{"name": "llm", "cmdline": MARK}]})


def _agent(cfg: Config, root: Path) -> tuple[Agent, Clock]:
    h = host(root)
    clock = Clock()
    agent = Agent(cfg, host=h, db=open_db(cfg.state_path()), actuator=LocalActuator(h, cfg),
                  ruleset=load_rules(cfg.rule_dirs()), clock=clock, scrapers={})
    agent.start()
    return agent, clock


def _run(agent: Agent, clock: Clock, ticks: int) -> None:
    for _ in range(ticks):
        clock.t += 1
        agent.sample()
        agent.evaluate()


def _toml(cfg: Config, path: Path) -> Path:
    lines = [f'[agent]\nstate_path = "{cfg.agent.state_path}"\nrule_dirs = ["{cfg.agent.rule_dirs[0]}"]\n']
    for s in cfg.services:
        lines.append("[[service]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in
                                                s.model_dump(exclude_defaults=True).items()))
    path.write_text("\n".join(lines))
    return path


# -- the agent: log once at INFO, audit once per episode -----------------------------------------
def test_floor_blocked_proposal_is_said_once_not_every_tick(tmp_path, caplog):
    root = floored_tree(tmp_path)
    agent, clock = _agent(floored_cfg(tmp_path), root)
    with caplog.at_level(logging.INFO, logger="autotune.agent.loop"):
        _run(agent, clock, 30)
    assert not agent.journal.entries()  # never applied: the floor stands
    (a,) = agent.actions
    assert a.blocked == FLOOR_LINE.split("blocked: ", 1)[1]
    said = [r for r in caplog.records if "blocked" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in said] == [(logging.INFO, FLOOR_LINE)]
    rows = agent.trail.query(kind="blocked")
    assert [(e.rule, e.target, e.detail["kind"], e.detail["line"]) for e in rows] == [
        ("raise-quota", LLM_CG, "floor", FLOOR_LINE)]
    # the unchanged proposal is one audit row, not thirty
    assert len(agent.trail.query(kind="recommendation")) == 1
    assert (root / "sys/fs/cgroup/cpu/autotune-fixture/llm/cpu.cfs_quota_us").read_text().strip() == "20000"


def test_a_new_episode_is_said_again(tmp_path, caplog):
    root = floored_tree(tmp_path)
    cfg = floored_cfg(tmp_path)
    agent, clock = _agent(cfg, root)
    _run(agent, clock, 5)
    # the floor is lowered (the operator's fix): unblocked, applied; raised again: blocked again
    agent.cfg = cfg.model_copy(update={"services": [cfg.services[0], cfg.services[1].model_copy(
        update={"min_cpu_cores": 0.1})]})
    _run(agent, clock, 2)
    assert [e.rule for e in agent.journal.entries()] == ["raise-quota"]
    assert not agent.blocks
    _run(agent, clock, int(EPISODE_CLEAR_S) + 1)  # unblocked long enough: that episode is over
    agent.cfg = cfg
    _run(agent, clock, 30)
    assert [e.detail["kind"] for e in agent.trail.query(kind="blocked")] == ["floor", "floor"]


def test_no_cgroup_is_said_once_with_what_would_unblock_it(tmp_path, caplog):
    root = rootless_tree(tmp_path)
    agent, clock = _agent(rootless_cfg(tmp_path), root)
    with caplog.at_level(logging.INFO, logger="autotune.agent.loop"):
        _run(agent, clock, 10)
    assert agent.actions == []
    lines = [r.getMessage() for r in caplog.records if "cgroup to act on" in r.getMessage()]
    assert lines == [
        "llm: no cgroup to act on (its process is in the root cgroup (cpu)): declare `cgroup =` or "
        "run the server in its own cgroup", NO_CGROUP]
    assert [e.detail["line"] for e in agent.trail.query(kind="blocked")] == lines


# -- recommend: text and JSON -----------------------------------------------------------------
def test_recommend_marks_the_blocked_action_with_the_reason(tmp_path):
    root = floored_tree(tmp_path)
    cfg = _toml(floored_cfg(tmp_path, mode="recommend"), tmp_path / "cfg.toml")
    args = ["recommend", "--root", str(root), "-c", str(cfg), "--duration", "1.2", "--period", "0.2"]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    (a,) = rec["actions"]
    assert (a["rule"], a["target"], a["proposed"]) == ("raise-quota", LLM_CG, "0.4")
    assert a["blocked"] == FLOOR_LINE.split("blocked: ", 1)[1]
    assert rec["blocked"] == [FLOOR_LINE]
    text = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert text.exit_code == 0, text.output
    assert "(blocked)" in text.stdout
    assert FLOOR_LINE in " ".join(text.stdout.split())


def test_recommend_says_why_there_is_nothing_to_recommend(tmp_path):
    root = rootless_tree(tmp_path)
    cfg = _toml(rootless_cfg(tmp_path), tmp_path / "cfg.toml")
    args = ["recommend", "--root", str(root), "-c", str(cfg), "--duration", "1.2", "--period", "0.2"]
    rec = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    assert rec["actions"] == [] and [s["name"] for s in rec["symptoms"]] == ["busy"]
    assert rec["blocked"] == [NO_CGROUP]  # the service's own line is said by the symptom's
    text = CliRunner().invoke(app, args, env={"COLUMNS": "200"}).stdout
    assert "nothing to recommend" in text and NO_CGROUP in " ".join(text.split())


def test_recommend_notes_a_declared_cgroup_that_does_not_exist(tmp_path):
    root = writable_copy("hybrid-local", tmp_path)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'[agent]\nrule_dirs = ["{_rules(tmp_path)}"]\n[[service]]\nname = "llm"\ncgroup = "/gone/llm"\n'
                   '[[service]]\nname = "vllm"\nunit = "vllm"\n')
    rec = json.loads(CliRunner().invoke(app, ["recommend", "--root", str(root), "-c", str(cfg), "--duration",
                                              "0.4", "--period", "0.2", "--json"]).stdout)
    assert rec["blocked"] == [
        "llm: cgroup /gone/llm does not exist: create it and start the server in it, or fix `cgroup =`",
        "vllm: systemd unit 'vllm' is not running (no cgroup found): start it, or fix `unit =`"]


# -- pure: each kind of cause ---------------------------------------------------------------------
def _quota(target: str = LLM_CG, proposed: str = "0.4") -> Action:
    return Action(knob="cgroup.cpu_quota", target=target, service="llm", current="0.2", proposed=proposed,
                  rule="raise-quota", rationale="test")


def test_each_cause_has_its_line():
    shares = {"llm": CpuShare(cgroup=LLM_CG, quota_cores=0.2),
              "batch": CpuShare(cgroup=BATCH_CG, floor=1.9)}
    out, blocks = blocked.actions([_quota()], GateView(cpu_shares=shares, ncpu=2))
    assert out[0].blocked and [b.line for b in blocks] == [FLOOR_LINE]
    out, blocks = blocked.actions([_quota()], GateView(unmanaged=frozenset({("cgroup.cpu_quota", LLM_CG)})))
    assert blocks[0].line == ("raise-quota for llm blocked: cgroup.cpu_quota on /autotune-fixture/llm was "
                              "changed by someone else (drift): hand it back with `autotune enable "
                              "cgroup.cpu_quota /autotune-fixture/llm`")
    out, blocks = blocked.actions([_quota()], GateView(), refused={("cgroup.cpu_quota", LLM_CG)})
    assert blocks[0].line == ("raise-quota for llm blocked: the helper's policy refuses cgroup.cpu_quota on "
                              "/autotune-fixture/llm: allow it in the helper's policy "
                              "([knob.\"cgroup.cpu_quota\"] subtrees), or leave it to the operator")
    # a floor that a smaller step keeps is no block: the step is cut instead
    shares["batch"] = CpuShare(cgroup=BATCH_CG, floor=1.2)
    out, blocks = blocked.actions([_quota(proposed="1.6")], GateView(cpu_shares=shares, ncpu=2))
    assert not blocks and out[0].blocked is None and out[0].proposed == "0.8"


def test_proposal_episodes_follow_the_proposal_not_the_tick():
    eps, fresh = proposal_episodes({}, [_quota(proposed="1.10")], 0.0)
    assert fresh
    for t, wobble in enumerate(("1.08", "1.12", "1.1"), 1):  # a proportional step following the slack
        eps, fresh = proposal_episodes(eps, [_quota(proposed=wobble)], t)
        assert not fresh
    eps, fresh = proposal_episodes(eps, [_quota(proposed="1.5")], 4.0)
    assert fresh  # the proposal changed
    eps, fresh = proposal_episodes(eps, [], 5.0)
    eps, fresh = proposal_episodes(eps, [_quota(proposed="1.5")], 6.0)
    assert not fresh  # one tick without it is no new episode
    eps, fresh = proposal_episodes(eps, [], 6.0 + EPISODE_CLEAR_S + 1)
    assert not fresh and eps == {}  # it cleared
    eps, fresh = proposal_episodes(eps, [_quota(proposed="1.5")], 40.0)
    assert fresh  # a new episode


@pytest.mark.parametrize("reacting,expected", [(None, 1), ({"other"}, 0)])
def test_symptom_lines_only_for_symptoms_rules_act_on(reacting, expected, tmp_path):
    from autotune.sensors.collect import collect
    from autotune.types import Symptom

    root = rootless_tree(tmp_path)
    cfg = Config(service=[Service(name="llm", cmdline=MARK)])
    snap = collect(host(root, writable=False), cfg.services, now=1.0)
    s = Symptom(name="busy", service="llm", metric="svc.llm.processes", value=1, threshold=0, since_ts=0)
    assert len(blocked.symptoms([s], [], cfg, snap, reacting=reacting)) == expected


def test_symptom_lines_say_a_policy_refusal_and_ignore_advice(tmp_path):
    from autotune.sensors.collect import collect
    from autotune.types import Symptom

    root = writable_copy("hybrid-local", tmp_path)
    cfg = Config(service=[Service(name="llm", cmdline=MARK)])
    snap = collect(host(root, writable=False), cfg.services, now=1.0)
    s = Symptom(name="busy", service="llm", metric="svc.llm.processes", value=1, threshold=0, since_ts=0)
    advice = Action(knob="advice", target="llm", service="llm", proposed="use fewer threads", rule="r",
                    rationale="test", advisory=True)
    (b,) = blocked.symptoms([s], [advice], cfg, snap, refused={("cgroup.cpu_quota", LLM_CG)})
    assert b.line == ("llm: busy (processes 1) but the helper's policy refuses cgroup.cpu_quota on "
                      "/autotune-fixture/llm: allow it in the helper's policy ([knob.\"cgroup.cpu_quota\"] "
                      "subtrees), or leave it to the operator")
    assert blocked.symptoms([s], [_quota()], cfg, snap, refused={("cgroup.cpu_quota", LLM_CG)}) == []


def test_a_declared_cgroup_its_processes_are_not_in_is_a_note(tmp_path):
    root = writable_copy("hybrid-local", tmp_path)
    for h in ("cpu", "cpuacct", "cpuset", "memory", "unified"):
        (root / "sys/fs/cgroup" / h / "declared").mkdir()
        (root / "sys/fs/cgroup" / h / "declared/cgroup.procs").write_text("")
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'[agent]\nrule_dirs = ["{_rules(tmp_path)}"]\n[[service]]\nname = "llm"\ncgroup = "/declared"\n'
                   f'cmdline = "{MARK}"\n')
    rec = json.loads(CliRunner().invoke(app, ["recommend", "--root", str(root), "-c", str(cfg), "--duration",
                                              "0.4", "--period", "0.2", "--json"]).stdout)
    pid = (root / "PID").read_text().strip()
    assert rec["blocked"] == []
    assert (f"llm: its processes (pid {pid}) are in /autotune-fixture/llm (cpu), not in the declared "
            "/declared: acting on the declared one") in rec["notes"]
