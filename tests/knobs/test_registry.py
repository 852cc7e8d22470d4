from __future__ import annotations

import pytest

from autotune.errors import ConfigError
from autotune.knobs import KNOBS, Knob, get_knob, register_knob
from autotune.knobs.sysctl import Sysctl

NAMES = {
    "sysctl", "thp", "affinity", "governor", "governor.epp", "cgroup.cpu_quota",
    "cgroup.cpu_burst", "cgroup.cpu_weight", "cgroup.cpu_idle", "cgroup.memory_high",
    "cgroup.memory_max", "cgroup.memory_low", "cgroup.cpuset", "cgroup.io_weight",
}


def test_registry_names_fixed():
    assert NAMES <= set(KNOBS)
    for name, knob in KNOBS.items():
        assert isinstance(knob, Knob) and knob.name == name and knob.description


def test_unknown_knob_is_config_and_key_error():
    for exc in (ConfigError, KeyError):
        with pytest.raises(exc, match="unknown knob 'cgroup.nope'.*cgroup.cpu_quota"):
            get_knob("cgroup.nope")


def test_register_refuses_shadowing():
    with pytest.raises(ConfigError, match="already registered"):
        register_knob(Sysctl())
    assert get_knob("sysctl") is KNOBS["sysctl"]
