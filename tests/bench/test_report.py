"""A committed run's summary.csv reads back into the table, with ratios against static and alone."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.seed_table import SUMMARY_COLUMNS, main, markdown_table, read_summary  # noqa: E402

CSV = """config,concurrency,p50_s,p95_s,p99_s,neighbour_ops_per_s,deferred,rejected,runs
alone,1,1.0,2.0,2.5,,0,0,2
static,1,4.0,8.0,9.0,120000.5,0,0,2
autotune,1,1.5,2.4,2.6,90000,3,1,2
"""


def test_report_reads_back_and_computes_ratios(tmp_path, capsys):
    path = tmp_path / "summary.csv"
    path.write_text(CSV)
    cells = read_summary(path)
    assert [c.config for c in cells] == ["alone", "static", "autotune"]
    assert cells[0].neighbour_ops_per_s is None and cells[1].neighbour_ops_per_s == pytest.approx(120000.5)
    md = markdown_table(cells).splitlines()
    assert md[0].count("|") == 12
    row = md[-1]
    assert "| autotune | 1 |" in row and "| 3.33x |" in row and "| 1.20x |" in row and "| 90000 | 3 | 1 | 2 |" in row
    assert main(["--report", str(path)]) == 0
    assert "| static | 1 |" in capsys.readouterr().out
    assert (tmp_path / "table.md").read_text().splitlines() == md
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_report_names_a_file_that_is_not_a_summary(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("config,latency\nalone,1\n")
    with pytest.raises(SystemExit, match="x.csv.*missing columns.*p95_s"):
        read_summary(path)
    assert "p95_s" in SUMMARY_COLUMNS
