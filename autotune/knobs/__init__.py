"""Knob registry: names the rule engine emits -> Knob instances. The one list of knobs.

``get_knob("cgroup.cpu_quota")``. One module per knob (``cgroup.cpu_quota`` lives in
``knobs/cgroup/cpu_quota.py``); each knob declares the facts other code asks of it (see
``knobs/base.Knob``). Tests may add knobs with ``register_knob``.
"""

from __future__ import annotations

from autotune.errors import ConfigError
from autotune.knobs.admission import AdmissionKnob
from autotune.knobs.advice import Advice
from autotune.knobs.affinity import Affinity
from autotune.knobs.base import ChangeResult, Knob, KnobState
from autotune.types import Same
from autotune.knobs.cgroup.cpu_burst import CpuBurst
from autotune.knobs.cgroup.cpu_idle import CpuIdle
from autotune.knobs.cgroup.cpu_quota import CpuQuota
from autotune.knobs.cgroup.cpu_weight import CpuWeight
from autotune.knobs.cgroup.cpuset import Cpuset
from autotune.knobs.cgroup.io_weight import IoWeight
from autotune.knobs.cgroup.memory_high import MemoryHigh
from autotune.knobs.cgroup.memory_low import MemoryLow
from autotune.knobs.cgroup.memory_max import MemoryMax
from autotune.knobs.governor import Governor
from autotune.knobs.governor_epp import GovernorEpp
from autotune.knobs.sysctl import Sysctl
from autotune.knobs.thp import Thp
from autotune.knobs.threads import ThreadsKnob


class UnknownKnob(ConfigError, KeyError):
    """No knob by that name (a ConfigError for rule files, a KeyError for dict-like callers)."""

    __str__ = Exception.__str__  # KeyError would quote the message


KNOBS: dict[str, Knob] = {
    k.name: k for k in (
        Sysctl(), Thp(), Governor(), GovernorEpp(), Affinity(), AdmissionKnob(), Advice(),
        CpuQuota(), CpuBurst(), CpuWeight(), CpuIdle(), Cpuset(),
        MemoryHigh(), MemoryMax(), MemoryLow(), IoWeight(), ThreadsKnob(),
    )
}


def get_knob(name: str) -> Knob:
    try:
        return KNOBS[name]
    except KeyError as err:
        raise UnknownKnob(
            f"unknown knob {name!r}; known knobs: {', '.join(sorted(KNOBS))}"
        ) from err


def same_for(name: str) -> Same:
    """The registry knob's comparison of normalized values; plain equality for a name only the
    helper may know."""
    k = KNOBS.get(name)
    return k.same if k is not None else (lambda a, b: a == b)


def register_knob(knob: Knob, *, replace: bool = False) -> None:
    """Add a knob under ``knob.name``; refuses to shadow an existing one unless ``replace``."""
    if knob.name in KNOBS and not replace:
        raise ConfigError(f"knob {knob.name!r} is already registered")
    KNOBS[knob.name] = knob


__all__ = ["KNOBS", "ChangeResult", "Knob", "KnobState", "UnknownKnob", "get_knob",
           "register_knob", "same_for"]
