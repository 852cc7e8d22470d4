"""Smoke test: the seed-table benchmark in --quick mode, end to end on the real kernel."""

import csv
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = [pytest.mark.slow, pytest.mark.workload, pytest.mark.realkernel, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(os.geteuid() != 0, reason="the bench creates cgroups: needs root")
@pytest.mark.skipif(not Path("/sys/fs/cgroup").is_dir(), reason="no cgroup filesystem")
def test_quick_bench_writes_table(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.chdir(REPO)
    from bench import common
    from bench.seed_table import SUMMARY_COLUMNS, main

    out = tmp_path / "quick"
    assert main(["--quick", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert list(rows[0]) == SUMMARY_COLUMNS
    assert {(r["config"], r["concurrency"]) for r in rows} == {
        (c, n) for c in ("alone", "contended", "static", "static+psi") for n in ("1", "4")}
    for r in rows:
        assert float(r["p95_s"]) >= float(r["p50_s"]) > 0
        assert r["runs"] == "1"
        assert (r["neighbour_ops_per_s"] == "") == (r["config"] == "alone")
    assert (out / "plot.png").stat().st_size > 1000
    # nothing left behind
    assert common._procs == [] and common._cgroups == []
    name = f"autotune-bench-{os.getpid()}"
    assert not any(Path(p, name).exists() for p in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified"))
