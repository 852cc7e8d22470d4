"""The full-run wall-time estimate and the trimming overrides."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.estimate import estimate_wall_s  # noqa: E402
from bench.seed_table import CONFIGS, DEFAULT_CONFIGS, main, parse_args  # noqa: E402


def test_overrides_trim_the_full_run():
    full = parse_args([])
    assert (full.requests, full.repeats, full.concurrency, full.configs) == (20, 3, [1, 2, 4, 8], DEFAULT_CONFIGS)
    assert DEFAULT_CONFIGS == ["alone", "contended", "static", "static+psi", "gate", "autotune"]
    trimmed = parse_args(["--repeats", "2", "--requests", "12"])
    assert (trimmed.requests, trimmed.repeats) == (12, 2)
    quick = parse_args(["--quick", "--requests", "6"])
    assert (quick.model, quick.requests, quick.repeats) == ("tiny", 6, 1)


def test_estimate_scales_with_requests_and_repeats():
    kw = dict(configs=DEFAULT_CONFIGS, concurrency=[1, 2, 4, 8])
    full = estimate_wall_s(**kw, requests=20, repeats=3)
    one = estimate_wall_s(**kw, requests=20, repeats=1)
    assert full > 45 * 60 > estimate_wall_s(**kw, requests=12, repeats=2)
    assert 2.5 < (full - 6 * 30 - 90) / (one - 6 * 30 - 90) < 3.5  # linear in repeats beyond overheads
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
