"""The learned part of diagnosis: a safe search over the allocation the rules allow (CLITE).

Rules know *which* knobs may help a latency-critical service and in which bounds; they cannot
know where, between "the service has everything" and "the neighbours have everything", this
node's best allocation lies for the load it has now. This module learns it from the node's own
trials, as CLITE (Patel & Tiwari, HPCA 2020) does, with the agent's safety net around it:

- An allocation is the server's cpu quota and the cpu-weight ratio server : neighbours (the
  knobs rules/slo.yaml steps), from a candidate grid the rules' bounds and the neighbours'
  ``min_cpu_cores`` floors allow (``candidates``).
- Every observed window becomes a ``Trial``: allocation, load (requests/s), SLO slack and the
  neighbours' share of the host's CPUs. Its score is CLITE's: ``0.5 / ratio`` (at most 0.5)
  while the service misses its SLO, ``0.5 + 0.5 x neighbour share`` once it meets it.
- Two Gaussian processes (diagnose/search/gp.py: Matern 5/2 + noise, in numpy) over (quota share,
  log weight ratio, load) predict the score and the slack of every candidate.
- ``propose`` picks the next allocation by expected improvement, among candidates predicted to
  keep the SLO (P(slack >= 0) >= ``safe_prob``) or that give the service at least what a
  known-safe allocation gave it on both axes (quota and weight): exploration is constrained,
  not only scored. It proposes nothing before it has measured the allocation in place: no move
  without evidence, so a phase's first trial is whatever the service runs under (CLITE starts
  from the equal split and the extremes; here the node's own allocation is the first point), or,
  at a load seen before, it starts from the best allocation kept there. When the model finds no
  allocation safe it goes back to the generous extreme. It stops exploring when the best
  expected improvement is under
  ``stop_ei`` of the best score or after ``max_trials`` in the phase, then holds the least
  generous allocation that kept the SLO within that share of the best; and starts again when
  the load moves (``Phases``: a phase counts only trials observed wholly inside it, and while
  the load climbs nothing is taken from the service).
- Each proposal is applied as ordinary journaled changes, guarded like a give-back (undone at
  once when the SLO breaks); the rules' upsizes stay the safety net and decide alone while the
  search has nothing to say.

Pure: no clock, no host. diagnose/search/gp.py is imported by ``Model`` only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RATIOS = (0.25, 1.0, 4.0, 16.0, 64.0)  # server : neighbours cpu weight
QUOTA_STEP = 0.25  # cores between candidate quotas
RATIO_SCALE = math.log2(64.0)


class Allocation(BaseModel):
    """The server's cpu quota (cores; None = unlimited) and its cpu weight : the neighbours'."""

    model_config = ConfigDict(frozen=True)

    quota_cores: float | None
    ratio: float = Field(gt=0)

    def label(self) -> str:
        q = "max" if self.quota_cores is None else f"{self.quota_cores:g}"
        return f"quota {q}, weights {self.ratio:g}:1" if self.ratio >= 1 else f"quota {q}, weights 1:{1 / self.ratio:g}"


class Trial(BaseModel):
    """One observed window under one allocation."""

    model_config = ConfigDict(frozen=True)

    ts: float
    service: str
    allocation: Allocation
    start_ts: float | None = None  # where its window began (None: trials recorded before it was kept)
    ncpu: int
    load: float  # requests/s completed in the window (tokens/s where the server counts no requests)
    slack: float  # SLO slack over the window (detect/metrics slo.slack)
    be_share: float  # neighbours' cores / host CPUs
    score: float
    source: Literal["observed", "imported"] = "observed"


def score(slack: float, be_share: float) -> float:
    """CLITE's score: at most 0.5 while the SLO is missed (0.5 / binding ratio), 0.5 + 0.5 x the
    neighbours' share of the host once it is met."""
    if slack < 0:
        return 0.5 / (1.0 - slack)
    return 0.5 + 0.5 * max(0.0, min(1.0, be_share))


def features(a: Allocation, load: float, ncpu: int) -> list[float]:
    """(quota as a share of the host, log weight ratio scaled to about [-1, 1], log load)."""
    q = ncpu if a.quota_cores is None else min(a.quota_cores, ncpu)
    return [q / max(1, ncpu), math.log2(a.ratio) / RATIO_SCALE, math.log1p(max(0.0, load))]


