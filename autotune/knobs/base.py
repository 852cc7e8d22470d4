"""The Knob contract: read / validate / write / restore declared together.

``Knob.change`` is the only way a value gets written: read -> record the prior value (via
``before_write``, the journal's write-ahead hook) -> write -> read back -> compare. Dry run is
the same path with writing switched off (TuneD's ``sim=True``), so ``recommend`` and the helper's
dry-run report exactly what a real apply would do.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from autotune.errors import HostError
from autotune.host import Host
from autotune.knobs.grammar import decimal_or_none, strip_ws

if TYPE_CHECKING:
    from autotune.config import Config, Service
    from autotune.types import ServiceCgroups

# What a knob's target names; the helper's policy confines each kind its own way.
TargetKind = Literal[
    "cgroup",  # a cgroup path: confined to policy subtrees
    "key",  # a sysctl key: confined to listed keys, each with its own value range
    "choice",  # one of a few fixed names (THP file, cpufreq policy)
    "service",  # a configured service (resolved to pids, a gate URL...), or "host" for advice
    "restart",  # a configured service whose restart path the policy itself declares (threads)
]


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
    """One tunable. Subclasses live one per module in ``autotune/knobs/``.

    Besides read/validate/write/restore a knob owns every fact other code needs about it, so
    the rule loader, engine, actuator, floor and helper ask the knob and never test its name.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    target_kind: ClassVar[TargetKind]
    numeric: ClassVar[bool] = False  # values are numbers a rule may step (factor/delta) and clamp
    decimals: ClassVar[int] = 0  # a computed number is rounded to this many decimals
    tolerance: ClassVar[float] = 0.0  # numbers this close are the same value
    needs_helper: ClassVar[bool] = True  # written by the root helper; False: the agent applies it
    advisory: ClassVar[bool] = False  # a recommendation for an operator, never read or applied
    min_interval_s: ClassVar[float] = 0.0  # a change that costs the service (a restart): at most this often

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

    # -- values --------------------------------------------------------------------------
    def format(self, x: float) -> str:
        """A computed number (a rule's step or bound, a floor's cut) as a value of this knob."""
        if self.decimals <= 0:
            return str(int(round(x)))
        return f"{round(x, self.decimals):.{self.decimals}f}".rstrip("0").rstrip(".")

    def canonical(self, value: str) -> str:
        """Host-free normal form two values are compared in (override: "0,1" is "0-1")."""
        return strip_ws(value)

    def same(self, a: str | None, b: str | None) -> bool:
        """THE comparison of two values of this knob: ``change``'s no-op and read-back checks,
        drift, rollback and the engine's "already there" all use it. Numbers (numeric knobs)
        within ``tolerance``; anything else by ``canonical`` form."""
        if a is None or b is None:
            return a == b
        if self.numeric:  # the strict grammar: "1e1", "１０" or "1_0" are not the number 10
            x, y = decimal_or_none(a), decimal_or_none(b)
            if x is not None and y is not None:
                return abs(x - y) <= self.tolerance
        return self.canonical(a) == self.canonical(b)

    # -- targets -------------------------------------------------------------------------
    def check_target(self, target: str) -> None:
        """Raise InvalidValue when a rule names a literal target this knob cannot take."""

    def service_target(self, service: Service, cgroups: ServiceCgroups | None = None) -> str | None:
        """The target a rule's ``service``/``neighbours`` means for this knob (None: none);
        ``cgroups``: where the service is now (a cgroup knob takes its controller's group)."""
        return service.name

    def resolve_target(self, host: Host, cfg: Config, target: str) -> str:
        """What read/write take for a rule-level target (a service name -> pids, a URL...).
        TargetGone when the service has nothing to act on."""
        return target

    def host_files(self, host: Host, target: str) -> frozenset[str] | None:
        """Exact host paths this knob reads and writes for ``target`` (the helper allows no
        other); None when it has no fixed set (cgroup files: the policy confines the cgroup)."""
        return None

    # -- effects -------------------------------------------------------------------------
    def cpu_share(self, value: str) -> dict[str, Any] | None:
        """How setting ``value`` changes a service's CPU share as ``agent/floor`` models it:
        a partial update of its fields ``quota_cores``, ``weight``, ``cpus``, ``idle``. None
        when this knob does not touch guaranteed CPU; ValueError for a malformed value."""
        return None

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


def number(value: str) -> float | None:
    """A finite number, or None ("max", "0-1", "threshold=40" are not numbers).

    Loose on purpose: the rule engine reads its own rendered arithmetic with it ("1.5e+09").
    Values bound for the kernel go through ``knobs/grammar.py`` instead."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
