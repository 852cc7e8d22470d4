"""Why nothing is done: one line per cause, with what would unblock it. Pure.

A symptom the agent can do nothing about, or a proposal it would never apply, used to end in
"nothing to recommend" or a DEBUG line every tick. Each cause here becomes one ``Block``,
which ``recommend`` prints, the agent logs once at INFO and audits once (kind ``blocked``) per
episode: from when it appears until it clears (``key`` leaves out the numbers that move).

- a service with nothing to act on: a declared cgroup or unit that does not exist, no process
  matched, or no cgroup of its own (``ServiceCgroups``, autotune/sensors/service_cgroups.py);
- a proposal a durable check stops (not a passing one such as a cooldown or a change being
  verified): a neighbour's cpu floor (diagnose/floor.py; a smaller step that keeps it is taken
  instead), a target the operator took over after drift, a target the helper's policy refuses;
- a symptom an upsizing rule reacts to, of a service no action addresses, when one of the
  above is why.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

from autotune.diagnose import floor
from autotune.diagnose.gating import GateView
from autotune.config import Config
from autotune.diagnose.rules import AllCond, AnyCond, SymptomCond
from autotune.sensors.service_cgroups import problem_of
from autotune.types import Action, Snapshot, Symptom


class Block(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: tuple[str, ...]  # the episode: what is blocked and by what kind of cause
    kind: str  # no_cgroup | missing | floor | unmanaged | policy
    line: str
    service: str | None = None
    rule: str | None = None
    knob: str | None = None
    target: str | None = None


def services(cfg: Config, snapshot: Snapshot | None) -> list[Block]:
    """One Block per configured service that has nothing to act on, or a note on its cgroup."""
    out: list[Block] = []
    if snapshot is None:
        return out
    for svc in cfg.services:
        reading = snapshot.services.get(svc.name)
        cg = reading.cgroups if reading is not None else None
        if cg is None:
            continue
        wrong = problem_of(cg)
        if wrong is not None:
            kind = "missing" if cg.problem else "no_cgroup"
            what = wrong[0] if cg.problem else f"no cgroup to act on ({wrong[0]})"
            out.append(Block(key=("service", svc.name, kind), kind=kind, service=svc.name,
                             line=f"{svc.name}: {what}: {wrong[1]}"))
        for i, note in enumerate(cg.notes):
            out.append(Block(key=("service", svc.name, "note", str(i)), kind="note",
                             service=svc.name, line=f"{svc.name}: {note}"))
    return out


def actions(proposed: list[Action], view: GateView, refused: Iterable[tuple[str, str]] = ()
            ) -> tuple[list[Action], list[Block]]:
    """The proposals with ``blocked`` set where a durable check stops them (a floor's cut
    applied where a smaller step keeps it), and one Block for each that is blocked."""
    refused = set(refused)
    out: list[Action] = []
    blocks: list[Block] = []
    for a in proposed:
        why = None
        if a.advisory:
            out.append(a)
            continue
        if (a.knob, a.target) in view.unmanaged:
            why = ("unmanaged", f"{a.knob} on {a.target} was changed by someone else (drift)",
                   f"hand it back with `autotune enable {a.knob} {a.target}`")
        elif (a.knob, a.target) in refused:
            why = ("policy", f"the helper's policy refuses {a.knob} on {a.target}",
                   f"allow it in the helper's policy ([knob.\"{a.knob}\"] subtrees), or leave it to the operator")
        else:
            broken = floor.breach(a, view.cpu_shares, view.ncpu, view.cpu_reserve)
            if broken is not None:
                smaller = floor.clamp(a, view.cpu_shares, view.ncpu, view.cpu_reserve)
                if smaller is not None:
                    a = smaller
                else:
                    why = ("floor", broken[1], f"lower {broken[0]}'s min_cpu_cores or give the host more CPUs")
        if why is None:
            out.append(a)
            continue
        kind, reason, fix = why
        a = a.model_copy(update={"blocked": f"{reason}: {fix}"})
        out.append(a)
        blocks.append(Block(key=("action", a.rule, a.knob, a.target, kind), kind=kind, service=a.service,
                            rule=a.rule, knob=a.knob, target=a.target,
                            line=f"{a.rule} for {a.service or a.target} blocked: {reason}: {fix}"))
    return out, blocks


def symptoms(found: list[Symptom], proposed: list[Action], cfg: Config, snapshot: Snapshot | None,
             *, reacting: set[str] | None = None, refused: Iterable[tuple[str, str]] = ()) -> list[Block]:
    """One Block per service symptom (of those ``reacting`` rules act on; None: all) that no
    change addresses (advice is no change) because the service has nothing to act on or the
    policy refuses it. A symptom whose proposals are blocked is already said by their Blocks."""
    refused = set(refused)
    out: list[Block] = []
    placed = snapshot.service_cgroups() if snapshot is not None else {}
    seen: set[tuple[str, str]] = set()
    for s in found:
        if s.service is None or (reacting is not None and s.name not in reacting):
            continue
        if (s.service, s.name) in seen or any(a.service == s.service and not a.advisory for a in proposed):
            continue
        seen.add((s.service, s.name))
        head = f"{s.service}: {s.name} ({s.metric.rsplit('.', 1)[-1]} {s.value:.3g})"
        cg = placed.get(s.service)
        wrong = problem_of(cg) if cg is not None else None
        if wrong is not None:
            what = f"nothing to act on: {wrong[0]}" if cg.problem else f"no cgroup to act on ({wrong[0]})"
            out.append(Block(key=("symptom", s.service, s.name, "no_cgroup"), kind="no_cgroup",
                             service=s.service, line=f"{head} but {what}: {wrong[1]}"))
            continue
        mine = [(k, t) for k, t in sorted(refused) if cg is not None and t in cg.paths.values()]
        if mine:
            k, t = mine[0]
            out.append(Block(key=("symptom", s.service, s.name, "policy"), kind="policy", service=s.service,
                             knob=k, target=t,
                             line=f"{head} but the helper's policy refuses {k} on {t}: allow it in the "
                                  f"helper's policy ([knob.\"{k}\"] subtrees), or leave it to the operator"))
    return out


def lines(blocks: list[Block]) -> list[str]:
    """The blocks' lines for one report (``recommend``): a service's own "nothing to act on"
    line is left out where a line about one of its symptoms says the same; notes (kind
    "note": they block nothing) go with the report's notes."""
    restated = {b.service for b in blocks if b.key[0] == "symptom" and b.kind == "no_cgroup"}
    return [b.line for b in blocks if b.kind != "note"
            and not (b.key[0] == "service" and b.kind in ("no_cgroup", "missing") and b.service in restated)]


def reacting_symptoms(ruleset) -> set[str]:
    """Symptoms some rule that takes or gives resources (not a give-back) reacts to."""
    out: set[str] = set()

    def walk(c) -> None:
        if isinstance(c, SymptomCond):
            out.add(c.symptom)
        elif isinstance(c, AllCond):
            for x in c.all:
                walk(x)
        elif isinstance(c, AnyCond):
            for x in c.any:
                walk(x)

    for rule in getattr(ruleset, "rules", []):
        if rule.enabled and not rule.give_back:
            walk(rule.when)
    return out
