"""One target's change history as the journal tells it: which writes landed, what the target
held before the agent's first change, and what the agent left in place. Pure: no host, no DB.
This is the ONE statement of the journal's episode logic: rollback (``verify/rollback.py``) and
the give-backs' origin (``Journal.origin``) ask it, and never compare an entry with its proposed
value on their own, so an entry whose write never landed is never taken for ours.

- Landed: an entry's stored ``landed`` flag when known. A planned entry, or a failed write that
  may have landed (``landed`` None), is settled by a later READING (``landed_from``): the next
  entry's prior (read just before it was planned) or, for the newest entry, the live value.
  Prior -> it never landed; ours -> it landed; anything else -> still unknown (someone else
  changed the target, or the write left something else; either way the value is not ours).
  A reading taken after autotune itself rolled another entry of the target back proves
  nothing (that restore may have written the very value the entry proposed).
- In place: the history is replayed in time order. A write that landed (or may have) goes on
  a stack of the agent's changes in place; an undo of an entry (``rolled_back``, whoever did
  it) takes it and everything above it off the stack and leaves ITS prior in place (an undo of
  a whole run settles its entries newest first, so the run's original is what is left); a
  drift takes it off and leaves nothing known in place. An entry whose fate is unknown also
  leaves nothing known in place.
- Runs (episodes): the entries that landed (or may have) form runs, oldest first. A run breaks
  where an entry's prior is not what the agent had left in place when that entry was planned:
  someone else changed the target in between. So after a run was undone and someone set the
  target again, even to a value the run once held, the next change starts a new run.
- The newest run is what rollback undoes: ``original`` is its first entry's prior (the exact
  raw record), the value before the agent's first change since anyone else set the target;
  ``ours`` is the value the agent left in place (None when unknown). Still-open entries of
  older runs were overwritten by someone else: they are ``superseded``.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from autotune.journal.entry import JournalEntry
from autotune.knobs.base import KnobState
from autotune.types import Same


# Entries whose fate a reading may settle (a drifted one was already judged by a reading).
UNSETTLED = ("planned", "failed")


def landed_from(entry: JournalEntry, reading: str | None, same: Same) -> bool | None:
    """Whether ``entry``'s write landed, judged from a value read after it (None: no reading)."""
    if reading is None:
        return None
    if same(reading, entry.prior_value):
        return False
    if same(reading, entry.expected_value):
        return True
    return None


def _undone_between(es: Sequence[JournalEntry], t0: float, t1: float | None) -> bool:
    """Whether a rollback of another entry finished after ``t0`` (and before ``t1``)."""
    return any(e.state == "rolled_back" and e.finished_ts is not None and e.finished_ts > t0
               and (t1 is None or e.finished_ts < t1) for e in es)


def is_open(entry: JournalEntry) -> bool:
    """Whether the entry may still need settling or undoing: not rolled back, and not a write
    known never to have landed."""
    if entry.state == "rolled_back":
        return False
    if entry.state in ("failed", "drifted"):
        return entry.landed is not False
    return True


@dataclass(frozen=True)
class History:
    entries: tuple[JournalEntry, ...]  # oldest first
    landed: dict[int, bool | None]  # entry id -> stored flag, else what a reading shows
    inferred: dict[int, bool]  # entries whose fate was unknown and a reading settles now
    run: tuple[JournalEntry, ...]  # the newest run, oldest first
    superseded: tuple[JournalEntry, ...]  # open (not yet drifted) entries of older runs
    ours: str | None  # the value the newest run left in place; None when unknown
    readings: dict[int, str] = field(default_factory=dict)  # entry id -> the reading used
    in_place: tuple[JournalEntry, ...] = ()  # the agent's changes still in place, oldest first

    @property
    def original(self) -> KnobState | None:
        """The prior of the newest run's first entry: what rollback restores."""
        return self.run[0].prior if self.run else None

    def open_run(self) -> list[JournalEntry]:
        """Entries of the newest run that rollback still has to settle, NEWEST FIRST."""
        return [e for e in reversed(self.run) if is_open(e)]

    def is_in_place(self, entry: JournalEntry) -> bool:
        """Whether ``entry``'s change may still be the live value: nothing undid it, nobody was
        found to have overwritten it, and no change over another value came after it. Only
        such an entry's value in place is the agent's; the same value set by someone else
        later is theirs."""
        return any(e.id == entry.id for e in self.in_place)

    def newer_in_place(self, entry: JournalEntry) -> JournalEntry | None:
        """The newest entry after ``entry`` whose change may be the live value."""
        for e in reversed(self.entries):
            if (e.ts, e.id) <= (entry.ts, entry.id):
                break
            if is_open(e) and e.state != "drifted" and self.landed.get(e.id) is not False:
                return e
        return None


