"""The closed loop: sample -> evaluate (detect, diagnose, gate) -> apply -> verify -> keep/rollback.

``Agent`` holds no scheduling: ``agent/daemon.py`` calls its stages from APScheduler jobs (or in
the foreground for ``recommend``), tests call them directly with a fake clock. Everything that
must survive a crash lives in the state DB: samples (SampleStore), the action journal (written
BEFORE each write), the audit trail and the detector state. The verify stage
(``verify/stage.Verifier``) is driven by the journal, so a restarted agent picks up where the
dead one stopped; every rollback goes through ``verify/rollback.Rollback``.

Failure policy (TuneD's lesson): a stage that raises is logged with context and audited once
(until it succeeds again) and never stops the loop; a (knob, target) that fails three times in a
row is handed to the operator (Journal.disable_target) with the reason.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

from autotune.agent import state
from autotune.diagnose import blocked, floor, gating, pool
from autotune.fix.actuator import Actuator, read_value
from autotune.fix.apply import Applier
from autotune.diagnose.search.state import Search
from autotune.audit.trail import AuditEvent, AuditTrail
from autotune.config import Config
from autotune.errors import PolicyRefused
from autotune.host import Host
from autotune.journal.journal import Journal, JournalEntry
from autotune.knobs import KNOBS
from autotune.store.samples import SampleStore
from autotune.types import Action, Snapshot, Symptom
from autotune.verify.rollback import Rollback, RollbackOutcome
from autotune.verify.stage import Verifier

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 3


PROPOSAL_MOVE = 0.10  # a numeric proposal within 10 % of the one audited is the same proposal
EPISODE_CLEAR_S = 30.0  # a proposal or block unseen this long has cleared (not one missed tick)
Episodes = dict[tuple[str, ...], tuple[str, float]]  # key -> (what was said, last seen)


def proposal_episodes(prev: Episodes, actions: Iterable[Action], now: float) -> tuple[Episodes, bool]:
    """(the proposals' episodes now, whether one is new). An episode is one rule's proposal for
    one target, from when it appears until it clears (unseen for EPISODE_CLEAR_S), is applied
    or its value changes: the audit trail gets a row when one starts, not every tick. A
    proportional step follows the slack tick by tick, so a numeric value within PROPOSAL_MOVE
    of the audited one is the same proposal; an advice's text quotes live metrics, so only its
    rule and target count."""
    from autotune.knobs import KNOBS
    from autotune.knobs.base import number

    out = {k: v for k, v in prev.items() if now - v[1] <= EPISODE_CLEAR_S}
    fresh = False
    for a in actions:
        key, value = (a.rule, a.knob, a.target), "" if a.advisory else a.proposed
        old = out.get(key, (None, 0.0))[0]
        knob = KNOBS.get(a.knob)
        x, y = number(old) if old else None, number(value)
        same = old is not None and (old == value or (knob is not None and knob.same(old, value)) or (
            x is not None and y is not None and abs(x - y) <= PROPOSAL_MOVE * max(abs(x), abs(y))))
        out[key] = (old if same else value, now)
        fresh |= not same
    return out, fresh


class Agent:
    """One agent on one host. ``mode`` defaults to ``cfg.agent.mode`` (recommend | apply).
    ``observed_s``: a one-shot run (recommend) that lasts this long; symptoms' durations are
    capped to fit in it."""

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
        observed_s: float | None = None,
    ) -> None:
        from autotune.sensors.latency import scrapers_for

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
        self.journal = Journal(db, clock=clock)
        self.trail = AuditTrail(db)
        # keep a verification's before-window decoded in memory (verify/stage.py reads it)
        self.samples = SampleStore(db, aggregate_every_s=cfg.agent.aggregate_every_s,
                                   recent_s=cfg.verification.window_s + cfg.verification.settle_s + 5.0)
        period = cfg.agent.sample_period_s
        self.window: deque[Snapshot] = deque(maxlen=max(4, int(cfg.agent.window_s / period * 2)))
        self.lookback = max(1, round(cfg.agent.window_s / period))
        self.detector = state.load_detector(db)
        self.scrapers = scrapers if scrapers is not None else scrapers_for(cfg.services)
        self._scraped: dict[str, float] = {}  # service -> when its latency source was last read
        self.symptoms: list[Symptom] = []
        self.actions: list[Action] = []
        self._episodes: Episodes = {}  # proposals audited, see proposal_episodes
        self._said: Episodes = {}  # blocks logged and audited (diagnose/blocked.py), the same way
        self.blocks: list[blocked.Block] = []
        self._reacting = blocked.reacting_symptoms(ruleset)
        self._stage_errors: dict[str, str] = {}
        self._failures: dict[tuple[str, str], int] = {}
        self._refused: set[tuple[str, str, str | None]] = set()  # refused reads already reported
        self._holding: tuple[str, str] | None = None  # (knob, target) held for samples, logged
        self._logged: dict[tuple[str, str, str], float] = {}  # recommend mode: proposal -> last logged
        self.observed_s = observed_s
        self.verifier = Verifier(cfg, journal=self.journal, samples=self.samples, actuator=actuator,
                                 audit=self.audit, on_failure=self._count_failure)
        self.applier = Applier(cfg, host=self.host, journal=self.journal, actuator=actuator,
                               verifier=self.verifier,
                               audit=self.audit, on_failure=self._count_failure,
                               on_success=lambda k, t: self._failures.pop((k, t), None))
        self.started_ts: float | None = None
        self.search = Search(cfg, db, self.journal, ncpu=host.ncpu)
        self._flavors: dict[str, str] = {}  # page flavor each service's readings named, as logged
        self.pools: dict[str, pool.Pool] = {}  # fixed compute-thread pools (diagnose/pool.py)
        self._pool_refused: set[tuple[str, str, str]] = set()  # refusals already logged at INFO

    # -- plumbing -------------------------------------------------------------------------
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
        except PolicyRefused as err:  # the operator must see it: logged and audited once
            self._refused_read(knob, target, err)
            return None
        except Exception as err:  # noqa: BLE001 - unreadable knob: a missing reading
            log.debug("read %s %s failed: %s", knob, target, err)
            return None

    def _refused_read(self, knob: str, target: str, err: PolicyRefused) -> None:
        """A read the helper refuses (a target outside its policy) leaves the rules that need it
        without a value, every tick: say so once per (knob, target, code) in the log and trail."""
        code = getattr(err, "code", None)
        if (knob, target, code) in self._refused:
            return
        self._refused.add((knob, target, code))
        if code == "rate_limited":  # not the policy's no: this read waits for the next tick
            log.warning("helper rate-limited a read of %s on %s (%s): rules that need it wait for the next "
                        "tick; raise [limits] rate_per_s/burst in the helper policy if this repeats",
                        knob, target, err.reason)
        else:
            log.warning("helper refused to read %s on %s (%s: %s): rules that need it are skipped; "
                        "allow it in the helper policy if the agent should manage it",
                        knob, target, code, err.reason)
        self.audit("refusal", knob=knob, target=target, outcome="refused",
                   detail={"op": "read", "reason": err.reason, "code": code})

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
        for svc in self.cfg.services:
            self._log_slo_fields(svc)
        self.audit("agent_start", detail={
            "mode": self.mode, "reconciled": [o.model_dump() for o in outcomes],
            "actuator": type(self.actuator).__name__,
        })

    def _log_slo_fields(self, svc, detected: str | None = None) -> None:
        """Which SLO fields the service's declared latency source can measure, one line each
        (autotune/slo.py); a field it cannot measure is not a target, and the operator must know."""
        from autotune import slo

        for a in slo.assess(svc, detected):
            log.log(logging.INFO if a.counted else logging.WARNING, "%s", a.line)

    def reconcile(self, now: float) -> list:
        """Settle unfinished entries (crash recovery). Drift: audited, left alone; ours: re-verify.

        In every mode: reconcile only reads the targets and records what it finds, so recommend
        mode (the dry-run actuator reads through the knobs) settles a crashed apply-mode run's
        planned entries too; it never restores anything (``autotune rollback`` does)."""
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
                self.verifier.hold(e.id, now + self.cfg.verification.window_s)
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
                if not self._scrape_due(name, now):
                    continue  # this snapshot carries no reading of its own (detect/metrics.py)
                self._scraped[name] = now
                try:
                    reading = scraper.sample(now)
                except Exception as err:  # noqa: BLE001 - scrapers should not raise; be sure
                    log.warning("latency scrape for %s failed: %s", name, err)
                    continue
                if name in services:
                    services[name] = services[name].model_copy(update={"latency": reading})
                flavor = getattr(reading, "flavor", None)
                if flavor and self._flavors.get(name) != flavor:
                    self._flavors[name] = flavor  # flavor auto: now known, say what it measures
                    svc = next((s for s in self.cfg.services if s.name == name), None)
                    if svc is not None and svc.latency is not None and svc.latency.flavor == "auto":
                        self._log_slo_fields(svc, flavor)
            snap = snap.model_copy(update={"services": services})
        self.samples.append(snap)
        self.window.append(snap)
        if self.exporter is not None:
            self.exporter.update_snapshot(snap)
        return snap

    def _scrape_due(self, name: str, now: float) -> bool:
        """The latency source is read at its own period ([service.latency] scrape_every_s), the
        sample nearest to it: with the default 1 s and a 1-s sample period, every sample."""
        last = self._scraped.get(name)
        lat = next((s.latency for s in self.cfg.services if s.name == name), None)
        every = lat.scrape_every_s if lat is not None else 0.0
        return last is None or now - last >= every - self.cfg.agent.sample_period_s / 2

    # -- evaluate -------------------------------------------------------------------------
    def _history(self) -> list[tuple[float, dict[str, float]]]:
        """(ts, metrics) for the ticks the detector has not consumed, plus the newest one."""
        from autotune.detect.metrics import derive_metrics

        win = list(self.window)
        last = self.detector.last_ts
        changed = self.journal.last_applied_ts()  # measure only what the current allocation does
        out = []
        for i, s in enumerate(win):
            if last is not None and s.ts <= last and i != len(win) - 1:
                continue
            start = max(0, i - self.lookback)
            while changed is not None and start < i - 1 and win[start].ts < changed <= s.ts:
                start += 1
            m = derive_metrics(win[start: i + 1], ncpu=self.host.ncpu, services=self.cfg.services)
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
            lockout_until={s.name: t for s in self.cfg.services
                           if (t := self.journal.lockout_until(s.name)) is not None},
            restarting=frozenset(e.service for e in unfinished if e.service is not None
                                 and getattr(KNOBS.get(e.knob), "min_interval_s", 0.0) > 0),
        )

    def evaluate(self, now: float | None = None) -> gating.Decision | None:
        """Detect and diagnose over the window; in apply mode gate and apply one action."""
        from autotune.agent.pipeline import evaluate

        now = self.clock() if now is None else now
        if not self.window:
            return None
        history = self._history()
        placed = self.window[-1].service_cgroups()
        # each knob read once this tick: the rules and the search ask for the same few several
        # times, and every helper read counts against the policy's [limits] rate_per_s
        read = cache(self._read_current)
        symptoms, actions, self.detector = evaluate(
            self.ruleset, self.cfg, history, self.detector, read, now,
            cooldowns=self._cooldowns() if self.mode == "apply" else None, observed_s=self.observed_s,
            origins=self.journal.origin, cgroups=placed,
        )
        state.save_detector(self.db, self.detector, self.clock())
        since = self.journal.last_applied_ts()
        current = [s for s in self.window if since is None or s.ts >= since]
        self.search.placed = placed
        self.pools = pool.remember(self.pools, pool.pools_from(history[-1][1] if history else {},
                                                               self.cfg.services, now), now)
        self.search.pools = self.pools
        self.search.observe(now, current, read)
        actions = self.search.merge(actions, now, current, read)
        actions = self._screen_pools(actions)
        view = self.gate_view(actions, now, metrics=history[-1][1] if history else None)
        actions = self._blocked(symptoms, actions, view, now)
        self.symptoms, self.actions = symptoms, actions
        if self.exporter is not None:
            self.exporter.update_symptoms(symptoms)
        self._episodes, fresh = proposal_episodes(self._episodes, actions, now)
        if fresh:
            self.audit("recommendation", outcome="proposed" if self.mode == "apply" else "recommended",
                       detail={"mode": self.mode, "symptoms": [s.model_dump() for s in symptoms],
                               "actions": [a.model_dump() for a in actions]})
        if self.mode != "apply":
            for a in actions:
                if self._log_due(a, now):
                    log.info("would %s %s on %s: %s -> %s (rule %s%s)", "advise" if a.advisory else "set",
                             a.knob, a.target, a.current, a.proposed, a.rule,
                             "" if a.score is None else f", predicted {a.score:+.0%}")
            return None
        decision = gating.select_action(actions, view, now, self.cfg.verification)
        for what, why in decision.skipped:
            log.debug("skipped %s: %s", what, why)
        if decision.chosen is not None:
            window = decision.chosen.verify.window_s or self.cfg.verification.window_s
            # a breach is answered at once; anything else waits for a before-window to verify against
            breach = gating.answers_breach(decision.chosen, history[-1][1] if history else {})
            if not breach and not self.verifier.can_measure(now, decision.chosen.service, window):
                held = (decision.chosen.knob, decision.chosen.target)
                if held != self._holding:  # once per hold, not every tick until it lifts
                    self._holding = held
                    log.info("holding %s on %s: less than %.0f s of samples to verify it against",
                             decision.chosen.knob, decision.chosen.target, window)
                return decision.model_copy(update={
                    "chosen": None,
                    "skipped": [*decision.skipped, (f"{decision.chosen.rule}:{decision.chosen.knob}:"
                                f"{decision.chosen.target}", "not enough pre-change samples yet")]})
            self._holding = None
            self.apply(decision.chosen, symptoms=symptoms, now=now)
        return decision

    def _blocked(self, symptoms: list[Symptom], actions: list[Action], view: gating.GateView,
                 now: float) -> list[Action]:
        """Mark the proposals a durable check stops, and say once per episode (log at INFO,
        audit ``blocked``) each thing nothing can be done about, with what would unblock it."""
        # a rate-limited read is not the policy's no: it waits for the next tick, blocks nothing
        refused = {(k, t) for k, t, code in self._refused if code != "rate_limited"}
        snap = self.window[-1] if self.window else None
        actions, for_actions = blocked.actions(actions, view, refused)
        self.blocks = (blocked.services(self.cfg, snap) + for_actions +
                       blocked.symptoms(symptoms, actions, self.cfg, snap, reacting=self._reacting,
                                        refused=refused))
        said = {k: v for k, v in self._said.items() if now - v[1] <= EPISODE_CLEAR_S}
        for b in self.blocks:
            if b.key not in said:
                log.info("%s", b.line)
                if b.kind != "note":  # a note (a declared cgroup its processes are not in) blocks nothing
                    self.audit("blocked", service=b.service, rule=b.rule, knob=b.knob, target=b.target,
                               outcome="blocked", detail={"kind": b.kind, "line": b.line})
            said[b.key] = (said.get(b.key, (b.line, now))[0], now)
        self._said = said
        return actions

    def _screen_pools(self, actions: list[Action]) -> list[Action]:
        """Every proposal through the thread-pool constraint (diagnose/pool.py); a refusal is
        logged at INFO once per rule and target, then at DEBUG."""
        kept, refused = pool.screen(actions, self.pools, self.cfg.services)
        for a, why in refused:
            key = (a.rule, a.knob, a.target)
            level = logging.DEBUG if key in self._pool_refused else logging.INFO
            self._pool_refused.add(key)
            log.log(level, "not proposing %s %s -> %s (rule %s): %s", a.knob, a.target, a.proposed, a.rule, why)
        return kept

    def _log_due(self, action: Action, now: float) -> bool:
        """Recommend mode: log a proposal once per its rule's cooldown (an advice's text moves
        with the metrics every tick; the rule would not fire again before its cooldown)."""
        key = (action.rule, action.knob, action.target)
        last = self._logged.get(key)
        cooldown = next((r.cooldown_s for r in getattr(self.ruleset, "rules", []) if r.name == action.rule), 0.0)
        if last is not None and now - last < max(cooldown, self.cfg.verification.rule_cooldown_s, 1.0):
            return False
        self._logged[key] = now
        return True

    # -- apply ----------------------------------------------------------------------------
    def apply(self, action: Action, *, symptoms: Iterable[Symptom] = (), now: float | None = None
              ) -> JournalEntry | None:
        """Journal, write, mark verifying (the fix stage: fix/apply.py)."""
        now = self.clock() if now is None else now
        entry = self.applier.apply(action, symptoms=list(symptoms), now=now, window=list(self.window))
        if entry is not None:  # its episode ends: the next proposal there is a new one
            self._episodes.pop((action.rule, action.knob, action.target), None)
        return entry


    # -- verify ---------------------------------------------------------------------------
    def verify(self, now: float | None = None) -> list[JournalEntry]:
        """Judge every change whose after-window is complete (verify/stage.Verifier)."""
        now = self.clock() if now is None else now
        if self.actuator.dry_run:
            return []
        return self.verifier.run(now)

    # -- retention / stop -----------------------------------------------------------------
    def retain(self, now: float | None = None):
        now = self.clock() if now is None else now
        a = self.cfg.agent
        return self.samples.retain(now, a.raw_retention_h * 3600, a.aggregate_retention_d * 86400)

    def stop(self, now: float | None = None) -> list[RollbackOutcome]:
        """Optionally undo everything we changed (agent.restore_on_stop); audit agent_stop."""
        undone: list[RollbackOutcome] = []
        if self.cfg.agent.restore_on_stop and not self.actuator.dry_run:
            undone = Rollback(self.journal, self.actuator, audit=self.audit, by="stop").all()
        left = [] if self.actuator.dry_run else self.journal.unfinished()
        if left:  # say so: a stop must not leave an unjudged change in place without a word
            log.warning("stopping with %d change(s) still being verified; they stay applied and are "
                        "verified when the agent starts again (`autotune rollback --all` restores "
                        "them): %s", len(left), "; ".join(
                            f"#{e.id} {e.knob} {e.target} {e.prior_value} -> {e.proposed}" for e in left))
        for s in self.scrapers.values():
            close = getattr(s, "close", None)
            if close is not None:
                close()
        self.audit("agent_stop", detail={"mode": self.mode, "restored": [
            o.model_dump() for o in undone if o.result == "restored"], "left_verifying": [e.id for e in left]})
        return undone

