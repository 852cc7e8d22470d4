"""The closed loop: sample -> evaluate (detect, diagnose, gate) -> apply -> verify -> keep/rollback.

``Agent`` holds no scheduling: ``autotune run`` calls its stages from APScheduler jobs, tests
call them directly with a fake clock. Everything that must survive a crash lives in the state
DB: samples (SampleStore), the action journal (written BEFORE each write), the audit trail and
the detector state. Verification is driven by the journal (entries in ``verifying`` whose
window is complete), so a restarted agent picks up where the dead one stopped.

Failure policy (TuneD's lesson): a stage that raises is logged with context and audited once
(until it succeeds again) and never stops the loop; a (knob, target) that fails three times in a
row is handed to the operator (Journal.disable_target) with the reason.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from autotune.agent import floor, gating
from autotune.agent.actuator import Actuator, is_drift, read_value, restore_prior
from autotune.agent.failpoints import failpoint
from autotune.audit.trail import AuditEvent, AuditTrail
from autotune.config import Config
from autotune.errors import PolicyRefused
from autotune.host import Host
from autotune.journal import verify as jverify
from autotune.journal.journal import Journal, JournalEntry
from autotune.knobs.base import KnobState
from autotune.store.db import migrate, transaction
from autotune.store.samples import SampleStore
from autotune.types import Action, Snapshot, Symptom

log = logging.getLogger(__name__)

COMPONENT = "agent"
MAX_CONSECUTIVE_FAILURES = 3


def _v1(db) -> None:
    db.execute("CREATE TABLE agent_state (key TEXT PRIMARY KEY, value TEXT NOT NULL, ts REAL NOT NULL)")


MIGRATIONS = [_v1]


def _proposal_key(actions: Iterable[Action]) -> frozenset[tuple[str, str, str, str]]:
    return frozenset((a.rule, a.knob, a.target, a.proposed) for a in actions)


class Agent:
    """One agent on one host. ``mode`` defaults to ``cfg.agent.mode`` (recommend | apply)."""

    def __init__(
        self,
        cfg: Config,
        *,
        host: Host,
        db,
        actuator: Actuator,
        ruleset,
        clock: Callable[[], float] = time.time,
        exporter=None,
        mode: str | None = None,
        scrapers: dict[str, Any] | None = None,
    ) -> None:
        from autotune.detect.symptoms import DetectorState

        self.cfg = cfg
        self.host = host
        self.db = db
        self.actuator = actuator
        self.ruleset = ruleset
        self.clock = clock
        self.exporter = exporter
        self.mode = mode or cfg.agent.mode
        if self.mode not in ("recommend", "apply"):
            raise ValueError(f"mode must be recommend or apply, got {self.mode!r}")
        migrate(db, COMPONENT, MIGRATIONS)
        self.journal = Journal(db, clock=clock)
        self.trail = AuditTrail(db)
        self.samples = SampleStore(db, aggregate_every_s=cfg.agent.aggregate_every_s)
        period = cfg.agent.sample_period_s
        self.window: deque[Snapshot] = deque(maxlen=max(4, int(cfg.agent.window_s / period * 2)))
        self.lookback = max(1, round(cfg.agent.window_s / period))
        self.detector = self._load_detector() or DetectorState()
        self.scrapers = scrapers if scrapers is not None else self._make_scrapers()
        self.symptoms: list[Symptom] = []
        self.actions: list[Action] = []
        self._last_proposal: frozenset | None = None
        self._stage_errors: dict[str, str] = {}
        self._failures: dict[tuple[str, str], int] = {}
        self._not_before: dict[int, float] = {}  # entry id -> earliest re-verification (after a restart)
        self.started_ts: float | None = None
        self._ranker: Any = None
        self._ranker_marker: tuple[int, int | None] | None = None

    # -- plumbing -------------------------------------------------------------------------
    def _make_scrapers(self) -> dict[str, Any]:
        """A metrics page when the service has one, else an active probe on its own thread."""
        from autotune.sensors.latency import ActiveProbe, BackgroundProbe, LatencyScraper

        out: dict[str, Any] = {}
        for svc in self.cfg.services:
            lat = svc.latency
            if lat is not None and lat.metrics_url:
                out[svc.name] = LatencyScraper(lat.metrics_url, lat.flavor, lat.timeout_s)
            elif lat is not None and lat.probe_url:
                # its own thread, so a slow answer (the very thing it measures) stalls nothing:
                # the probe waits up to 30 s rather than the scrape timeout
                out[svc.name] = BackgroundProbe(ActiveProbe(lat.probe_url, lat.probe_interval_s))
        return out

    def _load_detector(self):
        from autotune.detect.symptoms import DetectorState

        row = self.db.execute("SELECT value FROM agent_state WHERE key='detector'").fetchone()
        if row is None:
            return None
        try:
            return DetectorState.model_validate_json(row[0])
        except ValueError as err:  # an old or garbled state only costs the detector's memory
            log.warning("ignoring unreadable detector state: %s", err)
            return None

    def _save_detector(self) -> None:
        with transaction(self.db):
            self.db.execute(
                "INSERT INTO agent_state(key, value, ts) VALUES ('detector', ?, ?) ON CONFLICT(key)"
                " DO UPDATE SET value=excluded.value, ts=excluded.ts",
                [self.detector.model_dump_json(), self.clock()],
            )

    def audit(self, kind: str, **fields: Any) -> AuditEvent | None:
        """Append one audit event and count it in the exporter; never raises."""
        try:
            ev = AuditEvent(ts=fields.pop("ts", None) or self.clock(), kind=kind, **fields)
            ev.id = self.trail.append(ev)
        except Exception:  # noqa: BLE001 - losing an audit row must not stop the loop
            log.exception("audit %s event could not be written", kind)
            return None
        if self.exporter is not None:
            self.exporter.observe_event(ev)
        return ev

    def guarded(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one stage; log and audit (once per distinct error) instead of raising."""
        try:
            out = fn(*args)
        except Exception as err:  # noqa: BLE001 - the loop must survive any one stage
            msg = f"{type(err).__name__}: {err}"
            log.exception("stage %s failed", stage)
            if self._stage_errors.get(stage) != msg:
                self._stage_errors[stage] = msg
                self.audit("error", outcome="failed", detail={"stage": stage, "error": msg})
            return None
        self._stage_errors.pop(stage, None)
        return out

    def _read_current(self, knob: str, target: str) -> str | None:
        try:
            return read_value(self.actuator, knob, target)
        except Exception as err:  # noqa: BLE001 - unreadable knob: a missing reading
            log.debug("read %s %s failed: %s", knob, target, err)
            return None

    def _count_failure(self, knob: str, target: str, why: str) -> None:
        key = (knob, target)
        self._failures[key] = n = self._failures.get(key, 0) + 1
        if n >= MAX_CONSECUTIVE_FAILURES and not self.journal.is_unmanaged(knob, target):
            reason = f"{n} consecutive failures, last: {why}"
            self.journal.disable_target(knob, target, reason=reason)
            self.audit("error", knob=knob, target=target, outcome="disabled",
                       detail={"reason": reason})
            log.error("%s on %s disabled: %s", knob, target, reason)

    def status_line(self) -> str:
        names = ",".join(sorted({s.name for s in self.symptoms})) or "none"
        inflight = len(self.journal.unfinished())
        return f"mode={self.mode} symptoms={names} in_flight={inflight}"

    # -- start ----------------------------------------------------------------------------
    def start(self, now: float | None = None) -> None:
        """Reconcile the journal with the live values; audit agent_start."""
        now = self.clock() if now is None else now
        self.started_ts = now
        if self.exporter is not None:
            try:
                self.exporter.prime_from_trail(self.trail)
            except Exception:  # noqa: BLE001
                log.exception("exporter could not be primed from the audit trail")
        outcomes = self.reconcile(now)
        self.audit("agent_start", detail={
            "mode": self.mode, "reconciled": [o.model_dump() for o in outcomes],
            "actuator": type(self.actuator).__name__,
        })

    def reconcile(self, now: float) -> list:
        """Settle unfinished entries (crash recovery). Drift: audited, left alone; ours: re-verify."""
        if self.actuator.dry_run:
            return []
        outcomes = self.journal.reconcile(lambda k, t: read_value(self.actuator, k, t),
                                          same_for=self.actuator.same)
        for o in outcomes:
            e = self.journal.get(o.entry_id)
            if o.outcome == "drift":
                self.audit("drift", action_id=e.id, knob=e.knob, target=e.target, service=e.service,
                           rule=e.rule, before=e.prior_value, after=o.current, outcome="drifted",
                           detail={"stage": "reconcile", "reason": o.detail})
                continue
            if o.outcome == "reverify":
                if e.state == "applied":
                    self.journal.mark_verifying(e.id)
                # fresh after-window data from this run before judging it again
                self._not_before[e.id] = now + self.cfg.verification.window_s
            self.audit("reconcile", action_id=e.id, knob=e.knob, target=e.target, service=e.service,
                       rule=e.rule, before=e.prior_value, after=o.current, outcome=o.outcome,
                       detail={"reason": o.detail, "state": o.state})
        return outcomes

    # -- sample ---------------------------------------------------------------------------
    def sample(self, now: float | None = None) -> Snapshot:
        from autotune.sensors.collect import collect

        now = self.clock() if now is None else now
        snap = collect(self.host, self.cfg.services, now)
        if self.scrapers:
            services = dict(snap.services)
            for name, scraper in self.scrapers.items():
                try:
                    reading = scraper.sample(now)
                except Exception as err:  # noqa: BLE001 - scrapers should not raise; be sure
                    log.warning("latency scrape for %s failed: %s", name, err)
                    continue
                if name in services:
                    services[name] = services[name].model_copy(update={"latency": reading})
            snap = snap.model_copy(update={"services": services})
        self.samples.append(snap)
        self.window.append(snap)
        if self.exporter is not None:
            self.exporter.update_snapshot(snap)
        return snap

    # -- evaluate -------------------------------------------------------------------------
    def _history(self) -> list[tuple[float, dict[str, float]]]:
        """(ts, metrics) for the ticks the detector has not consumed, plus the newest one."""
        from autotune.detect.metrics import derive_metrics

        win = list(self.window)
        last = self.detector.last_ts
        out = []
        for i, s in enumerate(win):
            if last is not None and s.ts <= last and i != len(win) - 1:
                continue
            m = derive_metrics(win[max(0, i - self.lookback): i + 1], ncpu=self.host.ncpu,
                               services=self.cfg.services)
            out.append((s.ts, m))
        return out

    def _cooldowns(self) -> dict[str, float]:
        out = {}
        for rule in getattr(self.ruleset, "rules", []):
            ts = self.journal.last_change_ts(rule=rule.name)
            if ts is not None:
                out[rule.name] = ts
        return out

    def gate_view(self, actions: list[Action], now: float,
                  metrics: dict[str, float] | None = None) -> gating.GateView:
        """``metrics``: the newest derived metrics (the floor's reserve is measured from them)."""
        unfinished = self.journal.unfinished()
        last_rule = {a.rule: ts for a in actions
                     if (ts := self.journal.last_change_ts(rule=a.rule)) is not None}
        last_knob = {a.knob: ts for a in actions
                     if (ts := self.journal.last_change_ts(knob=a.knob)) is not None}
        return gating.GateView(
            in_flight=frozenset((e.knob, e.target) for e in unfinished),
            unmanaged=frozenset((u.knob, u.target) for u in self.journal.unmanaged()),
            last_rule_ts=last_rule, last_knob_ts=last_knob,
            changes_last_hour=self.journal.changes_since(now - 3600),
            cpu_shares=floor.shares_from(self.window[-1] if self.window else None, self.cfg.services),
            ncpu=self.host.ncpu,
            cpu_reserve=floor.reserve_from(metrics, self.cfg.services, self.host.ncpu),
        )

    def evaluate(self, now: float | None = None) -> gating.Decision | None:
        """Detect and diagnose over the window; in apply mode gate and apply one action."""
        from autotune.agent.pipeline import evaluate

        now = self.clock() if now is None else now
        if not self.window:
            return None
        history = self._history()
        symptoms, actions, self.detector = evaluate(
            self.ruleset, self.cfg, history, self.detector, self._read_current, now,
            cooldowns=self._cooldowns() if self.mode == "apply" else None,
        )
        self._save_detector()
        if actions and self.cfg.ranker.enabled:
            actions = self.ranker().rank(actions, symptoms)
        self.symptoms, self.actions = symptoms, actions
        if self.exporter is not None:
            self.exporter.update_symptoms(symptoms)
        key = _proposal_key(actions)
        changed = key != self._last_proposal
        if changed:
            self._last_proposal = key
            if actions:
                self.audit("recommendation", outcome="proposed" if self.mode == "apply" else "recommended",
                           detail={"mode": self.mode, "symptoms": [s.model_dump() for s in symptoms],
                                   "actions": [a.model_dump() for a in actions]})
        if self.mode != "apply":
            for a in actions if changed else ():  # log a proposal once, not every tick
                log.info("would %s %s on %s: %s -> %s (rule %s%s)", "advise" if a.advisory else "set",
                         a.knob, a.target, a.current, a.proposed, a.rule,
                         "" if a.score is None else f", predicted {a.score:+.0%}")
            return None
        view = self.gate_view(actions, now, metrics=history[-1][1] if history else None)
        decision = gating.select_action(actions, view, now, self.cfg.verification)
        for what, why in decision.skipped:
            log.debug("skipped %s: %s", what, why)
        if decision.chosen is not None:
            if not self._enough_history(now, decision.chosen.service):
                log.info("holding %s on %s: less than %.0f s of samples to verify it against",
                         decision.chosen.knob, decision.chosen.target, self.cfg.verification.window_s)
                return decision.model_copy(update={
                    "chosen": None,
                    "skipped": [*decision.skipped, (f"{decision.chosen.rule}:{decision.chosen.knob}:"
                                f"{decision.chosen.target}", "not enough pre-change samples yet")]})
            self.apply(decision.chosen, symptoms=symptoms, now=now)
        return decision

    def ranker(self):
        """The learned ranker, refit whenever the journal has a newly verified change."""
        from autotune.diagnose.ranker import from_journal

        marker = self.journal.verified_marker()
        if self._ranker is None or marker != self._ranker_marker:
            r = self.cfg.ranker
            self._ranker = from_journal(self.journal.verified(limit=r.max_outcomes), min_outcomes=r.min_outcomes)
            self._ranker_marker = marker
            log.info("learned ranker: %s (%s)", "active" if self._ranker.status.active else "inactive",
                     self._ranker.status.reason)
        return self._ranker

    def _enough_history(self, now: float, service: str | None = None) -> bool:
        """A change is only worth making if its before-window can be measured: samples must
        cover most of the last verification.window_s (a fresh agent waits that long) AND yield
        enough objective values for the test (PSI is measured over >= 2 s
        intervals, so a short window or a late sample can leave too few)."""
        w = self.cfg.verification.window_s
        snaps = self.samples.window(now - w, now)
        period = self.cfg.agent.sample_period_s
        if len(snaps) < 5 or snaps[0].ts > now - w + 2 * period:
            return False
        name = self.objective_name(service, snaps)
        # what a full window can yield: PSI/throughput are measured over >= 2 s intervals
        interval = 2.0 if name in ("psi", "throughput") else period
        need = min(jverify.MIN_SAMPLES, int(w // interval) - 1)
        return len(jverify.objective_series(name, snaps, service)) >= need

    # -- apply ----------------------------------------------------------------------------
    def objective_name(self, service: str | None, window: list[Snapshot]) -> str:
        """latency_p95 when the service's latency source gave enough distinct readings in the
        window to test on (a sparse probe may not), else psi."""
        if service is not None:
            try:
                svc = self.cfg.service(service)
            except KeyError:
                svc = None
            if (svc is not None and svc.latency is not None
                    and len(jverify.LatencyP95().series(window, service)) >= jverify.MIN_SAMPLES):
                return "latency_p95"
        return "psi"

    def _objective_summary(self, service: str | None, window: list[Snapshot]) -> dict[str, Any]:
        import statistics

        name = self.objective_name(service, window)
        series = jverify.objective_series(name, window, service)
        return {"objective": name, "median": statistics.median(series) if series else None,
                "n": len(series)}

    def apply(self, action: Action, *, symptoms: Iterable[Symptom] = (), now: float | None = None
              ) -> JournalEntry | None:
        """Journal, write, mark verifying. Returns the entry (None when nothing was planned)."""
        now = self.clock() if now is None else now
        knob, target = action.knob, action.target
        symptoms = list(symptoms)
        failpoint("before_plan")
        prior = self.actuator.read(knob, target)
        if prior is None:
            log.info("%s on %s: target gone, nothing to apply", knob, target)
            return None
        recent = [s for s in self.window if s.ts >= now - self.cfg.verification.window_s]
        entry = self.journal.plan(
            knob=knob, target=target, prior=prior, proposed=action.proposed, rule=action.rule,
            rationale=action.rationale, service=action.service, symptoms=symptoms,
            objective_before=self._objective_summary(action.service, recent),
        )
        failpoint("after_plan")
        ev = dict(action_id=entry.id, knob=knob, target=target, service=action.service,
                  rule=action.rule, rationale=action.rationale, before=prior.value)
        try:
            result = self.actuator.apply(knob, target, action.proposed, expect_before=prior.value,
                                         request_id=f"autotune-{entry.id}")
        except PolicyRefused as err:
            if is_drift(err):
                self.journal.mark_drifted(entry.id, None, detail=f"helper: {err.reason}")
                self.audit("drift", **ev, outcome="drifted", detail={"stage": "apply", "reason": err.reason})
            else:
                self.journal.mark_failed(entry.id, f"refused: {err.reason}")
                self.audit("refusal", **ev, after=action.proposed, outcome="refused",
                           detail={"reason": err.reason, "code": getattr(err, "code", None)})
                self._count_failure(knob, target, err.reason)
            return self.journal.get(entry.id)
        except Exception as err:  # noqa: BLE001 - a failed write is journaled, not fatal
            why = f"{type(err).__name__}: {err}"
            self.journal.mark_failed(entry.id, why)
            self.audit("apply", **ev, after=action.proposed, outcome="failed", detail={"error": why})
            self._count_failure(knob, target, why)
            return self.journal.get(entry.id)
        failpoint("after_write")
        if not result.changed or result.after is None:
            self.journal.mark_failed(entry.id, f"nothing written: live value already {result.before.value!r}")
            return self.journal.get(entry.id)
        self.journal.mark_applied(entry.id, result.after)
        entry = self.journal.mark_verifying(entry.id)
        self._failures.pop((knob, target), None)
        v = self.cfg.verification
        due = (entry.applied_ts or now) + v.settle_s + v.window_s
        self.audit("apply", **ev, after=result.after.value, outcome="applied",
                   objective_before=(entry.objective_before or {}).get("median"),
                   detail={"symptoms": [s.model_dump() for s in symptoms], "verify_due_ts": due,
                           "objective": (entry.objective_before or {}).get("objective")})
        log.info("applied %s on %s: %s -> %s (rule %s); verifying at %.0f", knob, target,
                 prior.value, result.after.value, action.rule, due)
        return entry

    # -- verify ---------------------------------------------------------------------------
    def due(self, entry: JournalEntry) -> float:
        v = self.cfg.verification
        base = (entry.applied_ts or entry.planned_ts) + v.settle_s + v.window_s
        return max(base, self._not_before.get(entry.id, 0.0))

    def verify(self, now: float | None = None) -> list[JournalEntry]:
        """Judge every change whose after-window is complete; returns the finished entries."""
        now = self.clock() if now is None else now
        if self.actuator.dry_run:
            return []
        done = []
        for e in self.journal.entries(states=("applied", "verifying")):
            if now < self.due(e):
                continue
            try:
                finished = self._verify_entry(e, now)
                if finished is not None:
                    done.append(finished)
            except Exception as err:  # noqa: BLE001 - one entry must not block the others
                why = f"{type(err).__name__}: {err}"
                log.exception("verification of entry %s failed", e.id)
                self.audit("error", action_id=e.id, knob=e.knob, target=e.target, outcome="failed",
                           detail={"stage": "verify", "error": why})
                self._count_failure(e.knob, e.target, why)
                if self.journal.is_unmanaged(e.knob, e.target):
                    self.journal.mark_failed(e.id, f"verification keeps failing: {why}")
        return done

    def _verify_entry(self, e: JournalEntry, now: float) -> JournalEntry | None:
        v = self.cfg.verification
        same = self.actuator.same(e.knob)
        if e.state == "applied":
            e = self.journal.mark_verifying(e.id)
        ev = dict(action_id=e.id, knob=e.knob, target=e.target, service=e.service, rule=e.rule,
                  rationale=e.rationale, before=e.prior_value)
        cur = read_value(self.actuator, e.knob, e.target)
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
            return self._drifted(e, cur, "verify")
        applied_ts = e.applied_ts or e.planned_ts
        before = [s for s in self.samples.window(applied_ts - v.window_s, applied_ts) if s.ts < applied_ts]
        after = self.samples.window(applied_ts + v.settle_s, now)
        objective = self.objective_name(e.service, before + after)
        result = jverify.evaluate(objective, before, after, e.service, alpha=v.alpha,
                                  min_effect=v.min_effect)
        if self._wait_for_more_samples(e, result, applied_ts, now):
            return None
        failpoint("during_verify")
        decision = jverify.decide(result, v.on_inconclusive)
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
        # rollback: re-read right before writing; never clobber someone else's value
        cur = read_value(self.actuator, e.knob, e.target)
        if cur is None or not same(cur, e.expected_value):
            if cur is not None and same(cur, e.prior_value):
                return self.journal.mark_rolled_back(e.id, result=result, objective_after=obj_after,
                                                     detail="already back at prior")
            if cur is None:
                return self.journal.mark_failed(e.id, "target gone before rollback")
            return self._drifted(e, cur, "rollback")
        prior = KnobState.model_validate(e.prior)
        res = self.actuator.restore(e.knob, e.target, prior)
        after_val = res.after.value if res.after is not None else read_value(self.actuator, e.knob, e.target)
        out = self.journal.mark_rolled_back(
            e.id, result=result, objective_after=obj_after,
            detail=f"{result.verdict}: {result.reason}; restored {prior.value!r}",
        )
        self.audit("verify", **ev, after=cur, outcome="rolled_back", **figures, detail=detail)
        self.audit("rollback", **ev, after=after_val, outcome="rolled_back", **figures,
                   detail={"reason": f"verification {result.verdict}", "restored": prior.value})
        log.warning("rolled back %s on %s to %r: %s", e.knob, e.target, prior.value, result.reason)
        return out

    def _wait_for_more_samples(self, e: JournalEntry, result, applied_ts: float, now: float) -> bool:
        """A short after-window (a loaded host delays sampling) is not evidence: keep measuring,
        up to 3x window_s after settling, before letting 'too few samples' decide. A short
        before-window cannot grow, so it decides at once."""
        v = self.cfg.verification
        short_after = result.n_after < jverify.MIN_SAMPLES <= result.n_before
        deadline = applied_ts + v.settle_s + 3 * v.window_s
        if result.verdict != "inconclusive" or not short_after or now >= deadline:
            return False
        self._not_before[e.id] = min(deadline, now + max(1.0, v.window_s / 3))
        log.info("entry %s: only %d samples after the change; measuring longer", e.id, result.n_after)
        return True

    def _drifted(self, e: JournalEntry, cur: str | None, stage: str) -> JournalEntry:
        out = self.journal.mark_drifted(e.id, cur)
        self.audit("drift", action_id=e.id, knob=e.knob, target=e.target, service=e.service,
                   rule=e.rule, before=e.expected_value, after=cur, outcome="drifted",
                   detail={"stage": stage, "reason": out.error})
        log.warning("drift on %s %s: %s; target left alone and unmanaged", e.knob, e.target, out.error)
        return out

    # -- retention / stop -----------------------------------------------------------------
    def retain(self, now: float | None = None):
        now = self.clock() if now is None else now
        a = self.cfg.agent
        return self.samples.retain(now, a.raw_retention_h * 3600, a.aggregate_retention_d * 86400)

    def stop(self, now: float | None = None) -> list:
        """Optionally restore everything we changed (agent.restore_on_stop); audit agent_stop."""
        plans = []
        if self.cfg.agent.restore_on_stop and not self.actuator.dry_run:
            plans = self.journal.rollback_all(lambda k, t: read_value(self.actuator, k, t),
                                              restore_prior(self.actuator), same_for=self.actuator.same)
            for p in plans:
                if p.action != "nothing" or p.reason.startswith("restore failed"):
                    self.audit("rollback", action_id=p.entry_id, knob=p.knob, target=p.target,
                               before=p.current, outcome="rolled_back" if p.action == "restore" else p.action,
                               detail={"reason": p.reason, "stage": "stop"})
        for s in self.scrapers.values():
            close = getattr(s, "close", None)
            if close is not None:
                close()
        self.audit("agent_stop", detail={"mode": self.mode, "restored": [p.model_dump() for p in plans
                                                                          if p.action == "restore"]})
        return plans

