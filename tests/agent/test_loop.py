"""Agent loop on a writable fixture host with a fake clock and synthetic PSI: apply, verify,
keep / roll back, drift, refusals, failure containment, and the helper route."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.fix.actuator import HelperActuator, LocalActuator, is_drift
from autotune.agent.loop import Agent
from autotune.config import LatencySource, Service
from autotune.diagnose.rules import load_rules
from autotune.errors import PolicyRefused
from autotune.store.db import open_db
from tests.agent.conftest import RULES, SWAPPINESS, Clock, Psi, host, make_cfg

ORIGINAL = "60\n"  # the fixture's exact raw content


def make_agent(tmp_path, root, rules_dir, clock, actuator=None, actuator_cls=LocalActuator, **verification):
    """``actuator_cls(host, cfg)`` builds the agent's actuator (a test's own helper stand-in)
    unless an ``actuator`` is given."""
    verification.setdefault("rule_cooldown_s", 10_000)
    cfg = make_cfg(tmp_path, rules_dir, **verification)
    h = host(root)
    return Agent(cfg, host=h, db=open_db(cfg.state_path()), actuator=actuator or actuator_cls(h, cfg),
                 ruleset=load_rules(cfg.rule_dirs()), clock=clock)


def drive(agent, clock, psi, ticks, after_pct, before_pct=20.0, on_tick=None):
    """One sample/evaluate/verify per simulated second; PSI level switches once a change landed."""
    for _ in range(ticks):
        clock.t += 1
        landed = any(e.applied_ts for e in agent.journal.entries())
        psi.tick(1, after_pct if landed else before_pct)
        if on_tick:
            on_tick(agent)
        for stage in (agent.sample, agent.evaluate, agent.verify):
            agent.guarded(stage.__name__, stage)


def swappiness(root: Path) -> str:
    return (root / SWAPPINESS.lstrip("/")).read_text()


def kinds(agent) -> list[str]:
    return [e.kind for e in agent.trail.query()]


def test_regression_is_rolled_back_to_exact_prior(tmp_path, host_root, rules_dir):
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock)
    agent.start()
    drive(agent, clock, Psi(host_root), 60, after_pct=60)
    [e] = agent.journal.entries()
    assert e.state == "rolled_back"
    assert e.verify_result.verdict == "regressed"
    assert e.objective_before["objective"] == "psi.cpu.some.stall_pct"  # host CPU pressure
    assert e.verify_result.before_median < 25 < e.verify_result.after_median
    assert e.objective_after["median"] == e.verify_result.after_median
    assert swappiness(host_root) == ORIGINAL  # byte-exact restore
    assert agent.trail.verify().ok
    k = kinds(agent)
    assert {"agent_start", "recommendation", "apply", "verify", "rollback"} <= set(k)
    [v] = [ev for ev in agent.trail.query() if ev.kind == "verify"]
    assert v.outcome == "rolled_back" and v.test["p_value"] < 0.05
    assert v.objective_after > v.objective_before
    # rule cooldown holds: nothing re-applied after the rollback
    assert len(agent.journal.entries()) == 1


def test_improvement_is_kept(tmp_path, host_root, rules_dir):
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock)
    agent.start()
    drive(agent, clock, Psi(host_root), 60, after_pct=1)
    [e] = agent.journal.entries()
    assert e.state == "kept" and e.verify_result.verdict == "improved"
    assert swappiness(host_root).strip() == "10"
    assert [ev.outcome for ev in agent.trail.query() if ev.kind == "verify"] == ["kept"]


@pytest.mark.parametrize("policy,state,value", [("keep", "kept", "10"), ("rollback", "rolled_back", "60")])
def test_inconclusive_follows_policy(tmp_path, host_root, rules_dir, policy, state, value):
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock, on_inconclusive=policy)
    agent.start()
    # same level before and after, too noisy to tell whether anything changed
    drive(agent, clock, Psi(host_root, noise=15.0), 60, after_pct=20)
    [e] = agent.journal.entries()
    assert e.verify_result.verdict == "inconclusive"
    assert e.state == state
    assert swappiness(host_root).strip() == value


@pytest.mark.parametrize("policy", ["keep", "rollback"])
def test_no_effect_measured_is_unchanged_and_kept(tmp_path, host_root, rules_dir, policy):
    """Same level, little noise: the data show the change did nothing that matters (a
    conclusive 'unchanged'), so the inconclusive policy does not apply."""
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock, on_inconclusive=policy)
    agent.start()
    drive(agent, clock, Psi(host_root), 60, after_pct=20)
    [e] = agent.journal.entries()
    assert e.verify_result.verdict == "unchanged" and e.state == "kept"
    assert swappiness(host_root).strip() == "10"


def test_no_change_before_a_before_window_exists(tmp_path, host_root, rules_dir):
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock)
    agent.start()
    drive(agent, clock, Psi(host_root), 10, after_pct=60)  # window_s is 20
    assert agent.journal.entries() == []
    assert agent.symptoms  # the symptom is there, the change is only held back


def test_drift_at_verify_is_left_alone_and_target_unmanaged(tmp_path, host_root, rules_dir):
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock, rule_cooldown_s=0)
    agent.start()

    def operator(a):
        e = a.journal.entries()
        if e and e[0].state == "verifying":
            (host_root / SWAPPINESS.lstrip("/")).write_text("33\n")

    drive(agent, clock, Psi(host_root), 60, after_pct=60, on_tick=operator)
    entries = agent.journal.entries()
    assert [e.state for e in entries] == ["drifted"]  # no further actions on it
    assert swappiness(host_root) == "33\n"
    assert agent.journal.is_unmanaged("sysctl", "vm.swappiness")
    assert "drift" in kinds(agent)


def test_drift_found_by_reconcile_after_restart(tmp_path, host_root, rules_dir):
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock)
    agent.start()
    drive(agent, clock, Psi(host_root), 25, after_pct=60)
    assert agent.journal.entries()[0].state == "verifying"
    (host_root / SWAPPINESS.lstrip("/")).write_text("33\n")
    again = make_agent(tmp_path, host_root, rules_dir, clock)  # restart on the same state DB
    again.start()
    [e] = again.journal.entries()
    assert e.state == "drifted" and again.journal.is_unmanaged("sysctl", "vm.swappiness")
    assert swappiness(host_root) == "33\n"
    assert "drift" in kinds(again) and again.trail.verify().ok


def test_reverify_after_restart_uses_surviving_samples(tmp_path, host_root, rules_dir):
    clock = Clock()
    psi = Psi(host_root)
    agent = make_agent(tmp_path, host_root, rules_dir, clock)
    agent.start()
    drive(agent, clock, psi, 25, after_pct=60)
    again = make_agent(tmp_path, host_root, rules_dir, clock)
    again.start()
    [e] = again.journal.entries()
    assert e.state == "verifying"
    drive(again, clock, psi, 40, after_pct=60)
    [e] = again.journal.entries()
    assert e.state == "rolled_back" and swappiness(host_root) == ORIGINAL


class RefusingActuator(LocalActuator):
    def apply(self, knob, target, value, *, expect_before, request_id=""):
        raise PolicyRefused("out_of_range", "vm.swappiness=10 outside policy range 20..100")


def test_refusals_are_journaled_and_a_failing_knob_is_disabled(tmp_path, host_root, rules_dir):
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock, actuator_cls=RefusingActuator, rule_cooldown_s=0)
    agent.start()
    drive(agent, clock, Psi(host_root), 40, after_pct=60)
    entries = agent.journal.entries()
    assert [e.state for e in entries] == ["failed"] * 3
    assert "outside policy range" in entries[0].error
    assert agent.journal.is_unmanaged("sysctl", "vm.swappiness")
    assert kinds(agent).count("refusal") == 3
    assert swappiness(host_root) == ORIGINAL


def test_a_failing_stage_is_audited_once_and_does_not_raise(tmp_path, host_root, rules_dir):
    agent = make_agent(tmp_path, host_root, rules_dir, Clock())

    def boom():
        raise RuntimeError("sensor exploded")

    assert agent.guarded("sample", boom) is None
    assert agent.guarded("sample", boom) is None
    errors = [e for e in agent.trail.query() if e.kind == "error"]
    assert len(errors) == 1 and errors[0].detail["stage"] == "sample"


def test_garbage_proc_file_does_not_stop_the_loop(tmp_path, host_root, rules_dir):
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock)
    agent.start()
    (host_root / "proc/pressure/cpu").write_text("\x00garbage\n")
    (host_root / "proc/stat").write_text("nonsense")
    for _ in range(3):
        clock.t += 1
        for stage in (agent.sample, agent.evaluate, agent.verify):
            agent.guarded(stage.__name__, stage)
    assert len(agent.window) == 3
    assert any("psi.cpu" in m for m in agent.window[-1].missing)


def test_recommend_mode_never_writes(tmp_path, host_root, rules_dir):
    from autotune.fix.actuator import DryRunActuator

    clock = Clock()
    cfg = make_cfg(tmp_path, rules_dir)
    h = host(host_root, writable=False)
    agent = Agent(cfg, host=h, db=open_db(cfg.state_path()), actuator=DryRunActuator(h, cfg),
                  ruleset=load_rules(cfg.rule_dirs()), clock=clock, mode="recommend")
    agent.start()
    drive(agent, clock, Psi(host_root), 40, after_pct=60)
    assert agent.actions and agent.actions[0].proposed == "10"
    assert agent.journal.entries() == [] and swappiness(host_root) == ORIGINAL
    assert kinds(agent).count("recommendation") == 1  # only when the proposal set changes


# -- the helper route -----------------------------------------------------------------------
needs_root = pytest.mark.skipif(__import__("os").geteuid() != 0, reason="helper policy must be root-owned")


@needs_root
def test_helper_actuator_apply_restore_and_drift(tmp_path):
    from autotune.helper.client import HelperClient
    from tests.helper.conftest import build_host, start_server, write_policy

    root = build_host(tmp_path / "host")
    run = start_server(write_policy(tmp_path / "policy.toml"), root, str(tmp_path / "h.sock"))
    try:
        act = HelperActuator(HelperClient(run.socket_path))
        prior = act.read("sysctl", "vm.swappiness")
        assert prior.value == "60"
        res = act.apply("sysctl", "vm.swappiness", "10", expect_before="60", request_id="t1")
        assert res.changed and res.after.value == "10"
        with pytest.raises(PolicyRefused) as err:
            act.apply("sysctl", "vm.swappiness", "20", expect_before="60", request_id="t2")
        assert is_drift(err.value)
        with pytest.raises(PolicyRefused):
            act.apply("advice", "service", "mlock", expect_before=None, request_id="t3")
        act.restore("sysctl", "vm.swappiness", prior)
        assert (root / "proc/sys/vm/swappiness").read_text().strip() == "60"
        assert act.read("cgroup.cpu_quota", "/autotune/gone") is None  # target gone -> None
    finally:
        run.stop()


def test_restore_on_stop_puts_kept_changes_back(tmp_path, host_root, rules_dir):
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock)
    agent.cfg = agent.cfg.model_copy(update={"agent": agent.cfg.agent.model_copy(update={"restore_on_stop": True})})
    agent.start()
    drive(agent, clock, Psi(host_root), 60, after_pct=1)
    assert agent.journal.entries()[0].state == "kept"
    undone = agent.stop()
    assert [o.result for o in undone] == ["restored"]
    assert swappiness(host_root) == ORIGINAL
    assert kinds(agent)[-1] == "agent_stop" and agent.trail.verify().ok


def test_short_after_window_waits_for_evidence_instead_of_keeping(tmp_path, host_root, rules_dir):
    """A loaded host delays sampling; too few after-samples must not turn a regression into 'kept'."""
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock)  # on_inconclusive = keep
    agent.start()
    psi = Psi(host_root)
    landed_at = None
    for _ in range(120):
        clock.t += 1
        landed = any(e.applied_ts for e in agent.journal.entries())
        if landed and landed_at is None:
            landed_at = clock.t
        psi.tick(1, 60 if landed else 20)
        stalled = landed_at is not None and clock.t - landed_at < 30 and int(clock.t) % 10 != 0
        stages = (agent.evaluate, agent.verify) if stalled else (agent.sample, agent.evaluate, agent.verify)
        for stage in stages:
            agent.guarded(stage.__name__, stage)
        if any(e.state in ("kept", "rolled_back") for e in agent.journal.entries()):
            break
    [e] = agent.journal.entries()
    assert e.state == "rolled_back", (e.state, e.verify_result)
    assert e.verify_result.verdict == "regressed"
    assert swappiness(host_root) == ORIGINAL


FLOOR_RULES = RULES.split("rules:")[0] + """rules:
  - name: test-unlimit-llm
    scope: host
    priority: 50
    cooldown_s: 0
    rationale: test rule unlimiting the llm (host PSI {metric:psi.cpu.some.avg10} %)
    when:
      all: [{symptom: cpu_pressure}]
    actions:
      - knob: cgroup.cpu_quota
        target: /autotune-fixture/llm
        value: max
