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


def pytest_collection_modifyitems(config, items):
    """Stress runs (tests/stress/, minutes to tens of minutes) are skipped in the default run;
    ``-m stress`` or AUTOTUNE_STRESS=1 runs them."""
    if os.environ.get("AUTOTUNE_STRESS") == "1" or "stress" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="stress run: select with -m stress or AUTOTUNE_STRESS=1")
    for item in items:
        if item.get_closest_marker("stress") is not None:
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
