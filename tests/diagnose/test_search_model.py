"""The learned allocation search (diagnose/search/model.py): score, candidates, safe exploration that
reaches the best allocation of a known surface, and load phases."""

from __future__ import annotations

import random

import pytest

from autotune.diagnose.search import model as L

NCPU = 2


def surface(a: L.Allocation, load: float) -> tuple[float, float]:
    """A 2-CPU node with CPU-burning neighbours: (slack, neighbours' share of the host).

    The server needs ``demand`` cores; it gets the least of its quota, its demand and its weight
    share; per-token latency grows as demand / got (0.7 of the target when it gets all it needs)."""
    demand = 0.4 + 0.8 * load
    cap = NCPU if a.quota_cores is None else a.quota_cores
    got = min(cap, demand, NCPU * a.ratio / (1 + a.ratio))
    ratio = 0.7 * demand / max(got, 1e-3)
    return 1.0 - ratio, (NCPU - got) / NCPU


def best_feasible(cands, load) -> float:
    return max(L.score(*surface(a, load)) for a in cands if surface(a, load)[0] >= 0)


IN_PLACE = L.Allocation(quota_cores=0.5, ratio=1.0)  # the static half-core quota, equal weights


def run_search(load: float, *, budget: int = 30, seed: int = 0, noise: float = 0.02, prior=()):
    """The search as the agent runs it: the first trial is the allocation in place, measured;
    then each proposal is tried and measured."""
    rng = random.Random(seed)
    cands = L.candidates(NCPU, quota_min=0.5, neighbour_floor=0.5)
    trials: list[L.Trial] = []
    p = None
    for i in range(budget):
        p = L.propose([*prior, *trials], cands, load=load, ncpu=NCPU, phase_trials=trials)
        if p.status == "converged":
            break
        if p.allocation is None:  # waiting: nothing tried yet, so it measures what is in place
            assert p.status == "waiting" and not trials
        slack, be = surface(p.allocation or IN_PLACE, load)
        slack += rng.gauss(0, noise)
        trials.append(L.Trial(ts=100.0 + i, service="llm", allocation=p.allocation or IN_PLACE, ncpu=NCPU,
                              load=load, slack=slack, be_share=be, score=L.score(slack, be)))
    return p, trials, cands


def test_score_is_cliteish():
    assert L.score(-1.0, 0.9) == 0.25  # twice its target: 0.5 / 2, whatever the neighbours do
    assert L.score(-0.01, 1.0) < 0.5 <= L.score(0.0, 0.0)
    assert L.score(0.3, 0.6) == pytest.approx(0.8)


def test_candidates_keep_the_neighbours_floor():
    cands = L.candidates(NCPU, quota_min=0.5, neighbour_floor=0.5)
    assert L.Allocation(quota_cores=1.5, ratio=64.0) in cands  # the quota leaves 0.5 core
    assert L.Allocation(quota_cores=None, ratio=1.0) in cands  # half the host by weight
    assert L.Allocation(quota_cores=None, ratio=4.0) not in cands  # 0.4 core under contention
    assert L.Allocation(quota_cores=1.75, ratio=4.0) not in cands
    assert min(a.quota_cores for a in cands if a.quota_cores is not None) == 0.5


def test_no_trial_no_proposal():
    """No move from configuration alone: the allocation in place is measured first (the live
    run's only two changes were 'no trial yet: start from the generous extreme')."""
    cands = L.candidates(NCPU, quota_min=0.5, neighbour_floor=0.5)
    p = L.propose([], cands, load=0.3, ncpu=NCPU, phase_trials=[])
    assert p.status == "waiting" and p.allocation is None and "allocation in place" in p.reason
    # another node's trials are a prior, not a measurement of this one: still nothing
    imported = [_trial(L.Allocation(quota_cores=1.0, ratio=4.0), 0.3).model_copy(update={"source": "imported"})]
    p = L.propose(imported, cands, load=0.3, ncpu=NCPU, phase_trials=[])
    assert p.status == "waiting" and p.allocation is None
    # one measured trial of what is in place: the search has something to say
    broke = _trial(IN_PLACE, -0.6)
    p = L.propose([broke], cands, load=0.3, ncpu=NCPU, phase_trials=[broke])
    assert p.status == "exploring" and p.allocation is not None
    assert L.server_cores(p.allocation, NCPU) > L.server_cores(IN_PLACE, NCPU)


