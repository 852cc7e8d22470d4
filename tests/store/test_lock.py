"""store/lock.py: one agent per state DB (issue 24 #5)."""

from __future__ import annotations

import os

import pytest

from autotune.errors import StateError
from autotune.store.lock import StateLocked, acquire, lock_path


def test_the_second_taker_is_refused_naming_the_holder_until_it_lets_go(tmp_path):
    state = tmp_path / "s.db"
    first = acquire(state, now=1_700_000_000.0)
    assert lock_path(state).read_text() == f"{os.getpid()} 1700000000.000\n"
    with pytest.raises(StateLocked) as err:
        acquire(state)
    msg = str(err.value)
    assert msg.startswith(f"{state}: another agent is running on this state (pid {os.getpid()} "
                          "since 2023-11-14T22:13:20Z; lock ") and "\n" not in msg
    first.release()
    with acquire(state, now=1_700_000_100.0):
        assert lock_path(state).read_text().endswith(" 1700000100.000\n")
    acquire(state).release()


def test_a_lock_that_cannot_be_made_is_one_line(tmp_path):
    with pytest.raises(StateError, match="cannot create the state lock"):
        acquire(tmp_path / "missing-dir" / "s.db")
