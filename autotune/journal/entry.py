"""One journal entry and its states: the records the journal stores and ``chain`` reads
(split from journal.py so that the two import this module, not each other)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from autotune.knobs.base import KnobState
from autotune.types import VerifyPlan, VerifyResult

State = Literal["planned", "applied", "verifying", "kept", "rolled_back", "failed", "drifted"]
UNFINISHED: tuple[State, ...] = ("planned", "applied", "verifying")
# From -> allowed next states. Terminal entries may still be rolled back later
# (verify/rollback.py): a kept change, a drifted one (forced) or a failed partial write.
TRANSITIONS: dict[str, set[str]] = {
    "planned": {"applied", "failed", "drifted"},
    "applied": {"verifying", "kept", "rolled_back", "failed", "drifted"},
    "verifying": {"kept", "rolled_back", "failed", "drifted"},
    "kept": {"rolled_back", "drifted"},
    "failed": {"rolled_back", "drifted"},  # a failed write that landed (partly) is ours to undo
    "drifted": {"rolled_back"},
    "rolled_back": set(),
}


class _M(BaseModel):
    model_config = ConfigDict(frozen=True)


class JournalEntry(_M):
    id: int
    ts: float  # when planned, unix seconds
    knob: str
    target: str
    service: str | None
    rule: str
    rationale: str
    symptoms: list[dict[str, Any]]
    prior: KnobState  # the restore record: value and exact raw contents before the change
    proposed: str
    applied: KnobState | None  # read back after the write
    state: State
    objective_before: dict[str, Any] | None  # {"objective": name, "median": v, "n": count}
    objective_after: dict[str, Any] | None
    verify_result: VerifyResult | None
    error: str | None
    planned_ts: float
    applied_ts: float | None
    verifying_ts: float | None
    finished_ts: float | None
    verify_plan: VerifyPlan = VerifyPlan()
    landed: bool | None = None  # did the write reach the target (None: not known yet)

    @property
    def prior_value(self) -> str:
        return self.prior.value

    @property
    def expected_value(self) -> str:
        """What the target should read while our change is in place."""
        return self.applied.value if self.applied is not None else self.proposed


class JournalEvent(_M):
    id: int
    entry_id: int
    ts: float
    from_state: str | None
    to_state: str
    detail: str


class UnmanagedTarget(_M):
    knob: str
    target: str
    since_ts: float
    reason: str
    entry_id: int | None


class ReconcileOutcome(_M):
    entry_id: int
    knob: str
    target: str
    outcome: Literal["not_applied", "reverify", "already_restored", "drift", "gone"]
    state: State  # the entry's state after reconcile
    current: str | None
    detail: str
