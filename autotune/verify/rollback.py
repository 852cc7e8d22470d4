"""Undo journal entries: the one rollback routine.

Used by the verify stage (a change that regressed), ``Agent.stop`` (``agent.restore_on_stop``)
and ``autotune rollback ID|--all``. It re-reads the live value through the actuator, lets the
target's history (``journal/chain.py``) say which writes landed and what the target held before
the agent's first change, decides (``plan_target`` / ``plan``, pure), writes back a recorded
prior KnobState, reads it back, then journals and audits every step. Which entries may be
undone at all, and how, is decided here and nowhere else.

``all`` works per TARGET, not entry by entry: it restores the original of the target's newest
run (the prior of its first entry whose write landed) ONCE, and settles every entry of that
run the same way, so no stale prior can be replayed over a newer one. Per entry of the run:

=====================================  ======================  ==============================
entry                                  live value              rollback (--all, ID) does
=====================================  ======================  ==============================
planned, or failed with fate unknown   == its prior            not applied: failed, landed=0
  (crash after the write, or a write   == its proposed         landed: applied, then undone
  that failed in a way that may have   anything else           drift: left alone, reported
  landed; a newer entry's prior is the                          (``--force`` restores)
  reading when there is one)
failed, never landed (refused, no-op,  any                     ignored: never restored, never
  helper unreachable before the write,                          compared with its proposal
  a reading showed the prior)
failed, landed partly (the write left  == that value           ours: restore the original
  another value, recorded as applied)
applied / verifying / kept             == what the run left    ours: restore the original once
any open entry of the run              == the original         nothing written; rolled_back
applied / verifying / kept / failed    anything else           drift: drifted + unmanaged, exit
                                                               1 (``--force`` restores)
drifted (drift already reported)       anything else, even     left alone, exit 0, no new row
                                         its own old value       (someone else set it again)
entry of an older run (someone else    any                     superseded: drifted (target not
  set the target after it)                                     disabled), reported once;
                                                               ``rollback ID``: never "ours"
unfinished entry                       target gone             failed; nothing written
=====================================  ======================  ==============================

What "failed" means: a write refused or impossible before touching the target (policy, drift
check, unreachable helper on connect, value already in place) never landed. A write that
raised after it may have touched the target (the knob's read-back mismatch, a helper
``host_error``/``internal``, a connection lost mid-call) is settled by reading at once
(``Agent.apply``): prior -> never landed; proposed -> landed, verified as usual; another value
-> landed partly, failed with that value recorded as ``applied`` (rollback restores the prior
when the live value is still that one); unreadable -> fate unknown, settled by the next reading.

``entry`` undoes ONE entry (the verify stage; ``rollback ID``): its own prior, refused while a
newer change to its target may still be in place (restoring the older prior would silently
undo that one too). It lives in ``verify/`` rather than ``journal/`` because it needs the
actuator and the audit trail, which the journal (storage) must not know about.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from autotune.journal.chain import History, history, is_open
from autotune.journal.journal import UNFINISHED, Journal, JournalEntry
from autotune.knobs.base import KnobState
from autotune.types import Same

Audit = Callable[..., Any]  # audit(kind, **AuditEvent fields), e.g. Agent.audit or audit_to(trail)
Result = Literal["restored", "already_prior", "skipped_drift", "left_alone", "superseded",
                 "not_applied", "gone", "blocked", "failed"]


class RollbackPlan(BaseModel):
    """How to undo ONE entry (``Rollback.entry``)."""

    model_config = ConfigDict(frozen=True)

    entry_id: int
    knob: str
    target: str
    action: Literal["restore", "skip_drift", "nothing"]
    restore: KnobState | None  # the prior state to write back when action=restore
    current: str | None
    reason: str


class TargetPlan(BaseModel):
    """How to undo a target's newest run (``Rollback.all``)."""

    model_config = ConfigDict(frozen=True)

    knob: str
    target: str
    action: Literal["restore", "settle", "drift", "left_alone", "gone", "nothing"]
    restore: KnobState | None  # the original to write back when action=restore
    current: str | None
    reason: str


