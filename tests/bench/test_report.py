"""The seed table over repeats: per-cell means and intervals, paired p95 ratios, the report
rebuilt from cells.csv, and a legacy summary.csv still printed."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import stats as st  # noqa: E402
from bench.seed_table import (CELL_COLUMNS, Cell, choose_oracle, compare, main, markdown_table,  # noqa: E402
                              read_summary, report, summarize)

LEGACY = """config,concurrency,p50_s,p95_s,p99_s,neighbour_ops_per_s,deferred,rejected,runs
alone,1,1.0,2.0,2.5,,0,0,2
static,1,4.0,8.0,9.0,120000.5,0,0,2
autotune,1,1.5,2.4,2.6,90000,3,1,2
"""


def cells() -> list[Cell]:
    out = []
    for rep, (alone, static, auto) in {1: (2.0, 8.0, 2.4), 2: (2.2, 8.4, 2.6), 3: (1.9, 7.6, 2.5)}.items():
        for name, p95, ops in (("alone", alone, None), ("static", static, 120000.0), ("autotune", auto, 90000.0 + rep)):
            out.append(Cell(config=name, concurrency=1, repeat=rep, p50_s=p95 / 2, p95_s=p95, p99_s=p95 * 1.1,
                            neighbour_ops_per_s=ops, deferred=1, rejected=0, requests=20))
    return out


def test_summary_over_repeats_and_paired_ratios():
    summ = {s["config"]: s for s in summarize(cells())}
    auto = summ["autotune"]
    want = st.mean_ci([2.4, 2.6, 2.5])
    assert auto["runs"] == 3 and auto["p95_s"] == pytest.approx(2.5)
    assert auto["p95_lo"] == pytest.approx(want.lo) and auto["p95_hi"] == pytest.approx(want.hi)
    assert auto["deferred"] == 3 and summ["alone"]["neighbour_ops_per_s"] is None
    cmp_ = {(c["a"], c["b"]): c for c in compare(cells())}
    r = cmp_[("autotune", "static")]
    assert r["n"] == 3 and r["p95_ratio"] == pytest.approx((2.4 / 8.0 * 2.6 / 8.4 * 2.5 / 7.6) ** (1 / 3))
    assert r["lo"] < r["p95_ratio"] < r["hi"] < 1 and r["differs"] == "yes"
    assert ("autotune", "oracle") not in cmp_  # no oracle cells: no pair
    md = markdown_table(summarize(cells()), compare(cells()))
    assert "| autotune | 1 | 1.25 | 2.50 [" in md and "| autotune / static | 1 | 0.31 [" in md


def test_report_rebuilds_from_cells_csv(tmp_path, capsys):
    import csv

    with open(tmp_path / "cells.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CELL_COLUMNS)
        w.writeheader()
        w.writerows([{k: ("" if v is None else v) for k, v in c.model_dump().items()} for c in cells()])
    assert main(["--report", str(tmp_path)]) == 0
    assert "| autotune / static |" in capsys.readouterr().out
    assert (tmp_path / "table.md").exists() and (tmp_path / "plot.png").stat().st_size > 1000
    assert (tmp_path / "comparisons.csv").read_text().startswith("a,b,concurrency,n,p95_ratio")
    table = report(cells(), tmp_path, meta={"x": 1})
    assert "autotune" in table and (tmp_path / "summary.json").exists()


def test_legacy_summary_still_prints(tmp_path, capsys):
    path = tmp_path / "summary.csv"
    path.write_text(LEGACY)
    got = read_summary(path)
    assert [c.config for c in got] == ["alone", "static", "autotune"]
    assert got[0].neighbour_ops_per_s is None and got[1].neighbour_ops_per_s == pytest.approx(120000.5)
    assert main(["--report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| autotune | 1 | 1.50 | 2.40 | 2.60 | 3.33x | 1.20x | 90000 | 3 | 1 | - |" in out


def test_report_names_a_file_that_is_not_a_summary(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("config,latency\nalone,1\n")
    with pytest.raises(SystemExit, match="x.csv.*missing columns.*p95_s"):
        read_summary(path)


def test_oracle_choice_keeps_the_floor_or_says_no_point_did():
    rows = [{"concurrency": 1, "p95_s": 1.0, "keeps_floor": False, "chosen": False},
            {"concurrency": 1, "p95_s": 1.5, "keeps_floor": True, "chosen": False},
            {"concurrency": 4, "p95_s": 3.0, "keeps_floor": False, "chosen": False},
            {"concurrency": 4, "p95_s": 2.5, "keeps_floor": False, "chosen": False},
            {"concurrency": 8, "p95_s": None, "keeps_floor": True, "chosen": False}]
    got = choose_oracle(rows)
    assert got[1]["p95_s"] == 1.5 and got[1]["keeps_floor"]  # the fastest that keeps the floor
    assert got[4]["p95_s"] == 2.5 and not got[4]["keeps_floor"]  # none did: the fastest stands in, marked
    assert 8 not in got and [r["chosen"] for r in rows] == [False, True, False, True, False]