"""


@pytest.mark.parametrize("floor, quota", [(1.5, "50000\n"), (1.9, "20000\n"), (0.5, "-1\n")])
def test_neighbour_floor_is_enforced_by_the_agent(tmp_path, host_root, rules_dir, floor, quota):
    """Unlimiting the llm (0.2 core, shares 512) would leave a 1024-shares neighbour 1.33 of the
    2 cores under contention: against a 1.5-core floor the step is cut to 0.5 core (2 - 1.5),
    against 1.9 nothing useful is left (refused), against 0.5 it goes through."""
    (rules_dir / "test.yaml").write_text(FLOOR_RULES)
    cpu = host_root / "sys/fs/cgroup/cpu"
    quota_file = cpu / "autotune-fixture/llm/cpu.cfs_quota_us"
    nb = cpu / "autotune-fixture/neighbour"
    nb.mkdir()
    for name, text in (("cpu.shares", "1024\n"), ("cpu.cfs_quota_us", "-1\n"), ("cpu.cfs_period_us", "100000\n"),
                       ("cgroup.procs", ""), ("cpu.stat", "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n")):
        (nb / name).write_text(text)
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock)
    agent.cfg = agent.cfg.model_copy(update={"services": [
        Service(name="llm", cgroup="/autotune-fixture/llm"),
        Service(name="neighbour", role="neighbour", cgroup="/autotune-fixture/neighbour", min_cpu_cores=floor)]})
    psi = Psi(host_root)
    drive(agent, clock, psi, 25, after_pct=20.0)
    assert quota_file.read_text().strip() == quota.strip()
    assert bool(agent.journal.entries()) is (quota != "20000\n")


def test_probe_url_feeds_latency_without_a_metrics_page(tmp_path, host_root, rules_dir, canned_http):
    """A service with only probe_url gets probe readings in its snapshots, and the objective
    switches from PSI to latency once enough distinct probes are in the window."""
    import time as _time

    srv = canned_http({("GET", "/v1/models"): b'{"data": [{"id": "m"}]}',
                       ("POST", "/v1/completions"): b'{"choices": [{"text": "x"}]}'})
    # the config refuses probing more often than once a second (the probe's cost is bounded);
    # the test probes every 50 ms to run fast
    fast = LatencySource.model_construct(**{**LatencySource().model_dump(), "probe_url": srv.url,
                                            "probe_interval_s": 0.05})
    cfg = make_cfg(tmp_path, rules_dir).model_copy(update={"services": [
        Service(name="llm", cgroup="/autotune-fixture/llm", latency=fast)]})
    h = host(host_root)
    clock = Clock()
    agent = Agent(cfg, host=h, db=open_db(cfg.state_path()), actuator=LocalActuator(h, cfg),
                  ruleset=load_rules(cfg.rule_dirs()), clock=clock)
    try:
        snaps = []
        for _ in range(8):
            clock.t += 1
            snaps.append(agent.sample())
            _time.sleep(0.15)
    finally:
        agent.stop()
    lats = [s.services["llm"].latency for s in snaps]
    assert all(r is not None and r.source.startswith("probe:") for r in lats)
    assert sum(r.ok for r in lats) >= 6
    # too few probes to test on yet: the service's own CPU pressure
    assert agent.verifier.objective("llm", snaps[:3]).name == "svc.llm.psi.cpu.some.stall_pct"
    assert agent.verifier.objective("llm", snaps).name == "svc.llm.latency.p95_s"


class ReadRefusingActuator(LocalActuator):
    """A helper whose policy does not cover the rule's target: every read is refused."""

    def read(self, knob, target):
        raise PolicyRefused("target_refused", f"{target} is not under any subtree the policy allows")