def history(entries: Sequence[JournalEntry], live: str | None, same: Same) -> History:
    """The history of one (knob, target) from its entries (any order) and its live value
    (None: gone or not read; unknown entries then stay unknown)."""
    es = tuple(sorted(entries, key=lambda e: (e.ts, e.id)))
    landed: dict[int, bool | None] = {}
    inferred: dict[int, bool] = {}
    readings: dict[int, str] = {}
    for i, e in enumerate(es):
        if e.landed is not None or e.applied_ts is not None:
            landed[e.id] = bool(e.landed) if e.landed is not None else True
            continue
        if e.state not in UNSETTLED:
            landed[e.id] = None
            continue
        nxt = es[i + 1] if i + 1 < len(es) else None
        reading = nxt.prior_value if nxt is not None else live
        if _undone_between(es, e.planned_ts, nxt.planned_ts if nxt is not None else None):
            reading = None  # autotune itself wrote the target since: the reading proves nothing
        got = landed_from(e, reading, same)
        landed[e.id] = got
        if got is not None:
            inferred[e.id] = got
        if reading is not None:
            readings[e.id] = reading
    runs, stack, ours = _runs(es, landed, same)
    superseded = tuple(e for r in runs[:-1] for e in r if is_open(e) and e.state != "drifted")
    return History(entries=es, landed=landed, inferred=inferred,
                   run=tuple(runs[-1]) if runs else (), superseded=superseded,
                   ours=ours, readings=readings, in_place=tuple(stack))


def _runs(es: Sequence[JournalEntry], landed: dict[int, bool | None],
          same: Same) -> tuple[list[list[JournalEntry]], list[JournalEntry], str | None]:
    """Replay the entries (oldest first) and their ends (undone or found drifted) in time order:
    the runs, the changes in place at the end and the value they leave (None: unknown)."""
    runs: list[list[JournalEntry]] = []
    stack: list[JournalEntry] = []  # the agent's changes in place, oldest first
    left: str | None = None
    ends: list[tuple[float, int, JournalEntry]] = []  # (when, -id, entry) of started entries

    def settle_until(t: float | None) -> None:
        nonlocal stack, left
        while ends and (t is None or ends[0][0] <= t):
            _, _, x = heapq.heappop(ends)  # at one instant the newer entry ended first
            at = next((i for i, y in enumerate(stack) if y.id == x.id), None)
            if at is not None:
                stack = stack[:at]
                left = x.prior_value if x.state == "rolled_back" else None

    for e in es:
        got = landed[e.id]
        if got is False:
            continue  # never touched the target
        settle_until(e.planned_ts)
        if not runs or left is None or not same(e.prior_value, left):
            runs.append([])  # someone else set the target since the agent last left it
            stack = []  # ... over whatever of the agent's was still there
        runs[-1].append(e)
        stack.append(e)
        left = e.expected_value if got else None
        if e.state in ("rolled_back", "drifted"):
            # no finish time (old rows): ended before anything after it
            heapq.heappush(ends, (e.planned_ts if e.finished_ts is None else e.finished_ts, -e.id, e))
    settle_until(None)
    return runs, stack, left
