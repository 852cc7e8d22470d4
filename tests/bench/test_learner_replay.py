"""The replay evaluation reads an oracle-grid cache and compares the learned search, the rules'
walk and random search on it (a synthetic cache here: the shape the colocation bench writes)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import learner_replay as lr  # noqa: E402

SLO = {"ttft_p95_s": 4.0, "itl_p95_s": 0.15}


def write_cache(d: Path) -> None:
    d.mkdir()
    n = 0
    for rate in (0.1, 0.4):
        for q in (0.5, 1.0, 1.5, None):
            for sw, nw in ((100, 400), (100, 100), (400, 100)):
                cap = 2.0 if q is None else q
                demand = 0.3 + 2.0 * rate
                got = min(cap, demand, 2.0 * sw / (sw + nw))
                itl = 0.1 * demand / max(got, 1e-3)
                windows = [{"phase": "measure", "has_data": True, "ttft_p95_s": 1.0, "itl_p95_s": itl * (0.95 + 0.02 * k),
                            "neighbour_cores": 2.0 - got} for k in range(4)]
                key = {"kind": "oracle-point", "load": f"{rate:g}/s", "slo": SLO, "ncpu": 2, "model": "test",
                       "alloc": {"quota_cores": q, "server_weight": sw, "neighbour_weight": nw, "memory_max_bytes": None}}
                (d / f"oracle-point-{n}.json").write_text(json.dumps({"key": key, "value": {"windows": windows}}))
                n += 1


def test_replay_compares_three_methods_per_load(tmp_path, capsys):
    write_cache(tmp_path / "cache")
    assert lr.main(["--cache", str(tmp_path / "cache"), "--runs", "6", "--out", str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "replay.csv").open()))
    assert {(r["load"], r["method"]) for r in rows} == {(ld, m) for ld in ("0.1/s", "0.4/s")
                                                         for m in ("learned", "rules", "random")}
    for r in rows:
        assert r["points"] == "12" and float(r["best_score"]) > 0.5
        if r["method"] == "learned":
            assert float(r["reached_pct"]) == 100.0 and int(float(r["trials_max"])) <= 30


def test_no_cache_is_one_line_and_exit_2(tmp_path, capsys):
    assert lr.main(["--cache", str(tmp_path)]) == 2
    assert "no measured oracle grid" in capsys.readouterr().out