def candidates(ncpu: int, *, quota_min: float, neighbour_floor: float = 0.0,
               ratios: Sequence[float] = RATIOS) -> list[Allocation]:
    """The grid the search may try: quotas from ``quota_min`` to the host in QUOTA_STEP, plus
    unlimited, times the weight ratios, keeping every point where the neighbours are still
    guaranteed ``neighbour_floor`` cores under full contention (the larger of what the quota
    leaves and their weight share; diagnose/floor.py checks each change again before it is made)."""
    quotas: list[float | None] = []
    q = max(QUOTA_STEP, math.ceil(quota_min / QUOTA_STEP) * QUOTA_STEP)
    while q < ncpu - 1e-9:
        quotas.append(round(q, 4))
        q += QUOTA_STEP
    quotas.append(None)
    out = []
    for q in quotas:
        for r in ratios:
            left = ncpu - q if q is not None else 0.0
            share = ncpu / (1.0 + r)
            if max(left, share) + 1e-9 >= neighbour_floor:
                out.append(Allocation(quota_cores=q, ratio=r))
    return out


class Prediction(BaseModel):
    model_config = ConfigDict(frozen=True)

    allocation: Allocation
    score: float
    score_sd: float
    slack: float
    slack_sd: float
    p_safe: float
    ei: float = 0.0


class Model:
    """Two Gaussian processes over the trials: score and slack (diagnose/search/gp.py).

    ``kernels`` (name -> a fitted ``gp.Kernel``, as ``self.kernels`` holds after a fit): reuse
    those hyperparameters instead of optimising them (a fit is then one Cholesky factorisation).
    ``start`` (the same form): optimise from those hyperparameters only, one local search,
    instead of the multi-start search (the initial kernel, a seeded random start and the best
    points of a grid); see ``Fitter``."""

    def __init__(self, trials: Sequence[Trial], *, imported_noise: float = 4.0,
                 kernels: dict | None = None, start: dict | None = None) -> None:
        from autotune.diagnose.search.gp import GP

        X = [features(t.allocation, t.load, t.ncpu) for t in trials]
        # imported trials (another node's) count, but as noisier evidence than our own
        alpha = [1e-4 * (imported_noise if t.source == "imported" else 1.0) for t in trials]
        self.gps: dict[str, GP] = {}
        self.kernels = {}
        for name, ys in (("score", [t.score for t in trials]), ("slack", [max(-3.0, t.slack) for t in trials])):
            warm = (start or {}).get(name)
            search = {} if warm is None else {"start": warm, "restarts": 0, "grid_starts": 1}
            gp = GP(X, ys, alpha, kernel=(kernels or {}).get(name), **search)
            self.gps[name] = gp
            self.kernels[name] = gp.kernel

    def predict(self, allocs: Sequence[Allocation], load: float, ncpu: int) -> list[Prediction]:
        X = [features(a, load, ncpu) for a in allocs]
        s_mu, s_sd = self.gps["score"].predict(X)
        k_mu, k_sd = self.gps["slack"].predict(X)
        out = []
        for a, sm, ss, km, ks in zip(allocs, s_mu, s_sd, k_mu, k_sd):
            p_safe = _phi(km / max(ks, 1e-6))
            out.append(Prediction(allocation=a, score=float(sm), score_sd=float(ss), slack=float(km),
                                  slack_sd=float(ks), p_safe=float(p_safe)))
        return out


class Fitter:
    """Fits ``Model``s for one service, optimising the kernel hyperparameters only while they
    can still move much: for the first ``warm`` trials, then each time the trial count grew by
    ``regrow`` (a share) since the last optimisation, or after ``reset`` (a new load phase). In
    between, new trials refit with the last hyperparameters. An optimisation is the full
    multi-start search when the trial count reached ``full_every`` times what the last full
    search saw (1, 2, 4, ... trials), otherwise one local search from the last hyperparameters:
    with the search active, hyperparameter optimisation was the agent's largest cost."""

    def __init__(self, *, warm: int = 12, regrow: float = 0.25, full_every: float = 2.0) -> None:
        self.warm, self.regrow, self.full_every = warm, regrow, full_every
        self.kernels: dict | None = None
        self.stale = True  # the next fit optimises
        self.optimised_at = 0
        self.full_at = 0
        self.optimisations = 0
        self.full_searches = 0
        self.fits = 0

    def reset(self) -> None:
        self.stale = True  # the last hyperparameters stay, as where the next search starts

    def fit(self, trials: Sequence[Trial]) -> Model:
        n = len(trials)
        reuse = (not self.stale and self.kernels is not None and n > self.warm
                 and n < self.optimised_at * (1.0 + self.regrow))
        self.fits += 1
        if reuse:
            return Model(trials, kernels=self.kernels)
        full = self.kernels is None or n >= self.full_at * self.full_every
        model = Model(trials, start=None if full else self.kernels)
        self.kernels, self.optimised_at, self.stale = model.kernels, n, False
        self.optimisations += 1
        if full:
            self.full_at = n
            self.full_searches += 1
        return model


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def expected_improvement(mu: float, sd: float, best: float, xi: float = 0.01) -> float:
    """EI of a maximisation: E[max(0, f - best - xi)] under N(mu, sd)."""
    if sd <= 1e-9:
        return max(0.0, mu - best - xi)
    z = (mu - best - xi) / sd
    return (mu - best - xi) * _phi(z) + sd * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


