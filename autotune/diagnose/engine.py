"""Turn metrics + active symptoms into concrete Actions by evaluating the rule set.

Pure apart from ``read_current(knob, target) -> str | None`` (the knob's normalized current
value, None when unreadable), which callers supply. Step rules (``factor``/``delta``) need a
numeric current value; a value equal to the current one yields no action.

Context the engine adds to the metrics before evaluating (when not already present):
``services.count``, ``services.latency_critical.count``, ``neighbours.count``,
``neighbours.<key>`` for each key of ``NEIGHBOUR_SUMS`` and ``neighbours.min_cpu_cores`` (sums over
role=neighbour services), ``svc.<s>.slo.*_ratio`` from the config SLOs, the config's thread
pools (``pool_facts``), and - only if a rule references them -
knob facts read through ``read_current``: ``host.governor_powersave`` (governor "all" reads
powersave), ``host.thp.enabled_always`` / ``host.thp.defrag_always``.

Cooldowns: ``cooldowns[rule_name]`` is when that rule last fired (applied); the rule stays
quiet until ``rule.cooldown_s`` has passed. Actions come out sorted best first: higher priority,
applicable before advisory, then rule name and target for a stable order.
"""

from __future__ import annotations

import logging
import math
import operator
import re
from collections.abc import Callable
from typing import Any

from autotune.detect.metrics import pool_facts, slo_ratios
from autotune.detect.symptoms import SERVICE_PLACEHOLDER
from autotune.diagnose.rules import (
    _PLACEHOLDER,
    ActionSpec,
    AllCond,
    AnyCond,
    FactorFrom,
    MetricCond,
    MetricRef,
    Rule,
    RuleSet,
    Step,
    SymptomCond,
)
from autotune.host import format_cpulist
from autotune.knobs import get_knob
from autotune.knobs.base import number
from autotune.types import Action, ReadCurrent, ServiceCgroups, Symptom, VerifyPlan

log = logging.getLogger(__name__)
# per-service metrics summed over the role=neighbour services as neighbours.<key>
NEIGHBOUR_SUMS = ("cpu.usage_cores", "mem.usage_bytes", "mem.file_bytes", "mem.growth_bytes_per_s")

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": lambda a, b: math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9),
    "!=": lambda a, b: not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9),
}


def diagnose(
    ruleset: RuleSet,
    metrics: dict[str, float],
    symptoms: list[Symptom],
    config: Any,
    read_current: ReadCurrent,
    now: float,
    cooldowns: dict[str, float] | None = None,
    origins: ReadCurrent | None = None,
    cgroups: dict[str, ServiceCgroups] | None = None,
) -> list[Action]:
    """Actions proposed by every rule whose conditions hold, best first.

    ``origins(knob, target)``: the value the agent found before its changes still in effect
    (the journal's), None when it changed nothing there; give_back rules step toward it.
    ``cgroups``: where each service is now, per controller (``Snapshot.service_cgroups``); a
    rule's ``service`` / ``neighbours`` target is that service's group for the knob's controller."""
    cooldowns = cooldowns or {}
    m = context_metrics(ruleset, metrics, config, read_current)
    actions: list[Action] = []
    for rule in ruleset.rules:
        if not rule.enabled:
            continue
        last = cooldowns.get(rule.name)
        if last is not None and now - last < rule.cooldown_s:
            log.debug("rule %s in cooldown (%.0f s left)", rule.name, rule.cooldown_s - (now - last))
            continue
        for svc in _bindings(rule, config):
            try:
                evidence: dict[str, float] = {}
                if not _holds(rule.when, m, symptoms, svc, evidence):
                    continue
                actions.extend(_actions(rule, svc, m, config, read_current, evidence, origins, cgroups))
            except Exception:  # one bad rule must not stop the others
                log.exception("rule %s failed for %s", rule.name, svc or "host")
    # one proposal per (knob, target): the best-ranked rule wins
    actions.sort(key=lambda a: (-a.priority, a.advisory, a.rule, a.target))
    seen: set[tuple[str, str]] = set()
    out = []
    for a in actions:
        key = (a.knob, a.target) if not a.advisory else (a.rule, a.target)
        if key not in seen:
            seen.add(key)
            out.append(a)
    return out


