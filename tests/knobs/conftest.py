"""Fixtures: a writable minimal host tree per cgroup layout (see trees.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.host import Host
from tests.knobs.trees import build_host

@pytest.fixture(params=["v2", "hybrid"])
def layout(request) -> str:
    return request.param


@pytest.fixture
def tree(tmp_path, layout) -> Path:
    return build_host(tmp_path / layout, layout)


@pytest.fixture
def host(tree) -> Host:
    return Host(tree, writable=True)
