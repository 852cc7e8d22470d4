"""At 80 columns `recommend`, `history`, `audit list` and `--help` stay readable: one record per
block (no cell folded into a column of a few letters), no line past 80, names and values whole;
`audit list` fills knob/target/rule of a recommendation from its actions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.audit.trail import AuditEvent, AuditTrail
from autotune.journal.journal import Journal
from autotune.knobs.base import KnobState
from autotune.store.db import open_db
from autotune.types import Action, Recommendation, Symptom

REPO = Path(__file__).resolve().parents[2]
LONG_CG = "/autotune-demo-12345/llm"


def cli(*args: str, columns: int = 80) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb"}
    return subprocess.run([sys.executable, "-m", "autotune", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=env)


def assert_fits(text: str, width: int = 80) -> None:
    long = [ln for ln in text.splitlines() if len(ln) > width]
    assert long == [], long


@pytest.fixture
def state(tmp_path) -> Path:
    db_path = tmp_path / "state.db"
    db = open_db(db_path)
    journal = Journal(db)
    prior = KnobState(knob="cgroup.cpu_quota", target=LONG_CG, value="0.5",
                      raw={f"/sys/fs/cgroup/cpu{LONG_CG}/cpu.cfs_quota_us": "50000\n"})
    e = journal.plan(knob="cgroup.cpu_quota", target=LONG_CG, prior=prior, proposed="1.25",
                     rule="slo-raise-quota", rationale="test")
    journal.mark_applied(e.id, prior.model_copy(update={"value": "1.25"}))
    trail = AuditTrail(db)
    action = Action(knob="cgroup.cpu_quota", target=LONG_CG, current="0.5", proposed="1.25",
                    rule="slo-raise-quota", rationale="over its target")
    other = action.model_copy(update={"knob": "cgroup.cpu_weight", "proposed": "400",
                                      "rule": "slo-raise-weight"})
    trail.append(AuditEvent(ts=1.0, kind="recommendation", outcome="proposed",
                            detail={"actions": [action.model_dump(), other.model_dump()], "symptoms": []}))
    trail.append(AuditEvent(ts=2.0, kind="verify", action_id=e.id, knob="cgroup.cpu_quota", target=LONG_CG,
                            rule="slo-raise-quota", before="0.5", after="1.25", outcome="kept",
                            objective_before=73.68, objective_after=12.5,
                            detail={"objective": "svc.llm.psi.cpu.some.stall_pct", "verdict": "improved"}))
    db.conn.close()
    return db_path


def test_history_at_80_columns_is_one_block_per_change(state):
    r = cli("history", "--state", str(state))
    assert r.returncode == 0, r.stderr
    assert_fits(r.stdout)
    assert f"    cgroup.cpu_quota {LONG_CG}: 0.5 -> 1.25\n    (rule slo-raise-quota)\n" in r.stdout
    wide = cli("history", "--state", str(state), columns=160)
    assert "┃ id ┃" in wide.stdout  # a wide terminal keeps the table


def test_audit_list_at_80_columns_fills_recommendations_and_units(state):
    r = cli("audit", "--state", str(state), "list")
    assert r.returncode == 0, r.stderr
    assert_fits(r.stdout)
    # the recommendation's cells come from its first action, with the count of the others
    assert f"    cgroup.cpu_quota {LONG_CG} (+1 more): 0.5→1.25\n    (rule slo-raise-quota)\n" in r.stdout
    # a PSI objective is a percent, not seconds
    assert "objective 73.7 % → 12.5 %" in r.stdout
    show = cli("audit", "--state", str(state), "show", "1")
    assert "objective (s)" not in show.stdout
    assert "objective svc.llm.psi.cpu.some.stall_pct: before 73.7 %  after 12.5 %" in show.stdout
    wide = cli("audit", "--state", str(state), "list", columns=200)
    assert "slo-raise-quota" in wide.stdout and "cgroup.cpu_quota" in wide.stdout


def test_recommend_at_80_columns_is_one_block_per_record(monkeypatch, capsys):
    from autotune.cli.recommend import print_recommendation

    monkeypatch.setenv("COLUMNS", "80")
    rec = Recommendation(
        ts=1.0, duration_s=10, samples=10,
        symptoms=[Symptom(name="svc_cpu_throttled", service="llm", metric="svc.llm.cpu.throttled_pct",
                          value=69.0, threshold=10, since_ts=0.0,
                          detail="the service hits its CFS quota in more than 10 % of periods")],
        actions=[Action(knob="cgroup.cpu_quota", target=LONG_CG, current="0.5", proposed="0.75",
                        rule="raise-service-cpu-quota", rationale="The service was throttled in 69 % of "
                        "CFS periods: its cpu.max quota, not the host, is what makes requests wait."),
                 Action(knob="advice", target="llm", proposed="Set the server's intra-op threads to 1 "
                        "(OMP_NUM_THREADS=1): it runs 8 threads on a 1-core quota.", rule="limit-intra-op-threads",
                        rationale="More threads than cores only queue.", advisory=True)],
        notes=[])
    print_recommendation(rec)
    out = capsys.readouterr().out
    assert_fits(out)
    assert f"  1. cgroup.cpu_quota {LONG_CG}: 0.5 -> 0.75\n      rule raise-service-cpu-quota: The" in out
    assert "2. advice for llm  (rule limit-intra-op-threads)" in out
    assert "svc.llm.cpu.throttled_pct = 69 (threshold 10)" in out


@pytest.mark.parametrize("command", [["gate"], ["recommend"], ["run"], ["audit", "list"], ["demo"]])
def test_help_at_80_columns_keeps_defaults_whole(command):
    r = cli(*command, "--help")
    assert r.returncode == 0, r.stderr
    assert_fits(r.stdout)
    assert "…" not in r.stdout  # nothing cut
    if command == ["gate"]:
        assert "http://127.0.0.1:8000]" in r.stdout
        # no option's help wraps more than four lines deep
        blocks = r.stdout.split("\n  --")[1:]
        assert blocks and max(len(b.strip().splitlines()) for b in blocks) <= 4, r.stdout
