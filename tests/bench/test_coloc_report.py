"""The colocation report over seeds: it rebuilds a run's tables from its per-seed files alone."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import coloc_report as report  # noqa: E402
from bench import stats as st  # noqa: E402

# per seed: (autotune EMU share, violating after 20 s, convergence or None), oracle 1.0 / 0 %
SEEDS = {1: (0.95, 10.0, 20.0), 2: (0.97, 0.0, None), 3: (0.96, 5.0, 0.0)}


def line(row, phase, emu_share, viol, conv, load="0.1/s", duration=60):
    whole = phase == "all"
    converged = ("1/1" if conv is not None else "0/1") if whole else ("yes" if conv is not None else "no")
    return {"row": row, "phase_index": "" if whole else 0, "phase": phase, "load": "" if whole else load,
            "duration_s": duration, "windows": 6, "violation_pct": viol, "violation_pct_after": viol,
            "emu": 2 * emu_share, "emu_vs_oracle": emu_share, "neighbour_ops_per_s": 50000.0 + 1000 * emu_share,
            "neighbour_cores": 0.6, "convergence_s": conv, "converged": converged,
            "requests_per_window_min": 12, "requests_per_window_median": 20.0}


def make_run(run: Path) -> None:
    for seed, (share, viol, conv) in SEEDS.items():
        d = run / f"seed-{seed}"
        d.mkdir(parents=True)
        lines = []
        for phase in ("low", "all"):
            lines.append(line("autotune", phase, share, viol, conv))
            lines.append(line("oracle", phase, 1.0, 0.0, 0.0))
        report.write_csv(d / "summary.csv", report.SUMMARY_COLUMNS, lines)
        react = [{"row": "autotune", "phase_index": 1, "step": "low 0.1/s -> high 0.3/s", "direction": "up",
                  "first_action_s": 1.0 + seed, "first_action": "slo-raise-quota: q 0.5 -> 0.75",
                  "violated": seed != 2, "recovery_s": None if seed == 3 else 10.0 * (seed != 2)},
                 {"row": "oracle", "phase_index": 1, "step": "low 0.1/s -> high 0.3/s", "direction": "up",
                  "first_action_s": None, "first_action": "", "violated": False, "recovery_s": 0.0}]
        report.write_csv(d / "reaction.csv", report.REACTION_COLUMNS, react)
        # autotune: seed 1 two breaches (answered in 1 s and 4 s), seed 2 none, seed 3 one unanswered
        broke = {1: [(1.0, "slo-raise-quota"), (4.0, "slo-raise-weight")], 2: [], 3: [(None, "")]}[seed]
        report.write_csv(d / "breach.csv", report.BREACH_COLUMNS,
                         [{"row": "autotune", "start_s": 70.0 + k, "end_s": 80.0 + k, "phase_index": 1, "fix_s": f,
                           "fix": why} for k, (f, why) in enumerate(broke)])
    (run / "meta.json").write_text(json.dumps({
        "rows": ["autotune", "oracle"], "seeds": list(SEEDS), "compare": [["autotune", "oracle"]], "transient_s": 20,
        "engine": "gpt2", "model": "gpt2", "window_s": 10, "slo": {"ttft_p95_s": 4.0, "itl_p95_s": 0.15},
        "per_seed": {"2": {"skipped": {"static": "why not"}}}}))
    (run / "oracle.json").write_text(json.dumps({"0.1/s": {"choice": {
        "alloc": {"quota_cores": 1.0, "server_weight": 100, "neighbour_weight": 100, "threads": None},
        "valid": True, "holds_live": False, "checks": [{"violating": 1, "windows": 6}], "reason": "r"}}}))


def rows_of(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def test_aggregate_means_intervals_and_paired_differences(tmp_path):
    make_run(tmp_path)
    report.aggregate(tmp_path)
    agg = rows_of(tmp_path / "summary.csv")
    assert list(agg[0]) == report.AGG_COLUMNS
    emu = next(a for a in agg if a["row"] == "autotune" and a["phase"] == "all" and a["figure"] == "emu_vs_oracle")
    want = st.mean_ci([0.95, 0.97, 0.96])
    assert int(emu["n"]) == 3 and float(emu["mean"]) == pytest.approx(want.mean)
    assert float(emu["lo"]) == pytest.approx(want.lo, abs=1e-6) and float(emu["hi"]) == pytest.approx(want.hi, abs=1e-6)
    # a phase that never converged counts as the phase length, and says so
    conv = next(a for a in agg if a["row"] == "autotune" and a["phase"] == "low" and a["figure"] == "convergence_s")
    assert float(conv["mean"]) == pytest.approx((20 + 60 + 0) / 3) and "never converged in 1 of 3" in conv["note"]
    dens = next(a for a in agg if a["row"] == "oracle" and a["phase"] == "all"
                and a["figure"] == "requests_per_window_min")
    assert float(dens["mean"]) == 12 and dens["lo"] == "12.0"
    # reaction: per step, and per row over the steps of each seed
    react = rows_of(tmp_path / "reaction.csv")
    auto = next(r for r in react if r["row"] == "autotune")
    assert float(auto["first_action_s_mean"]) == pytest.approx(3.0) and auto["no_action"] == "0"
    assert (auto["broke"], auto["never_recovered"]) == ("2", "1")
    assert float(auto["recovery_s_mean"]) == pytest.approx(5.0)  # seeds 1 and 2: 10 s and 0 s
    fa = next(a for a in agg if a["row"] == "autotune" and a["figure"] == "first_action_s")
    assert float(fa["mean"]) == pytest.approx(3.0) and int(fa["n"]) == 3
    # paired comparisons per seed against the oracle: EMU share lower, beyond its interval
    cmp_ = rows_of(tmp_path / "comparisons.csv")
    e = next(c for c in cmp_ if c["figure"] == "emu_vs_oracle" and c["phase"] == "all")
    assert (e["a"], e["b"], e["n"]) == ("autotune", "oracle", "3")
    assert float(e["diff_mean"]) == pytest.approx(-0.04) and e["differs"] == "yes: autotune lower"
    v = next(c for c in cmp_ if c["figure"] == "violation_pct_after" and c["phase"] == "all")
    assert v["differs"] == "no (within the interval)"  # 10, 0, 5 points: the interval spans 0
    table = (tmp_path / "table.md").read_text()
    assert "| autotune | 0.96 [" in table and "seeds 1, 2, 3" in table and "Student t" in table
    assert "| 12 / 20.0 | 3 |" in table and "| 0.96 [0.94, 0.98]; 5 [-7, 17] / 5 [-7, 17]; 12 |" in table
    assert "| autotune - oracle | emu_vs_oracle | -0.04 [" in table
    assert "no: no grid point held the SLO here" in table and "skipped seed 2: static: why not" in table
    assert "| autotune | 3.0 [" in table.split("Over all load steps")[1]  # first action over the steps
    assert "low 0.1/s -> high 0.3/s (up) | 3.0 [" in table
    # breaches: per seed 2, 0, 1; seed 1 answered in 2.5 s on average, seed 3 never
    n = next(a for a in agg if a["row"] == "autotune" and a["figure"] == "breaches")
    assert float(n["mean"]) == pytest.approx(1.0) and n["note"] == "2 of 3 answered, 1 within 2 s"
    fix = next(a for a in agg if a["row"] == "autotune" and a["figure"] == "breach_fix_s")
    assert int(fix["n"]) == 1 and float(fix["mean"]) == pytest.approx(2.5)
    oracle = next(a for a in agg if a["row"] == "oracle" and a["figure"] == "breaches")
    assert float(oracle["mean"]) == 0 and oracle["note"] == "no breach"
    assert "| autotune | 1.0 [" in table.split("Breaches, seen from outside")[1]
    assert "| 2 of 3 answered, 1 within 2 s |" in table and "trailing 10-s window" in table


def test_report_command_rebuilds_from_files_and_refuses_an_old_run(tmp_path, capsys):
    make_run(tmp_path / "run")
    assert report.main([str(tmp_path / "run")]) == 0
    assert "EMU / oracle" in capsys.readouterr().out
    old = tmp_path / "old"
    old.mkdir()
    (old / "summary.csv").write_text("row,phase\n")
    with pytest.raises(SystemExit, match="no seed-"):
        report.aggregate(old)
    assert report.main([str(tmp_path / "missing")]) == 2


def test_default_pairs_and_parsing():
    rows = ["contended", "static", "autotune", "autotune-learned", "oracle"]
    pairs = report.default_pairs(rows)
    assert pairs[0] == ("autotune-learned", "autotune")
    assert ("autotune", "contended") in pairs and ("autotune-learned", "oracle") in pairs
    assert report.parse_pairs("a:b, c:d") == [("a", "b"), ("c", "d")]
    with pytest.raises(SystemExit, match="rowA:rowB"):
        report.parse_pairs("a-b")