class Settings(BaseModel):
    """Search knobs (config [search])."""

    model_config = ConfigDict(frozen=True)

    safe_prob: float = 0.8  # P(slack >= 0) a candidate needs to be explored
    stop_ei: float = 0.01  # stop exploring when the best EI is under this share of the best score
    max_trials: int = 30  # per load phase
    phase_change: float = 0.35  # relative load change that starts a new phase


class Proposal(BaseModel):
    """What the search says now: an allocation to try or keep, or nothing, and why."""

    model_config = ConfigDict(frozen=True)

    allocation: Allocation | None
    # waiting: no trial of this load phase yet (the allocation in place is measured first)
    status: Literal["inactive", "waiting", "exploring", "converged"]
    reason: str
    prediction: Prediction | None = None
    trials_in_phase: int = 0
    # no allocation is predicted to keep the SLO: move only toward giving the service more. The
    # grid's generous extreme can give less than what is in place (the rules' weight steps are
    # not on the grid): on llama.cpp the search "went back to the generous extreme" by raising
    # the neighbour's weight 100 -> 291 and broke the SLO, three times a row (2026-12-07-coloc-llamacpp-pool)
    give_only: bool = False


def server_cap(a: Allocation, ncpu: int) -> float:
    """The most the service can get, whatever the neighbours do: its quota, or the host."""
    return float(ncpu) if a.quota_cores is None else min(a.quota_cores, float(ncpu))


def server_cores(a: Allocation, ncpu: int) -> float:
    """Cores the service is sure of when the neighbours want every CPU: the smaller of its quota
    and its weight share of the host."""
    return min(server_cap(a, ncpu), ncpu * a.ratio / (1.0 + a.ratio))


def at_most(a: Allocation, b: Allocation, ncpu: int) -> bool:
    """``a`` never gives the service more than ``b`` does: less on both axes, or a quota no
    larger than the cores ``b`` was sure of (then no neighbour can leave it more). Used only to
    rule allocations out after ``b`` broke the SLO; the converse does not vouch for one: the
    same cores by weight instead of by quota came with worse latency in the live runs (a busy
    neighbour still delays each wake-up), so only ``dominates`` does."""
    return dominates(b, a) or server_cap(a, ncpu) <= server_cores(b, ncpu) + 1e-9


def similar_load(t: Trial, load: float, change: float) -> bool:
    """``t`` was observed at about ``load``: within ``change`` of it (relative; 0.05/s at least)."""
    return abs(t.load - load) <= change * max(load, 0.05)


def broken_at(trials: Sequence[Trial], load: float, change: float) -> list[Trial]:
    """Observed trials that broke the SLO at about this load or a lower one: an allocation that
    broke it under less load breaks it under this one too (latency only grows with load);
    known before the phase's own trials say so."""
    return [t for t in trials if t.source == "observed" and t.slack < 0
            and t.load <= load + change * max(load, 0.05)]


WARM_MARGIN = 0.1  # slack a trial at a similar load needs to be where a new phase starts


def best_known(trials: Sequence[Trial], cands: Sequence[Allocation], *, load: float, ncpu: int,
               change: float) -> Trial | None:
    """The best-scoring allocation seen keeping the SLO with margin at about this load, in an
    earlier phase: where a phase whose load came back starts, instead of the generous extreme."""
    broken = broken_at(trials, load, change)
    ok = [t for t in trials if t.source == "observed" and t.slack >= WARM_MARGIN and t.allocation in cands
          and similar_load(t, load, change) and not any(at_most(t.allocation, b.allocation, ncpu) for b in broken)]
    return max(ok, key=lambda t: (t.score, server_cores(t.allocation, ncpu)), default=None)


