"""Smoke test: the colocation benchmark's repeated mode in --quick (tiny model, 2 seeds, rows
contended, autotune, oracle), end to end on the real kernel: per-seed files, the tables over
seeds with their intervals, the paired comparisons, the reaction table, the oracle's re-check."""

import csv
import json
import math
import os
import time
from pathlib import Path

import pytest

from tests.bench.conftest import QUICK_BENCH

pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = QUICK_BENCH


@pytest.mark.timeout(480)
def test_quick_repeated_colocation_writes_tables_with_intervals(tmp_path, in_repo):
    from bench import common
    from bench.coloc_metrics import WINDOW_COLUMNS
    from bench.coloc_report import AGG_COLUMNS, AGG_REACTION_COLUMNS, BREACH_COLUMNS, CMP_COLUMNS, SUMMARY_COLUMNS
    from bench.colocation import QUICK_ROWS, main

    out = tmp_path / "quick"
    t0 = time.monotonic()
    assert main(["--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    print(f"colocation --quick: {time.monotonic() - t0:.0f} s")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seeds"] == [1, 2] and meta["rows"] == QUICK_ROWS == ["contended", "autotune", "oracle"]
    assert meta["command"].startswith("sudo python -m bench.colocation --quick") and meta["wall_s"] > 0
    assert meta["estimate_s"] > 0 and meta["server_starts"] == 1  # --threads auto: one server throughout
    assert_host_as_found(meta)
    for seed in ("1", "2"):
        assert meta["per_seed"][seed]["skipped"] == {}, meta["per_seed"][seed]
        d = out / f"seed-{seed}"
        for row in QUICK_ROWS:
            rows = list(csv.DictReader((d / f"windows_{row}.csv").open()))
            assert list(rows[0]) == WINDOW_COLUMNS
            assert [r["phase"] for r in rows] == ["low", "low", "peak", "peak"]  # 2 x 5 s, 2.5-s windows
            assert sum(int(r["offered"]) for r in rows) > 0, row
            assert all(r["neighbour_ops_per_s"] and float(r["neighbour_ops_per_s"]) > 0 for r in rows), row
            if row == "contended":
                assert {r["server_quota_cores"] for r in rows} == {""}
        summary = list(csv.DictReader((d / "summary.csv").open()))
        assert list(summary[0]) == SUMMARY_COLUMNS
        assert [(s["row"], s["phase"]) for s in summary] == [(r, p) for r in QUICK_ROWS for p in ("low", "peak", "all")]
        assert all(s["emu_vs_oracle"] == "1.0" for s in summary if s["row"] == "oracle" and s["emu"])
        assert all(int(s["requests_per_window_min"]) >= 0 for s in summary)
        react = list(csv.DictReader((d / "reaction.csv").open()))
        assert [(r["row"], r["direction"]) for r in react] == [(r, "up") for r in QUICK_ROWS]
        assert all(r["first_action_s"] == "" for r in react if r["row"] != "autotune")
        broke = list(csv.DictReader((d / "breach.csv").open()))
        assert (d / "breach.csv").read_text().splitlines()[0].split(",") == BREACH_COLUMNS
        assert all(b["fix_s"] == "" for b in broke if b["row"] != "autotune")
        assert all(float(b["start_s"]) <= float(b["end_s"]) for b in broke)
        assert (d / "plot.png").stat().st_size > 10000
        assert (d / "autotune" / "journal.json").exists() and (d / "autotune" / "agent.log").exists()
    # over seeds: every figure of every row has n = 2 and an interval around its mean
    agg = list(csv.DictReader((out / "summary.csv").open()))
    assert list(agg[0]) == AGG_COLUMNS
    for row in QUICK_ROWS:
        for fig in ("emu_vs_oracle", "violation_pct_after", "convergence_s", "neighbour_ops_per_s",
                    "requests_per_window_min"):
            a = next(x for x in agg if x["row"] == row and x["phase"] == "all" and x["figure"] == fig)
            assert a["n"] == "2", (row, fig)
            lo, mean, hi = float(a["lo"]), float(a["mean"]), float(a["hi"])
            assert lo <= mean <= hi and all(math.isfinite(v) for v in (lo, hi)), (row, fig, a)
            assert len(a["values"].split(";")) == 2
    cmp_ = list(csv.DictReader((out / "comparisons.csv").open()))
    assert list(cmp_[0]) == CMP_COLUMNS
    pairs = {(c["a"], c["b"]) for c in cmp_}
    assert pairs == {("autotune", "contended"), ("autotune", "oracle")}
    assert all(c["n"] == "2" and (c["differs"] == "no (within the interval)" or c["differs"].startswith("yes"))
               for c in cmp_ if c["figure"] != "first_action_s")
    react = list(csv.DictReader((out / "reaction.csv").open()))
    assert list(react[0]) == AGG_REACTION_COLUMNS and {r["row"] for r in react} == set(QUICK_ROWS)
    oracle = json.loads((out / "oracle.json").read_text())
    assert set(oracle) == {"2/s", "6/s"} and all(len(v["points"]) == 2 for v in oracle.values())
    for v in oracle.values():  # chosen on the grid, then re-checked live
        assert v["choice"]["checks"] and v["choice"]["holds_live"] in (True, False)
    table = (out / "table.md").read_text()
    assert "seeds 1, 2" in table and "| autotune | " in table and "Paired differences" in table
    assert "Reaction after each load step" in table and "holds live" in table
    cache = tmp_path / "cache"
    assert len(list(cache.glob("oracle-point-*.json"))) == 4 and list(cache.glob("oracle-check-*.json"))
    assert len(list((out / "cache").glob("*.json"))) == len(list(cache.glob("*.json")))  # the run keeps its copy
    assert_nothing_left(common)


def assert_host_as_found(meta: dict) -> None:
    """The run's host values (sysctls, THP, governor, cgroup roots, its own cgroups) read the
    same after it as before, with nothing put back by force (issue 23: a run once left
    vm.swappiness at 10)."""
    hv = meta["host_values"]
    assert hv["same"] and hv["differ"] == {}, hv["differ"]
    assert hv["forced"] == [], hv["forced"]
    assert hv["line"] == f"host values: {hv['read']} read the same before and after"
    assert "vm.swappiness" in hv["before"] and "THP enabled" in hv["before"]
    assert any(k.endswith(f"autotune-bench-{os.getpid()}") for k in hv["before"])


def assert_nothing_left(common) -> None:  # noqa: ANN001
    from autotune.host import Host
    from autotune.workload import harness

    assert common._procs == [] and common._cgroups == [] and harness._ancestors == []
    dirs = harness.base_dirs(Host("/"), f"autotune-bench-{os.getpid()}")
    assert dirs and not any(Path(d).exists() for d in dirs.values()), dirs
    assert not list(Path("/var/tmp").glob(f"autotune-*-{os.getpid()}.*"))  # streamer file, mapped weights


@pytest.mark.timeout(360)
def test_quick_memory_heavy_neighbour(tmp_path, in_repo):
    """--scenario mem in --quick (a 256 MiB hog, a 512 MiB streamed file, one seed): the
    neighbour's caps in the grid, its memory and the PSI columns in the windows, the per-phase
    table against contended, the host left as found and the streamer's file removed."""
    from bench import common
    from bench.colocation import main

    out = tmp_path / "mem"
    t0 = time.monotonic()
    assert main(["--quick", "--scenario", "mem", "--seeds", "1", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    print(f"colocation --quick --scenario mem: {time.monotonic() - t0:.0f} s")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["args"]["scenario"] == "mem" and meta["args"]["stream_mib"] == 512
    assert meta["per_seed"]["1"]["skipped"] == {}
    assert_host_as_found(meta)
    rows = list(csv.DictReader((out / "seed-1" / "windows_contended.csv").open()))
    assert all(r["neighbour_memory_max_bytes"] == "" and r["host_mem_stall_pct"] != "" for r in rows)
    assert any(float(r["neighbour_stream_mib_per_s"] or 0) > 0 for r in rows)  # the streamer reads
    oracle = json.loads((out / "oracle.json").read_text())
    caps = {(p["alloc"]["neighbour_quota_cores"], p["alloc"]["neighbour_memory_max_bytes"])
            for v in oracle.values() for p in v["points"]}
    assert caps == {(None, meta["args"]["cap_bytes"]), (0.5, meta["args"]["cap_bytes"])}
    chosen = [v["choice"]["alloc"] for v in oracle.values() if v["choice"]]
    orows = list(csv.DictReader((out / "seed-1" / "windows_oracle.csv").open()))
    assert {int(r["neighbour_memory_max_bytes"]) for r in orows} == {meta["args"]["cap_bytes"]} and chosen
    table = (out / "table.md").read_text()
    assert "Agent rows against `contended`, per phase" in table and "Memory stall per phase" in table
    assert "neighbour memory max" in table  # the oracle's allocation names the neighbour's cap
    assert_nothing_left(common)
