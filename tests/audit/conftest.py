from __future__ import annotations

import pytest

from autotune.audit.trail import AuditEvent, AuditTrail
from autotune.store.db import open_db

T0 = 1_700_000_000.0


def make_events(n: int = 12) -> list[AuditEvent]:
    """A small realistic history: per action recommendation -> apply -> verify (-> rollback)."""
    out: list[AuditEvent] = [AuditEvent(ts=T0, kind="agent_start", detail={"version": "test"})]
    knobs = ["cgroup.cpu_quota", "thp", "sysctl"]
    for a in range(1, n + 1):
        knob = knobs[a % 3]
        ts = T0 + a * 600
        rolled = a % 4 == 0
        common = dict(action_id=a, knob=knob, target=f"/t/{a % 2}", service="llm",
                      rule=f"rule_{knob.split('.')[0]}", before="1", after="2")
        out.append(AuditEvent(ts=ts, kind="recommendation", rationale="cpu pressure 42 %",
                              detail={"symptoms": [{"name": "cpu_pressure", "value": 42.5}]}, **common))
        out.append(AuditEvent(ts=ts + 1, kind="apply", outcome="applied", objective_before=0.25, **common))
        out.append(AuditEvent(
            ts=ts + 40, kind="verify", outcome="rolled_back" if rolled else "kept",
            objective_before=0.25, objective_after=0.31 if rolled else 0.18,
            test={"name": "mann_whitney_u", "p_value": 0.003, "n_before": 30, "n_after": 30},
            detail={"duration_s": 34.5}, **common))
        if rolled:
            out.append(AuditEvent(ts=ts + 41, kind="rollback", outcome="rolled_back", **common))
    return out


@pytest.fixture
def trail(tmp_path) -> AuditTrail:
    return AuditTrail(open_db(tmp_path / "state.db"))


@pytest.fixture
def filled(trail) -> AuditTrail:
    trail.append_many(make_events())
    return trail
