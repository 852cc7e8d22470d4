"""A service's compute-thread pool as a constraint on what the agent gives it. Pure.

Measured on this kind of host (llama.cpp, a 60M model, /work/shared/LLAMACPP-NOTES.md): a fixed
pool of 2 threads on one CPU ran 1.3-1.5 tokens/s against 62 with one thread (22-26x), and the
dedicate-CPUs layout that put it on one CPU took 33 s per request against 0.79 s: each thread
waits at a barrier for a sibling that is not running. ollama #17916 (45x under cpu.max), vLLM
#9113 and llama.cpp #19110 report the same. So for a FIXED pool of P threads (declared in
``[service.threads]``, or observed, detect/metrics ``threads.pool``, and not declared
``follows-quota``; P >= 2: a single thread has no sibling to wait for):

- no cpuset or affinity narrower than P CPUs: refused (the dedicate-CPUs rules are sized to the
  pool by the engine's ``{dedicated_cpus}``, or stay silent);
- no cpu quota step down to below P cores unless it is verified as a guard (kept while the SLO
  holds, undone at once when it breaks): a compare-mode step is turned into a guard, and refused
  for a service without an SLO to guard;
- the learned search explores no quota under P (``min_quota``): its candidates start there.

Every proposal, rules' and search's alike, goes through ``screen`` (Agent.evaluate), in
recommend and apply mode. A pool that follows its quota resizes itself: no constraint.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict

from autotune.cgroupfs import norm_cgpath
from autotune.config import Service
from autotune.errors import ParseError
from autotune.knobs import KNOBS
from autotune.types import Action, VerifyPlan

GUARD = VerifyPlan(mode="guard", window_s=10.0, settle_s=2.0, lockout_s=30.0)
MEMORY_S = 600.0  # an observed pool is remembered this long while the service idles


class Pool(BaseModel):
    """A fixed compute-thread pool of one service."""

    model_config = ConfigDict(frozen=True)

    service: str
    threads: int
    declared: bool  # from [service.threads] count, else observed from its tasks
    guardable: bool  # the service declares an SLO and a latency source: a step can be guarded
    seen_ts: float = 0.0

    def describe(self) -> str:
        how = "declared" if self.declared else "observed"
        return f"{self.service}'s fixed pool of {self.threads} compute threads ({how})"


def pools_from(metrics: dict[str, float], services: Iterable[Service], now: float = 0.0) -> dict[str, Pool]:
    """The fixed pools the metrics show (``threads.pool`` with ``threads.pool_fixed`` 1)."""
    out = {}
    for svc in services:
        p = f"svc.{svc.name}.threads."
        n = metrics.get(p + "pool")
        if not n or n < 1.5 or metrics.get(p + "pool_fixed", 1.0) < 0.5:
            continue  # one thread has no sibling to wait for: it only runs slower on less CPU
        out[svc.name] = Pool(service=svc.name, threads=max(1, round(n)),
                             declared=metrics.get(p + "pool_declared", 0.0) > 0.5,
                             guardable=svc.latency is not None and any(svc.slo.model_dump().values()), seen_ts=now)
    return out


def remember(old: dict[str, Pool], fresh: dict[str, Pool], now: float, keep_s: float = MEMORY_S) -> dict[str, Pool]:
    """``fresh`` plus the pools of ``old`` seen within ``keep_s``: an idle window shows no pool,
    and the constraint must not lapse the moment the service pauses."""
    kept = {k: v for k, v in old.items() if now - v.seen_ts <= keep_s and k not in fresh}
    return {**kept, **fresh}


def min_quota(pool: Pool | None) -> float:
    """The smallest quota (cores) the learned search explores for this pool."""
    return float(pool.threads) if pool is not None else 0.0


def _owner(action: Action, pools: dict[str, Pool], services: dict[str, Service]) -> Pool | None:
    """The pool whose service ``action.target`` is (the knob says what its target is)."""
    knob = KNOBS.get(action.knob)
    if knob is None:
        return None
    for name, pool in pools.items():
        svc = services.get(name)
        t = knob.service_target(svc) if svc is not None else None
        if t is None:
            continue
        if t == action.target:
            return pool
        try:
            if t.startswith("/") and norm_cgpath(t) == norm_cgpath(action.target):
                return pool
        except ParseError:
            continue
    return None


def _share(knob_name: str, value: str | None) -> dict[str, Any] | None:
    knob = KNOBS.get(knob_name)
    if knob is None or value is None:
        return None
    try:
        return knob.cpu_share(value)
    except ValueError:
        return None


def check(action: Action, pools: dict[str, Pool], services: dict[str, Service]) -> tuple[Action | None, str | None]:
    """(the action, possibly turned into a guard, or None) and why it changed or was refused."""
    if action.advisory:
        return action, None
    pool = _owner(action, pools, services)
    new = _share(action.knob, action.proposed)
    if pool is None or not new:
        return action, None
    old = _share(action.knob, action.current) or {}
    p = pool.threads
    if "cpus" in new and new["cpus"] is not None:
        n, was = len(new["cpus"]), old.get("cpus")
        if n < p and (was is None or n < len(was)):
            return None, (f"thread pool: would leave {pool.describe()} {n} CPU(s); a pool on fewer CPUs "
                          f"than threads waits at every barrier for a thread that is not running")
    if "quota_cores" in new:
        q, was = new["quota_cores"], old.get("quota_cores", float("inf"))
        was = float("inf") if was is None else was
        if q is not None and q < p and q < was and action.verify.mode != "guard":
            if not pool.guardable:
                return None, (f"thread pool: a quota of {q:g} cores is below {pool.describe()}, and "
                              f"{pool.service} has no SLO to guard the step with")
            plan = GUARD.model_copy(update={k: v for k, v in (("window_s", action.verify.window_s),
                                                               ("settle_s", action.verify.settle_s)) if v})
            why = f"quota {q:g} is below {pool.describe()}: guarded (undone at once if the SLO breaks)"
            return action.model_copy(update={"verify": plan, "rationale": f"{action.rationale} ({why})"}), why
    return action, None


def screen(actions: list[Action], pools: dict[str, Pool], services: Iterable[Service]
           ) -> tuple[list[Action], list[tuple[Action, str]]]:
    """Every proposal through ``check``: (kept, possibly guarded; [(refused action, why)])."""
    by_name = {s.name: s for s in services}
    kept, refused = [], []
    for a in actions:
        out, why = check(a, pools, by_name) if pools else (a, None)
        if out is None:
            refused.append((a, why or "thread pool"))
        else:
            kept.append(out)
    return kept, refused
