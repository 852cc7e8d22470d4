"""The colocation benchmark's pure parts: schedules, arrivals, windows, violation, convergence,
EMU, oracle selection and cache keys. No kernel, no server."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.coloc_metrics import (Alloc, EdgeSample, PointResult, Slo, Window, aggregate_windows,  # noqa: E402
                                 cache_key, completed_per_s, convergence_s, emu, goodput, known_violation,
                                 phase_stats, select_oracle, violation_pct)
from bench.openloop import (Phase, RequestRecord, load_schedule, parse_phases, percentile,  # noqa: E402
                            poisson_arrivals)

SLO = Slo(ttft_p95_s=1.0, itl_p95_s=0.1)


# -- schedules and arrivals -----------------------------------------------------------------------
def test_parse_phases_open_and_closed_loop():
    s = parse_phases("low:0.15:60, peak:0.4:30,drop:c=8:20")
    assert [(p.name, p.rate, p.concurrency, p.duration_s) for p in s.phases] == [
        ("low", 0.15, None, 60), ("peak", 0.4, None, 30), ("drop", None, 8, 20)]
    assert s.starts() == [0, 60, 90] and s.total_s == 110
    assert [s.phase_at(t) for t in (0, 59.9, 60, 109, 500)] == [0, 0, 1, 2, 2]
    assert s.phases[2].label() == "c=8" and s.phases[1].label() == "0.4/s"
    with pytest.raises(ValueError, match="name:rate:duration_s"):
        parse_phases("low:0.1")
    with pytest.raises(ValueError, match="exactly one of rate or concurrency"):
        Phase(name="x", duration_s=10)


def test_phases_must_be_whole_windows():
    parse_phases("a:0.1:20,b:0.2:10").check_windows(10)
    with pytest.raises(ValueError, match="'b': 15 s is not a whole number of 10-s windows"):
        parse_phases("a:0.1:20,b:0.2:15").check_windows(10)


@pytest.mark.parametrize("name", ["default.yaml", "quick.yaml", "drop.yaml"])
def test_shipped_schedules_load_and_fit_their_windows(name):
    s = load_schedule(REPO / "bench" / "schedules" / name)
    s.check_windows(5.0 if name == "quick.yaml" else 10.0)
    if name == "default.yaml":  # low -> high -> peak -> medium -> low, a few minutes
        rates = [p.rate for p in s.phases]
        assert rates[0] == rates[-1] == min(rates) and rates[2] == max(rates)
        assert rates[0] < rates[3] < rates[1] < rates[2]
        assert 180 <= s.total_s <= 600


def test_poisson_arrivals_are_fixed_by_the_seed_and_per_phase():
    s = parse_phases("a:2:100,b:c=2:10,c:5:100")
    one, two = poisson_arrivals(s, seed=7), poisson_arrivals(s, seed=7)
    assert [a.t_s for a in one] == [a.t_s for a in two]
    assert [a.index for a in one] == list(range(len(one)))
    assert [a.t_s for a in one] == sorted(a.t_s for a in one)
    assert {a.phase for a in one} == {0, 2}  # the closed-loop phase has no scheduled arrivals
    a = [x.t_s for x in one if x.phase == 0]
    c = [x.t_s for x in one if x.phase == 2]
    assert all(0 <= t < 100 for t in a) and all(110 <= t < 210 for t in c)
    assert 150 < len(a) < 250 and 420 < len(c) < 580  # 200 and 500 expected
    assert [x.t_s for x in poisson_arrivals(s, seed=8)] != [x.t_s for x in one]
    # changing one phase leaves the other's arrivals alone
    s2 = parse_phases("a:2:100,b:c=2:10,c:1:100")
    assert [x.t_s for x in poisson_arrivals(s2, seed=7) if x.phase == 0] == a


# -- windows --------------------------------------------------------------------------------------
def rec(index, arrival, tokens=(), outcome="ok", finished=None, phase=0):
    return RequestRecord(index=index, phase=phase, arrival_s=arrival, token_s=list(tokens), outcome=outcome,
                         finished_s=finished if finished is not None else (tokens[-1] if tokens else arrival))


def edges(n, ops_per_s=1000.0, cores=0.5, window_s=10.0, quota=(0.5,)):
    return [EdgeSample(k=k, t_s=k * window_s, noise_ops_total=int(k * window_s * ops_per_s),
                       noise_elapsed_s=k * window_s + 3.0, neighbour_cpu_s=k * window_s * cores,
                       server_quota_cores=quota[min(k, len(quota) - 1)], server_weight=100, neighbour_weight=25)
            for k in range(n + 1)]


def test_window_aggregation():
    s = parse_phases("low:1:20,high:2:10")
    records = [
        rec(0, 1.0, [1.5, 1.55, 1.6], finished=1.6),         # w0: ttft 0.5, gaps 0.05 0.05
        rec(1, 9.0, [9.2, 10.5, 10.55], finished=10.55),     # w0 ttft 0.2; gaps end in w1: 1.3, 0.05
        rec(2, 22.0, outcome="timeout", finished=30.0),      # w2: failed before a token -> inf
        rec(3, 25.0, [25.1, 25.15], finished=25.15),         # w2
        rec(4, 26.0, outcome="cancelled", finished=27.0),    # cancelled by the harness: ignored
    ]
    ws = aggregate_windows(records, edges(3, quota=(0.5, 0.5, 1.5, None)), s, 10.0, SLO)
    assert [w.phase for w in ws] == ["low", "low", "high"] and [w.rate for w in ws] == [1, 1, 2]
    w0, w1, w2 = ws
    assert (w0.offered, w0.completed, w0.failed, w0.tokens) == (2, 1, 0, 4)
    assert w0.ttft_p95_s == pytest.approx(percentile([0.5, 0.2], 95))
    assert w0.itl_p95_s == pytest.approx(0.05) and not w0.violating
    assert (w1.offered, w1.completed, w1.tokens) == (0, 1, 2)
    assert w1.ttft_p95_s is None and w1.itl_p95_s == pytest.approx(percentile([1.3, 0.05], 95))
    assert w1.violating and w1.has_data  # ITL over 0.1 s, though nothing arrived
    assert (w2.offered, w2.failed, w2.completed) == (2, 1, 1)
    assert math.isinf(w2.ttft_p95_s) and w2.violating
    assert w0.neighbour_ops_per_s == pytest.approx(1000) and w0.neighbour_cores == pytest.approx(0.5)
    # allocation read at the window's start
    assert [w.server_quota_cores for w in ws] == [0.5, 0.5, 1.5]
    assert w0.neighbour_weight == 25


def test_empty_window_has_no_data_and_does_not_count():
    s = parse_phases("a:1:30")
    ws = aggregate_windows([rec(0, 1.0, [1.1, 1.15])], edges(3), s, 10.0, SLO)
    assert [w.has_data for w in ws] == [True, False, False]
    assert violation_pct(ws) == 0.0
    ws[0].violating = True
    assert violation_pct(ws) == 100.0  # 1 of the 1 window with data
    assert violation_pct(ws[1:]) is None


def win(start, violating, phase=0):
    return Window(start_s=start, phase_index=phase, phase="p", rate=1.0, concurrency=None, ttft_p95_s=None,
                  itl_p95_s=None, completed=0, offered=0, failed=0, tokens=0, neighbour_ops_per_s=None,
                  neighbour_cores=None, violating=violating, has_data=True)


@pytest.mark.parametrize("flags, expect", [
    ([0, 0, 0, 0, 0, 0], 0.0),
    ([1, 1, 0, 0, 0, 0], 20.0),
    ([1, 0, 1, 0, 0, 0], 30.0),  # a single good window between violations is not convergence
    ([1, 1, 1, 1, 0, 0], None),  # 20 s of SLO left in the phase: not 30
    ([0, 0, 1, 0, 0, 1], None),
])
def test_convergence_needs_the_slo_held_for_hold_s(flags, expect):
    ws = [win(60 + 10 * i, bool(f)) for i, f in enumerate(flags)]
    assert convergence_s(ws, 60.0, hold_s=30.0, window_s=10.0) == expect


def test_phase_stats_violation_after_transient_and_lc_figures():
    s = parse_phases("a:1:40,b:c=2:20")
    records = [rec(0, 1, [1.2, 1.25]), rec(1, 15, outcome="timeout", finished=30), rec(2, 35, [35.1, 35.12]),
               rec(3, 41, [41.1, 41.12], phase=1), rec(4, 45, [45.1, 45.2], phase=1),
               rec(5, 50, outcome="error", finished=51, phase=1)]
    ws = aggregate_windows(records, edges(6), s, 10.0, SLO)
    st = phase_stats(ws, records, edges(6), s, window_s=10.0, transient_s=20.0, hold_s=20.0)
    a, b = st
    assert a.violation_pct == pytest.approx(100 / 3)  # w1 violates (timeout); w2 has no data
    assert a.violation_pct_after == 0.0  # windows from 20 s on
    assert a.lc_perf == pytest.approx(2 / 3) == goodput(records, 0)
    assert a.convergence_s == 20.0
    assert b.lc_perf == pytest.approx(2 / 20) == completed_per_s(records, 1, 20)  # closed loop: per second
    assert a.neighbour_ops_per_s == pytest.approx(1000) and b.neighbour_cores == pytest.approx(0.5)


def test_known_violation_uses_lower_bounds_for_pending_requests():
    pending = RequestRecord(index=0, phase=0, arrival_s=2.0)  # no token, not finished
    assert not known_violation([pending], now_s=2.5, window_s=10, k_from=0, k_to=1, slo=SLO)
    assert known_violation([pending], now_s=10.0, window_s=10, k_from=0, k_to=1, slo=SLO)
    ok = rec(1, 12.0, [12.1, 12.15])
    assert not known_violation([pending, ok], now_s=20.0, window_s=10, k_from=1, k_to=2, slo=SLO)
    cancelled = rec(2, 3.0, outcome="cancelled", finished=4.0)
    assert not known_violation([cancelled], now_s=10.0, window_s=10, k_from=0, k_to=1, slo=SLO)


def test_percentile_keeps_infinity():
    assert percentile([], 95) is None
    assert percentile([1.0, 2.0], 50) == 1.5
    assert math.isinf(percentile([1.0] * 9 + [math.inf], 95))
    assert percentile([1.0] * 30 + [math.inf], 95) == 1.0


# -- EMU and the oracle ---------------------------------------------------------------------------
def test_emu_is_the_sum_of_both_shares():
    assert emu(0.9, 1.0, 50.0, 100.0) == pytest.approx((0.9, 0.5, 1.4))
    assert emu(None, 1.0, 50.0, 100.0) == (None, 0.5, None)
    assert emu(1.0, 0.0, 50.0, 100.0)[0] is None  # alone 0: no share
    assert emu(1.0, 1.0, None, 100.0) == (1.0, None, None)


def point(q, w, violating=0, windows=3, lc=1.0, ops=50.0, cores=0.6):
    return PointResult(alloc=Alloc(quota_cores=q, server_weight=w[0], neighbour_weight=w[1]), load="0.4/s",
                       windows=windows, violating=violating, lc_perf=lc, neighbour_ops_per_s=ops,
                       neighbour_cores=cores)


def test_oracle_picks_highest_emu_among_valid_points():
    pts = [point(0.5, (100, 100), violating=2, ops=90, cores=1.4),  # best EMU but violates
           point(1.0, (100, 100), ops=60, cores=0.9),
           point(1.5, (400, 100), ops=70, cores=1.0),
           point(None, (400, 100), ops=80, cores=0.45)]  # holds the SLO, but under the floor
    c = select_oracle(pts, floor_cores=0.5, lc_alone=1.0, be_alone_ops=100.0)
    assert c.valid and c.alloc.quota_cores == 1.5 and c.alloc.server_weight == 400
    assert c.emu == pytest.approx(1.7) and "2 valid point(s) of 4" in c.reason


def test_oracle_without_a_valid_point_says_so():
    pts = [point(0.5, (100, 100), violating=3, ops=90), point(1.0, (100, 100), violating=1, ops=60)]
    c = select_oracle(pts, floor_cores=0.5, lc_alone=1.0, be_alone_ops=100.0)
    assert not c.valid and c.alloc.quota_cores == 1.0 and "every point had a violating window" in c.reason
    pts = [point(None, (400, 100), cores=0.3), point(1.5, (400, 100), cores=0.4, ops=40)]
    c = select_oracle(pts, floor_cores=0.5, lc_alone=1.0, be_alone_ops=100.0)
    assert not c.valid and "under 0.5 cores" in c.reason
    assert select_oracle([], floor_cores=0.5, lc_alone=1.0, be_alone_ops=100.0) is None
    # a point stopped before any measured window ended is not valid
    c = select_oracle([point(1.0, (100, 100), windows=0)], floor_cores=0.5, lc_alone=1.0, be_alone_ops=100.0)
    assert not c.valid


def test_cache_key_covers_what_matters_and_ignores_order():
    base = {"kind": "oracle-point", "model": "gpt2", "load": "0.4/s", "alloc": {"quota_cores": 1.0},
            "measure_s": 30, "slo": {"ttft_p95_s": 4.0, "itl_p95_s": 0.15}, "scenario": "cpu"}
    same = dict(reversed(list(base.items())))
    assert cache_key(base) == cache_key(same)
    for k, v in [("model", "tiny"), ("load", "0.3/s"), ("alloc", {"quota_cores": 1.5}), ("measure_s", 20),
                 ("slo", {"ttft_p95_s": 3.0, "itl_p95_s": 0.15}), ("scenario", "cpu+mem")]:
        assert cache_key({**base, k: v}) != cache_key(base), k