def test_a_refused_read_is_in_the_agents_log_and_trail_once(tmp_path, host_root, rules_dir, caplog):
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock, actuator_cls=ReadRefusingActuator)
    agent.start()
    with caplog.at_level("WARNING", logger="autotune.agent.loop"):
        drive(agent, clock, Psi(host_root), 12, after_pct=60, before_pct=60)
    refusals = [e for e in agent.trail.query(kind="refusal")]
    assert len(refusals) == 1, refusals  # asked every tick, reported once
    r = refusals[0]
    assert (r.knob, r.target, r.outcome) == ("sysctl", "vm.swappiness", "refused")
    assert r.detail["op"] == "read" and r.detail["code"] == "target_refused"
    logged = [rec.getMessage() for rec in caplog.records if "refused to read" in rec.getMessage()]
    assert len(logged) == 1 and "vm.swappiness" in logged[0] and "helper policy" in logged[0]
    assert swappiness(host_root) == ORIGINAL


class RateLimitingActuator(LocalActuator):
    """A helper that rate-limits every read (the example policy's 5/s met a lagging agent)."""

    def read(self, knob, target):
        raise PolicyRefused("rate_limited", "more than 5.0/s (burst 20) from uid 999")


def test_a_rate_limited_read_is_not_called_a_policy_refusal(tmp_path, host_root, rules_dir, caplog):
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock, actuator_cls=RateLimitingActuator)
    agent.start()
    with caplog.at_level("WARNING", logger="autotune.agent.loop"):
        drive(agent, clock, Psi(host_root), 12, after_pct=60, before_pct=60)
    [line] = [rec.getMessage() for rec in caplog.records if "rate-limited" in rec.getMessage()]
    assert "vm.swappiness" in line and "wait for the next tick" in line and "rate_per_s" in line
    assert not [rec for rec in caplog.records if "refused to read" in rec.getMessage()]


