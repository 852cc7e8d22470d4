"""The Knob contract: read / validate / write / restore declared together.

``Knob.change`` is the only way a value gets written: read -> record the prior value (via
``before_write``, the journal's write-ahead hook) -> write -> read back -> compare. Dry run is
the same path with writing switched off (TuneD's ``sim=True``), so ``recommend`` and the helper's
dry-run report exactly what a real apply would do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from autotune.errors import HostError
from autotune.host import Host


class KnobState(BaseModel):
    """A knob's value on one target, plus the exact raw contents needed to restore it.

    ``value`` is the normalized vocabulary value ("0.5" cores, "madvise", "0-1").
    ``raw`` maps each host file (or pseudo-key such as "tid:1234" for affinity) to the exact
    content to write back, in the order it must be written.
    """

    model_config = ConfigDict(frozen=True)

    knob: str
    target: str
    value: str
    raw: dict[str, str] = {}


class ChangeResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    knob: str
    target: str
    before: KnobState
    proposed: str  # normalized
    after: KnobState | None = None  # None in dry run or when nothing changed
    changed: bool
    dry_run: bool = False


class Knob(ABC):
    """One tunable. Subclasses live one per module in ``autotune/knobs/``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @abstractmethod
    def read(self, host: Host, target: str) -> KnobState:
        """Current value and raw restore record. TargetGone/MissingFile when absent."""

    @abstractmethod
    def validate(self, host: Host, target: str, value: str) -> str:
        """Normalize ``value``; raise InvalidValue if the kernel would not accept it."""

    @abstractmethod
    def write(self, host: Host, target: str, value: str) -> None:
        """Write an already-validated value."""

    def restore(self, host: Host, state: KnobState) -> None:
        """Write back a recorded state (default: its raw files, in order)."""
        for path, content in state.raw.items():
            host.write_text(path, content)

    def same(self, a: str | None, b: str | None) -> bool:
        """Compare two normalized values (override for tolerant numeric comparison)."""
        return a == b

    def change(
        self,
        host: Host,
        target: str,
        value: str,
        *,
        dry_run: bool = False,
        before_write: Callable[[KnobState, str], None] | None = None,
    ) -> ChangeResult:
        before = self.read(host, target)
        proposed = self.validate(host, target, value)
        if self.same(before.value, proposed) or dry_run:
            return ChangeResult(
                knob=self.name, target=target, before=before, proposed=proposed,
                changed=False, dry_run=dry_run,
            )
        if before_write is not None:
            before_write(before, proposed)  # durable record of the prior value first
        self.write(host, target, proposed)
        after = self.read(host, target)
        if not self.same(after.value, proposed):
            raise HostError(
                f"{self.name} on {target}: wrote {proposed!r} but read back {after.value!r}"
            )
        return ChangeResult(
            knob=self.name, target=target, before=before, proposed=proposed, after=after,
            changed=True,
        )
