"""The helper's log: writes at INFO, routine reads at DEBUG, and a refused read at WARNING only
the first time (the agent asks again every tick; on a host without cpufreq the governor read
answered target_gone every few seconds, each one a warning)."""

from __future__ import annotations

import json
import logging

from autotune.helper.handler import Helper
from autotune.helper.policy import load_policy
from autotune.host import Host

from .conftest import FAKE_KNOBS, fake_resolver

PEER = {"pid": 1, "uid": 1000, "gid": 1000}


def _helper(policy_file, host_root):
    pol = load_policy(policy_file, require_root_owned=False)
    helper = Helper(pol, Host(host_root, writable=True), knobs=FAKE_KNOBS, resolver=fake_resolver)
    decisions: list[dict] = []
    helper.on_decision = decisions.append
    return helper, decisions


def _send(helper, **msg) -> None:
    helper.handle_line(json.dumps(msg).encode(), PEER)


def test_a_refused_read_warns_once_then_logs_at_debug(policy_file, host_root, caplog):
    helper, decisions = _helper(policy_file, host_root)
    with caplog.at_level(logging.DEBUG, logger="autotune.helper"):
        for _ in range(5):
            _send(helper, op="read", knob="governor", target="all")  # not in the policy
            _send(helper, op="read", knob="cgroup.cpu_quota", target="/autotune/gone")  # target_gone
    levels = [(r.levelname, "governor" in r.getMessage()) for r in caplog.records if "decision" in r.getMessage()]
    assert levels.count(("WARNING", True)) == 1 and levels.count(("DEBUG", True)) == 4
    assert levels.count(("WARNING", False)) == 1 and levels.count(("DEBUG", False)) == 4
    assert len(decisions) == 10 and not any(d["ok"] for d in decisions)  # the hook sees every one


def test_writes_are_info_and_refused_writes_always_warn(policy_file, host_root, caplog):
    helper, _ = _helper(policy_file, host_root)
    with caplog.at_level(logging.DEBUG, logger="autotune.helper"):
        _send(helper, op="read", knob="cgroup.cpu_quota", target="/autotune/llm")
        _send(helper, op="apply", knob="cgroup.cpu_quota", target="/autotune/llm", value="0.5")
        for _ in range(3):
            _send(helper, op="apply", knob="cgroup.cpu_quota", target="/autotune/llm", value="9")
    got = [(r.levelname, json.dumps(r.args, default=str)) for r in caplog.records if "decision" in r.getMessage()]
    assert [lv for lv, _ in got] == ["DEBUG", "INFO", "WARNING", "WARNING", "WARNING"]
