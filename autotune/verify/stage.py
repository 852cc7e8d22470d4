"""The verify stage: judge every change whose after-window is complete; keep it or roll it back.

Driven by the journal, not by memory: each entry in ``applied``/``verifying`` whose window is
due is judged from the samples the store kept (before: ``window_s`` up to the write; after:
from ``settle_s`` past it), so a restarted agent picks up where the dead one stopped. The
objective (``objectives.choose``) is the service's p95 latency when its latency source gives
enough readings, else CPU pressure; the verdict comes from ``stats``; a rollback goes through
the one routine in ``rollback``.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from typing import Any

from autotune.failpoints import failpoint
from autotune.config import Config
from autotune.journal.journal import Journal, JournalEntry
from autotune.types import Snapshot, VerifyResult
from autotune.verify import stats
from autotune.verify.objectives import MIN_SAMPLES, Objective, choose
from autotune.verify.rollback import Audit, Rollback

log = logging.getLogger(__name__)

# what the rollback routine did -> the verify event's outcome
_VERIFY_OUTCOME = {"restored": "rolled_back", "already_prior": "rolled_back",
                   "skipped_drift": "drifted", "gone": "failed"}


class Verifier:
    """One agent's verify stage. ``audit(kind, **fields)`` records events; ``on_failure(knob,
    target, why)`` counts a failure toward disabling the target (the agent's policy)."""

    def __init__(self, cfg: Config, *, journal: Journal, samples, actuator, audit: Audit,
                 on_failure: Callable[[str, str, str], None]) -> None:
        self.cfg = cfg
        self.journal = journal
        self.samples = samples  # store.samples.SampleStore
        self.actuator = actuator
        self.audit = audit
        self.on_failure = on_failure
        self.rollback = Rollback(journal, actuator, audit=audit, by="verify")
        self._not_before: dict[int, float] = {}  # entry id -> earliest (re-)verification

    # -- objectives -------------------------------------------------------------------------
    def objective(self, service: str | None, window: list[Snapshot]) -> Objective:
        """What a change on ``service`` is judged by over ``window`` (objectives.choose)."""
        svc = None
        if service is not None:
            try:
                svc = self.cfg.service(service)
            except KeyError:
                svc = None
        return choose(service, window, has_latency=svc is not None and svc.latency is not None)

    def summary(self, service: str | None, window: list[Snapshot]) -> dict[str, Any]:
        """{"objective": name, "median": value, "n": samples} - journaled as objective_before."""
        obj = self.objective(service, window)
        series = obj.series(window)
        return {"objective": obj.name, "median": statistics.median(series) if series else None,
                "n": len(series)}

    def can_measure(self, now: float, service: str | None = None) -> bool:
        """A change is only worth making if its before-window can be measured: samples must
        cover most of the last verification.window_s (a fresh agent waits that long) AND yield
        enough objective values for the test (a rate is measured over >= 2 s intervals, so a
        short window or a late sample can leave too few)."""
        w = self.cfg.verification.window_s
        snaps = self.samples.window(now - w, now)
        period = self.cfg.agent.sample_period_s
        if len(snaps) < 5 or snaps[0].ts > now - w + 2 * period:
            return False
        obj = self.objective(service, snaps)
        interval = obj.kind.min_interval_s or period  # what a full window can yield
        need = min(MIN_SAMPLES, int(w // interval) - 1)
        return len(obj.series(snaps)) >= need

    # -- scheduling -------------------------------------------------------------------------
    def hold(self, entry_id: int, until: float) -> None:
        """Judge ``entry_id`` no earlier than ``until`` (fresh data after a restart)."""
        self._not_before[entry_id] = until

    def due(self, entry: JournalEntry) -> float:
        v = self.cfg.verification
        base = (entry.applied_ts or entry.planned_ts) + v.settle_s + v.window_s
        return max(base, self._not_before.get(entry.id, 0.0))

    # -- the stage --------------------------------------------------------------------------
    def run(self, now: float) -> list[JournalEntry]:
        """Judge every change whose after-window is complete; returns the finished entries."""
        done = []
        for e in self.journal.entries(states=("applied", "verifying")):
            if now < self.due(e):
                continue
            try:
                finished = self.judge(e, now)
                if finished is not None:
                    done.append(finished)
            except Exception as err:  # noqa: BLE001 - one entry must not block the others
                why = f"{type(err).__name__}: {err}"
                log.exception("verification of entry %s failed", e.id)
                self.audit("error", action_id=e.id, knob=e.knob, target=e.target, outcome="failed",
                           detail={"stage": "verify", "error": why})
                self._failed(e, why)
        return done

    def judge(self, e: JournalEntry, now: float) -> JournalEntry | None:
        """Verify one due entry; None while it needs more samples (or a rollback failed)."""
        v = self.cfg.verification
        same = self.actuator.same(e.knob)
        if e.state == "applied":
            e = self.journal.mark_verifying(e.id)
        ev = dict(action_id=e.id, knob=e.knob, target=e.target, service=e.service, rule=e.rule,
                  rationale=e.rationale, before=e.prior_value)
        state = self.actuator.read(e.knob, e.target)
        cur = state.value if state is not None else None
        if cur is None:
            out = self.journal.mark_failed(e.id, "target gone before verification")
            self.audit("verify", **ev, after=None, outcome="failed",
                       detail={"reason": "target gone", "duration_s": now - (e.applied_ts or now)})
            return out
        if not same(cur, e.expected_value):
            if same(cur, e.prior_value):
                out = self.journal.mark_rolled_back(e.id, detail="live value back at prior before verification")
                self.audit("verify", **ev, after=cur, outcome="rolled_back",
                           detail={"reason": "reverted by someone else before verification",
                                   "duration_s": now - (e.applied_ts or now)})
                return out
            return self._drifted(e, cur)
        applied_ts = e.applied_ts or e.planned_ts
        before = [s for s in self.samples.window(applied_ts - v.window_s, applied_ts) if s.ts < applied_ts]
        after = self.samples.window(applied_ts + v.settle_s, now)
        objective = self.objective(e.service, before + after).name
        result = stats.evaluate(objective, before, after, e.service, alpha=v.alpha,
                                min_effect=v.min_effect)
        if self._wait_for_more_samples(e, result, applied_ts, now):
            return None
        failpoint("during_verify")
        decision = stats.decide(result, v.on_inconclusive)
        obj_after = {"objective": objective, "median": result.after_median, "n": result.n_after}
        test = {"name": "mann_whitney_u+bootstrap_median", **result.model_dump()}
        detail = {"duration_s": now - applied_ts, "objective": objective, "decision": decision,
                  "verdict": result.verdict, "reason": result.reason}
        figures = dict(objective_before=result.before_median, objective_after=result.after_median,
                       test=test)
        if decision == "keep":
            out = self.journal.mark_kept(e.id, result=result, objective_after=obj_after,
                                         detail=result.reason)
            self.audit("verify", **ev, after=cur, outcome="kept", **figures, detail=detail)
            log.info("kept %s on %s: %s", e.knob, e.target, result.reason)
            return out
        undo = self.rollback.entry(e, why=f"verification {result.verdict}: {result.reason}",
                                   settle={"result": result, "objective_after": obj_after},
                                   figures=figures)
        if undo.result not in _VERIFY_OUTCOME:  # failed: stays verifying, retried next tick
            self._failed(e, undo.reason)
            return None
        self.audit("verify", **ev, after=undo.before, outcome=_VERIFY_OUTCOME[undo.result],
                   **figures, detail={**detail, "rollback": undo.result})
        log.warning("rolled back %s on %s to %r (%s): %s", e.knob, e.target, e.prior_value,
                    undo.result, result.reason)
        return self.journal.get(e.id)

    def _wait_for_more_samples(self, e: JournalEntry, result: VerifyResult, applied_ts: float,
                               now: float) -> bool:
        """A short after-window (a loaded host delays sampling) is not evidence: keep measuring,
        up to 3x window_s after settling, before letting 'too few samples' decide. A short
        before-window cannot grow, so it decides at once."""
        v = self.cfg.verification
        short_after = result.n_after < MIN_SAMPLES <= result.n_before
        deadline = applied_ts + v.settle_s + 3 * v.window_s
        if result.verdict != "inconclusive" or not short_after or now >= deadline:
            return False
        self.hold(e.id, min(deadline, now + max(1.0, v.window_s / 3)))
        log.info("entry %s: only %d samples after the change; measuring longer", e.id, result.n_after)
        return True

    def _drifted(self, e: JournalEntry, cur: str | None) -> JournalEntry:
        out = self.journal.mark_drifted(e.id, cur)
        self.audit("drift", action_id=e.id, knob=e.knob, target=e.target, service=e.service,
                   rule=e.rule, before=e.expected_value, after=cur, outcome="drifted",
                   detail={"stage": "verify", "reason": out.error})
        log.warning("drift on %s %s: %s; target left alone and unmanaged", e.knob, e.target, out.error)
        return out

    def _failed(self, e: JournalEntry, why: str) -> None:
        """Count a failure; once the target is disabled, stop re-verifying the entry."""
        self.on_failure(e.knob, e.target, why)
        if self.journal.is_unmanaged(e.knob, e.target):
            self.journal.mark_failed(e.id, f"verification keeps failing: {why}")
