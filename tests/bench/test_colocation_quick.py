"""Smoke test: the colocation benchmark in --quick mode, end to end on the real kernel."""

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


@pytest.mark.timeout(480)
def test_quick_colocation_writes_every_row(tmp_path, in_repo):
    from bench import common
    from bench.coloc_metrics import WINDOW_COLUMNS
    from bench.coloc_report import SUMMARY_COLUMNS
    from bench.colocation import DEFAULT_ROWS, main

    out = tmp_path / "quick"
    t0 = time.monotonic()
    assert main(["--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    wall_s = time.monotonic() - t0
    meta = json.loads((out / "meta.json").read_text())
    # a row may only be missing because the agent does not accept the SLO fields yet (issue 11)
    for row, why in meta["skipped"].items():
        assert row == "autotune" and "rejects the config" in why and "itl_p95_s" in why, (row, why)
    ran = [r for r in DEFAULT_ROWS if r not in meta["skipped"]]
    assert {"contended", "static", "static+psi", "oracle"} <= set(ran)
    n_windows = 4  # quick.yaml: 2 phases x 10 s, 5-s windows
    for row in ran:
        rows = list(csv.DictReader((out / f"windows_{row.replace('+', '_')}.csv").open()))
        assert list(rows[0]) == WINDOW_COLUMNS
        assert len(rows) == n_windows, row
        assert [r["phase"] for r in rows] == ["low", "low", "peak", "peak"]
        assert sum(int(r["offered"]) for r in rows) > 0, row
        assert all(r["neighbour_ops_per_s"] and float(r["neighbour_ops_per_s"]) > 0 for r in rows), row
        assert all(r["violating"] in ("True", "False") for r in rows)
        quotas = {r["server_quota_cores"] for r in rows}
        if row in ("static", "static+psi"):
            assert quotas == {"0.5"}, (row, quotas)
        if row == "contended":
            assert quotas == {""}
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert list(summary[0]) == SUMMARY_COLUMNS
    assert [(s["row"], s["phase"]) for s in summary] == [(r, p) for r in ran for p in ("low", "peak", "all")]
    oracle = json.loads((out / "oracle.json").read_text())
    assert set(oracle) == {"0.4/s", "1.2/s"} and all(len(v["points"]) == 2 for v in oracle.values())
    assert all(s["emu_vs_oracle"] == "1.0" for s in summary if s["row"] == "oracle" and s["emu"])
    assert (out / "plot.png").stat().st_size > 10000
    assert (out / "table.md").read_text().count("| **") == len(ran)
    assert meta["command"].startswith("sudo python -m bench.colocation --quick") and meta["wall_s"] > 0
    assert len(list((tmp_path / "cache").glob("oracle-point-*.json"))) == 4
    assert wall_s < 300, f"--quick took {wall_s:.0f} s; budget 3 min on a quiet machine"
    # nothing left behind
    assert common._procs == [] and common._cgroups == []
    name = f"autotune-bench-{os.getpid()}"
    assert not any(Path(p, name).exists() for p in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified"))
