"""Test-only fault injection: ``failpoint(name)`` kills this process with SIGKILL when the
environment variable AUTOTUNE_FAILPOINT equals ``name``.

The crash tests (tests/agent/test_crash.py) use it to stop the agent at the worst moments of an
apply (before_plan, after_plan, after_write, during_verify) and check that the journal and the
host still agree after a restart. The variable is read once at import, so a failpoint costs one
string comparison when unset.
"""

from __future__ import annotations

import os
import signal

ENV = "AUTOTUNE_FAILPOINT"
POINTS = ("before_plan", "after_plan", "after_write", "during_verify")
_ARMED = os.environ.get(ENV) or None


def failpoint(name: str) -> None:
    """SIGKILL ourselves if ``name`` is the armed failpoint (no cleanup, no flush: a real crash)."""
    if _ARMED is not None and _ARMED == name:
        os.kill(os.getpid(), signal.SIGKILL)