# -- context --------------------------------------------------------------------------------
def context_metrics(ruleset: RuleSet, metrics: dict[str, float], config: Any, read_current: ReadCurrent) -> dict[str, float]:
    m = dict(metrics)
    services = list(getattr(config, "services", []))
    neighbours = [s for s in services if s.role == "neighbour"]
    m.setdefault("services.count", float(len(services)))
    m.setdefault("services.latency_critical.count", float(sum(s.role == "latency-critical" for s in services)))
    m.setdefault("neighbours.count", float(len(neighbours)))
    for key in NEIGHBOUR_SUMS:
        vals = [m[f"svc.{s.name}.{key}"] for s in neighbours if f"svc.{s.name}.{key}" in m]
        if vals:
            m.setdefault(f"neighbours.{key}", float(sum(vals)))
    m.setdefault("neighbours.min_cpu_cores", float(sum(s.min_cpu_cores or 0.0 for s in neighbours)))
    for name, ratio in slo_ratios(m, services).items():
        m.setdefault(name, ratio)
    for name, v in pool_facts(m, services).items():
        m.setdefault(name, v)
    used = ruleset.context_metrics_used()
    facts = {
        "host.governor_powersave": ("governor", "all", lambda v: "powersave" in v.split()),
        "host.thp.enabled_always": ("thp", "enabled", lambda v: v.strip() == "always"),
        "host.thp.defrag_always": ("thp", "defrag", lambda v: v.strip() == "always"),
    }
    for name, (knob, target, test) in facts.items():
        if name in used and name not in m:
            cur = _safe_read(read_current, knob, target)
            if cur is not None:
                m[name] = 1.0 if test(cur) else 0.0
    return m


def _safe_read(read_current: ReadCurrent, knob: str, target: str) -> str | None:
    try:
        return read_current(knob, target)
    except Exception as err:  # unreadable is a missing reading
        log.debug("read_current(%s, %s) failed: %s", knob, target, err)
        return None


def _bindings(rule: Rule, config: Any) -> list[str | None]:
    if rule.scope == "host":
        return [None]
    return [s.name for s in getattr(config, "services", []) if rule.role is None or s.role == rule.role]


def _sub(name: str, svc: str | None) -> str:
    return name.replace(SERVICE_PLACEHOLDER, svc) if svc is not None else name


# -- conditions -----------------------------------------------------------------------------
def _holds(c: Any, m: dict[str, float], symptoms: list[Symptom], svc: str | None, ev: dict[str, float]) -> bool:
    if isinstance(c, SymptomCond):
        hits = [s for s in symptoms if s.name == c.symptom and (svc is None or s.service in (None, svc))]
        for s in hits:
            ev[s.metric] = s.value
        return bool(hits)
    if isinstance(c, MetricCond):
        left_name = _sub(c.metric, svc)
        left = m.get(left_name)
        if isinstance(c.value, (int, float)):
            right = float(c.value)
        else:
            ref = c.value if isinstance(c.value, MetricRef) else MetricRef(metric=c.value)
            r = m.get(_sub(ref.metric, svc))
            if r is None:
                return False
            ev[_sub(ref.metric, svc)] = r
            right = r * ref.factor
        if left is None:
            return False
        ev[left_name] = left
        return _OPS[c.op](left, right)
    if isinstance(c, AllCond):
        return all(_holds(x, m, symptoms, svc, ev) for x in c.all)
    if isinstance(c, AnyCond):
        # evaluate all branches so the evidence shows every one that held
        return any([_holds(x, m, symptoms, svc, ev) for x in c.any])
    raise TypeError(f"unknown condition {c!r}")


# -- actions --------------------------------------------------------------------------------
def _service_target(config: Any, name: str, knob: str,
                    cgroups: dict[str, ServiceCgroups] | None = None) -> str | None:
    """What ``service`` means for this knob (a cgroup path, the service name...)."""
    try:
        svc = config.service(name)
    except KeyError:
        return None
    return get_knob(knob).service_target(svc, (cgroups or {}).get(name))


def _targets(spec: ActionSpec, svc: str | None, config: Any,
             cgroups: dict[str, ServiceCgroups] | None = None) -> list[tuple[str, str | None]]:
    """(target, service it belongs to) pairs for one action spec."""
    if spec.target == "service":
        t = _service_target(config, svc, spec.knob, cgroups) if svc else None
        return [(t, svc)] if t else []
    if spec.target == "neighbours":
        out = []
        for s in getattr(config, "services", []):
            if s.role == "neighbour" and s.name != svc:
                t = _service_target(config, s.name, spec.knob, cgroups)
                if t:
                    out.append((t, s.name))
        return out
    if spec.target == "host":
        return [("host", svc)]
    return [(spec.target, svc)]


