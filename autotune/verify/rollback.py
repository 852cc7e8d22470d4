"""Undo journal entries: the one rollback routine.

Used by the verify stage (a change that regressed), ``Agent.stop`` (``agent.restore_on_stop``)
and ``autotune rollback ID|--all``. For each entry: re-read the live value through the
actuator, decide (``plan``, pure), write the recorded prior KnobState back, read it back,
then journal and audit the step. Which entries may be undone at all, and how, is decided
here and nowhere else.

- live value is ours (the change is in place): restore the prior's exact raw record;
- live value is already the prior: nothing to write; an in-place entry is settled as
  rolled back (as reconcile would);
- live value is neither: someone else changed it. Skip it (the entry becomes drifted and the
  target unmanaged) unless ``force``;
- target gone: nothing to write; an unfinished entry is finished as failed;
- ``planned`` entries are left to reconcile (nothing is known to be applied yet), and a single
  entry is refused while a newer change to its target is still in place (restoring the older
  prior would silently undo that one too).

It lives in ``verify/`` rather than ``journal/`` because it needs the actuator and the audit
trail, which the journal (storage) must not know about.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from autotune.journal.journal import UNFINISHED, Journal, JournalEntry
from autotune.knobs.base import KnobState

# Entries ``--all`` (and restore_on_stop) consider; a failed entry may be a partial write.
CANDIDATE_STATES = ("applied", "verifying", "kept", "failed", "drifted")
# Entries whose change may still be in place (a newer one blocks rolling back an older one alone).
IN_PLACE = ("applied", "verifying", "kept")

Same = Callable[[str | None, str | None], bool]
Audit = Callable[..., Any]  # audit(kind, **AuditEvent fields), e.g. Agent.audit or audit_to(trail)


class RollbackPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    entry_id: int
    knob: str
    target: str
    action: Literal["restore", "skip_drift", "nothing"]
    restore: KnobState | None  # the prior state to write back when action=restore
    current: str | None
    reason: str


class RollbackOutcome(BaseModel):
    model_config = ConfigDict(frozen=True)

    entry_id: int
    knob: str
    target: str
    result: Literal["restored", "already_prior", "skipped_drift", "gone", "blocked", "failed"]
    reason: str
    before: str | None = None  # live value before the rollback
    after: str | None = None  # live value read back after it
    exact: bool | None = None  # read-back raw == the journal's recorded raw


def plan(entry: JournalEntry, current: str | None, *, force: bool = False,
         same: Same | None = None) -> RollbackPlan:
    """Decide how to undo one entry given the live value. Pure: writes nothing.

    restore -> live value is ours (or force); skip_drift -> someone else changed it since;
    nothing -> already at prior, already rolled back, or target gone.
    """
    eq = same or (lambda a, b: a == b)

    def out(action: str, reason: str) -> RollbackPlan:
        return RollbackPlan(entry_id=entry.id, knob=entry.knob, target=entry.target,
                            action=action, current=current, reason=reason,  # type: ignore[arg-type]
                            restore=entry.prior if action == "restore" else None)

    if entry.state == "rolled_back":
        return out("nothing", "already rolled back")
    if current is None:
        return out("nothing", "target gone")
    if eq(current, entry.prior_value):
        return out("nothing", f"already at prior {entry.prior_value!r}")
    if eq(current, entry.expected_value):
        return out("restore", f"{current!r} is ours; restore {entry.prior_value!r}")
    if force:
        return out("restore", f"forced over drift: live {current!r}, restore {entry.prior_value!r}")
    return out("skip_drift", f"live {current!r} is neither ours {entry.expected_value!r} "
                             f"nor prior {entry.prior_value!r}; not clobbering (use force)")


def candidates(journal: Journal, *, knob: str | None = None,
               target: str | None = None) -> list[JournalEntry]:
    """Entries ``rollback --all`` considers, NEWEST FIRST.

    Newest first undoes a stack of changes on one target in reverse: entry B (v1->v2) is
    restored to v1, which is exactly entry A's (v0->v1) value, so A then restores v0; the
    first prior of a target wins in the end, as if nothing had ever been changed.
    """
    return journal.entries(knob=knob, target=target, newest_first=True, states=CANDIDATE_STATES)


def audit_to(trail, clock: Callable[[], float] = time.time) -> Audit:
    """An ``audit(kind, **fields)`` that appends to an AuditTrail (the CLI has no Agent)."""
    from autotune.audit.trail import AuditEvent

    def audit(kind: str, **fields: Any) -> None:
        trail.append(AuditEvent(ts=clock(), kind=kind, **fields))

    return audit


class Rollback:
    """Undoes entries through one actuator, recording every step in one journal and trail.

    ``by`` says who asked ("verify", "stop", "operator") and ``via`` how the host was reached
    ("helper", "local"), both kept in the audit detail. Errors in ``abort_on`` (the CLI: a
    helper that went away) stop the whole run; any other error fails just that entry.
    """

    def __init__(self, journal: Journal, actuator, *, audit: Audit | None = None, by: str,
                 via: str | None = None, abort_on: tuple[type[BaseException], ...] = ()) -> None:
        self.journal = journal
        self.actuator = actuator
        self._audit = audit
        self.by = by
        self.via = via
        self.abort_on = abort_on

    def all(self, *, force: bool = False, knob: str | None = None,
            target: str | None = None) -> list[RollbackOutcome]:
        """Undo every candidate (optionally of one knob/target), newest first."""
        return self.entries(candidates(self.journal, knob=knob, target=target), force=force)

    def entries(self, entries: Iterable[JournalEntry], *, force: bool = False,
                single: bool = False) -> list[RollbackOutcome]:
        """Undo ``entries`` in the given order (callers pass newest first). ``single``: the
        operator named one entry (refused while a newer change to its target is in place)."""
        return [self.entry(e, force=force, single=single) for e in entries]

    def entry(self, entry: JournalEntry, *, force: bool = False, single: bool = False,
              why: str = "", settle: dict[str, Any] | None = None,
              figures: dict[str, Any] | None = None) -> RollbackOutcome:
        """Undo one entry. ``why`` prefixes the journaled reason; ``settle`` (result,
        objective_after) goes onto the entry when it ends rolled back; ``figures``
        (objective_before/after, test) onto the rollback audit event."""
        settle, figures = settle or {}, figures or {}

        def done(result: str, reason: str, **kw: Any) -> RollbackOutcome:
            return RollbackOutcome(entry_id=entry.id, knob=entry.knob, target=entry.target,
                                   result=result, reason=reason, **kw)  # type: ignore[arg-type]

        if entry.state == "planned":
            return done("blocked", "planned but not known to be applied; the agent settles it at "
                                   "start (reconcile) - nothing to undo yet")
        if single and entry.state != "rolled_back":
            newer = self._newer_in_place(entry)
            if newer is not None:
                return done("blocked", f"newer entry {newer.id} on the same target is still in "
                                       f"place; roll it back first or use: autotune rollback --all "
                                       f"--knob {entry.knob} --target {entry.target}")
        same = self.actuator.same(entry.knob)
        try:
            live = self.actuator.read(entry.knob, entry.target)
        except self.abort_on:
            raise
        except Exception as err:  # noqa: BLE001 - one entry's failure must not stop the others
            self._error(entry, None, None, str(err))
            return done("failed", f"cannot read the live value: {err}")
        current = live.value if live is not None else None
        p = plan(entry, current, force=force, same=same)
        reason = f"{why}; {p.reason}" if why else p.reason
        if p.action == "nothing":
            if entry.state == "rolled_back":
                return done("already_prior", p.reason, before=current)
            if current is None:
                if entry.state in UNFINISHED:  # would never verify: finish it
                    self.journal.mark_failed(entry.id, "target gone before rollback")
                    return done("gone", "target gone; nothing to restore (entry failed)")
                return done("gone", f"target gone; nothing to restore ({entry.state} entry left as is)")
            if entry.state not in IN_PLACE:  # failed / drifted entry that is back at prior
                return done("already_prior", p.reason, before=current)
            # our change is no longer in place: settle the entry, as reconcile would
            self.journal.mark_rolled_back(entry.id, detail=self._journal_detail(reason), **settle)
            self._record(entry, "rollback", "rolled_back", current, current,
                         {"reason": reason, "changed": False}, figures)
            return done("already_prior", p.reason, before=current, after=current,
                        exact=_exact(live, entry))
        if p.action == "skip_drift":
            if entry.state in IN_PLACE:
                self.journal.mark_drifted(entry.id, current, detail=p.reason)
            self._record(entry, "drift", "skipped", current, None,
                         {"reason": p.reason, "operation": "rollback"}, {})
            return done("skipped_drift", p.reason, before=current)
        prior = p.restore or entry.prior
        try:
            # force: the plan already decided; the raw record must be written even when the
            # normalized value already matches (e.g. a cpu period that differs)
            self.actuator.restore(entry.knob, entry.target, prior, force=True)
            after = self.actuator.read(entry.knob, entry.target)
        except self.abort_on:
            raise
        except Exception as err:  # noqa: BLE001 - keep going, record why
            self.journal.note(entry.id, f"rollback failed: {err}")
            self._error(entry, current, None, str(err))
            return done("failed", f"restore refused or failed: {err}", before=current)
        after_v = after.value if after is not None else None
        if not same(after_v, entry.prior_value):
            err = f"restored but reads back {after_v!r}, not the prior {entry.prior_value!r}"
            self.journal.note(entry.id, f"rollback failed: {err}")
            self._error(entry, current, after_v, err)
            return done("failed", err, before=current, after=after_v)
        exact = _exact(after, entry)
        self.journal.mark_rolled_back(entry.id, detail=self._journal_detail(reason), **settle)
        self._record(entry, "rollback", "rolled_back", current, after_v,
                     {"reason": reason, "forced": force, "exact_raw": exact}, figures)
        return done("restored", p.reason, before=current, after=after_v, exact=exact)

    # -- plumbing ---------------------------------------------------------------------------
    def _newer_in_place(self, entry: JournalEntry) -> JournalEntry | None:
        for e in self.journal.entries(knob=entry.knob, target=entry.target, states=IN_PLACE,
                                      newest_first=True):
            if (e.ts, e.id) > (entry.ts, entry.id):
                return e
        return None

    def _journal_detail(self, reason: str) -> str:
        via = f" via {self.via}" if self.via else ""
        return f"{self.by} rollback{via}: {reason}"

    def _record(self, entry: JournalEntry, kind: str, outcome: str, before: str | None,
                after: str | None, detail: dict[str, Any], figures: dict[str, Any]) -> None:
        if self._audit is None:
            return
        detail = {**detail, "by": self.by, **({"via": self.via} if self.via else {})}
        self._audit(kind, action_id=entry.id, knob=entry.knob, target=entry.target,
                    service=entry.service, rule=entry.rule, rationale=entry.rationale,
                    before=before, after=after, outcome=outcome, detail=detail, **figures)

    def _error(self, entry: JournalEntry, before: str | None, after: str | None, error: str) -> None:
        self._record(entry, "error", "failed", before, after,
                     {"operation": "rollback", "error": error}, {})


def _exact(state: KnobState | None, entry: JournalEntry) -> bool | None:
    """Whether the live raw record equals the journal's prior (None when either has none)."""
    raw = entry.prior.raw
    if state is None or not raw:
        return None
    return dict(state.raw) == dict(raw)
