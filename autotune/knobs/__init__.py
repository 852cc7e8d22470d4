"""Knob registry: names the rule engine emits -> Knob instances.

``get_knob("cgroup.cpu_quota")``. Other components may add knobs (e.g. the gate's
``admission``) with ``register_knob``; the registry itself stays import-light.
"""

from __future__ import annotations

from autotune.errors import ConfigError
from autotune.knobs.admission import AdmissionKnob
from autotune.knobs.affinity import Affinity
from autotune.knobs.base import ChangeResult, Knob, KnobState
from autotune.knobs.cgroup import CGROUP_KNOBS
from autotune.knobs.governor import Governor, GovernorEpp
from autotune.knobs.sysctl import Sysctl
from autotune.knobs.thp import Thp


class UnknownKnob(ConfigError, KeyError):
    """No knob by that name (a ConfigError for rule files, a KeyError for dict-like callers)."""

    __str__ = Exception.__str__  # KeyError would quote the message


KNOBS: dict[str, Knob] = {
    k.name: k for k in (Sysctl(), Thp(), Affinity(), Governor(), GovernorEpp(), AdmissionKnob(),
                        *(cls() for cls in CGROUP_KNOBS))
}


def get_knob(name: str) -> Knob:
    try:
        return KNOBS[name]
    except KeyError as err:
        raise UnknownKnob(
            f"unknown knob {name!r}; known knobs: {', '.join(sorted(KNOBS))}"
        ) from err


def register_knob(knob: Knob, *, replace: bool = False) -> None:
    """Add a knob under ``knob.name``; refuses to shadow an existing one unless ``replace``."""
    if knob.name in KNOBS and not replace:
        raise ConfigError(f"knob {knob.name!r} is already registered")
    KNOBS[knob.name] = knob


__all__ = ["KNOBS", "ChangeResult", "Knob", "KnobState", "UnknownKnob", "get_knob",
           "register_knob"]
