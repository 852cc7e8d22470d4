"""Who performs knob reads and writes for the agent, the CLI and the benchmark harness.

``Actuator`` is the one interface the loop and ``autotune rollback`` use; which object sits
behind it decides the privilege model:

- ``HelperActuator``: production. Every privileged read/write goes through the root helper over
  its socket (policy checks, allowlist, drift check). Affinity targets are SERVICE NAMES; the
  helper resolves them to pids.
- ``DryRunActuator``: recommend mode. Reads through the knobs on a read-only Host; ``apply`` and
  ``restore`` return dry-run results and write nothing.
- ``LocalActuator``: ONLY for tests and the benchmark harness running as root. Writes straight
  through the knobs on a writable Host, with no helper and no policy. Never use it in production.

Routing shared by all three, asked of the knob: a knob with ``needs_helper`` False (``admission``,
the gate's unprivileged HTTP control API) is always applied by the agent itself, never via the
helper; an ``advisory`` knob (``advice``) is a recommendation: ``read`` gives None and
``apply``/``restore`` raise PolicyRefused. Rule-level targets (a service name) become knob
targets through ``Knob.resolve_target``.

Conventions: ``read`` returns None when the target is gone (cgroup removed, service has no
processes, gate not answering) and raises for anything else (helper unreachable, refusal), so a
caller never mistakes "cannot ask" for "gone". States are reported under the caller's target
name (a service name for affinity, not its pids).
"""

from __future__ import annotations

import logging
import uuid
from typing import Protocol, runtime_checkable

from autotune.config import Config
from autotune.errors import MissingFile, PolicyRefused, TargetGone
from autotune.host import Host
from autotune.knobs.base import ChangeResult, Knob, KnobState
from autotune.types import Same

log = logging.getLogger(__name__)



@runtime_checkable
class Actuator(Protocol):
    """Reads and writes knobs on behalf of the agent."""

    dry_run: bool

    def read(self, knob: str, target: str) -> KnobState | None:
        """Current state, or None when the target is gone. Raises HostError/PolicyRefused."""

    def apply(self, knob: str, target: str, value: str, *, expect_before: str | None,
              request_id: str) -> ChangeResult:
        """Write ``value``. ``expect_before``: the value the caller journaled as prior; a live
        value that differs raises PolicyRefused with code 'drift'."""

    def restore(self, knob: str, target: str, state: KnobState, *, force: bool = False) -> ChangeResult:
        """Put a recorded state back. Without ``force`` nothing is written when the live value
        already reads as ``state.value``; with ``force`` the raw record is written regardless.
        Deciding whether a restore would clobber someone else's change is the caller's job
        (verify/rollback.plan)."""

    def same(self, knob: str) -> Same:
        """The knob's normalized-value comparison (tolerant for numbers)."""


def _registry_knob(name: str) -> Knob:
    from autotune.knobs import get_knob

    return get_knob(name)


def _known_knob(name: str) -> Knob | None:
    """The registry's knob, or None for a name only the helper may know."""
    from autotune.knobs import KNOBS

    return KNOBS.get(name)


def _refuse_advisory(k: Knob | None) -> None:
    if k is not None and k.advisory:
        raise PolicyRefused("advisory", f"{k.name} is a recommendation for an operator and is never applied")