class RateLimitedOnceActuator(LocalActuator):
    """A helper that rate-limits the first read of each knob and target, then answers (a burst
    used up once, as on the by-hand walk of docs/install.md); counts the reads it is asked."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.asked: list[tuple[str, str]] = []

    def read(self, knob, target):
        self.asked.append((knob, target))
        if self.asked.count((knob, target)) == 1:
            raise PolicyRefused("rate_limited", "more than 5.0/s (burst 20) from uid 999")
        return super().read(knob, target)


def test_a_rate_limited_read_blocks_nothing_once_reads_answer_again(tmp_path, host_root, rules_dir, caplog):
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock, actuator_cls=RateLimitedOnceActuator)
    agent.start()
    with caplog.at_level("INFO", logger="autotune.agent.loop"):
        drive(agent, clock, Psi(host_root), 20, after_pct=60, before_pct=60)
    assert [e.knob for e in agent.journal.entries()] == ["sysctl"]  # applied once reads answered
    assert not [ev for ev in agent.trail.query(kind="blocked") if ev.detail.get("kind") == "policy"]
    assert not [rec for rec in caplog.records if "policy refuses" in rec.getMessage()]


def test_one_evaluation_reads_each_knob_once(tmp_path, host_root, rules_dir):
    # a second rule on the same knob: without the tick's memo its current value is read twice
    (rules_dir / "again.yaml").write_text("""