def propose(trials: Sequence[Trial], cands: Sequence[Allocation], *, load: float, ncpu: int,
            phase_trials: Sequence[Trial], settings: Settings = Settings(),
            model: Model | None = None, fitter: Fitter | None = None) -> Proposal:
    """The next allocation for a service at ``load``. ``trials``: everything known (all loads,
    imported too); ``phase_trials``: those observed since the load phase began."""
    if not cands:
        return Proposal(allocation=None, status="inactive", reason="no candidate allocation keeps the floors")
    tried = {t.allocation for t in phase_trials}
    n = len(phase_trials)
    generous = max(cands, key=lambda a: (server_cores(a, ncpu), a.ratio,
                                         math.inf if a.quota_cores is None else a.quota_cores))
    if not trials:  # no move from configuration alone: the allocation in place is measured first
        return Proposal(allocation=None, status="waiting", trials_in_phase=n,
                        reason="no trial yet: measuring the allocation in place first")
    if n == 0:
        known = best_known(trials, cands, load=load, ncpu=ncpu, change=settings.phase_change)
        if known is not None:
            return Proposal(allocation=known.allocation, status="exploring", trials_in_phase=n,
                            reason=f"new load phase: the best allocation seen at about this load "
                            f"({known.load:.2f}/s: slack {known.slack:+.2f}, score {known.score:.3f})")
        return Proposal(allocation=None, status="waiting", trials_in_phase=n,
                        reason=f"new load phase ({load:.2f}/s): measuring the allocation in place first")
    model = model or (fitter.fit(trials) if fitter is not None else Model(trials))
    preds = model.predict(cands, load, ncpu)
    broken = broken_at(trials, load, settings.phase_change)
    safe = [p for p in preds if _allowed(p, phase_trials, ncpu, settings, broken)]
    if not safe:
        return Proposal(allocation=generous, status="exploring", trials_in_phase=n, give_only=True,
                        reason="no allocation is predicted to keep the SLO: back to the generous extreme")
    top_pred = max(safe, key=lambda p: (p.score, -abs(p.slack)))
    best_pred = _hold(safe, phase_trials, ncpu, band=settings.stop_ei * max(top_pred.score, 1e-6))
    frontier = _next_step_down(safe, phase_trials, ncpu, settings)
    if frontier is not None and n < settings.max_trials:
        return Proposal(allocation=frontier.allocation, status="exploring", prediction=frontier,
                        trials_in_phase=n, reason=f"one step below the allocations known to keep the SLO "
                        f"({server_cores(frontier.allocation, ncpu):.2f} cores sure for the service), "
                        f"predicted slack {frontier.slack:+.2f}, P(SLO kept) {frontier.p_safe:.0%}")
    observed = [t.score for t in phase_trials]
    best = max(observed) if observed else top_pred.score
    scored = [p.model_copy(update={"ei": expected_improvement(p.score, p.score_sd, best)}) for p in safe]
    top = max(scored, key=lambda p: p.ei)
    if n >= settings.max_trials:
        return Proposal(allocation=best_pred.allocation, status="converged", prediction=best_pred,
                        trials_in_phase=n, reason=f"{n} trials in this load phase: holding the best "
                        f"kept ({best_pred.allocation.label()}, predicted score {best_pred.score:.3f})")
    if top.ei < settings.stop_ei * max(best, 1e-6):
        return Proposal(allocation=best_pred.allocation, status="converged", prediction=best_pred,
                        trials_in_phase=n, reason=f"best expected improvement {top.ei:.4f} is under "
                        f"{settings.stop_ei:.0%} of the best score {best:.3f}: holding "
                        f"{best_pred.allocation.label()}")
    if top.allocation in tried and top.ei < 2 * settings.stop_ei * max(best, 1e-6):
        return Proposal(allocation=best_pred.allocation, status="converged", prediction=best_pred,
                        trials_in_phase=n, reason="the most promising allocation was tried already: holding "
                        f"{best_pred.allocation.label()}")
    return Proposal(allocation=top.allocation, status="exploring", prediction=top, trials_in_phase=n,
                    reason=f"expected improvement {top.ei:.4f} over the best score {best:.3f}, "
                    f"P(SLO kept) {top.p_safe:.0%}")


def _hold(safe: Sequence[Prediction], phase_trials: Sequence[Trial], ncpu: int, *, band: float) -> Prediction:
    """What a converged search holds: among the allocations this phase tried and saw keep the
    SLO (none yet: every safe one), those predicted within ``band`` of the best score, the one
    that gives the service least. Where the service is idle the score is flat and the model's
    best is noise: the live run held the generous extreme there."""
    kept = {t.allocation for t in phase_trials if t.slack >= 0} - {t.allocation for t in phase_trials if t.slack < 0}
    pool = [p for p in safe if p.allocation in kept] or list(safe)
    top = max(p.score for p in pool)
    near = [p for p in pool if p.score >= top - band]
    return min(near, key=lambda p: (server_cores(p.allocation, ncpu), server_cap(p.allocation, ncpu), -p.score))