def _variables(m: dict[str, float], svc: str | None, layout_for: str | None = None) -> dict[str, str]:
    v: dict[str, str] = {"service": svc or "host"}
    n = int(m.get("host.ncpu", 0))
    if n:
        v["ncpu"] = str(n)
    v.update(_layout(m, layout_for if layout_for is not None else svc))
    if svc is not None:  # the CPUs it can count on (share_cores: under its busy neighbours too)
        caps = [m.get(f"svc.{svc}.cpu.quota_cores"), m.get(f"svc.{svc}.cpuset.ncpu"), m.get("host.ncpu"),
                m.get(f"svc.{svc}.cpu.share_cores")]
        caps = [c for c in caps if c]
        if caps:
            v["threads_hint"] = str(max(1, math.floor(min(caps))))
    return v


def _layout(m: dict[str, float], svc: str | None) -> dict[str, str]:
    """``dedicated_cpus`` / ``shared_cpus`` for ``svc`` (the rule's bound service): the last
    ceil(n/2) CPUs for it, the rest for the neighbours; never fewer than its fixed thread pool
    (diagnose/pool.py), and no layout at all (the dedicate rules stay silent) when that would leave
    the neighbours fewer CPUs than their min_cpu_cores floors need (at least one)."""
    n = int(m.get("host.ncpu", 0))
    if n < 2:
        return {}
    k = math.ceil(n / 2)
    pool = m.get(f"svc.{svc}.threads.pool") if svc is not None else None
    if pool and m.get(f"svc.{svc}.threads.pool_fixed", 1.0) >= 0.5:
        k = max(k, round(pool))
    if n - k < max(1, math.ceil(m.get("neighbours.min_cpu_cores", 0.0) - 1e-9)):
        return {}
    return {"dedicated_cpus": format_cpulist(list(range(n - k, n))),
            "shared_cpus": format_cpulist(list(range(0, n - k)))}


def render(text: str, m: dict[str, float], svc: str | None,
           extra: dict[str, str] | None = None, layout_for: str | None = None) -> str | None:
    """Fill {name} and {metric:NAME} placeholders; None when one cannot be resolved.
    ``layout_for``: whose {dedicated_cpus}/{shared_cpus} (default ``svc``)."""
    variables = {**_variables(m, svc, layout_for), **(extra or {})}
    missing = False

    def fill(match: re.Match[str]) -> str:
        nonlocal missing
        ph = match.group(1)
        if ph.startswith("metric:"):
            val = m.get(_sub(ph[len("metric:") :], svc))
            if val is None:
                missing = True
                return match.group(0)
            return f"{val:.3g}"
        if ph in variables:
            return variables[ph]
        missing = True
        return match.group(0)

    out = _PLACEHOLDER.sub(fill, text)
    return None if missing else out


def same_value(knob: str, a: str | None, b: str | None) -> bool:
    """The knob's own comparison; an unknown current value differs from any proposal."""
    return a is not None and b is not None and get_knob(knob).same(a, b)


def _bound(b: float | str | MetricRef | None, m: dict[str, float], svc: str | None) -> float | None:
    if isinstance(b, MetricRef):
        v = m.get(_sub(b.metric, svc))
        return None if v is None else v * b.factor
    return m.get(_sub(b, svc)) if isinstance(b, str) else b


def _clamp(x: float, spec: ActionSpec, m: dict[str, float], svc: str | None) -> float:
    b = spec.bounds
    if b is None:
        return x
    lo, hi = _bound(b.min, m, svc), _bound(b.max, m, svc)
    if hi is not None:
        x = min(x, hi)
    if lo is not None:
        x = max(x, lo)
    return x


def _factor(step: Step, m: dict[str, float], bound_svc: str | None) -> float | None:
    f = step.factor
    if isinstance(f, FactorFrom):
        v = m.get(_sub(f.metric, bound_svc))
        return None if v is None else min(f.max, max(f.min, v))
    return f


