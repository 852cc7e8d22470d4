"""affinity on a fixture tree (read/validate only: writing needs the live kernel)."""

from __future__ import annotations

import pytest

from autotune.errors import HostError, InvalidValue, TargetGone
from autotune.knobs import get_knob
from autotune.knobs.affinity import parse_target
from tests.knobs.trees import PID


def test_parse_target():
    assert parse_target("pids:3,1,3") == [1, 3]
    for bad in ("1,2", "pids:", "pids:a", "pids:-4", "service:llm"):
        with pytest.raises(InvalidValue):
            parse_target(bad)


def test_read_union_and_per_thread_raw(host):
    st = get_knob("affinity").read(host, f"pids:{PID}")
    assert st.value == "mixed"
    assert st.raw == {"tid:4242": "0-3", "tid:4243": "0-3", "tid:4244": "1"}


def test_gone_pids(host):
    with pytest.raises(TargetGone):
        get_knob("affinity").read(host, "pids:99999")


def test_validate(host):
    k = get_knob("affinity")
    assert k.validate(host, f"pids:{PID}", "1,0") == "0-1"
    with pytest.raises(InvalidValue, match="not online"):
        k.validate(host, f"pids:{PID}", "0-7")
    with pytest.raises(InvalidValue, match="empty"):
        k.validate(host, f"pids:{PID}", "")


def test_write_refused_off_live_kernel(host, tree):
    k = get_knob("affinity")
    with pytest.raises(HostError, match="live kernel"):
        k.change(host, f"pids:{PID}", "0")
    dry = k.change(host, f"pids:{PID}", "0", dry_run=True)  # dry run still works on a tree
    assert dry.proposed == "0" and not dry.changed