def dominates(a: Allocation, b: Allocation) -> bool:
    """``a`` gives the service at least what ``b`` does on both axes: quota (None = unlimited)
    and weight ratio. Only then is "at least as safe" known without the model: the same sure
    cores reached by trading quota for weight are not worth the same under contention."""
    qa = math.inf if a.quota_cores is None else a.quota_cores
    qb = math.inf if b.quota_cores is None else b.quota_cores
    return qa >= qb - 1e-9 and a.ratio >= b.ratio * (1 - 1e-9)


def _allowed(p: Prediction, phase_trials: Sequence[Trial], ncpu: int, settings: Settings,
             broken: Sequence[Trial] = ()) -> bool:
    """The safe set, expanded from what has been seen (SafeOpt's idea): an allocation that never
    gives the service more than one that broke the SLO (in this phase, or at as much load
    before) is out; one that gives it at least what one that kept the SLO in this phase gave
    (on both axes) is in; any other needs the model's P(SLO kept) >= ``safe_prob`` and at most one
    QUOTA_STEP of sure cores below the known-safe frontier. Without a known-safe trial yet, the
    model alone decides."""
    a = p.allocation
    if any(at_most(a, t.allocation, ncpu) for t in [*phase_trials, *broken] if t.slack < 0):
        return False
    good = [t for t in phase_trials if t.slack >= 0]
    if any(dominates(a, t.allocation) for t in good):
        return True
    reach = (min(server_cores(t.allocation, ncpu) for t in good) - QUOTA_STEP - 1e-9) if good else -math.inf
    return p.p_safe >= settings.safe_prob and server_cores(a, ncpu) >= reach


FRONTIER_MARGIN = 0.1  # predicted slack a step down needs before it is tried without EI


def _next_step_down(safe: Sequence[Prediction], phase_trials: Sequence[Trial], ncpu: int,
                    settings: Settings) -> Prediction | None:
    """Giving the service less leaves more for the neighbours (the score's monotone side): while
    the model predicts the SLO kept with margin one step below every allocation that kept it,
    that step is worth a trial whatever its expected improvement (the score model, flat
    across allocations the service does not use, cannot see that gain). Its largest sure
    share among those steps, then the best predicted score."""
    good = [server_cores(t.allocation, ncpu) for t in phase_trials if t.slack >= 0]
    if not good:
        return None
    floor = min(good)
    below = [p for p in safe if server_cores(p.allocation, ncpu) < floor - 1e-9
             and p.p_safe >= settings.safe_prob and p.slack >= FRONTIER_MARGIN]
    if not below:
        return None
    return max(below, key=lambda p: (server_cores(p.allocation, ncpu), p.score))


PHASE_HOLD_S = 15.0  # a load this long away from the phase's reference starts a new phase


class Phases(BaseModel):
    """Where the current load phase began: a load that stays ``change`` (relative) away from the
    phase's reference for ``hold_s`` starts a new phase, and the search explores again."""

    ref_load: float | None = None
    started_ts: float = 0.0
    away_since: float | None = None
    last_load: float | None = None

    def rising(self) -> bool:
        """The load has moved above the phase's reference and not settled yet: no time to take
        from the service (the live run stepped down into a rising load and broke the SLO)."""
        return self.away_since is not None and (self.last_load or 0.0) > (self.ref_load or 0.0)

    def update(self, load: float, now: float, *, change: float, hold_s: float = PHASE_HOLD_S) -> bool:
        """Feed the current load; True when a new phase begins. The phase is dated from when
        the load moved, not from when that was confirmed: a trial whose window began before
        then saw the old load, and must not vouch for the new one."""
        self.last_load = load
        if self.ref_load is None:
            self.ref_load, self.started_ts = load, now
            return True
        base = max(self.ref_load, 0.05)
        if abs(load - self.ref_load) / base <= change:
            self.away_since = None
            return False
        if self.away_since is None:
            self.away_since = now
        if now - self.away_since >= hold_s:
            self.ref_load, self.started_ts, self.away_since = load, self.away_since, None
            return True
        return False

    def covers(self, t: Trial) -> bool:
        """``t`` was observed wholly inside the current phase."""
        return (t.start_ts if t.start_ts is not None else t.ts) >= self.started_ts
