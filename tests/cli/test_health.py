"""`autotune health`: the liveness probe reads the agent's newest stored sample."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autotune.cli.main import app
from autotune.host import Host
from autotune.sensors.collect import collect
from autotune.store.db import open_db
from autotune.store.samples import SampleStore


@pytest.fixture
def state(tmp_path, host_tree):
    """(db path, store) holding nothing yet; ``put(age_s)`` stores one sample that old."""
    path = tmp_path / "state" / "autotune.db"
    db = open_db(path)
    store = SampleStore(db)
    host = Host(host_tree("v2-docs"))

    def put(age_s: float) -> None:
        store.append(collect(host, [], time.time() - age_s))

    yield path, put
    db.close()


def _health(*args: str):
    return CliRunner().invoke(app, ["health", *args])


def test_fresh_sample_is_healthy(state):
    path, put = state
    put(age_s=2)
    res = _health("--state", str(path), "--max-age", "30")
    assert res.exit_code == 0, res.output
    assert res.output.startswith("ok: last sample")


def test_stale_sample_fails_the_probe(state):
    path, put = state
    put(age_s=300)
    put(age_s=120)
    res = _health("--state", str(path), "--max-age", "60")
    assert res.exit_code == 1, res.output
    assert "stalled: last sample 12" in res.output


def test_no_sample_yet_fails_the_probe(state):
    path, _put = state
    res = _health("--state", str(path))
    assert res.exit_code == 1
    assert "no sample" in res.output


def test_missing_state_db_is_exit_2(tmp_path):
    res = _health("--state", str(tmp_path / "nope.db"))
    assert res.exit_code == 2
    assert "no state DB" in res.output


def test_running_agent_is_healthy(tmp_path, host_tree):
    """End to end: a real `autotune run` writes the heartbeat the probe reads."""
    db = tmp_path / "a.db"
    res = CliRunner().invoke(app, ["run", "--root", str(host_tree("v2-docs")), "--duration", "1.5",
                                   "--state", str(db), "--metrics-listen", "off"])
    assert res.exit_code == 0, res.output
    assert _health("--state", str(db), "--max-age", "30").exit_code == 0
    assert _health("--state", str(db), "--max-age", "0.001").exit_code == 1


def test_the_probe_creates_nothing_beside_a_stopped_agents_db(tmp_path, host_tree):
    """Issue 24 #4 for the probe: a -wal left without its -shm got a -shm created beside it."""
    path = tmp_path / "state" / "autotune.db"
    db = open_db(path)
    SampleStore(db).append(collect(Host(host_tree("v2-docs")), [], time.time() - 5))
    db.close()
    Path(f"{path}-wal").write_bytes(bytes(range(256)) * 16)  # a killed writer's torn -wal
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    r = _health("--state", str(path))
    assert r.exit_code == 0, r.output
    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before
