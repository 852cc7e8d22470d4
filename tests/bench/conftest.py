"""What the end-to-end benchmark smoke tests share: their marks and running from the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# a benchmark run in --quick mode: real cgroups, the reference server, as root
QUICK_BENCH = [
    pytest.mark.benchrun, pytest.mark.slow, pytest.mark.workload, pytest.mark.realkernel, pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the bench creates cgroups: needs root"),
    pytest.mark.skipif(not Path("/sys/fs/cgroup").is_dir(), reason="no cgroup filesystem"),
]


@pytest.fixture
def in_repo(monkeypatch) -> Path:
    """Import ``bench`` and resolve its relative paths (schedules, cache) from the repo root."""
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.chdir(REPO)
    return REPO