def _propose(spec: ActionSpec, current: str | None, m: dict[str, float], svc: str | None,
             bound_svc: str | None = None, start: str | None = None) -> str | None:
    """The proposed value. ``svc`` resolves bounds (the target's own service), ``bound_svc``
    the rule's service (a proportional factor); ``start`` is the give-back limit."""
    knob = get_knob(spec.knob)
    if spec.step is not None:
        cur = number(current)
        base = cur if spec.step.of is None else m.get(_sub(spec.step.of, svc))
        if base is None:
            return None  # unlimited ("max"), unreadable or unmeasured: nothing to step from
        if spec.step.factor is not None:
            f = _factor(spec.step, m, bound_svc if bound_svc is not None else svc)
            if f is None:
                return None
            x = base * f
            down = f < 1
        else:
            x = base + spec.step.delta
            down = spec.step.delta < 0
        x = _clamp(x, spec, m, svc)
        if spec.step.of is not None and cur is not None and (x >= cur if down else x <= cur):
            return None  # from the measurement the step would move the limit the wrong way
        if start is not None:
            if number(start) is None:  # found unlimited ("max"): every raise is toward it
                hi = _bound(spec.bounds.max, m, svc) if spec.bounds is not None else None
                if cur is None or x <= cur:
                    return None
                return start if hi is not None and x >= hi else knob.format(x)
            x = _toward(cur, x, number(start))
            if x is None:
                return None
        return knob.format(x)
    if isinstance(spec.value, (int, float)):
        x = float(spec.value)
        return knob.format(_clamp(x, spec, m, svc)) if knob.numeric else str(spec.value)
    # a neighbour's side of a layout is the bound service's layout (its pool sizes both sides)
    text = render(spec.value, m, svc, {"start": start} if start is not None else None, layout_for=bound_svc)
    if text is None:
        return None
    x = number(text)
    if x is not None and knob.numeric:
        return knob.format(_clamp(x, spec, m, svc))
    return text


def _toward(cur: float, x: float, start: float | None) -> float | None:
    """A give-back step: from ``cur`` toward ``start``, never past it; None when the step does
    not move toward it (or there is no numeric start)."""
    if start is None or cur == start:
        return None
    if start > cur:
        x = min(x, start)
        return x if x > cur else None
    x = max(x, start)
    return x if x < cur else None


def _plan(rule: Rule) -> VerifyPlan:
    v = rule.verify
    return VerifyPlan(mode="guard" if rule.give_back else "compare",
                      window_s=v.window_s if v else None, settle_s=v.settle_s if v else None,
                      lockout_s=rule.lockout_s)


def _actions(
    rule: Rule, svc: str | None, m: dict[str, float], config: Any, read_current: ReadCurrent,
    evidence: dict[str, float], origins: ReadCurrent | None = None,
    cgroups: dict[str, ServiceCgroups] | None = None,
) -> list[Action]:
    out = []
    rendered = render(rule.rationale, m, svc)
    rationale = rendered or rule.rationale
    plan = _plan(rule)
    for spec in rule.actions:
        if rendered is None and not spec.is_advisory:
            # no move without evidence: the figures its rationale cites were not measured
            log.debug("rule %s for %s: a figure its rationale cites is missing; no change", rule.name, svc or "host")
            continue
        for target, owner in _targets(spec, svc, config, cgroups):
            advisory = spec.is_advisory
            current = None if get_knob(spec.knob).advisory else _safe_read(read_current, spec.knob, target)
            if current is None and not advisory and get_knob(spec.knob).needs_helper:
                # a host file unreadable here (not on this kernel or cgroup version, a target
                # that is gone): a write could not record what it replaces, and cannot help
                log.debug("rule %s: %s %s cannot be read on this host: not proposed", rule.name, spec.knob, target)
                continue
            start = None
            if rule.give_back:
                start = _safe_read(origins, spec.knob, target) if origins is not None else None
                if start is None or current is None or same_value(spec.knob, current, start):
                    continue  # the agent changed nothing here (or it is back): nothing to give
            proposed = _propose(spec, current, m, owner if spec.target == "neighbours" else svc,
                                bound_svc=svc, start=start)
            if proposed is None:
                log.debug("rule %s: no value for %s %s (current %r)", rule.name, spec.knob, target, current)
                continue
            if same_value(spec.knob, current, proposed):
                continue
            # a change to a neighbour is made FOR the bound service: judge it by that one's
            # objective (the neighbour's own pressure rises by design)
            judged_by = svc if spec.target == "neighbours" else owner
            out.append(Action(
                knob=spec.knob, target=target, service=judged_by, current=current, proposed=proposed,
                rule=rule.name, rationale=rationale, priority=rule.priority, advisory=advisory,
                evidence=dict(evidence), verify=plan,
            ))
    return out
