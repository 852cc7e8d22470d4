"""The full-run wall-time estimate and the trimming overrides."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.estimate import estimate_wall_s  # noqa: E402
from bench.seed_table import CONFIGS, DEFAULT_CONFIGS, main, parse_args  # noqa: E402


def test_overrides_trim_the_full_run():
    full = parse_args([])
    assert (full.requests, full.repeats, full.concurrency, full.configs) == (20, 3, [1, 2, 4, 8], DEFAULT_CONFIGS)
    assert DEFAULT_CONFIGS == ["alone", "contended", "static", "static+psi", "oracle", "autotune"]
    assert "gate" in CONFIGS  # still available with --configs
    trimmed = parse_args(["--repeats", "2", "--requests", "12"])
    assert (trimmed.requests, trimmed.repeats) == (12, 2)
    quick = parse_args(["--quick", "--requests", "6"])
    assert (quick.model, quick.requests, quick.repeats) == ("tiny", 6, 1)


def test_estimate_scales_with_requests_and_repeats():
    repeated = [c for c in DEFAULT_CONFIGS if c != "oracle"]  # the oracle measures each point once
    kw = dict(configs=repeated, concurrency=[1, 2, 4, 8])
    full = estimate_wall_s(**kw, requests=20, repeats=3)
    one = estimate_wall_s(**kw, requests=20, repeats=1)
    assert full > 45 * 60 > estimate_wall_s(**kw, requests=12, repeats=2)
    over = len(repeated) * 30 + 90
    assert 2.5 < (full - over) / (one - over) < 3.5  # linear in repeats beyond overheads
    oracle = dict(configs=["oracle"], concurrency=[1, 2, 4, 8], requests=20)
    assert estimate_wall_s(**oracle, repeats=1) == estimate_wall_s(**oracle, repeats=3)  # points, not repeats
    assert estimate_wall_s(**oracle, repeats=1, oracle_points=14) > 1.9 * estimate_wall_s(**oracle, repeats=1)
    assert estimate_wall_s(DEFAULT_CONFIGS, [1, 4], requests=4, repeats=1, model="tiny", warmup_s=45) < 4 * 60


def test_estimate_flag_prints_without_running(capsys):
    assert main(["--estimate", "--repeats", "1"]) == 0
    assert "estimated wall time" in capsys.readouterr().out


def test_seed_threads_row_is_opt_in_and_pins_torch_threads():
    import os

    a = parse_args(["--configs", "static,static-seed-threads"])
    assert a.configs == ["static", "static-seed-threads"]
    assert CONFIGS["static"].threads == "auto"
    assert CONFIGS["static-seed-threads"].threads == str(os.cpu_count())
    assert CONFIGS["static-seed-threads"].cpu_quota_cores == CONFIGS["static"].cpu_quota_cores == 0.5
