"""The CPU floor a service keeps (``min_cpu_cores``), whatever the agent changes. Pure.

A neighbour's floor is a promise to whoever runs it on this node: giving the inference
server more CPU must never starve it below that. Rule bounds can encode it for one host, but
only by hand; this check refuses any cpu quota / weight / idle / cpuset change that would
drop a floored service's *guaranteed* CPU below its floor.

Guaranteed CPU of service n under full contention, from the configured services only:

- available: the cpus n may use, minus ``reserve`` (CPU measured in use by everything outside
  the configured services: the agent, a gate, a load balancer... they are not ours to cap);
- by caps: available minus what the others can take at most (each other's quota, or the cpus
  it shares with n when unlimited);
- by weight: n's weight share of the available cpus against the others sharing them (0 if idle);
- guaranteed = min(n's own cap, max(by caps, by weight)).

A change that would break a floor is shrunk to the largest step that keeps it (``clamp``) and
refused only when no useful step is left. A change that does not lower a guarantee is never
refused, so an already-broken floor does not freeze the agent.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict

from autotune.cgroupfs import norm_cgpath
from autotune.config import Service
from autotune.errors import ParseError
from autotune.knobs import KNOBS
from autotune.knobs.base import Knob
from autotune.types import Action, Snapshot

DEFAULT_WEIGHT = 100
EPS = 1e-6


class CpuShare(BaseModel):
    """What one service can draw on and is entitled to, as its cgroup reads now."""

    model_config = ConfigDict(frozen=True)

    cgroup: str  # its cpu controller's group (what cpu quota / weight / idle changes target)
    cpuset_cgroup: str | None = None  # its cpuset group, when that is another one (cgroup v1)
    quota_cores: float | None = None  # None = unlimited
    weight: int = DEFAULT_WEIGHT
    cpus: frozenset[int] | None = None  # None = every cpu
    idle: bool = False
    floor: float | None = None  # min_cpu_cores


def shares_from(snapshot: Snapshot | None, services: list[Service]) -> dict[str, CpuShare]:
    """Current shares of the configured services that have a cgroup reading (and a cpu group:
    the resolved one, ``ServiceReading.cgroups``, when there is a resolution)."""
    out: dict[str, CpuShare] = {}
    if snapshot is None:
        return out
    for svc in services:
        reading = snapshot.services.get(svc.name)
        cg = reading.cgroup if reading is not None else None
        placed = reading.cgroups if reading is not None else None
        cpu_path = placed.cpu if placed is not None else (cg.path if cg is not None else None)
        if cg is None or cpu_path is None:
            continue
        cpuset = placed.cpuset if placed is not None else None
        out[svc.name] = CpuShare(
            cgroup=norm_cgpath(cpu_path), cpuset_cgroup=norm_cgpath(cpuset) if cpuset else None,
            quota_cores=cg.cpu_quota_cores,
            weight=cg.cpu_weight if cg.cpu_weight is not None else DEFAULT_WEIGHT,
            cpus=frozenset(cg.cpuset_cpus) if cg.cpuset_cpus else None, floor=svc.min_cpu_cores)
    return out


def reserve_from(metrics: dict[str, float] | None, services: list[Service], ncpu: int) -> float:
    """Cores busy outside the configured services: host busy cores minus their usage."""
    if not metrics or "cpu.util_pct" not in metrics:
        return 0.0
    busy = metrics["cpu.util_pct"] / 100.0 * ncpu
    ours = sum(metrics.get(f"svc.{s.name}.cpu.usage_cores", 0.0) for s in services)
    return max(0.0, busy - ours)


def guaranteed(name: str, shares: dict[str, CpuShare], ncpu: int, reserve: float = 0.0) -> float:
    """Cores ``name`` gets when every configured service wants all it can have."""
    me = shares[name]
    mine = me.cpus if me.cpus is not None else frozenset(range(ncpu))
    room = max(0.0, len(mine) - reserve * len(mine) / max(1, ncpu))
    own_cap = min(me.quota_cores if me.quota_cores is not None else math.inf, float(len(mine)))
    taken, rival_weight = 0.0, 0
    for other, s in shares.items():
        if other == name:
            continue
        overlap = len(mine if s.cpus is None else mine & s.cpus)
        if overlap == 0:
            continue
        taken += min(s.quota_cores if s.quota_cores is not None else math.inf, float(overlap))
        rival_weight += 0 if s.idle else s.weight
    by_caps = max(0.0, room - taken)
    if me.idle:
        by_weight = 0.0 if rival_weight else room
    else:
        by_weight = room * me.weight / (me.weight + rival_weight)
    return min(own_cap, max(by_caps, by_weight))


def _effect(knob: Knob | None, value: str) -> dict[str, Any] | None:
    """The knob's change to a CpuShare (``Knob.cpu_share``); None when it does not touch
    guaranteed CPU; {} for a malformed value (the knob itself refuses it, with its own error)."""
    if knob is None:
        return None
    try:
        return knob.cpu_share(value)
    except ValueError:
        return {}


def violation(action: Action, shares: dict[str, CpuShare], ncpu: int, reserve: float = 0.0) -> str | None:
    """Why ``action`` would break a service's floor, or None if it keeps every floor."""
    broken = breach(action, shares, ncpu, reserve)
    return broken[1] if broken is not None else None