rules:
  - name: test-lower-swappiness-again
    scope: host
    priority: 40
    cooldown_s: 0
    rationale: the same knob again (host PSI {metric:psi.cpu.some.avg10} %)
    when:
      all: [{symptom: cpu_pressure}]
    actions:
      - knob: sysctl
        target: vm.swappiness
        value: 20
        bounds: {min: 1, max: 100}
""")
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock, actuator_cls=RateLimitedOnceActuator)
    actuator = agent.actuator
    agent.start()
    psi = Psi(host_root)
    for _ in range(6):
        clock.t += 1
        psi.tick(1, 60)
        agent.sample()
        actuator.asked.clear()
        agent.evaluate()
        assert len(actuator.asked) == len(set(actuator.asked)), actuator.asked


def test_a_refused_write_is_in_the_agents_log(tmp_path, host_root, rules_dir, caplog):
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock, actuator_cls=RefusingActuator, rule_cooldown_s=0)
    agent.start()
    with caplog.at_level("WARNING", logger="autotune.agent.loop"):
        drive(agent, clock, Psi(host_root), 20, after_pct=60)
    assert any("helper refused sysctl on vm.swappiness -> 10" in rec.getMessage() for rec in caplog.records)


ADVICE_RULES = """
symptoms:
  - name: cpu_pressure
    metric: psi.cpu.some.avg10
    op: ">"
    on: 5
    for_s: 0
    clear_for_s: 0
