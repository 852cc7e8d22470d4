"""Which proposed action (if any) may be applied now. Pure: all state comes in as a view.

One fix per tick (PSI averages lag, so the effect of one change must be measured before the
next); one change in flight per target; cooldowns per rule and per knob; a global hourly rate
limit; never touch a target an operator took over (drift -> unmanaged); never break a
service's ``min_cpu_cores`` floor (see ``floor``); a knob whose change restarts the service
(``Knob.min_interval_s``) waits that long after its last change, and while it is verified no
other change is made to that service (its latency must show the restart's effect alone).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from autotune.diagnose import floor
from autotune.config import Verification
from autotune.knobs import KNOBS
from autotune.types import Action


class GateView(BaseModel):
    """What the journal says right now, reduced to what gating needs."""

    model_config = ConfigDict(frozen=True)

    in_flight: frozenset[tuple[str, str]] = frozenset()  # (knob, target) being verified
    unmanaged: frozenset[tuple[str, str]] = frozenset()
    last_rule_ts: dict[str, float] = {}
    last_knob_ts: dict[str, float] = {}  # key: knob name
    changes_last_hour: int = 0
    cpu_shares: dict[str, floor.CpuShare] = {}  # configured services' cpu, for floor checks
    ncpu: int = 0
    cpu_reserve: float = 0.0  # cores busy outside the configured services
    lockout_until: dict[str, float] = {}  # service -> no give-back before (a give-back broke its SLO)
    restarting: frozenset[str] = frozenset()  # services whose restart (Knob.min_interval_s) is being verified


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    chosen: Action | None
    skipped: list[tuple[str, str]]  # (rule/knob/target, reason)


def select_action(actions: list[Action], view: GateView, now: float, v: Verification) -> Decision:
    """Pick the best applicable action; say why every other candidate was skipped."""
    skipped: list[tuple[str, str]] = []
    chosen: Action | None = None
    ranked = sorted(actions, key=lambda a: (-(a.score if a.score is not None else 0.0), -a.priority))
    for a in ranked:
        key = f"{a.rule}:{a.knob}:{a.target}"
        if a.advisory:
            skipped.append((key, "advisory only: recommendation, never applied"))
            continue
        if a.blocked:  # a durable check stops it (diagnose/blocked.py said why, once)
            skipped.append((key, f"blocked: {a.blocked}"))
            continue
        if chosen is not None:
            skipped.append((key, f"one change per tick: {chosen.rule} chosen"))
            continue
        if (a.knob, a.target) in view.unmanaged:
            skipped.append((key, "target unmanaged after drift (operator must re-enable)"))
            continue
        until = view.lockout_until.get(a.service or "")
        if a.verify.mode == "guard" and until is not None and now < until:
            skipped.append((key, f"give-back locked out for {until - now:.0f} s more: the last one "
                                 f"broke {a.service}'s SLO"))
            continue
        broken = floor.violation(a, view.cpu_shares, view.ncpu, view.cpu_reserve)
        if broken is not None:
            smaller = floor.clamp(a, view.cpu_shares, view.ncpu, view.cpu_reserve)
            if smaller is None:
                skipped.append((key, f"cpu floor: {broken}"))
                continue
            a = smaller
        if a.service in view.restarting:
            skipped.append((key, f"{a.service} was restarted by a change still being verified: its "
                                 "latency must show that change alone"))
            continue
        if any(t == a.target for (_, t) in view.in_flight):
            skipped.append((key, "a change on this target is still being verified"))
            continue
        if view.changes_last_hour >= v.max_changes_per_hour:
            skipped.append((key, f"global rate limit: {v.max_changes_per_hour} changes/hour reached"))
            continue
        last_rule = view.last_rule_ts.get(a.rule)
        if last_rule is not None and now - last_rule < v.rule_cooldown_s:
            skipped.append((key, f"rule cooldown: {v.rule_cooldown_s - (now - last_rule):.0f} s left"))
            continue
        last_knob = view.last_knob_ts.get(a.knob)
        knob_wait = max(v.knob_cooldown_s, getattr(KNOBS.get(a.knob), "min_interval_s", 0.0))
        if last_knob is not None and now - last_knob < knob_wait:
            skipped.append((key, f"knob cooldown: {knob_wait - (now - last_knob):.0f} s left"))
            continue
        chosen = a
    return Decision(chosen=chosen, skipped=skipped)


# the levers that only give the service CPU when a compare-verified rule or the search moves them
# (their takes are guard-verified); a cpuset or a thread count can hurt as well as help
BREACH_LEVERS = frozenset({"cgroup.cpu_quota", "cgroup.cpu_weight"})


def answers_breach(action: Action, metrics: dict[str, float]) -> bool:
    """A change that gives CPU to a service over its SLO (slack < 0) need not wait for a full
    before-window to be verified against (``Verifier.can_measure``): the service is failing its
    users now, and giving it CPU is the direction that cannot break its SLO. Its verdict may then
    be "too few samples", which keeps it. Live, that wait was 4-13 s of a breach before the
    answer (2026-12-07-coloc-llamacpp-pool2: after a fresh start and after a rollback); the goal
    is the first corrective change <= 2 s after a breach."""
    if action.service is None or action.knob not in BREACH_LEVERS or action.verify.mode != "compare":
        return False
    slack = metrics.get(f"svc.{action.service}.slo.slack")
    return slack is not None and slack < 0
