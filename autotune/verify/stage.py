"""The verify stage: judge every change whose after-window is complete; keep it or roll it back.

Driven by the journal, not by memory: each entry in ``applied``/``verifying`` whose window is
due is judged from the samples the store kept (before: ``window_s`` up to the write; after:
from ``settle_s`` past it), so a restarted agent picks up where the dead one stopped. Windows
come from the rule (the entry's ``verify_plan``), else [verification].

Two kinds of judgement (``VerifyPlan.mode``):

- ``compare``: the objective (``objectives.choose``: the service's SLO slack when it declares an
  SLO, else its p95 latency, else CPU pressure) before vs after, by ``stats.compare``; a
  regression is rolled back. Once ``early_after_s`` of after-window exist, each tick looks
  again at a stricter alpha (alpha / early_alpha_divisor, which pays for looking more than
  once) and decides as soon as that is conclusive, so a controller can take its next step.
- ``guard``: a give-back (resources returned toward where the agent found them). It is kept
  while the service's SLO holds over the after-window, and undone at once - on the first tick
  the after-window shows the SLO clearly broken - as PARTIES reverts a harmful downsize; the
  journal's verdict (``violated``) then locks out further give-backs (Journal.lockout_until).

A rollback goes through the one routine in ``rollback``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from autotune import slo as slo_table
from autotune.failpoints import failpoint
from autotune.config import Config
from autotune.journal.journal import Journal, JournalEntry
from autotune.detect.metrics import derive_metrics
from autotune.types import Snapshot, VerifyResult
from autotune.verify import stats
from autotune.verify.objectives import MIN_SAMPLES, Objective, choose
from autotune.verify.rollback import Audit, Rollback

log = logging.getLogger(__name__)

GUARD_MIN_OBS = 10  # observations behind the SLO before a guard may call it broken
EARLY_LOOK_S = 1.0  # how often a change ahead of its window is looked at again
EARLY_VIOLATION = -0.05  # slack a guard must see before undoing a give-back ahead of its window

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
        self._looked: dict[int, float] = {}  # entry id -> last early look
        # entry id -> (before-window, after-window so far): read from the store once and then
        # extended with the newer samples only (reading and decoding both windows again on every
        # tick was a sixth of the agent's CPU at a 0.2-s sample period)
        self._windows: dict[int, tuple[float, list[Snapshot], list[Snapshot]]] = {}

    # -- objectives -------------------------------------------------------------------------
    def _service(self, service: str | None):
        if service is None:
            return None
        try:
            return self.cfg.service(service)
        except KeyError:
            return None

    def objective(self, service: str | None, window: list[Snapshot]) -> Objective:
        """What a change on ``service`` is judged by over ``window`` (objectives.choose)."""
        svc = self._service(service)
        slo = (svc,) if svc is not None and _slo_targets(svc, _flavor(window, svc.name)) else ()
        return choose(service, window, has_latency=svc is not None and svc.latency is not None,
                      slo_of=slo)

    def summary(self, service: str | None, window: list[Snapshot]) -> dict[str, Any]:
        """{"objective": name, "median": figure, "n": values} - journaled as objective_before.
        The figure is the objective's (``Objective.figure``: a per-token latency's p95)."""
        obj = self.objective(service, window)
        return {"objective": obj.name, "median": obj.figure(window), "n": obj.observations(window)}

    def can_measure(self, now: float, service: str | None = None, window_s: float | None = None) -> bool:
        """A change is only worth making if its before-window can be measured: samples must
        cover most of the last ``window_s`` (the rule's, else verification.window_s; a fresh
        agent waits that long) AND yield enough objective values for the test (a rate is
        measured over >= 2 s intervals, so a short window or a late sample can leave too few)."""
        w = window_s or self.cfg.verification.window_s
        snaps = self.samples.window(now - w, now)
        period = self.cfg.agent.sample_period_s
        if len(snaps) < 5 or snaps[0].ts > now - w + 2 * period:
            return False
        # what the before-window of a change made now will hold (judge: samples before the write)
        snaps = self._since_last_change([s for s in snaps if s.ts < now], now)
        obj = self.objective(service, snaps)
        interval = obj.kind.min_interval_s or period  # what a full window can yield
        need = min(MIN_SAMPLES, int(w // interval) - 1)
        return obj.observations(snaps) >= need

    def _since_last_change(self, snaps: list[Snapshot], until: float) -> list[Snapshot]:
        """The part of ``snaps`` measured under the allocation in place at ``until``: after the
        newest earlier change landed and settled (a controller steps every few seconds, and a
        window reaching back past its last step would judge the step before)."""
        last = self.journal.last_applied_ts(before=until)
        if last is None:
            return snaps
        return [s for s in snaps if s.ts >= last + self.cfg.verification.settle_s]

    # -- scheduling -------------------------------------------------------------------------
    def hold(self, entry_id: int, until: float) -> None:
        """Judge ``entry_id`` no earlier than ``until`` (fresh data after a restart)."""
        self._not_before[entry_id] = until

    def windows(self, entry: JournalEntry) -> tuple[float, float]:
        """(settle_s, window_s) for ``entry``: its rule's, else [verification]'s."""
        v, p = self.cfg.verification, entry.verify_plan
        return (v.settle_s if p.settle_s is None else p.settle_s,
                v.window_s if p.window_s is None else p.window_s)

    def due(self, entry: JournalEntry) -> float:
        settle, window = self.windows(entry)
        base = (entry.applied_ts or entry.planned_ts) + settle + window
        return max(base, self._not_before.get(entry.id, 0.0))

    def early(self, entry: JournalEntry) -> float:
        """When ``entry`` may first be decided ahead of its window (a clear verdict only)."""
        settle, window = self.windows(entry)
        return (entry.applied_ts or entry.planned_ts) + settle + min(window, self.cfg.verification.early_after_s)

    # -- the stage --------------------------------------------------------------------------
    def run(self, now: float) -> list[JournalEntry]:
        """Judge every change whose after-window is complete; returns the finished entries."""
        done = []
        pending = self.journal.entries(states=("applied", "verifying"))
        live = {e.id for e in pending}
        for gone in [i for i in self._windows if i not in live]:
            self._windows.pop(gone, None)
            self._looked.pop(gone, None)
        for e in pending:
            if now < self.early(e) or (now < self.due(e) and e.id in self._not_before):
                continue
            if now < self.due(e) and now - self._looked.get(e.id, -1e18) < EARLY_LOOK_S:
                continue  # ahead of the window, look about once a second, not on every sample
            self._looked[e.id] = now
            try:
                finished = self.judge(e, now, early=now < self.due(e))
                if finished is not None:
                    done.append(finished)
            except Exception as err:  # noqa: BLE001 - one entry must not block the others
                why = f"{type(err).__name__}: {err}"
                log.exception("verification of entry %s failed", e.id)
                self.audit("error", action_id=e.id, knob=e.knob, target=e.target, outcome="failed",
                           detail={"stage": "verify", "error": why})
                self._failed(e, why)
        return done

    def judge(self, e: JournalEntry, now: float, *, early: bool = False) -> JournalEntry | None:
        """Verify one due entry; None while it needs more samples (or a rollback failed).
        ``early``: before the window is complete - decide only on a clear verdict."""
        v = self.cfg.verification
        settle, window = self.windows(e)
        applied_ts = e.applied_ts or e.planned_ts
        before, after = self._entry_windows(e, applied_ts, settle, window, now)
        if e.verify_plan.mode == "guard":
            result = self.guard(e, before, after, early=early)
            objective = result.objective or ""
        else:
            objective = self.objective(e.service, before + after).name
            svc = self._service(e.service)
            result = stats.evaluate(objective, before, after, e.service,
                                    alpha=v.alpha / (v.early_alpha_divisor if early else 1.0),
                                    min_effect=v.min_effect, slo_of=(svc,) if svc is not None else (),
                                    significant_only=early)
        if early and result.verdict not in ("improved", "regressed", "violated"):
            return None  # not clear yet: look again next tick, decide at the window's end
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
        if not early and self._wait_for_more_samples(e, result, applied_ts, now):
            return None
        failpoint("during_verify")
        decision = stats.decide(result, v.on_inconclusive)
        obj_after = {"objective": objective, "median": result.after_median, "n": result.n_after}
        test = {"name": "slo_guard" if e.verify_plan.mode == "guard" else
                "bootstrap_quantile+rank_test" if result.quantile is not None else
                "mann_whitney_u+bootstrap_median", **result.model_dump()}
        detail = {"duration_s": now - applied_ts, "objective": objective, "decision": decision,
                  "verdict": result.verdict, "reason": result.reason, "early": early,
                  "mode": e.verify_plan.mode}
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

    def _entry_windows(self, e: JournalEntry, applied_ts: float, settle: float, window: float,
                       now: float) -> tuple[list[Snapshot], list[Snapshot]]:
        """(before, after) for ``e``: before = samples in the ``window`` up to the write began
        (it was journaled: a write that restarts the service takes seconds, and its outage is
        neither window's), after the previous change settled; after = from ``settle`` past the
        write's end up to ``now``."""
        start = applied_ts + settle
        began = min(e.planned_ts, applied_ts)
        cached = self._windows.get(e.id)
        if cached is None or cached[0] != applied_ts:
            before = self._since_last_change(
                [s for s in self.samples.window(began - window, began) if s.ts < began], began)
            after = self.samples.window(start, now)
        else:
            _, before, after = cached
            # only samples newer than those kept (strictly after the last one's timestamp)
            after = after + self.samples.window(math.nextafter(after[-1].ts, math.inf) if after else start, now)
        after = [s for s in after if s.ts <= now]
        self._windows[e.id] = (applied_ts, before, after)
        return before, after

    def guard(self, e: JournalEntry, before: list[Snapshot], after: list[Snapshot], *,
              early: bool = False) -> VerifyResult:
        """Did the service's SLO hold after a give-back? Slack over the whole after-window
        (every token and request in it, merged): held when >= 0, violated when below (ahead of
        the window: below EARLY_VIOLATION). A service without an SLO cannot be guarded:
        inconclusive (then [verification] on_inconclusive decides)."""
        svc = self._service(e.service)
        name = f"svc.{e.service}.slo.slack"
        base = dict(objective=name, direction="higher_is_better", p_value=None)
        detected = None if svc is None else _flavor(after, svc.name) or _flavor(before, svc.name)
        if svc is None or not _slo_targets(svc, detected):
            return VerifyResult(verdict="inconclusive", reason=f"{e.service} declares no SLO its latency "
                                "source can measure, none to guard", **base)
        b = derive_metrics(before, services=[svc], host=False) if len(before) > 1 else {}
        a = derive_metrics(after, services=[svc], host=False) if len(after) > 1 else {}
        slack_b, slack_a = b.get(name), a.get(name)
        n_after = _observations(a, svc, detected)
        figures = dict(before_median=slack_b, after_median=slack_a, n_before=_observations(b, svc, detected),
                       n_after=n_after, **base)
        if slack_a is None or (slack_a < 1.0 and n_after < GUARD_MIN_OBS):
            return VerifyResult(verdict="inconclusive", reason=f"too little latency data after the "
                                f"guarded change ({n_after} observations)", **figures)
        limit = EARLY_VIOLATION if early else 0.0
        if slack_a < limit and slack_b is not None and slack_b < 0 and slack_a >= slack_b - 0.05:
            return VerifyResult(verdict="inconclusive", reason=f"the SLO was broken before the change "
                                f"(slack {slack_b:+.2f}) and is no worse after ({slack_a:+.2f}): not this "
                                "change's doing", **figures)
        if slack_a < limit:
            return VerifyResult(verdict="violated", effect=None if slack_b is None else slack_a - slack_b,
                                reason=f"SLO broken after the guarded change: slack {slack_a:+.2f} "
                                f"(before {_fmt(slack_b)}) over {n_after} observations", **figures)
        return VerifyResult(verdict="held", effect=None if slack_b is None else slack_a - slack_b,
                            reason=f"SLO held after the guarded change: slack {slack_a:+.2f} "
                            f"(before {_fmt(slack_b)}) over {n_after} observations", **figures)

    def _wait_for_more_samples(self, e: JournalEntry, result: VerifyResult, applied_ts: float,
                               now: float) -> bool:
        """A short after-window (a loaded host delays sampling) is not evidence: keep measuring,
        up to 3x window_s after settling, before letting 'too few samples' decide. A short
        before-window cannot grow, so it decides at once."""
        settle, window = self.windows(e)
        short_after = result.n_after < MIN_SAMPLES <= result.n_before
        deadline = applied_ts + settle + 3 * window
        if result.verdict != "inconclusive" or not short_after or now >= deadline:
            return False
        self.hold(e.id, min(deadline, now + max(1.0, window / 3)))
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


def _slo_targets(svc, detected: str | None = None) -> list[str]:
    """The SLO fields ``svc`` sets that its latency source can measure (autotune/slo.py)."""
    return slo_table.counted(svc, detected)


def _flavor(window: list[Snapshot], service: str) -> str | None:
    """The page flavor the window's newest latency reading names (for flavor = "auto")."""
    for snap in reversed(window):
        svc = snap.services.get(service)
        if svc is not None and svc.latency is not None and svc.latency.flavor:
            return svc.latency.flavor
    return None


def _observations(m: dict[str, float], svc, detected: str | None = None) -> int:
    """The observations behind the service's counted SLO figures in ``m`` (each from the
    source that measures it: histogram counts, finished requests, tokens, probes)."""
    total = 0.0
    for field in _slo_targets(svc, detected):
        metric = slo_table.observations_metric(field, svc.latency, detected)
        if metric is None:  # flavor auto, not scraped yet: whichever the page gives
            metric = next((o for o in ("latency.itl_samples", "latency.ttft_samples", "latency.requests",
                                       "latency.tokens") if f"svc.{svc.name}.{o}" in m), None)
        total += m.get(f"svc.{svc.name}.{metric}", 0.0) if metric else 0.0
    return int(total)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"