@pytest.mark.parametrize("load", [0.1, 0.4, 0.8])
def test_search_reaches_95pct_of_the_best_safe_allocation_within_30_trials(load):
    p, trials, cands = run_search(load)
    best = best_feasible(cands, load)
    chosen = p.allocation
    slack, be = surface(chosen, load)
    assert slack >= 0, f"converged on an allocation that misses the SLO: {chosen}"
    assert L.score(slack, be) >= 0.95 * best, (chosen, p.reason)
    assert len(trials) <= 30
    # exploration is constrained: few of the trials it chose break the SLO on the way (the first
    # is the allocation that was in place)
    assert trials[0].allocation == IN_PLACE
    assert sum(surface(t.allocation, load)[0] < 0 for t in trials[1:]) <= 3


def test_a_search_that_knows_nothing_safe_goes_back_to_the_generous_extreme():
    cands = L.candidates(NCPU, quota_min=0.5, neighbour_floor=0.5)
    bad = [L.Trial(ts=float(i), service="llm", allocation=a, ncpu=NCPU, load=0.5, slack=-1.0, be_share=0.5,
                   score=L.score(-1.0, 0.5)) for i, a in enumerate(cands[:6])]
    p = L.propose(bad, cands, load=0.5, ncpu=NCPU, phase_trials=bad)
    assert p.allocation == L.Allocation(quota_cores=1.5, ratio=64.0)  # 1.5 cores, sure
    assert p.give_only  # toward it only by giving: the grid's extreme may give less than what is in place


def test_imported_trials_are_a_prior():
    """A node that imports another's trials explores less to reach the same allocation (at a load
    the half-core in place clearly cannot serve: at 0.4/s it sits on its SLO, and the noise of
    one trial decides the run)."""
    _, cold, _ = run_search(0.6, seed=1)
    prior = [t.model_copy(update={"source": "imported"}) for t in cold]
    p, trials, cands = run_search(0.6, seed=1, prior=prior)
    assert len(trials) < len(cold)
    assert L.score(*surface(p.allocation, 0.6)) >= 0.95 * best_feasible(cands, 0.6)


def test_phases_follow_a_sustained_load_change_only():
    ph = L.Phases()
    assert ph.update(0.2, 0.0, change=0.35) is True  # the first load starts a phase
    assert ph.update(0.24, 5.0, change=0.35) is False  # within 35 %
    assert ph.update(0.5, 10.0, change=0.35) is False  # away, not for long yet
    assert ph.update(0.2, 12.0, change=0.35) is False  # a blip: back
    assert ph.update(0.5, 20.0, change=0.35) is False
    assert ph.update(0.5, 36.0, change=0.35) is True  # away for 16 s: a new phase
    # dated from when the load moved: a trial whose window began before saw the old load
    assert ph.ref_load == 0.5 and ph.started_ts == 20.0
    seen = L.Trial(ts=30.0, start_ts=15.0, service="llm", allocation=L.Allocation(quota_cores=1.0, ratio=1.0),
                   ncpu=NCPU, load=0.35, slack=0.3, be_share=0.4, score=0.7)
    assert not ph.covers(seen) and ph.covers(seen.model_copy(update={"start_ts": 21.0}))
    assert ph.covers(seen.model_copy(update={"start_ts": None}))  # kept before start_ts: its ts


def _pred(a: L.Allocation, p_safe: float) -> L.Prediction:
    return L.Prediction(allocation=a, score=0.7, score_sd=0.1, slack=0.0, slack_sd=0.1, p_safe=p_safe)


