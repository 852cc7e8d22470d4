"""The allocation search (diagnose/search/model.py) wired into the agent: trials from what the
agent observes, proposals as ordinary guarded Actions, trials kept in the state DB.

For each latency-critical service that declares an SLO, has a latency source and a cgroup,
next to neighbours with cgroups:

- ``observe``: once the allocation (its quota, its weight : the neighbours') has been in place
  for ``trial_s`` past the newest change, the window since that change becomes a Trial: load
  (requests/s; generated tokens/s where the server counts no requests, as llama.cpp), SLO
  slack, the neighbours' share of the host. A guarded change of the search
  that broke the SLO (undone at once by the verify stage) becomes a Trial too: that is what
  teaches the model where the unsafe region begins.
- ``actions``: the proposal as Actions on the knobs that differ from the live allocation
  (quota on the service, weight on the neighbours), rule ``search``, verified as a
  guard (kept while the SLO holds, undone at once when it breaks). While the search is active
  for a service, the rule pack's give-backs for it stand aside (the search decides how much to
  return); its upsizes still fire when the slack is low: the rules are the safety net.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from autotune import slo as slo_table
from autotune.diagnose import pool as P
from autotune.config import Config, Service
from autotune.detect.metrics import derive_metrics
from autotune.diagnose.search import model as L
from autotune.knobs import get_knob
from autotune.knobs.base import number
from autotune.store.db import migrate, transaction
from autotune.types import Action, ReadCurrent, ServiceCgroups, Snapshot, VerifyPlan

log = logging.getLogger(__name__)

RULE = "search"
RULES = (RULE, "learned-allocation")  # its changes in the journal, under its old name too
COMPONENT = "learner"
PRIORITY = 75  # under the rules' upsizes (80-90): the safety net wins when the SLO breaks
# a move that takes from the service is guarded (undone at once if the SLO breaks), one that
# gives to it is compared like the rules' upsizes
PLAN = VerifyPlan(mode="guard", window_s=10.0, settle_s=2.0, lockout_s=30.0)
PLAN_UP = VerifyPlan(mode="compare", window_s=10.0, settle_s=2.0)
MAX_TRIALS_KEPT = 500  # per service; older ones are dropped
FIT_TRIALS = 150  # the newest trials a fit uses (a GP fit is cubic in them)
# the knobs the search moves and the allocation dimension each one is (rules/slo.yaml steps them)
SEARCHED = {"cgroup.cpu_quota": "quota_cores", "cgroup.cpu_weight": "ratio"}


def _v1(db) -> None:
    db.execute("CREATE TABLE learner_trials (id INTEGER PRIMARY KEY, service TEXT NOT NULL, ts REAL NOT NULL,"
               " trial TEXT NOT NULL, entry_id INTEGER)")
    db.execute("CREATE INDEX learner_trials_service ON learner_trials(service, ts)")


MIGRATIONS = [_v1]


class Search:
    # where each service is now (Snapshot.service_cgroups): the agent assigns it every tick
    placed: dict[str, ServiceCgroups] = {}

    def __init__(self, cfg: Config, db, journal, *, ncpu: int) -> None:
        self.cfg = cfg
        self.db = db
        self.journal = journal
        self.ncpu = ncpu
        self.settings = L.Settings(safe_prob=cfg.search.safe_prob, stop_ei=cfg.search.stop_ei,
                                   max_trials=cfg.search.max_trials, phase_change=cfg.search.phase_change)
        migrate(db, COMPONENT, MIGRATIONS)
        self.phases: dict[str, L.Phases] = {}
        self.proposals: dict[str, L.Proposal] = {}
        self._model_key: dict[str, tuple] = {}
        self.pools: dict[str, P.Pool] = {}  # fixed thread pools, set by the agent each tick
        self._last_trial_ts: dict[str, float] = {}
        self._facts: dict[str, tuple] = {}  # service -> (its window facts, their span s): rationales
        self.fitters: dict[str, L.Fitter] = {}
        # service -> ((max id, count) of its rows, its trials): parsed again only when those change
        self._trials: dict[str, tuple[tuple, list[L.Trial]]] = {}

    # -- who is searched ------------------------------------------------------------------------
    def cgroup(self, svc: Service) -> str | None:
        """The service's cpu group: as resolved (``placed``), else as declared."""
        placed = self.placed.get(svc.name)
        return placed.cpu if placed is not None else svc.cgroup

    def services(self) -> list[Service]:
        """Latency-critical services with an SLO their latency source can measure (autotune/slo.py)
        and a cgroup, with neighbours."""
        if not self.cfg.search.enabled or not self.neighbours():
            return []
        return [s for s in self.cfg.services if s.role == "latency-critical" and self.cgroup(s) and s.latency
                and slo_table.counted(s)]

    def neighbours(self) -> list[Service]:
        return [s for s in self.cfg.services if s.role == "neighbour" and self.cgroup(s)]

    def why_inactive(self) -> str | None:
        if not self.cfg.search.enabled:
            return "disabled in [search]"
        if not self.neighbours():
            return "no neighbour service with a cgroup: nothing to share the CPUs with"
        if not self.services():
            return "no latency-critical service with a cgroup and an SLO its latency source can measure"
        return None

    # -- the live allocation --------------------------------------------------------------------
    def allocation(self, svc: Service, read: ReadCurrent) -> L.Allocation | None:
        quota = read("cgroup.cpu_quota", self.cgroup(svc))
        weight = number(read("cgroup.cpu_weight", self.cgroup(svc)))
        nw = [number(read("cgroup.cpu_weight", self.cgroup(n))) for n in self.neighbours()]
        if quota is None or weight is None or not nw or any(w is None for w in nw):
            return None
        q = number(quota)
        return L.Allocation(quota_cores=q, ratio=weight / (sum(nw) / len(nw)))  # type: ignore[arg-type]

    def candidates(self, svc: Service) -> list[L.Allocation]:
        """The grid; a fixed thread pool of P threads puts its quotas at P cores or more
        (diagnose/pool.py: under that each step waits at the pool's barriers)."""
        floor = sum(n.min_cpu_cores or 0.0 for n in self.neighbours())
        start = number(self.journal.origin("cgroup.cpu_quota", self.cgroup(svc)) or "") or 0.25
        quota_min = max(min(start, 1.0), P.min_quota(self.pools.get(svc.name)))
        return L.candidates(self.ncpu, quota_min=quota_min, neighbour_floor=floor)

    # -- trials -----------------------------------------------------------------------------------
    def trials(self, service: str | None = None) -> list[L.Trial]:
        """Trials kept for ``service`` (None: all), oldest first. Every tick asks: a service's
        are parsed again only when its rows changed (a new trial, or ``autotune search import``
        from another process), which one indexed query tells."""
        if service is not None:
            marker = tuple(self.db.execute(
                "SELECT MAX(id), COUNT(*) FROM learner_trials WHERE service=?", [service]).fetchone())
            kept = self._trials.get(service)
            if kept is not None and kept[0] == marker:
                return list(kept[1])
        sql = "SELECT trial FROM learner_trials" + (" WHERE service=?" if service else "") + " ORDER BY id"
        out = [L.Trial.model_validate_json(r[0]) for r in self.db.execute(sql, [service] if service else [])]
        if service is not None:
            self._trials[service] = (marker, list(out))
        return out

    def _add(self, t: L.Trial, entry_id: int | None = None) -> None:
        with transaction(self.db):
            self.db.execute("INSERT INTO learner_trials(service, ts, trial, entry_id) VALUES (?,?,?,?)",
                            [t.service, t.ts, t.model_dump_json(), entry_id])
            self.db.execute("DELETE FROM learner_trials WHERE service=? AND id NOT IN (SELECT id FROM "
                            "learner_trials WHERE service=? ORDER BY id DESC LIMIT ?)",
                            [t.service, t.service, MAX_TRIALS_KEPT])

    def observe(self, now: float, window: list[Snapshot], read: ReadCurrent) -> list[L.Trial]:
        """Record what the allocation in place since the newest change did (``window``: the
        agent's samples since then), and any guarded change of ours that broke the SLO."""
        out = []
        changed = self.journal.last_applied_ts() or 0.0
        for svc in self.services():
            out += self._violations(svc, window, read)
            # from the newest change (settled) or the phase's start, whichever is later: a
            # window that straddles a load change describes neither load
            phase = self.phases.get(svc.name)
            since = max(changed + PLAN.settle_s, phase.started_ts if phase is not None else 0.0)
            span = [s for s in window if s.ts >= since]
            if len(span) < 2 or span[-1].ts - span[0].ts < self.cfg.search.trial_s:
                continue
            p = self.proposals.get(svc.name)
            settled = p is not None and p.status == "converged" and p.allocation == self.allocation(svc, read)
            # holding a converged allocation: one trial a minute keeps the model current at a
            # sixth of the fits (each fit is most of the search's CPU)
            every = self.cfg.search.trial_s * (6 if settled else 1)
            if now - self._last_trial_ts.get(svc.name, 0.0) < every:
                continue
            t = self._trial(svc, span, read, now)
            if t is not None:
                self._add(t)
                self._last_trial_ts[svc.name] = now
                out.append(t)
        return out

    def _window_facts(self, svc: Service, span: list[Snapshot]) -> tuple[float, float, float, bool] | None:
        """(load /s, slack, neighbours' host share, served) over ``span``; None without
        slack. ``served``: a request, a token or a probe was measured in it (an idle window's
        slack of 1 is a definition, not a measurement of the allocation)."""
        m = derive_metrics(span, ncpu=self.ncpu, services=self.cfg.services, host=False)
        p = f"svc.{svc.name}."
        slack = m.get(p + "slo.slack")
        if slack is None:
            return None
        dt = max(1e-6, span[-1].ts - span[0].ts)
        done = m.get(p + "latency.requests")
        if done is None:  # llama.cpp's page counts no requests: its generated tokens are the load
            done = m.get(p + "latency.tokens", 0.0)
        load = done / dt
        be = sum(m.get(f"svc.{n.name}.cpu.usage_cores", 0.0) for n in self.neighbours()) / max(1, self.ncpu)
        served = any(m.get(p + k, 0.0) > 0 for k in ("latency.requests", "latency.tokens", "latency.probe.samples"))
        return load, slack, be, served

    def _trial(self, svc: Service, span: list[Snapshot], read: ReadCurrent, now: float) -> L.Trial | None:
        """The allocation in place over ``span``, measured: none when nothing was served in it."""
        alloc = self.allocation(svc, read)
        facts = self._window_facts(svc, span)
        if alloc is None or facts is None or not facts[3]:
            return None
        load, slack, be, _ = facts
        return L.Trial(ts=now, start_ts=span[0].ts, service=svc.name, allocation=alloc, ncpu=self.ncpu, load=load,
                       slack=slack, be_share=be, score=L.score(slack, be))

    def _violations(self, svc: Service, window: list[Snapshot], read: ReadCurrent) -> list[L.Trial]:
        """Our guarded changes undone because the SLO broke, not yet recorded as trials."""
        seen = {r[0] for r in self.db.execute(
            "SELECT entry_id FROM learner_trials WHERE entry_id IS NOT NULL AND service=?", [svc.name])}
        out = []
        for e in self.journal.entries(states=("rolled_back",), since_ts=(window[0].ts - 60) if window else None):
            vr = e.verify_result
            if (e.rule not in RULES or e.service != svc.name or e.id in seen or vr is None
                    or vr.verdict != "violated" or vr.after_median is None):
                continue
            live = self.allocation(svc, read)
            if live is None:
                continue
            tried = self._with(live, e.knob, e.target, e.proposed, read)
            facts = self._window_facts(svc, window) if len(window) > 1 else None
            load = facts[0] if facts else 0.0
            t = L.Trial(ts=e.finished_ts or e.ts, start_ts=e.ts, service=svc.name, allocation=tried, ncpu=self.ncpu, load=load,
                        slack=vr.after_median, be_share=facts[2] if facts else 0.0, score=L.score(vr.after_median, 0.0))
            self._add(t, entry_id=e.id)
            out.append(t)
        return out

    def _with(self, a: L.Allocation, knob: str, target: str, value: str, read: ReadCurrent) -> L.Allocation:
        """``a`` with one of the search's own changes made: the quota on the service, or one
        neighbour's weight (the ratio moves by that neighbour's old / new weight)."""
        v = number(value)
        dim = SEARCHED.get(knob)
        if dim == "quota_cores":
            return a.model_copy(update={"quota_cores": v})
        old = number(read(knob, target))
        if dim == "ratio" and v and old:
            return a.model_copy(update={"ratio": a.ratio * old / v})
        return a

    # -- proposals ------------------------------------------------------------------------------
    def propose(self, svc: Service, now: float, window: list[Snapshot]) -> L.Proposal:
        """The search's word for ``svc`` now (refit only when a trial was added)."""
        facts = self._window_facts(svc, window) if len(window) > 1 else None
        self._facts[svc.name] = (facts, window[-1].ts - window[0].ts if len(window) > 1 else 0.0)
        load = facts[0] if facts else (self.phases[svc.name].ref_load if svc.name in self.phases else 0.0)
        phases = self.phases.setdefault(svc.name, L.Phases())
        new_phase = phases.update(load or 0.0, now, change=self.settings.phase_change)
        trials = self.trials(svc.name)
        key = (len(trials), new_phase, P.min_quota(self.pools.get(svc.name)))
        if not new_phase and self._model_key.get(svc.name) == key and svc.name in self.proposals:
            return self.proposals[svc.name]
        phase_trials = [t for t in trials if t.source == "observed" and phases.covers(t)]
        fitter = self.fitters.setdefault(svc.name, L.Fitter())
        if new_phase:
            fitter.reset()
        p = L.propose(trials[-FIT_TRIALS:], self.candidates(svc), load=phases.ref_load or 0.0, ncpu=self.ncpu,
                      phase_trials=phase_trials, settings=self.settings, fitter=fitter)
        if p.reason != getattr(self.proposals.get(svc.name), "reason", None):
            log.info("learned allocation for %s (%s, %d trials in phase): %s", svc.name, p.status,
                     p.trials_in_phase, p.reason)
        self.proposals[svc.name], self._model_key[svc.name] = p, key
        return p

    def actions(self, now: float, window: list[Snapshot], read: ReadCurrent) -> list[Action]:
        """Actions that move each searched service to its proposed allocation."""
        out: list[Action] = []
        for svc in self.services():
            try:
                p = self.propose(svc, now, window)
            except Exception:  # noqa: BLE001 - a failed fit leaves the rules in charge
                log.exception("allocation search for %s failed; the rules decide alone", svc.name)
                continue
            live = self.allocation(svc, read)
            if p.allocation is None or live is None:
                continue
            moves = self._moves(svc, live, p, read)
            # the load is climbing, or nothing is predicted to keep the SLO: give, never take
            if self.phases[svc.name].rising() or p.give_only:
                moves = [m for m in moves if m.verify.mode != "guard"]
            out += moves
        return out

    def evidence(self, svc: Service) -> str | None:
        """The measured figures behind a move: the service's slack and load now, and its newest
        trial. None when there is no trial: then there is no move."""
        trials = self.trials(svc.name)
        if not trials:
            return None
        t = trials[-1]
        span = (t.ts - t.start_ts) if t.start_ts is not None else None
        out = (f"measured: newest trial ({t.source}{f', {span:.0f} s' if span else ''}) slo.slack "
               f"{t.slack:+.2f} at load {t.load:.2f}/s under {t.allocation.label()}")
        facts, span_s = self._facts.get(svc.name, (None, 0.0))
        if facts is not None:
            out += f"; now slo.slack {facts[1]:+.2f} at load {facts[0]:.2f}/s over {span_s:.0f} s"
        return out

    def _moves(self, svc: Service, live: L.Allocation, p: L.Proposal, read: ReadCurrent) -> list[Action]:
        want = p.allocation
        assert want is not None
        evidence = self.evidence(svc)
        if evidence is None:  # no measured trial: no move (the learner proposes none either)
            return []
        why = f"allocation search ({p.status}): {p.reason}; {evidence}"
        moves = []
        quota_knob, weight_knob = get_knob("cgroup.cpu_quota"), get_knob("cgroup.cpu_weight")
        q_now = read("cgroup.cpu_quota", self.cgroup(svc))
        q_want = "max" if want.quota_cores is None else quota_knob.format(want.quota_cores)
        if not quota_knob.same(q_now, q_want):
            takes = _cores(q_want) < _cores(q_now)
            moves.append(Action(knob="cgroup.cpu_quota", target=self.cgroup(svc), service=svc.name, current=q_now,
                                proposed=q_want, rule=RULE, rationale=why, priority=PRIORITY,
                                verify=PLAN if takes else PLAN_UP))
        weight = number(read("cgroup.cpu_weight", self.cgroup(svc))) or 100.0
        for n in self.neighbours():
            w_now = read("cgroup.cpu_weight", self.cgroup(n))
            w_want = weight_knob.format(min(10000.0, max(1.0, weight / want.ratio)))
            if not weight_knob.same(w_now, w_want):
                takes = (number(w_want) or 0.0) > (number(w_now) or 0.0)  # a heavier neighbour
                moves.append(Action(knob="cgroup.cpu_weight", target=self.cgroup(n), service=svc.name, current=w_now,
                                    proposed=w_want, rule=RULE, rationale=why, priority=PRIORITY,
                                    verify=PLAN if takes else PLAN_UP))
        return moves

    def merge(self, actions: list[Action], now: float, window: list[Snapshot], read: ReadCurrent) -> list[Action]:
        """The rules' actions plus the search's; the rules' give-backs of what the search moves
        (the service's quota, the cpu weights) stand aside for the services the search is
        active for (it decides how much to give back); other give-backs (a neighbour's memory
        or CPU cap) are the rules' own, except while the service's load climbs (no take then).

        Active includes waiting while the search measures the allocation in place (a new load
        phase, or no trial yet: its first trial comes a tick or two later): a give-back then both
        spoils that trial and lands on a load that just rose. Live: every ``slo-give-back-weight``
        of the llama.cpp learned row fired in the tick the search reset to a new load phase, and
        2 of 3 seeds' violating windows after 20 s came from those
        (2026-12-07-coloc-llamacpp-pool2). A search still waiting after three trials' time cannot
        measure (an idle service makes no trial): the rules give back alone."""
        searched = {s.name: s for s in self.services()}
        if not searched:
            return actions
        mine = self.actions(now, window, read)
        measuring_s = L.PHASE_HOLD_S + 3 * self.cfg.search.trial_s

        def active(name: str) -> bool:
            p, phase = self.proposals.get(name), self.phases.get(name)
            if p is None:
                return False
            return p.status in ("exploring", "converged") or (
                p.status == "waiting" and phase is not None and now - phase.started_ts < measuring_s)

        def moved_by_search(a: Action) -> bool:
            return a.knob == "cgroup.cpu_weight" or (
                a.knob == "cgroup.cpu_quota" and a.service in searched and a.target == self.cgroup(searched[a.service]))

        def stands_aside(a: Action) -> bool:
            if a.verify.mode != "guard" or a.rule == RULE or a.service not in searched:
                return False
            phase = self.phases.get(a.service)
            # a load on the way up: no take from the service, whoever proposes it (the
            # search's own moves: ``actions``)
            return (phase is not None and phase.rising()) or (active(a.service) and moved_by_search(a))

        kept = [a for a in actions if not stands_aside(a)]
        return sorted(kept + mine, key=lambda a: -a.priority)

    # -- fleet: export / import -------------------------------------------------------------------
    def export(self, path: Path) -> int:
        trials = self.trials()
        Path(path).write_text("\n".join(t.model_dump_json() for t in trials) + ("\n" if trials else ""))
        return len(trials)

    def import_(self, path: Path, service: str | None = None) -> int:
        """Another node's trials as a prior (marked imported: noisier evidence)."""
        from autotune.errors import ConfigError, not_utf8

        try:
            text = Path(path).read_text()
        except UnicodeDecodeError as err:
            raise ConfigError(not_utf8(path, err)) from None
        n = 0
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                t = L.Trial.model_validate_json(line)
            except ValueError as err:
                raise ConfigError(f"{path}:{line_no}: not a trial ({err.__class__.__name__}: "
                                  f"{str(err).splitlines()[0]})") from None
            self._add(t.model_copy(update={"source": "imported", "service": service or t.service}))
            n += 1
        return n

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"enabled": self.cfg.search.enabled, "inactive_reason": self.why_inactive(),
                               "services": {}}
        for svc in self.services():
            trials = self.trials(svc.name)
            p = self.proposals.get(svc.name)
            out["services"][svc.name] = {
                "trials": len(trials), "imported": sum(t.source == "imported" for t in trials),
                "status": p.status if p else ("inactive" if not trials else "waiting"),
                "reason": p.reason if p else None,
                "best_observed": max(trials, key=lambda t: t.score).model_dump() if trials else None,
            }
        return out


def _cores(quota: str | None) -> float:
    """A quota value as cores; unlimited ("max") and unreadable count as everything."""
    v = number(quota) if quota is not None else None
    return float("inf") if v is None else v


def trials_json(trials: list[L.Trial]) -> str:
    return json.dumps([t.model_dump() for t in trials], indent=2)
