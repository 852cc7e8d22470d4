"""The fix stage's agent side: journal the prior value, write through the actuator, settle
whatever the write's fate was, hand the change to the verify stage.

The prior value is durably journaled BEFORE anything is written (``Journal.plan``); a write
that raised after it may have touched the target is settled by reading the target back
(``landed_from``), so rollback and reconcile always know what is in place. Knobs and the
privileged helper do the writing (autotune/knobs/, autotune/helper/, fix/actuator.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from autotune.fix.actuator import is_drift
from autotune.config import Config
from autotune.errors import NotSent, PolicyRefused
from autotune.failpoints import failpoint
from autotune.journal.chain import landed_from
from autotune.journal.journal import Journal, JournalEntry
from autotune.types import Action, Snapshot, Symptom

log = logging.getLogger(__name__)


def may_have_written(err: PolicyRefused) -> bool:
    """A helper refusal that can come after its write began (the knob's read-back mismatch, a
    kernel error mid-write, a helper bug); every other code is decided before any write."""
    return getattr(err, "code", None) in ("host_error", "internal")


class Applier:
    """Applies one chosen action. ``audit(kind, **fields)`` records events; ``on_failure(knob,
    target, why)`` / ``on_success(knob, target)`` keep the agent's failure count per target."""

    def __init__(self, cfg: Config, *, host, journal: Journal, actuator, verifier, audit: Callable[..., Any],
                 on_failure: Callable[[str, str, str], None], on_success: Callable[[str, str], None]) -> None:
        self.cfg = cfg
        self.host = host  # only to say why a target is gone
        self.journal = journal
        self.actuator = actuator
        self.verifier = verifier
        self.audit = audit
        self.on_failure = on_failure
        self.on_success = on_success

    def apply(self, action: Action, *, symptoms: list[Symptom], now: float, window: list[Snapshot]
              ) -> JournalEntry | None:
        """Journal, write, mark verifying. Returns the entry (None when nothing was planned)."""
        knob, target = action.knob, action.target
        failpoint("before_plan")
        prior = self.actuator.read(knob, target)
        if prior is None:
            log.info("%s on %s: nothing to apply: %s", knob, target, self._why_gone(knob, target))
            return None
        span = action.verify.window_s or self.cfg.verification.window_s
        recent = [s for s in window if s.ts >= now - span]
        entry = self.journal.plan(
            knob=knob, target=target, prior=prior, proposed=action.proposed, rule=action.rule,
            rationale=action.rationale, service=action.service, symptoms=symptoms,
            objective_before=self.verifier.summary(action.service, recent), verify_plan=action.verify,
        )
        failpoint("after_plan")
        ev = dict(action_id=entry.id, knob=knob, target=target, service=action.service,
                  rule=action.rule, rationale=action.rationale, before=prior.value)
        try:
            result = self.actuator.apply(knob, target, action.proposed, expect_before=prior.value,
                                         request_id=f"autotune-{entry.id}")
            after = result.after
        except PolicyRefused as err:
            if is_drift(err):  # checked before writing: nothing of ours landed
                self.journal.mark_drifted(entry.id, None, detail=f"helper: {err.reason}", landed=False)
                self.audit("drift", **ev, outcome="drifted", detail={"stage": "apply", "reason": err.reason})
                return self.journal.get(entry.id)
            if not may_have_written(err):
                log.warning("helper refused %s on %s -> %s (%s): %s", knob, target, action.proposed,
                            getattr(err, "code", None), err.reason)
                self.journal.mark_failed(entry.id, f"refused: {err.reason}", landed=False)
                self.audit("refusal", **ev, after=action.proposed, outcome="refused",
                           detail={"reason": err.reason, "code": getattr(err, "code", None)})
                self.on_failure(knob, target, err.reason)
                return self.journal.get(entry.id)
            after = self._failed_write(entry, ev, err)
        except NotSent as err:  # the helper did not take the request: nothing was written
            why = f"{type(err).__name__}: {err}"
            self.journal.mark_failed(entry.id, f"not applied: {why}", landed=False)
            self.audit("apply", **ev, after=None, outcome="failed", detail={"error": why, "landed": False})
            self.on_failure(knob, target, why)
            return self.journal.get(entry.id)
        except Exception as err:  # noqa: BLE001 - a failed write is journaled, not fatal
            after = self._failed_write(entry, ev, err)
        else:
            failpoint("after_write")
            if not result.changed or after is None:
                self.journal.mark_failed(entry.id, f"nothing written: live value already "
                                                   f"{result.before.value!r}", landed=False)
                return self.journal.get(entry.id)
        if after is None:  # failed; journaled and audited by _failed_write
            return self.journal.get(entry.id)
        self.journal.mark_applied(entry.id, after)
        entry = self.journal.mark_verifying(entry.id)
        self.on_success(knob, target)
        due = self.verifier.due(entry)
        self.audit("apply", **ev, after=after.value, outcome="applied",
                   objective_before=(entry.objective_before or {}).get("median"),
                   detail={"symptoms": [s.model_dump() for s in symptoms], "verify_due_ts": due,
                           "objective": (entry.objective_before or {}).get("objective"),
                           "verify": entry.verify_plan.model_dump()})
        log.info("applied %s on %s: %s -> %s (rule %s); %s within %.0f s", knob, target,
                 prior.value, after.value, action.rule,
                 "guarding the SLO" if entry.verify_plan.mode == "guard" else "verifying", due - now)
        return entry

    def _why_gone(self, knob: str, target: str) -> str:
        """Why a target reads as absent, in the knob's own words ("service 'llm' has no
        admission_url (no gate in front of it)"), else "target gone"."""
        from autotune.errors import TargetGone
        from autotune.knobs import KNOBS

        k = KNOBS.get(knob)
        try:
            if k is not None:
                k.resolve_target(self.host, self.cfg, target)
        except TargetGone as err:
            return str(err)
        except Exception:  # noqa: BLE001 - only a better message was at stake
            pass
        return "target gone (cgroup removed, service not running)"

    def _failed_write(self, entry: JournalEntry, ev: dict[str, Any], err: BaseException):
        """A write that raised after it may have touched the target: settle it by reading.
        Returns the live state when the proposed value is in place (the write landed: verify it
        as usual); otherwise journals the failure with what the reading showed and returns None."""
        why = f"{type(err).__name__}: {err}"
        try:
            live = self.actuator.read(entry.knob, entry.target)
        except Exception as rerr:  # noqa: BLE001 - fate unknown; rollback/reconcile read later
            live, landed, note = None, None, f"; fate unknown (cannot read back: {rerr})"
        else:
            landed = landed_from(entry, live.value if live is not None else None,
                                 self.actuator.same(entry.knob))
            if landed:
                log.warning("%s on %s: %s, but the proposed value is in place: applied", entry.knob,
                            entry.target, why)
                return live
            if live is None:
                note = "; target gone"
            elif landed is False:
                note = "; not applied (the prior is in place)"
            else:  # neither prior nor proposed: the write left something else, ours to undo
                landed, note = True, f"; the write left {live.value!r}"
        self.journal.mark_failed(entry.id, why + note, landed=landed,
                                 applied=live if landed else None)
        self.audit("apply", **ev, after=live.value if live is not None else None, outcome="failed",
                   detail={"error": why, "landed": landed})
        self.on_failure(entry.knob, entry.target, why)
        return None