def _trial(a: L.Allocation, slack: float) -> L.Trial:
    return L.Trial(ts=0.0, service="llm", allocation=a, ncpu=NCPU, load=0.3, slack=slack, be_share=0.3,
                   score=L.score(slack, 0.3))


def test_a_weight_move_with_as_many_sure_cores_still_needs_the_model():
    """Live run 2026-12-02: 'at least the sure cores of a known-safe trial' admitted moving the
    neighbours' weight 100 -> 400 at P(SLO kept) 55 %, and it broke the SLO. Sure cores reached by
    trading quota for weight are not known safe: only dominance on both axes is."""
    settings = L.Settings(safe_prob=0.8)
    kept = _trial(L.Allocation(quota_cores=1.0, ratio=64.0), 0.2)  # 0.97 cores sure
    shifted = L.Allocation(quota_cores=None, ratio=1.0)  # 1.0 core sure, weights equal
    assert L.server_cores(shifted, NCPU) >= L.server_cores(kept.allocation, NCPU)
    assert not L._allowed(_pred(shifted, 0.55), [kept], NCPU, settings)
    assert L._allowed(_pred(shifted, 0.9), [kept], NCPU, settings)
    # more quota at the same weights is known safe whatever the model says
    assert L._allowed(_pred(L.Allocation(quota_cores=1.25, ratio=64.0), 0.1), [kept], NCPU, settings)


def test_less_on_both_axes_than_a_violation_is_out_whatever_the_model_says():
    settings = L.Settings(safe_prob=0.5)
    broke = _trial(L.Allocation(quota_cores=1.0, ratio=4.0), -0.3)
    assert not L._allowed(_pred(L.Allocation(quota_cores=0.75, ratio=4.0), 0.99), [broke], NCPU, settings)
    assert not L._allowed(_pred(L.Allocation(quota_cores=1.0, ratio=1.0), 0.99), [broke], NCPU, settings)
    # more weight with less quota than the cores the broken one was sure of: never more CPU
    # (live run 2026-12-02: quota 0.75 broke at weights 4:1, then 0.75 at 50:1 was tried and broke)
    assert not L._allowed(_pred(L.Allocation(quota_cores=0.75, ratio=64.0), 0.99), [broke], NCPU, settings)
    # more quota with less weight is a different point: the model may admit it
    assert L._allowed(_pred(L.Allocation(quota_cores=1.25, ratio=1.0), 0.99), [broke], NCPU, settings)
    assert not L._allowed(_pred(L.Allocation(quota_cores=1.25, ratio=1.0), 0.3), [broke], NCPU, settings)


def test_a_violation_at_less_load_rules_out_less_for_the_service_in_a_later_phase():
    """Latency only grows with load: what broke the SLO at 0.2/s breaks it at 0.4/s, with no trial
    of this phase to say so yet; at 0.1/s it is the model's call again."""
    settings = L.Settings(safe_prob=0.5)
    broke = _trial(L.Allocation(quota_cores=1.0, ratio=4.0), -0.3).model_copy(update={"load": 0.2})
    a = _pred(L.Allocation(quota_cores=0.75, ratio=4.0), 0.99)
    assert not L._allowed(a, [], NCPU, settings, L.broken_at([broke], 0.4, 0.35))
    assert not L._allowed(a, [], NCPU, settings, L.broken_at([broke], 0.19, 0.35))  # about the same
    assert L._allowed(a, [], NCPU, settings, L.broken_at([broke], 0.1, 0.35))


