"""The full-run wall-time estimate and the trimming overrides."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.estimate import estimate_wall_s  # noqa: E402
from bench.seed_table import CONFIGS, main, parse_args  # noqa: E402


def test_overrides_trim_the_full_run():
    full = parse_args([])
    assert (full.requests, full.repeats, full.concurrency, full.configs) == (20, 3, [1, 2, 4, 8], list(CONFIGS))
    trimmed = parse_args(["--repeats", "2", "--requests", "12"])
    assert (trimmed.requests, trimmed.repeats) == (12, 2)
    quick = parse_args(["--quick", "--requests", "6"])
    assert (quick.model, quick.requests, quick.repeats) == ("tiny", 6, 1)


def test_estimate_scales_with_requests_and_repeats():
    kw = dict(configs=list(CONFIGS), concurrency=[1, 2, 4, 8])
    full = estimate_wall_s(**kw, requests=20, repeats=3)
    one = estimate_wall_s(**kw, requests=20, repeats=1)
    assert full > 45 * 60 > estimate_wall_s(**kw, requests=12, repeats=2)
    assert 2.5 < (full - 6 * 30 - 90) / (one - 6 * 30 - 90) < 3.5  # linear in repeats beyond overheads
    assert estimate_wall_s(list(CONFIGS), [1, 4], requests=4, repeats=1, model="tiny", warmup_s=45) < 4 * 60


def test_estimate_flag_prints_without_running(capsys):
    assert main(["--estimate", "--repeats", "1"]) == 0
    assert "estimated wall time" in capsys.readouterr().out
