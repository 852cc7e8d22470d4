"""What a failed write means (issue 10): ``Agent.apply`` settles a write that raised by READING
the target, so rollback never restores the prior of a write that never landed, and always
undoes one that did (fully or partly). And agent start reconciles in recommend mode too."""

from __future__ import annotations

import pytest

from autotune.fix.actuator import DryRunActuator, LocalActuator
from autotune.agent.loop import Agent
from autotune.diagnose.rules import load_rules
from autotune.errors import HostError
from autotune.errors import PolicyRefused
from autotune.knobs import get_knob
from autotune.store.db import open_db
from autotune.types import Action
from autotune.verify.rollback import Rollback, candidates
from tests.agent.conftest import SWAPPINESS, Clock, host, make_cfg

ACTION = Action(knob="sysctl", target="vm.swappiness", proposed="10", rule="r", rationale="test")


def agent_with(tmp_path, root, rules_dir, actuator_cls, mode="apply"):
    cfg = make_cfg(tmp_path, rules_dir)
    h = host(root, writable=mode == "apply")
    act = actuator_cls(h, cfg)
    return Agent(cfg, host=h, db=open_db(cfg.state_path()), actuator=act,
                 ruleset=load_rules(cfg.rule_dirs()), clock=Clock(), mode=mode)


def live(root) -> str:
    return (root / SWAPPINESS.lstrip("/")).read_text().strip()


def rollback_all(agent):
    return Rollback(agent.journal, LocalActuator(host(agent.host.root), agent.cfg), by="operator").all()


class FailsBeforeWriting(LocalActuator):
    def apply(self, *a, **kw):
        raise HostError("helper at /run/autotune/helper.sock: Connection refused")


class HostErrorFromHelper(LocalActuator):
    def apply(self, *a, **kw):
        raise PolicyRefused("host_error", "write /proc/sys/vm/swappiness: EINVAL")


class LostAfterWriting(LocalActuator):
    def apply(self, *a, **kw):
        super().apply(*a, **kw)
        raise HostError("helper closed the connection: EOF")


class Unreachable(LocalActuator):
    """The helper dies during the write: the write fails, and so does the read after it."""

    down = False

    def apply(self, *a, **kw):
        Unreachable.down = True
        raise HostError("helper closed the connection: EOF")

    def read(self, *a, **kw):
        if Unreachable.down:
            raise HostError("helper: Connection refused")
        return super().read(*a, **kw)


@pytest.mark.parametrize("cls", [FailsBeforeWriting, HostErrorFromHelper])
def test_a_write_that_never_landed_is_failed_and_never_restored(tmp_path, host_root, rules_dir, cls):
    agent = agent_with(tmp_path, host_root, rules_dir, cls)
    e = agent.apply(ACTION)
    assert e.state == "failed" and e.landed is False and "not applied" in e.error
    assert candidates(agent.journal) == []
    (host_root / SWAPPINESS.lstrip("/")).write_text("10\n")  # later, someone sets the proposal
    assert rollback_all(agent) == [] and live(host_root) == "10"  # not "restored" to 60


def test_a_read_back_mismatch_landed_partly_and_is_undone(tmp_path, host_root, rules_dir, monkeypatch):
    """The knob's change() writes, reads back another value and raises: the write touched the
    target, so the entry is failed WITH the value it left, and rollback restores the prior."""
    knob = get_knob("sysctl")
    real_write = type(knob).write
    monkeypatch.setattr(type(knob), "write", lambda self, h, t, v: real_write(self, h, t, "20"))
    agent = agent_with(tmp_path, host_root, rules_dir, LocalActuator)
    e = agent.apply(ACTION)
    assert e.state == "failed" and e.landed is True and e.expected_value == "20"
    assert "read back '20'" in e.error and live(host_root) == "20"
    monkeypatch.undo()
    (o,) = rollback_all(agent)
    assert o.result == "restored" and o.exact is True
    assert (host_root / SWAPPINESS.lstrip("/")).read_text() == "60\n"  # the exact prior bytes


def test_a_write_that_landed_before_the_error_is_applied_and_verified(tmp_path, host_root, rules_dir):
    agent = agent_with(tmp_path, host_root, rules_dir, LostAfterWriting)
    e = agent.apply(ACTION)
    assert e.state == "verifying" and e.landed is True and live(host_root) == "10"
    (ev,) = [a for a in agent.trail.query() if a.kind == "apply"]
    assert ev.outcome == "applied"


def test_fate_unknown_is_settled_by_the_next_reading(tmp_path, host_root, rules_dir):
    Unreachable.down = False
    agent = agent_with(tmp_path, host_root, rules_dir, Unreachable)
    e = agent.apply(ACTION)
    assert e.state == "failed" and e.landed is None and "fate unknown" in e.error
    (o,) = rollback_all(agent)  # the helper is back: the live value is still the prior
    assert o.result == "not_applied" and agent.journal.get(e.id).landed is False
    assert live(host_root) == "60" and rollback_all(agent) == []


@pytest.mark.parametrize("value,state,landed", [("10\n", "verifying", True), ("60\n", "failed", False)])
def test_recommend_mode_start_reconciles_a_crashed_apply(tmp_path, host_root, rules_dir, value,
                                                         state, landed):
    """Agent start settles a planned entry by reading in ANY mode; recommend mode writes
    nothing to the host (its dry-run actuator only reads)."""
    crashed = agent_with(tmp_path, host_root, rules_dir, LocalActuator)
    prior = crashed.actuator.read("sysctl", "vm.swappiness")
    e = crashed.journal.plan(knob="sysctl", target="vm.swappiness", prior=prior, proposed="10",
                             rule="r")
    (host_root / SWAPPINESS.lstrip("/")).write_text(value)  # the write landed, or not
    rec = agent_with(tmp_path, host_root, rules_dir, DryRunActuator, mode="recommend")
    rec.start()
    e = rec.journal.get(e.id)
    assert (e.state, e.landed) == (state, landed) and live(host_root) == value.strip()



class NeverTaken(LocalActuator):
    """The helper did not accept the connection: the client raises NotSent."""

    reads = 0

    def apply(self, *a, **kw):
        from autotune.errors import NotSent

        raise NotSent("helper at /run/autotune/helper.sock: Connection refused")

    def read(self, *a, **kw):
        NeverTaken.reads += 1
        return super().read(*a, **kw)


def test_a_request_the_helper_never_took_is_not_applied(tmp_path, host_root, rules_dir):
    NeverTaken.reads = 0
    agent = agent_with(tmp_path, host_root, rules_dir, NeverTaken)
    e = agent.apply(ACTION)
    assert e.state == "failed" and e.landed is False and "not applied" in e.error
    assert NeverTaken.reads == 1  # the prior only: nothing to read back, nothing was sent
    (host_root / SWAPPINESS.lstrip("/")).write_text("10\n")
    assert rollback_all(agent) == [] and live(host_root) == "10"
