"""The learned ranker: features, outcomes from the journal, honesty gates, and the ranking it
gives the agent."""

from __future__ import annotations

import random

import pytest

from autotune.diagnose.ranker import Outcome, Ranker, features, from_journal, outcome_of
from autotune.journal.journal import Journal
from autotune.store.db import open_db
from autotune.types import Action, Symptom

CPU = Symptom(name="cpu_pressure", metric="psi.cpu.some.avg10", value=60.0, threshold=20.0, since_ts=0)
THROTTLED = Symptom(name="svc_throttled", service="llm", metric="svc.llm.cpu.throttled_pct",
                    value=40.0, threshold=10.0, since_ts=0)
OTHER_SVC = Symptom(name="svc_throttled", service="batch", metric="svc.batch.cpu.throttled_pct",
                    value=90.0, threshold=10.0, since_ts=0)


def record(journal: Journal, knob: str, rule: str, prior: str, proposed: str, gain: float,
           service: str | None = "llm", symptoms=(CPU, THROTTLED), verdict: str | None = None) -> int:
    """A verified change whose objective (lower is better) moved by -gain (relative)."""
    e = journal.plan(knob=knob, target=f"/{knob}", prior={"value": prior}, proposed=proposed, rule=rule,
                     service=service, symptoms=symptoms)
    journal.mark_applied(e.id, {"value": proposed})
    journal.mark_verifying(e.id)
    verdict = verdict or ("improved" if gain > 0.05 else "regressed" if gain < -0.05 else "inconclusive")
    result = {"verdict": verdict, "effect": -gain, "direction": "lower_is_better", "p_value": 0.01}
    if verdict == "regressed":
        journal.mark_rolled_back(e.id, result=result)
    else:
        journal.mark_kept(e.id, result=result)
    return e.id


def act(knob, rule, current="0.5", proposed="1.5", priority=50, advisory=False):
    return Action(knob=knob, target=f"/{knob}", service="llm", current=current, proposed=proposed,
                  rule=rule, rationale="x", priority=priority, advisory=advisory)


@pytest.fixture
def journal(tmp_path):
    return Journal(open_db(tmp_path / "s.db"))


def test_features_match_between_a_candidate_and_its_journal_entry(journal):
    eid = record(journal, "cgroup.cpu_quota", "raise-quota", "0.5", "1.5", 0.4,
                 symptoms=(CPU, THROTTLED, OTHER_SVC))
    f = outcome_of(journal.get(eid)).features
    a = act("cgroup.cpu_quota", "raise-quota")
    assert f == features(a.knob, a.rule, a.current, a.proposed, a.service, [CPU, THROTTLED, OTHER_SVC])
    assert f["knob=cgroup.cpu_quota"] == 1 and f["rule=raise-quota"] == 1
    assert f["step_log"] == pytest.approx(1.0986, abs=1e-3)  # ln 3
    assert f["sym=cpu_pressure"] == pytest.approx(3.0)
    assert f["sym=svc_throttled"] == pytest.approx(4.0)  # llm's own, not batch's 9.0
    assert features("thp", "r", "always", "madvise", None, [])["knob=thp"] == 1  # non-numeric: no step
    assert "step_log" not in features("thp", "r", "always", "madvise", None, [])
    assert features("cgroup.cpu_quota", "r", "0.5", "max", None, [])["step_log"] > 2


def test_outcome_sign_clip_and_unverified(journal):
    good = outcome_of(journal.get(record(journal, "k", "r", "1", "2", 0.5)))
    bad = outcome_of(journal.get(record(journal, "k", "r", "1", "2", -39.0)))
    assert good.improvement == pytest.approx(0.5) and bad.improvement == -1.0
    e = journal.plan(knob="k", target="/x", prior={"value": "1"}, proposed="2", rule="r")
    assert outcome_of(journal.get(e.id)) is None  # planned, never verified
    higher = journal.get(record(journal, "k", "r", "1", "2", 0.0))
    higher = higher.model_copy(update={"verify_result": higher.verify_result.model_copy(
        update={"effect": 0.2, "direction": "higher_is_better"})})
    assert outcome_of(higher).improvement == pytest.approx(0.2)