def test_a_load_seen_before_starts_its_phase_where_it_did_best():
    cands = L.candidates(NCPU, quota_min=0.5, neighbour_floor=0.5)
    stingy, mid = L.Allocation(quota_cores=0.75, ratio=1.0), L.Allocation(quota_cores=1.0, ratio=4.0)
    earlier = [_trial(stingy, 0.3).model_copy(update={"load": 0.1, "score": L.score(0.3, 0.6)}),
               _trial(mid, 0.05).model_copy(update={"load": 0.1, "score": L.score(0.05, 0.7)}),  # no margin
               _trial(L.Allocation(quota_cores=0.5, ratio=1.0), 0.4).model_copy(update={"load": 0.4}),
               ]
    p = L.propose(earlier, cands, load=0.11, ncpu=NCPU, phase_trials=[])
    assert p.allocation == stingy and "seen at about this load" in p.reason
    # nothing seen near 0.8/s: the allocation in place is measured first, as on a fresh node
    p = L.propose(earlier, cands, load=0.8, ncpu=NCPU, phase_trials=[])
    assert p.allocation is None and p.status == "waiting"
    # what broke the SLO at as much load since is not where a phase starts
    later = _trial(stingy, -0.2).model_copy(update={"load": 0.12})
    p = L.propose([*earlier, later], cands, load=0.11, ncpu=NCPU, phase_trials=[])
    assert p.allocation is None and p.status == "waiting"


def test_fitter_reoptimises_hyperparameters_only_when_the_data_grew_or_the_phase_changed():
    _, trials, cands = run_search(0.3, budget=30, seed=1)
    rng = random.Random(3)
    more = list(trials)
    while len(more) < 40:  # extra observations of random allocations
        a = rng.choice(cands)
        slack, be = surface(a, 0.3)
        more.append(L.Trial(ts=float(len(more)), service="llm", allocation=a, ncpu=NCPU, load=0.3,
                            slack=slack, be_share=be, score=L.score(slack, be)))
    f = L.Fitter(warm=12, regrow=0.25)
    for n in range(13, 41):
        m = f.fit(more[:n])
    # optimised at 13, then when the count reached 17, 22, 28, 35: never on each new trial;
    # the full multi-start search at 13 and 28 (twice 13), one local search from the last
    # hyperparameters otherwise
    assert f.fits == 28 and f.optimisations == 5, (f.fits, f.optimisations)
    assert f.full_searches == 2
    # a reused-kernel fit still learns the newest trial: it predicts that point's slack
    newest = more[39]
    (p,) = m.predict([newest.allocation], 0.3, NCPU)
    assert abs(p.slack - newest.slack) < 0.1
    f.reset()
    f.fit(more)
    assert f.optimisations == 6 and f.full_searches == 2


def test_a_converged_search_holds_the_least_generous_of_the_allocations_that_did_about_as_well():
    """Live run 2026-12-02: at 0.1 req/s the score is flat (the service idles whatever it is
    given) and the model's best was the generous extreme; holding it cost the neighbour."""
    gen, mid, lean = (L.Allocation(quota_cores=1.5, ratio=64.0), L.Allocation(quota_cores=1.0, ratio=4.0),
                      L.Allocation(quota_cores=0.75, ratio=1.0))
    preds = [L.Prediction(allocation=a, score=sc, score_sd=0.01, slack=0.3, slack_sd=0.1, p_safe=0.99)
             for a, sc in ((gen, 0.905), (mid, 0.9), (lean, 0.898))]
    tried = [_trial(a, 0.3) for a in (gen, mid, lean)]
    assert L._hold(preds, tried, NCPU, band=0.01).allocation == lean
    # a lean one that broke the SLO in this phase is not held, however well it is predicted
    assert L._hold(preds, [*tried, _trial(lean, -0.1)], NCPU, band=0.01).allocation == mid
    # out of the band, the better score wins
    assert L._hold(preds, tried, NCPU, band=0.004).allocation == gen
    # nothing tried yet: among everything predicted safe
    assert L._hold(preds, [], NCPU, band=0.01).allocation == lean


def test_a_rising_load_is_no_time_to_take_from_the_service():
    ph = L.Phases()
    ph.update(0.2, 0.0, change=0.35)
    assert not ph.rising()
    ph.update(0.4, 5.0, change=0.35)
    assert ph.rising()  # away and above: until the new phase settles
    ph.update(0.4, 21.0, change=0.35)
    assert not ph.rising()  # the new phase began
    ph.update(0.1, 30.0, change=0.35)
    assert not ph.rising()  # a falling load: giving back is what it calls for
