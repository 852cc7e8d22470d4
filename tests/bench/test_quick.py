"""Smoke test: the seed-table benchmark in --quick mode, end to end on the real kernel."""

import csv
import json
import os
import time
from pathlib import Path

import pytest

from tests.bench.conftest import QUICK_BENCH

pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = QUICK_BENCH


@pytest.mark.timeout(420)
def test_quick_bench_writes_table(tmp_path, in_repo):
    from bench import common
    from bench.seed_table import DEFAULT_CONFIGS, main

    out = tmp_path / "quick"
    t0 = time.monotonic()
    assert main(["--quick", "--out", str(out)]) == 0
    wall_s = time.monotonic() - t0
    meta = json.loads((out / "summary.json").read_text())["meta"]
    assert meta["skipped"] == {}, meta["skipped"]  # every row ran, none skipped
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert list(rows[0]) == ["config", "concurrency", "p50_s", "p95_s", "p99_s", "neighbour_ops_per_s",
                             "deferred", "rejected", "runs"]
    assert len(rows) == len(DEFAULT_CONFIGS) * 2
    assert {(r["config"], r["concurrency"]) for r in rows} == {
        (c, n) for c in ("alone", "contended", "static", "static+psi", "oracle", "autotune") for n in ("1", "4")}
    for r in rows:
        assert float(r["p95_s"]) >= float(r["p50_s"]) > 0
        assert r["runs"] == "1"
        assert (r["neighbour_ops_per_s"] == "") == (r["config"] == "alone")
    # the oracle measured every grid point that can keep the floor, and chose one per concurrency
    points = list(csv.DictReader((out / "oracle_points.csv").open()))
    assert {(p["quota_cores"], p["weights"]) for p in points} == {("1.0", "1:1"), ("1.0", "4:1"), ("max", "1:1")}
    assert sorted(p["concurrency"] for p in points if p["chosen"] == "True") == ["1", "4"]
    assert (out / "plot.png").stat().st_size > 1000
    assert (out / "table.md").read_text().count("\n| autotune |") == 2
    # the agent-managed row really ran the agent (default rule pack) and stayed within bounds
    knobs = json.loads((out / "autotune" / "knobs.json").read_text())
    assert knobs["start"]["server_cfs_quota_us"] == "50000"  # started from static: 0.5 core
    assert 50000 <= int(knobs["end"]["server_cfs_quota_us"]) <= 150000
    assert (out / "autotune" / "agent.log").stat().st_size > 0
    assert "changes" in json.loads((out / "autotune" / "journal.json").read_text())
    assert wall_s < 300, f"--quick took {wall_s:.0f} s; budget ~4 min"
    # nothing left behind
    assert common._procs == [] and common._cgroups == []
    name = f"autotune-bench-{os.getpid()}"
    assert not any(Path(p, name).exists() for p in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified"))
