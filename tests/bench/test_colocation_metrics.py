"""The colocation benchmark's pure parts: schedules, arrivals, windows, violation, convergence,
EMU, oracle selection and cache keys. No kernel, no server."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.coloc_metrics import (Action, Alloc, EdgeSample, LiveCheck, PointResult, Slo, Window,  # noqa: E402
                                 aggregate_windows, breaches, cache_key, completed_per_s, convergence_s, emu,
                                 goodput, known_violation, phase_stats, rank_points, reactions,
                                 requests_per_window, select_oracle, settle_oracle, violation_pct)
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


@pytest.mark.parametrize("name", ["default.yaml", "quick.yaml", "drop.yaml", "learn.yaml", "dense.yaml",
                                  "llamacpp.yaml"])
def test_shipped_schedules_load_and_fit_their_windows(name):
    s = load_schedule(REPO / "bench" / "schedules" / name)
    s.check_windows(2.5 if name == "quick.yaml" else 10.0)
    if name.startswith("dense") or name == "llamacpp.yaml":  # every 10-s window >= 10 requests, but for a rare draw
        from scipy.stats import poisson

        assert poisson.cdf(9, 10 * min(p.rate for p in s.phases)) < 1e-3
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


def win(start, violating, phase=0, offered=0, has_data=True):
    return Window(start_s=start, phase_index=phase, phase="p", rate=1.0, concurrency=None, ttft_p95_s=None,
                  itl_p95_s=None, completed=0, offered=offered, failed=0, tokens=0, neighbour_ops_per_s=None,
                  neighbour_cores=None, violating=violating, has_data=has_data)


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


def test_requests_per_window_min_and_median():
    assert requests_per_window([win(0, False, offered=n) for n in (12, 9, 30, 14)]) == (9, 13.0)
    assert requests_per_window([win(0, False, offered=n) for n in (3, 1, 2)]) == (1, 2.0)
    assert requests_per_window([]) == (None, None)
    s = parse_phases("a:1:20")
    st = phase_stats(aggregate_windows([rec(0, 1, [1.1]), rec(1, 2, [2.1]), rec(2, 15, [15.1])], edges(2), s,
                                       10.0, SLO), [], edges(2), s, window_s=10, transient_s=0, hold_s=10)
    assert (st[0].requests_per_window_min, st[0].requests_per_window_median) == (1, 1.5)


# -- reaction after a load step ---------------------------------------------------------------------
def phased(flags_per_phase, has_data=None):
    """Windows of 10 s over phases of len(flags) windows each: 1 = violating."""
    out, t = [], 0.0
    for i, flags in enumerate(flags_per_phase):
        for j, f in enumerate(flags):
            hd = True if has_data is None else has_data[i][j]
            out.append(win(t, bool(f), phase=i, has_data=hd))
            t += 10.0
    return out


def test_reaction_first_action_and_recovery_per_step():
    s = parse_phases("low:0.1:60,high:0.3:60,low2:0.1:60")
    ws = phased([[0] * 6, [1, 1, 0, 0, 1, 0], [0] * 6])
    t0 = 1000.0
    acts = [Action(ts=t0 + 30, rule="r0", knob="k", prior="1", proposed="2"),   # before the step: not counted
            Action(ts=t0 + 61.5, rule="slo-raise-quota", knob="cgroup.cpu_quota", prior="0.5", proposed="0.75"),
            Action(ts=t0 + 70, rule="r2", knob="k"),
            Action(ts=t0 + 125, rule="give-back", knob="cgroup.cpu_quota", prior="1.5", proposed="1")]
    up, down = reactions(ws, s, transient_s=20, actions=acts, t0_wall=t0)
    assert (up.phase_index, up.direction, up.step) == (1, "up", "low 0.1/s -> high 0.3/s")
    assert up.first_action_s == pytest.approx(1.5) and up.first_action.startswith("slo-raise-quota: cgroup.cpu_quota 0.5")
    assert up.violated and up.recovery_s == 20.0  # w0, w1 broke it; w2 holds (w4's violation is later)
    assert down.direction == "down" and down.first_action_s == pytest.approx(5.0)
    assert not down.violated and down.recovery_s == 0.0
    # a row without an agent: no action figure, recovery still measured
    up, _ = reactions(ws, s, transient_s=20, actions=[], t0_wall=None)
    assert up.first_action_s is None and up.first_action == "" and up.recovery_s == 20.0


def test_breaches_and_the_time_to_the_first_corrective_change():
    """One request a second; those that arrive at 70-84 s wait 2 s for their first token (SLO
    1 s): from 71 s every trailing 10-s window holds one, until 95 s. A failed request at 120 s
    (no token: an infinite TTFT) breaks it again from 121 s to 131 s, with no answer."""
    s = parse_phases("low:0.1:60,high:0.3:60,low2:0.1:30")

    def rec(i: int) -> RequestRecord:
        if i == 120:
            return RequestRecord(index=i, phase=s.phase_at(i), arrival_s=i, outcome="error")
        ttft = 2.0 if 70 <= i < 85 else 0.1
        return RequestRecord(index=i, phase=s.phase_at(i), arrival_s=i, token_s=[i + ttft, i + ttft + 0.05],
                             finished_s=i + ttft + 0.05, outcome="ok")

    records = [rec(i) for i in range(150)]
    t0 = 1000.0
    acts = [Action(ts=t0 + 50, rule="early", knob="k"),  # 21 s before: not this breach's answer
            Action(ts=t0 + 72, rule="slo-give-back-weight", knob="cgroup.cpu_weight", guarded=True),  # a take
            Action(ts=t0 + 73.5, rule="slo-raise-quota", knob="cgroup.cpu_quota", prior="0.5", proposed="1")]
    first, second = breaches(records, s, window_s=10, slo=SLO, actions=acts, t0_wall=t0)
    assert (first.start_s, first.end_s, first.phase_index) == (71.0, 95.0, 1)
    assert first.fix_s == pytest.approx(2.5) and first.fix.startswith("slo-raise-quota: cgroup.cpu_quota 0.5 -> 1")
    assert (second.start_s, second.end_s, second.phase_index, second.fix_s) == (121.0, 131.0, 2, None)
    # the agent saw it rise and acted 3 s before the trailing window showed it: a negative figure
    (early, _) = breaches(records, s, window_s=10, slo=SLO, t0_wall=t0,
                          actions=[Action(ts=t0 + 68, rule="slo-raise-weight", knob="cgroup.cpu_weight")])
    assert early.fix_s == pytest.approx(-3.0)
    # no agent: the breaches are there, no fix figure
    assert [b.fix_s for b in breaches(records, s, window_s=10, slo=SLO, actions=acts, t0_wall=None)] == [None, None]
    # a breach still on at the end lasts to the schedule's end
    slow_end = records[:140] + [RequestRecord(index=i, phase=2, arrival_s=i, token_s=[i + 2.0], outcome="ok")
                                for i in range(140, 150)]
    last = breaches(slow_end, s, window_s=10, slo=SLO, actions=[], t0_wall=None)[-1]
    assert (last.start_s, last.end_s) == (141.0, 150.0)


def test_reaction_never_recovered_and_late_violations():
    s = parse_phases("a:0.1:30,b:0.3:30")
    (r,) = reactions(phased([[0, 0, 0], [1, 1, 1]]), s, transient_s=20, actions=[], t0_wall=0.0)
    assert r.violated and r.recovery_s is None and r.first_action_s is None
    # a violation only after the transient is not the step's: it never broke at the step
    (r,) = reactions(phased([[0, 0, 0], [0, 0, 1]]), s, transient_s=20, actions=[], t0_wall=0.0)
    assert not r.violated and r.recovery_s == 0.0
    # windows without data inside the violating run are passed over
    ws = phased([[0, 0, 0], [1, 0, 0]], has_data=[[True] * 3, [True, False, True]])
    (r,) = reactions(ws, s, transient_s=20, actions=[], t0_wall=0.0)
    assert r.recovery_s == 20.0
    s2 = parse_phases("a:c=8:30,b:c=1:30,c:0.5:30")
    r1, r2 = reactions(phased([[0] * 3] * 3), s2, transient_s=10, actions=[], t0_wall=None)
    assert (r1.direction, r2.direction) == ("down", "change")


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


def check(violating):
    """A live re-check that finds ``violating`` (a number, or a function of the point) of 6 windows."""
    def f(p):
        bad = violating(p) if callable(violating) else violating
        return LiveCheck(alloc=p.alloc, windows=6, violating=bad, neighbour_cores=0.8, holds=bad == 0)
    return f


def test_oracle_ranking_valid_first_then_least_violating():
    pts = [point(0.5, (100, 100), violating=2, windows=6, ops=90), point(1.0, (100, 100), ops=60),
           point(1.5, (400, 100), ops=70), point(None, (100, 100), violating=1, windows=6, ops=95)]
    ranked = rank_points(pts, floor_cores=0.5, lc_alone=1.0, be_alone_ops=100.0)
    assert [p.alloc.quota_cores for p in ranked] == [1.5, 1.0, None, 0.5]


def test_oracle_re_checked_live_takes_the_next_best_when_the_best_breaks():
    pts = [point(1.0, (100, 100), ops=60), point(1.5, (400, 100), ops=70), point(None, (400, 100), ops=65)]
    tried = []

    def live(p):
        tried.append(p.alloc.quota_cores)
        bad = 2 if p.alloc.quota_cores == 1.5 else 0  # the grid's best breaks the SLO live
        return LiveCheck(alloc=p.alloc, windows=6, violating=bad, neighbour_cores=0.8, holds=bad == 0)

    c = settle_oracle(pts, live, tries=3, floor_cores=0.5, lc_alone=1.0, be_alone_ops=100.0)
    assert tried == [1.5, None] and c.alloc.quota_cores is None and c.holds_live
    assert "candidate 2 of 3" in c.reason and "held live: 0/6" in c.reason
    assert [x.violating for x in c.checks] == [2, 0] and c.valid
    # the best holds: one check
    c = settle_oracle(pts, check(0), tries=3, floor_cores=0.5, lc_alone=1.0, be_alone_ops=100.0)
    assert c.alloc.quota_cores == 1.5 and len(c.checks) == 1 and c.holds_live


def test_oracle_says_when_no_grid_point_holds_live():
    pts = [point(1.0, (100, 100), ops=60), point(1.5, (400, 100), ops=70), point(None, (400, 100), ops=65)]
    bad = {1.5: 3, None: 1, 1.0: 2}
    c = settle_oracle(pts, check(lambda p: bad[p.alloc.quota_cores]), tries=2, floor_cores=0.5, lc_alone=1.0,
                      be_alone_ops=100.0)
    assert c.holds_live is False and len(c.checks) == 2  # only ``tries`` candidates re-checked
    assert c.alloc.quota_cores is None  # the least violating of those checked stands in
    assert "no grid point held the SLO live at this load" in c.reason and "(1/6 windows)" in c.reason
    # no valid point on the grid either: both reasons
    pts = [point(1.0, (100, 100), violating=1, ops=60)]
    c = settle_oracle(pts, check(1), tries=3, floor_cores=0.5, lc_alone=1.0, be_alone_ops=100.0)
    assert c.holds_live is False and "on the grid: no valid point" in c.reason
    assert settle_oracle([], check(0), tries=3, floor_cores=0.5, lc_alone=1.0, be_alone_ops=100.0) is None


def test_cache_key_covers_what_matters_and_ignores_order():
    base = {"kind": "oracle-point", "model": "gpt2", "load": "0.4/s", "alloc": {"quota_cores": 1.0},
            "measure_s": 30, "slo": {"ttft_p95_s": 4.0, "itl_p95_s": 0.15}, "scenario": "cpu"}
    same = dict(reversed(list(base.items())))
    assert cache_key(base) == cache_key(same)
    for k, v in [("model", "tiny"), ("load", "0.3/s"), ("alloc", {"quota_cores": 1.5}), ("measure_s", 20),
                 ("slo", {"ttft_p95_s": 3.0, "itl_p95_s": 0.15}), ("scenario", "cpu+mem")]:
        assert cache_key({**base, k: v}) != cache_key(base), k
