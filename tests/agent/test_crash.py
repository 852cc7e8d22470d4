"""kill -9 at the worst moments of an apply: the journal and the host must still agree.

Each case runs the real CLI (`python -m autotune run --mode apply --local-actuator`) on a writable
fixture tree with AUTOTUNE_FAILPOINT armed; the process SIGKILLs itself at that point. Then the
reconcile path runs (a fresh Agent.start on the same state DB) and the one rollback routine
(verify/rollback.Rollback) must put every touched value back to its original raw content.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.fix.actuator import LocalActuator, read_value
from autotune.agent.loop import Agent
from autotune.config import load_config
from autotune.diagnose.rules import load_rules
from autotune.host import Host
from autotune.journal.journal import Journal
from autotune.store.db import open_db
from autotune.verify.rollback import Rollback
from tests.agent.conftest import RULES, SWAPPINESS
from tests.fixtures.hosts import writable_copy

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="--local-actuator is root only")
REPO = Path(__file__).resolve().parents[2]

CONFIG = """
[agent]
sample_period_s = 0.25
window_s = 2
evaluate_every_s = 0.25
mode = "apply"
state_path = "{state}"
rule_dirs = ["{rules}"]
metrics_listen = "off"

[verification]
window_s = 1.5
settle_s = 0.25
rule_cooldown_s = 3600
knob_cooldown_s = 0
"""


def setup(tmp_path: Path) -> tuple[Path, Path]:
    root = writable_copy("hybrid-local", tmp_path)
    (root / "proc/pressure/cpu").write_text(
        "some avg10=50.00 avg60=50.00 avg300=50.00 total=90000000\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "t.yaml").write_text(RULES)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(CONFIG.format(state=tmp_path / "state.db", rules=rules))
    return root, cfg


def run_agent(root: Path, cfg: Path, failpoint: str | None, duration: float = 12.0):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("AUTOTUNE_FAILPOINT", None)
    if failpoint:
        env["AUTOTUNE_FAILPOINT"] = failpoint
    return subprocess.run(
        [sys.executable, "-m", "autotune", "run", "--mode", "apply", "--root", str(root),
         "--config", str(cfg), "--local-actuator", "--duration", str(duration)],
        env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("point", ["before_plan", "after_plan", "after_write", "during_verify"])
def test_kill9_then_reconcile_and_rollback(tmp_path, point):
    root, cfg_path = setup(tmp_path)
    original = (root / SWAPPINESS.lstrip("/")).read_text()
    proc = run_agent(root, cfg_path, point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    cfg = load_config(cfg_path)
    db = open_db(cfg.state_path())
    journal = Journal(db)
    entries = journal.entries()
    live = (root / SWAPPINESS.lstrip("/")).read_text().strip()
    if point == "before_plan":
        assert entries == [] and live == original.strip()
    else:
        [e] = entries
        assert live in (e.prior_value, e.proposed)  # never an unknown value
        if point == "after_plan":
            assert e.state == "planned" and live == e.prior_value
        else:
            assert live == e.proposed

    # restart: the reconcile path settles every unfinished entry against the live value
    host = Host(root, writable=True)
    act = LocalActuator(host, cfg)
    agent = Agent(cfg, host=host, db=db, actuator=act, ruleset=load_rules(cfg.rule_dirs()))
    agent.start()
    for e in journal.entries():
        assert e.state in ("failed", "verifying", "rolled_back"), e
        assert read_value(act, e.knob, e.target) in (e.prior_value, e.expected_value)
    if point == "after_plan":
        assert journal.entries()[0].state == "failed"  # the write never landed
    if point in ("after_write", "during_verify"):
        assert journal.entries()[0].state == "verifying"  # ours: re-verified later

    Rollback(journal, act, by="operator").all()
    assert (root / SWAPPINESS.lstrip("/")).read_text() == original  # byte-exact
    assert agent.trail.verify().ok
    db.conn.close()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    env.pop("AUTOTUNE_FAILPOINT", None)
    return subprocess.run([sys.executable, "-m", "autotune", *args], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("how", ["--all", "ID"])
def test_kill9_after_write_then_cli_rollback_restores_without_an_agent_start(tmp_path, how):
    """Issue 10 defect 1: `AUTOTUNE_FAILPOINT=after_write autotune run`, then `autotune rollback`
    (no agent start in between) settles the planned entry by reading the target and undoes it."""
    root, cfg_path = setup(tmp_path)
    original = (root / SWAPPINESS.lstrip("/")).read_text()
    proc = run_agent(root, cfg_path, "after_write")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    journal = Journal(open_db(load_config(cfg_path).state_path()))
    [e] = journal.entries()
    assert e.state == "planned" and (root / SWAPPINESS.lstrip("/")).read_text().strip() == e.proposed
    r = run_cli("rollback", "--all" if how == "--all" else str(e.id), "--local", "--root", str(root),
                "--config", str(cfg_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "restored" in r.stdout and "nothing to roll back" not in r.stdout
    assert (root / SWAPPINESS.lstrip("/")).read_text() == original  # byte-exact
    e = journal.get(e.id)
    assert e.state == "rolled_back" and e.landed is True
    r = run_cli("rollback", "--all", "--local", "--root", str(root), "--config", str(cfg_path))
    assert r.returncode == 0 and "nothing to roll back" in r.stdout, r.stdout + r.stderr