def breach(action: Action, shares: dict[str, CpuShare], ncpu: int, reserve: float = 0.0
           ) -> tuple[str, str] | None:
    """(the service whose floor ``action`` would break, why), or None if it keeps every floor."""
    change = _effect(KNOBS.get(action.knob), action.proposed)
    if change is None or ncpu <= 0:
        return None
    try:
        target = norm_cgpath(action.target)
    except ParseError:
        return None  # the knob refuses a malformed target with its own error
    hit = [n for n, s in shares.items() if target in (s.cgroup, s.cpuset_cgroup)]
    if not hit:
        return None  # not a configured service's cgroup: its effect on floors is unknown
    after = dict(shares)
    for n in hit:
        after[n] = shares[n].model_copy(update=change)
    for name, s in shares.items():
        if s.floor is None:
            continue
        was, now = guaranteed(name, shares, ncpu, reserve), guaranteed(name, after, ncpu, reserve)
        if now + EPS < s.floor and now + EPS < was:
            return name, (f"would leave {name} {now:.2f} guaranteed cores (was {was:.2f}), "
                          f"below its min_cpu_cores {s.floor:g}")
    return None


def clamp(action: Action, shares: dict[str, CpuShare], ncpu: int, reserve: float = 0.0,
          min_step: float = 0.05) -> Action | None:
    """The largest part of a numeric quota/weight step that keeps every floor, or None.

    Bisects between the current and the proposed value, then rounds toward the current value
    at the knob's step (``Knob.decimals``: stay on the safe side); a step under ``min_step``
    (relative) is not worth a change and verification window.
    """
    knob = KNOBS.get(action.knob)
    if knob is None or not knob.numeric or _effect(knob, action.proposed) is None or action.current is None:
        return None
    def value(v: str) -> float:  # an unlimited quota ("max") is every cpu
        return float(ncpu) if v.strip().lower() in ("max", "-1") else float(v)

    try:
        lo, hi = value(action.current), value(action.proposed)
    except ValueError:
        return None

    seen: dict[str, bool] = {}  # the verdict depends only on the written value: once each

    def ok(v: float) -> bool:
        text = fmt(v)
        if text not in seen:
            seen[text] = violation(action.model_copy(update={"proposed": text}), shares, ncpu, reserve) is None
        return seen[text]

    def fmt(v: float) -> str:
        return knob.format(v)

    if not ok(lo):
        return None
    good = lo
    a, b = lo, hi
    for _ in range(30):
        mid = (a + b) / 2
        if ok(mid):
            good, a = mid, mid
        else:
            b = mid
    scale = 10 ** knob.decimals
    good = math.floor(good * scale) / scale if hi > lo else math.ceil(good * scale) / scale
    if abs(good - lo) < min_step * max(abs(lo), 1e-9) or not ok(good):
        return None
    return action.model_copy(update={
        "proposed": fmt(good),
        "rationale": f"{action.rationale} (step cut from {action.proposed} to {fmt(good)} to keep the "
                     f"neighbours' min_cpu_cores)"})