rules:
  - name: test-advice
    scope: host
    priority: 10
    cooldown_s: 300
    rationale: test advice
    when:
      all: [{symptom: cpu_pressure}]
    actions:
      - knob: advice
        target: host
        value: "pressure is {metric:psi.cpu.some.avg10} % right now"
"""


def test_recommend_mode_logs_an_advice_once_per_rule_cooldown(tmp_path, host_root, caplog):
    """Issue 10 defect 10: the advice's text quotes live PSI, so it changed every tick and was
    logged (and audited) every tick although its rule's cooldown is 300 s."""
    from autotune.fix.actuator import DryRunActuator

    rules = tmp_path / "advice-rules"
    rules.mkdir()
    (rules / "a.yaml").write_text(ADVICE_RULES)
    clock = Clock()
    cfg = make_cfg(tmp_path, rules)
    h = host(host_root, writable=False)
    agent = Agent(cfg, host=h, db=open_db(cfg.state_path()), actuator=DryRunActuator(h, cfg),
                  ruleset=load_rules(cfg.rule_dirs()), clock=clock, mode="recommend")
    agent.start()
    psi = Psi(host_root, noise=5.0)
    with caplog.at_level("INFO", logger="autotune.agent.loop"):
        for _ in range(40):
            clock.t += 1
            psi.tick(1, 40.0)
            agent.sample()
            agent.evaluate()
    said = [r.getMessage() for r in caplog.records if "would advise" in r.getMessage()]
    assert len(said) == 1, said
    assert len(agent.trail.query(kind="recommendation")) == 1
    clock.t += 300  # after the cooldown it is said again
    psi.tick(1, 40.0)
    with caplog.at_level("INFO", logger="autotune.agent.loop"):
        agent.sample()
        agent.evaluate()
    assert len([r for r in caplog.records if "would advise" in r.getMessage()]) == 2


