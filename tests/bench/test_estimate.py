"""The seed table's wall-time estimate (repeats interleaved, one server) and its arguments."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import engines  # noqa: E402
from bench.seed_table import CONFIGS, DEFAULT_CONFIGS, estimate_wall_s, main, parse_args  # noqa: E402


def test_overrides_trim_the_full_run():
    full = parse_args([])
    assert (full.requests, full.repeats, full.concurrency, full.configs) == (20, 3, [1, 2, 4, 8], DEFAULT_CONFIGS)
    assert DEFAULT_CONFIGS == ["alone", "contended", "static", "static+psi", "oracle", "autotune"]
    assert "gate" in CONFIGS  # still available with --configs
    assert (full.engine, full.model, full.server_threads) == ("gpt2", "gpt2", "auto")
    trimmed = parse_args(["--repeats", "2", "--requests", "12"])
    assert (trimmed.requests, trimmed.repeats) == (12, 2)
    quick = parse_args(["--quick", "--requests", "6"])
    assert (quick.model, quick.requests, quick.repeats) == ("tiny", 6, 1)


def test_estimate_scales_with_requests_and_repeats():
    repeated = [c for c in DEFAULT_CONFIGS if c != "oracle"]
    kw = dict(configs=repeated, concurrency=[1, 2, 4, 8])
    full = estimate_wall_s(**kw, requests=20, repeats=3)
    one = estimate_wall_s(**kw, requests=20, repeats=1)
    two = estimate_wall_s(**kw, requests=20, repeats=2)
    assert full > 45 * 60 > estimate_wall_s(**kw, requests=12, repeats=2)
    assert full - two == two - one > 0  # linear in repeats beyond the one server start
    # the committed run (bench/results/2026-11-23-gpt2-full): 6 configs x 20 requests x 2 repeats,
    # 55 min measured (with a server start per config then: 6 x 30 s more than now)
    committed = estimate_wall_s(["alone", "contended", "static", "static+psi", "gate", "autotune"],
                                [1, 2, 4, 8], requests=20, repeats=2)
    assert 45 * 60 < committed + 5 * 30 < 60 * 60
    oracle = dict(configs=["oracle"], concurrency=[1, 2, 4, 8], requests=20)
    # the grid is measured once; the chosen point is re-measured in every repeat
    grid_once = estimate_wall_s(**oracle, repeats=1)
    assert estimate_wall_s(**oracle, repeats=3) - grid_once < 0.5 * grid_once
    assert estimate_wall_s(**oracle, repeats=1, oracle_points=14) > 1.7 * grid_once
    assert estimate_wall_s(DEFAULT_CONFIGS, [1, 4], requests=4, repeats=1, model="tiny", warmup_s=45) < 4 * 60
    llama = estimate_wall_s(DEFAULT_CONFIGS, [1, 2, 4, 8], requests=20, repeats=3, engine=engines.LLAMACPP,
                            model="llama60m")
    assert 0 < llama < full


def test_estimate_flag_prints_without_running(capsys):
    assert main(["--estimate", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "estimated wall time" in out and "calibration: bench/results/2026-11-23-gpt2-full" in out


def test_seed_threads_row_is_opt_in_and_pins_torch_threads():
    a = parse_args(["--configs", "static,static-seed-threads"])
    assert a.configs == ["static", "static-seed-threads"]
    assert CONFIGS["static"].threads is None  # the engine's setting: auto for the reference server
    assert CONFIGS["static-seed-threads"].threads == str(os.cpu_count())
    assert CONFIGS["static-seed-threads"].cpu_quota_cores == CONFIGS["static"].cpu_quota_cores == 0.5