class RollbackOutcome(BaseModel):
    model_config = ConfigDict(frozen=True)

    entry_id: int
    knob: str
    target: str
    result: Result
    reason: str
    before: str | None = None  # live value before the rollback
    after: str | None = None  # live value read back after it
    exact: bool | None = None  # read-back raw == the journal's recorded raw


def plan(entry: JournalEntry, current: str | None, *, force: bool = False,
         same: Same | None = None, in_place: bool = True) -> RollbackPlan:
    """Decide how to undo one entry given the live value. Pure: writes nothing.

    restore -> live value is ours (or force); skip_drift -> someone else changed it since;
    nothing -> already at prior, already rolled back, or target gone. ``in_place``: the
    history (``History.is_in_place``) says the entry's change may still be there; when it
    says not (drifted, or overwritten before a later change), the same value live now was
    set by someone else and is not ours.
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
    if entry.landed is not False and in_place and eq(current, entry.expected_value):
        return out("restore", f"{current!r} is ours; restore {entry.prior_value!r}")
    if force:
        return out("restore", f"forced over drift: live {current!r}, restore {entry.prior_value!r}")
    return out("skip_drift", f"live {current!r} is neither ours {entry.expected_value!r} "
                             f"nor prior {entry.prior_value!r}; not clobbering (use force)")


def plan_target(h: History, knob: str, target: str, current: str | None, *,
                force: bool = False, same: Same | None = None) -> TargetPlan:
    """Decide how to undo the newest run of one target given its live value. Pure."""
    eq = same or (lambda a, b: a == b)
    orig = h.original

    def out(action: str, reason: str) -> TargetPlan:
        return TargetPlan(knob=knob, target=target, action=action, current=current,  # type: ignore[arg-type]
                          reason=reason, restore=orig if action == "restore" else None)

    opened = h.open_run()
    if current is None:
        return out("gone", "target gone")
    if not opened or orig is None:
        return out("nothing", "nothing of ours in place")
    first = f"entry {h.run[0].id}'s prior"
    if eq(current, orig.value):
        return out("settle", f"already at the original {orig.value!r} ({first})")
    if h.ours is not None and eq(current, h.ours):
        return out("restore", f"{current!r} is ours; restore the original {orig.value!r} ({first})")
    if force:
        return out("restore", f"forced over drift: live {current!r}, restore the original "
                              f"{orig.value!r} ({first})")
    ours = f"ours {h.ours!r}" if h.ours is not None else "known to be ours"
    if all(e.state == "drifted" for e in opened):
        return out("left_alone", f"live {current!r} was set by someone else (drift recorded "
                                 f"earlier); left alone (use force to restore {orig.value!r})")
    return out("drift", f"live {current!r} is neither {ours} nor the original {orig.value!r}; "
                        "not clobbering (use force)")


def _targets(journal: Journal, knob: str | None, target: str | None,
             same_for: Callable[[str], Same]) -> list[tuple[str, str]]:
    """(knob, target) pairs with something to settle or undo, the newest change first."""
    groups: dict[tuple[str, str], list[JournalEntry]] = {}
    for e in journal.entries(knob=knob, target=target, newest_first=True):
        groups.setdefault((e.knob, e.target), []).append(e)
    out = []
    for (k, t), es in groups.items():
        h = history(es, None, same_for(k))
        if h.open_run() or h.superseded or h.inferred:
            out.append((k, t))
    return out


def candidates(journal: Journal, *, knob: str | None = None,
               target: str | None = None) -> list[JournalEntry]:
    """Entries ``rollback --all`` has to look at (open entries of targets that need it),
    NEWEST FIRST. Entries whose write never landed are never among them."""
    from autotune.knobs import same_for

    pairs = set(_targets(journal, knob, target, same_for))
    return [e for e in journal.entries(knob=knob, target=target, newest_first=True)
            if (e.knob, e.target) in pairs and is_open(e)]


def audit_to(trail, clock: Callable[[], float] = time.time) -> Audit:
    """An ``audit(kind, **fields)`` that appends to an AuditTrail (the CLI has no Agent)."""
    from autotune.audit.trail import AuditEvent

    def audit(kind: str, **fields: Any) -> None:
        trail.append(AuditEvent(ts=clock(), kind=kind, **fields))

    return audit


def _done(entry: JournalEntry, result: str, reason: str, **kw: Any) -> RollbackOutcome:
    return RollbackOutcome(entry_id=entry.id, knob=entry.knob, target=entry.target,
                           result=result, reason=reason, **kw)  # type: ignore[arg-type]


class Rollback:
    """Undoes entries through one actuator, recording every step in one journal and trail.

    ``by`` says who asked ("verify", "stop", "operator") and ``via`` how the host was reached
    ("helper", "local"), both kept in the audit detail. Errors in ``abort_on`` (the CLI: a
    helper that went away) stop the whole run; any other error fails just that target/entry.
    """

    def __init__(self, journal: Journal, actuator, *, audit: Audit | None = None, by: str,
                 via: str | None = None, abort_on: tuple[type[BaseException], ...] = ()) -> None:
        self.journal = journal
        self.actuator = actuator
        self._audit = audit
        self.by = by
        self.via = via
        self.abort_on = abort_on

    # -- every target -----------------------------------------------------------------------
    def all(self, *, force: bool = False, knob: str | None = None,
            target: str | None = None) -> list[RollbackOutcome]:
        """Put every target (optionally of one knob/target) back to its original, newest
        change first; settle every entry on the way."""
        out: list[RollbackOutcome] = []
        for k, t in _targets(self.journal, knob, target, self.actuator.same):
            out.extend(self.target(k, t, force=force))
        return out

    def target(self, knob: str, target: str, *, force: bool = False) -> list[RollbackOutcome]:
        """Undo the newest run of one target: restore its original once, settle its entries."""
        same = self.actuator.same(knob)
        try:
            live = self.actuator.read(knob, target)
        except self.abort_on:
            raise
        except Exception as err:  # noqa: BLE001 - one target's failure must not stop the others
            opened = [e for e in self.journal.entries(knob=knob, target=target, newest_first=True)
                      if is_open(e)]
            if opened:
                self._error(opened[0], None, None, str(err))
            return [_done(e, "failed", f"cannot read the live value: {err}") for e in opened]
        current = live.value if live is not None else None
        h, outs = self._settle(knob, target, current, same)
        p = plan_target(h, knob, target, current, force=force, same=same)
        opened = h.open_run()
        if p.action == "gone":
            for e in opened:
                if e.state in UNFINISHED:  # would never verify: finish it
                    self.journal.mark_failed(e.id, "target gone before rollback")
                    outs.append(_done(e, "gone", "target gone; nothing to restore (entry failed)"))
                else:
                    outs.append(_done(e, "gone", f"target gone; nothing to restore ({e.state} "
                                                 "entry left as is)"))
            return self._order(outs)
        for e in h.superseded:
            first = h.run[0]
            why = (f"overwritten by someone else before entry {first.id} was planned over "
                   f"{first.prior_value!r}; left as is")
            self.journal.mark_drifted(e.id, current, detail=why, disable=False)
            self._record(e, "drift", "superseded", e.expected_value, first.prior_value,
                         {"reason": why, "operation": "rollback"}, {})
            outs.append(_done(e, "superseded", why, before=current))
        if p.action == "settle":
            for e in opened:
                self._rolled_back(e, p.reason, current, current, {"changed": False}, {})
                outs.append(_done(e, "already_prior", p.reason, before=current, after=current,
                                  exact=_exact(live, h.run[0].prior)))
        elif p.action == "left_alone":
            outs.extend(_done(e, "left_alone", p.reason, before=current) for e in opened)
        elif p.action == "drift":
            for e in opened:
                if e.state == "drifted":
                    outs.append(_done(e, "left_alone", p.reason, before=current))
                    continue
                self.journal.mark_drifted(e.id, current, detail=p.reason)
                self._record(e, "drift", "skipped", current, None,
                             {"reason": p.reason, "operation": "rollback"}, {})
                outs.append(_done(e, "skipped_drift", p.reason, before=current))
        elif p.action == "restore":
            outs.extend(self._restore_run(h, p, opened, current, force))
        return self._order(outs)

    def _restore_run(self, h: History, p: TargetPlan, opened: list[JournalEntry],
                     current: str | None, force: bool) -> list[RollbackOutcome]:
        orig = p.restore
        assert orig is not None
        newest = opened[0]
        try:
            after = self._write(p.knob, p.target, orig)
        except self.abort_on:
            raise
        except Exception as err:  # noqa: BLE001 - keep going, record why
            self.journal.note(newest.id, f"rollback failed: {err}")
            self._error(newest, current, None, str(err))
            return [_done(e, "failed", f"restore refused or failed: {err}", before=current)
                    for e in opened]
        after_v = after.value if after is not None else None
        if not self.actuator.same(p.knob)(after_v, orig.value):
            err = f"restored but reads back {after_v!r}, not the original {orig.value!r}"
            self.journal.note(newest.id, f"rollback failed: {err}")
            self._error(newest, current, after_v, err)
            return [_done(e, "failed", err, before=current, after=after_v) for e in opened]
        exact = _exact(after, orig)
        detail = {"forced": force, "exact_raw": exact, "original_entry": h.run[0].id}
        out = []
        for e in opened:
            self._rolled_back(e, p.reason, current, after_v, detail, {})
            out.append(_done(e, "restored", p.reason, before=current, after=after_v, exact=exact))
        return out

    # -- one entry --------------------------------------------------------------------------
    def entries(self, entries: Iterable[JournalEntry], *, force: bool = False,
                single: bool = False) -> list[RollbackOutcome]:
        """Undo ``entries`` one by one in the given order (``single``: the operator named them;
        each is refused while a newer change to its target may be in place)."""
        return [self.entry(e, force=force, single=single) for e in entries]

    def entry(self, entry: JournalEntry, *, force: bool = False, single: bool = False,
              why: str = "", settle: dict[str, Any] | None = None,
              figures: dict[str, Any] | None = None) -> RollbackOutcome:
        """Undo one entry: put back ITS prior. ``why`` prefixes the journaled reason; ``settle``
        (result, objective_after) goes onto the entry when it ends rolled back; ``figures``
        (objective_before/after, test) onto the rollback audit event."""
        settle, figures = settle or {}, figures or {}
        done = lambda result, reason, **kw: _done(entry, result, reason, **kw)  # noqa: E731
        same = self.actuator.same(entry.knob)
        try:
            live = self.actuator.read(entry.knob, entry.target)
        except self.abort_on:
            raise
        except Exception as err:  # noqa: BLE001 - one entry's failure must not stop the others
            self._error(entry, None, None, str(err))
            return done("failed", f"cannot read the live value: {err}")
        current = live.value if live is not None else None
        h: History | None = None
        if (single or not entry.landed) and entry.state != "rolled_back" and current is not None:
            # a fate may be unknown (planned, a write that failed midway): settle by reading
            h, outs = self._settle(entry.knob, entry.target, current, same)
            entry = self.journal.get(entry.id)
            if entry.landed is False:
                mine = [o for o in outs if o.entry_id == entry.id]
                return mine[0] if mine else done(
                    "not_applied", "its write never landed; nothing to undo", before=current)
        if entry.state != "rolled_back" and current is not None:
            h = h or history(self.journal.entries(knob=entry.knob, target=entry.target),
                             current, same)
        if single and h is not None:
            newer = h.newer_in_place(entry)
            if newer is not None:
                return done("blocked", f"newer entry {newer.id} on the same target may still be "
                                       f"in place; roll it back first or use: autotune rollback "
                                       f"--all --knob {entry.knob} --target {entry.target}")
        p = plan(entry, current, force=force, same=same,
                 in_place=h is None or h.is_in_place(entry))
        reason = f"{why}; {p.reason}" if why else p.reason
        if p.action == "nothing":
            if entry.state == "rolled_back":
                return done("already_prior", p.reason, before=current)
            if current is None:
                if entry.state in UNFINISHED:  # would never verify: finish it
                    self.journal.mark_failed(entry.id, "target gone before rollback")
                    return done("gone", "target gone; nothing to restore (entry failed)")
                return done("gone", f"target gone; nothing to restore ({entry.state} entry left as is)")
            # our change is no longer in place: settle the entry, as reconcile would
            self._rolled_back(entry, reason, current, current, {"changed": False}, figures, settle)
            return done("already_prior", p.reason, before=current, after=current,
                        exact=_exact(live, entry.prior))
        if p.action == "skip_drift":
            if entry.state != "drifted":  # a drift already recorded is not news
                self.journal.mark_drifted(entry.id, current, detail=p.reason)
                self._record(entry, "drift", "skipped", current, None,
                             {"reason": p.reason, "operation": "rollback"}, {})
            return done("skipped_drift", p.reason, before=current)
        try:
            after = self._write(entry.knob, entry.target, p.restore or entry.prior)
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
        exact = _exact(after, entry.prior)
        self._rolled_back(entry, reason, current, after_v, {"forced": force, "exact_raw": exact},
                          figures, settle)
        return done("restored", p.reason, before=current, after=after_v, exact=exact)

    # -- plumbing ---------------------------------------------------------------------------
    def _settle(self, knob: str, target: str, current: str | None,
                same: Same) -> tuple[History, list[RollbackOutcome]]:
        """Record what the live value (or a newer entry's prior) shows about every write of the
        target whose fate was unknown; the history afterwards, and a not_applied outcome for
        each write found never to have landed."""
        h = history(self.journal.entries(knob=knob, target=target), current, same)
        outs = []
        for i, e in enumerate(h.entries):
            got = h.inferred.get(e.id)
            if got is None:
                continue
            src = (f"entry {h.entries[i + 1].id}'s prior" if i + 1 < len(h.entries)
                   else "the live value")
            reading = h.readings[e.id]
            if got:
                why = f"write landed ({src} {reading!r} is its proposed value)"
                if e.state == "planned":
                    self.journal.mark_applied(e.id, None, detail=f"{self.by} rollback: {why}")
                else:
                    self.journal.set_landed(e.id, True, f"{self.by} rollback: {why}")
                self._record(e, "reconcile", "applied", e.prior_value, reading,
                             {"reason": why, "stage": "rollback"}, {})
                continue
            why = f"not applied: {src} {reading!r} is still its prior"
            if e.state == "planned":
                self.journal.mark_failed(e.id, why, landed=False)
            else:
                self.journal.set_landed(e.id, False, f"{self.by} rollback: {why}")
            self._record(e, "reconcile", "not_applied", e.prior_value, reading,
                         {"reason": why, "stage": "rollback"}, {})
            outs.append(_done(e, "not_applied", why, before=current))
        if h.inferred:
            h = history(self.journal.entries(knob=knob, target=target), current, same)
        return h, outs

    def _write(self, knob: str, target: str, state: KnobState) -> KnobState | None:
        # force: the plan already decided; the raw record must be written even when the
        # normalized value already matches (e.g. a cpu period that differs)
        self.actuator.restore(knob, target, state, force=True)
        return self.actuator.read(knob, target)

    def _rolled_back(self, entry: JournalEntry, reason: str, before: str | None,
                     after: str | None, detail: dict[str, Any], figures: dict[str, Any],
                     settle: dict[str, Any] | None = None) -> None:
        if entry.state == "planned":  # fate unknown, forced over: finish it through drifted
            self.journal.mark_drifted(entry.id, before, disable=False,
                                      detail="fate of the write unknown; settled by rollback")
        self.journal.mark_rolled_back(entry.id, detail=self._journal_detail(reason), **(settle or {}))
        self._record(entry, "rollback", "rolled_back", before, after, {"reason": reason, **detail},
                     figures)

    @staticmethod
    def _order(outs: list[RollbackOutcome]) -> list[RollbackOutcome]:
        return sorted(outs, key=lambda o: -o.entry_id)

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


def _exact(state: KnobState | None, prior: KnobState) -> bool | None:
    """Whether the live raw record equals the recorded prior's (None when either has none)."""
    raw = prior.raw
    if state is None or not raw:
        return None
    return dict(state.raw) == dict(raw)