def test_inactive_until_enough_outcomes(journal):
    for _ in range(4):
        record(journal, "cgroup.cpu_quota", "raise-quota", "0.5", "1.5", 0.5)
    r = from_journal(journal.verified(), min_outcomes=10)
    assert not r.status.active and "4 verified changes, need 10" in r.status.reason
    actions = [act("cgroup.cpu_weight", "w", priority=90), act("cgroup.cpu_quota", "raise-quota")]
    assert r.rank(actions, [CPU]) is actions  # untouched: rule priority decides


def learnable(journal, n=24, seed=1):
    """Raising the quota helps ~40 %; raising the weight does nothing; thp regresses."""
    rng = random.Random(seed)
    for i in range(n):
        kind = i % 3
        if kind == 0:
            record(journal, "cgroup.cpu_quota", "raise-quota", "0.5", "1.5", 0.4 + rng.uniform(-0.05, 0.05))
        elif kind == 1:
            record(journal, "cgroup.cpu_weight", "boost-weight", "100", "400", rng.uniform(-0.03, 0.03))
        else:
            record(journal, "thp", "thp-never", "always", "never", -0.3 + rng.uniform(-0.05, 0.05), service=None)


def test_learns_which_knob_helps_and_outranks_rule_priority(journal):
    learnable(journal)
    r = from_journal(journal.verified(), min_outcomes=10)
    assert r.status.active, r.status.reason
    assert r.status.cv_mae < r.status.baseline_mae
    ranked = r.rank([act("thp", "thp-never", "always", "never", priority=95),
                     act("cgroup.cpu_weight", "boost-weight", "100", "400", priority=90),
                     act("cgroup.cpu_quota", "raise-quota", priority=10),
                     act("advice", "mlock", advisory=True, priority=99)], [CPU, THROTTLED])
    assert [a.rule for a in ranked] == ["raise-quota", "boost-weight", "thp-never", "mlock"]
    assert ranked[0].score == pytest.approx(0.4, abs=0.1)
    assert ranked[2].score < 0
    assert ranked[3].score is None  # advisory actions are never scored


def test_unlearnable_outcomes_keep_priority_order():
    """Same features, outcomes pure noise: the model cannot beat the mean, so it is not used."""
    rng = random.Random(3)
    outs = [Outcome(entry_id=i, knob="k", rule="r", features={"knob=k": 1.0, "rule=r": 1.0},
                    improvement=rng.uniform(-1, 1))
            for i in range(30)]
    r = Ranker(outs, min_outcomes=10)
    assert not r.status.active and "does not beat the mean" in r.status.reason
    same = Ranker([Outcome(entry_id=i, knob="k", rule="r", features={"knob=k": 1.0}, improvement=0.1)
                   for i in range(12)])
    assert not same.status.active and "same" in same.status.reason


def test_ranker_command_reports_status_and_outcomes(tmp_path):
    import json

    from typer.testing import CliRunner

    from autotune.cli.main import app

    db_path = tmp_path / "s.db"
    learnable(Journal(open_db(db_path)))
    res = CliRunner().invoke(app, ["ranker", "--state", str(db_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["active"] is True and out["outcomes"] == 24
    assert [r["rule"] for r in out["by_rule"]] == ["raise-quota", "boost-weight", "thp-never"]
    assert out["by_rule"][0]["n"] == 8 and out["by_rule"][0]["mean_improvement"] == pytest.approx(0.4, abs=0.05)
    res = CliRunner().invoke(app, ["ranker", "--state", str(db_path)])
    assert res.exit_code == 0 and "in use" in res.stdout and "raise-quota" in res.stdout
    missing = CliRunner().invoke(app, ["ranker", "--state", str(tmp_path / "nope.db")])
    assert missing.exit_code == 2 and "no state database" in missing.output