def test_stopping_with_a_change_in_verification_says_it_stays_applied(tmp_path, host_root, rules_dir, caplog):
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock)
    agent.start()
    psi = Psi(host_root)
    for _ in range(60):  # until the change lands, then stop before its window is complete
        drive(agent, clock, psi, 1, after_pct=20)
        if agent.journal.entries():
            break
    (entry,) = agent.journal.entries()
    assert entry.state == "verifying"
    with caplog.at_level("WARNING", logger="autotune.agent.loop"):
        agent.stop()
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "1 change(s) still being verified; they stay applied" in msg
    assert f"#{entry.id} sysctl vm.swappiness" in msg and "rollback --all" in msg
    (stop,) = agent.trail.query(kind="agent_stop")
    assert stop.detail["left_verifying"] == [entry.id]


def test_admission_without_a_gate_is_not_called_target_gone(tmp_path, host_root, rules_dir, caplog):
    from autotune.types import Action

    cfg = make_cfg(tmp_path, rules_dir).model_copy(update={"services": [
        Service(name="llm", cgroup="/autotune/llm", role="latency-critical")]})
    h = host(host_root)
    agent = Agent(cfg, host=h, db=open_db(cfg.state_path()), actuator=LocalActuator(h, cfg),
                  ruleset=load_rules(cfg.rule_dirs()), clock=Clock())
    act = Action(knob="admission", target="llm", service="llm", proposed="threshold=40",
                 rule="psi-gated-admission", rationale="test")
    with caplog.at_level("INFO", logger="autotune.fix.apply"):
        assert agent.apply(act) is None
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "has no admission_url (no gate in front of it)" in msg and "target gone" not in msg


def test_verifying_reads_each_sample_from_the_store_about_once(tmp_path, host_root, rules_dir):
    """Soak profile: re-reading and decoding both windows from SQLite on every tick was a sixth
    of the agent's CPU. The verifier keeps an entry's windows and reads only newer samples, and
    still reaches the verdict a verifier reading everything afresh reaches."""
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock)
    agent.start()
    store = agent.samples
    read = {"n": 0}
    real = store.window

    def counting(since, until=None):
        out = real(since, until)
        if agent.journal.entries(states=("applied", "verifying")):
            read["n"] += len(out)  # reads while a change is being verified
        return out

    store.window = counting
    verdicts = []

    def fresh_verdict(a):
        for e in a.journal.entries(states=("applied", "verifying")):
            settle, window = a.verifier.windows(e)
            t = e.applied_ts
            before = [s for s in real(t - window, t) if s.ts < t]
            after = real(t + settle, clock.t)
            verdicts.append((len(before), len(after)))

    drive(agent, clock, Psi(host_root), 60, after_pct=60, on_tick=fresh_verdict)
    [e] = agent.journal.entries()
    assert e.state == "rolled_back" and e.verify_result.verdict == "regressed"
    n_before, n_after = verdicts[-1]
    assert (e.verify_result.n_before, e.verify_result.n_after) != (0, 0)
    # every tick of the verification would read before+after samples again; it reads each once
    assert read["n"] <= n_before + n_after + 2, (read["n"], n_before, n_after)


def test_a_non_finite_reading_is_no_reason_to_act_and_breaks_no_audit_event(tmp_path, host_root, rules_dir):
    """Issue 24 #2: a pressure file with avg10=1e999 was taken as inf: in apply mode the change
    was applied and journaled, and its recommendation and apply audit events failed. Now the
    reading is missing with its reason: no symptom, no change, a whole audit trail."""
    clock = Clock()
    agent = make_agent(tmp_path, host_root, rules_dir, clock)
    agent.start()
    pressure = host_root / "proc/pressure/cpu"
    for i in range(15):
        clock.t += 1
        pressure.write_text(f"some avg10=1e999 avg60=1e999 avg300=0.00 total={70_000_000 + i}\n")
        for stage in (agent.sample, agent.evaluate, agent.verify):
            agent.guarded(stage.__name__, stage)
    assert agent.journal.entries() == [] and swappiness(host_root) == ORIGINAL
    assert any(m.startswith("psi.cpu: ") and "inf" in m for m in agent.window[-1].missing)
    assert "error" not in kinds(agent) and agent.trail.verify().ok
