"""Shared test fixtures. Keep small: fixture host trees live in tests/fixtures/hosts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # make `tests.fixtures.hosts` importable under plain `pytest`
    sys.path.insert(0, str(REPO))

from tests.fixtures.hosts import fixture_path, writable_copy  # noqa: E402


# marker -> (environment switch, what it is): long runs the default suite skips with a reason
OPT_IN = {
    "stress": ("AUTOTUNE_STRESS", "stress run"),
    "benchrun": ("AUTOTUNE_BENCH_RUNS", "a whole quick benchmark run (minutes)"),
}


def pytest_collection_modifyitems(config, items):
    """Stress runs (tests/stress/, minutes to tens of minutes) and whole quick benchmark runs
    (tests/bench/, 2-4 min each: most of the default suite's time) are skipped in the default
    run; ``-m stress`` / ``-m benchrun`` or the environment switch runs them."""
    for marker, (env, what) in OPT_IN.items():
        if os.environ.get(env) == "1" or marker in (config.option.markexpr or ""):
            continue
        skip = pytest.mark.skip(reason=f"{what}: select with -m {marker} or {env}=1")
        for item in items:
            if item.get_closest_marker(marker) is not None:
                item.add_marker(skip)


@pytest.fixture
def host_tree():
    """``host_tree("v2-docs") -> Path`` of a read-only fixture host tree."""
    return fixture_path


@pytest.fixture
def fixture_root():
    """Alias of ``host_tree`` for readability in knob/helper tests."""
    return fixture_path


@pytest.fixture
def writable_tree(tmp_path):
    """``writable_tree("hybrid-local") -> Path`` of a private copy a test may write into."""
    return lambda name: writable_copy(name, tmp_path)