class _KnobActuator:
    """Shared by Local/DryRun (and the admission route): knobs on a Host, service targets
    for affinity resolved here (the helper does that in production)."""

    dry_run = False

    def __init__(self, host: Host, cfg: Config | None = None) -> None:
        self.host = host
        self.cfg = cfg or Config()

    def same(self, knob: str) -> Same:
        from autotune.knobs import same_for

        return same_for(knob)

    def _target(self, knob: str, target: str) -> str:
        """The knob's own target for a rule-level one (a service name -> its pids, its gate)."""
        return _registry_knob(knob).resolve_target(self.host, self.cfg, target)

    @staticmethod
    def _as_client(state: KnobState | None, target: str) -> KnobState | None:
        if state is None or state.target == target:
            return state
        return state.model_copy(update={"target": target})

    def _result(self, res: ChangeResult, target: str) -> ChangeResult:
        return res.model_copy(update={"target": target, "before": self._as_client(res.before, target),
                                      "after": self._as_client(res.after, target)})

    def read(self, knob: str, target: str) -> KnobState | None:
        k = _registry_knob(knob)
        if k.advisory:
            return None
        try:
            return self._as_client(k.read(self.host, self._target(knob, target)), target)
        except (TargetGone, MissingFile):
            return None

    def _check_expected(self, k: Knob, knob: str, target: str, kt: str, expect_before: str | None) -> None:
        if expect_before is None:
            return
        cur = k.read(self.host, kt)
        if not k.same(cur.value, expect_before):
            raise PolicyRefused("drift", f"{knob} on {target} is {cur.value!r}, expected {expect_before!r}: "
                        "someone else changed it")

    def apply(self, knob: str, target: str, value: str, *, expect_before: str | None,
              request_id: str = "") -> ChangeResult:
        k = _registry_knob(knob)
        _refuse_advisory(k)
        kt = self._target(knob, target)
        self._check_expected(k, knob, target, kt, expect_before)
        return self._result(k.change(self.host, kt, value, dry_run=self.dry_run), target)

    def restore(self, knob: str, target: str, state: KnobState, *, force: bool = False) -> ChangeResult:
        k = _registry_knob(knob)
        _refuse_advisory(k)
        kt = self._target(knob, target)
        before = k.read(self.host, kt)
        if self.dry_run or (not force and k.same(before.value, state.value)):
            return ChangeResult(knob=knob, target=target, before=self._as_client(before, target),
                                proposed=state.value, changed=False, dry_run=self.dry_run)
        k.restore(self.host, state.model_copy(update={"target": kt}))
        after = k.read(self.host, kt)
        return ChangeResult(knob=knob, target=target, before=self._as_client(before, target),
                            proposed=state.value, after=self._as_client(after, target), changed=True)


class LocalActuator(_KnobActuator):
    """Writes directly through the knobs on a writable Host. TESTS AND BENCHMARK ONLY (root):
    there is no policy, no allowlist and no privilege separation on this path."""

    def __init__(self, host: Host, cfg: Config | None = None) -> None:
        super().__init__(host, cfg)


class DryRunActuator(_KnobActuator):
    """Recommend mode: reads through the knobs; apply/restore report, never write."""

    dry_run = True


class HelperActuator:
    """Production: privileged knobs through the helper; the others (``admission``, over
    HTTP) directly."""

    dry_run = False

    def __init__(self, client, *, host: Host | None = None, cfg: Config | None = None) -> None:
        self.client = client  # autotune.helper.client.HelperClient
        self._direct = _KnobActuator(host or Host("/"), cfg)

    def same(self, knob: str) -> Same:
        from autotune.knobs import same_for

        return same_for(knob)

    def ping(self) -> int:
        return self.client.ping()

    @staticmethod
    def _direct_knob(knob: str) -> bool:
        """True when the agent applies ``knob`` itself (a name the registry lacks goes to the
        helper, which refuses it with a reason)."""
        k = _known_knob(knob)
        return k is not None and not k.needs_helper

    def read(self, knob: str, target: str) -> KnobState | None:
        if self._direct_knob(knob):
            return self._direct.read(knob, target)
        try:
            return self.client.read(knob, target)
        except PolicyRefused as err:
            if err.code == "target_gone":
                return None
            raise

    def apply(self, knob: str, target: str, value: str, *, expect_before: str | None,
              request_id: str = "") -> ChangeResult:
        _refuse_advisory(_known_knob(knob))
        if self._direct_knob(knob):
            return self._direct.apply(knob, target, value, expect_before=expect_before,
                                      request_id=request_id)
        return self.client.apply(knob, target, value, expect_before=expect_before,
                                 request_id=request_id or uuid.uuid4().hex)

    def restore(self, knob: str, target: str, state: KnobState, *, force: bool = False) -> ChangeResult:
        _refuse_advisory(_known_knob(knob))
        if self._direct_knob(knob):
            return self._direct.restore(knob, target, state, force=force)
        if not force:
            cur = self.read(knob, target)
            if cur is not None and self.same(knob)(cur.value, state.value) and cur.raw == state.raw:
                return ChangeResult(knob=knob, target=target, before=cur, proposed=state.value,
                                    changed=False)
        return self.client.restore(knob, target, state)


def is_drift(err: BaseException) -> bool:
    """True for a drift refusal from the helper or a local actuator."""
    return isinstance(err, PolicyRefused) and getattr(err, "code", None) == "drift"


def read_value(actuator: Actuator, knob: str, target: str) -> str | None:
    """Normalized live value or None (gone). For Journal.reconcile's callback."""
    state = actuator.read(knob, target)
    return state.value if state is not None else None


__all__ = ["Actuator", "DryRunActuator", "HelperActuator",
           "LocalActuator", "is_drift", "read_value"]
