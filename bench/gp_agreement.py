"""Does the numpy Gaussian process (autotune/diagnose/search/gp.py) decide as scikit-learn's did?

    python -m bench.gp_agreement [--seeds 10] [--budget 30] [--cache bench/results/coloc-cache]

Needs scikit-learn (the ``dev`` extra). The search (diagnose/search/model.propose) runs on known
surfaces; at every step it is asked twice on the same trials: once with the agent's model
(``learner.Model``, numpy) and once with the model the agent had before (scikit-learn's
``GaussianProcessRegressor``, same kernel, bounds, noise and restarts; ``SklearnModel`` below),
each fitted with the optimiser (no kernel reuse, the hard case) and, separately, through a
``learner.Fitter`` each (what the agent runs: the numpy one re-optimises from its last
hyperparameters between full searches, scikit-learn's runs its full search every time, as the
agent did). The search follows the numpy model's proposal.
Reported per surface: steps, proposals that differ (allocation or status) and the largest
difference of any candidate's predicted slack / score / P(SLO kept); then fit times and the
peak RSS each model adds, at 10, 50 and 150 trials.

Surfaces: the synthetic 2-CPU node of tests/diagnose/test_learner.py at four loads (noise 0.02),
two-phase runs over it (the second load phase sees the first phase's trials) and, when the
colocation oracle grid is cached, its measured windows (bench/learner_replay.py's draw).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from autotune.diagnose.search import model as L

HERE = Path(__file__).resolve().parent
NCPU = 2


class SklearnModel(L.Model):
    """``learner.Model`` as it was up to f816910: scikit-learn's GP, kernel reuse as before, every
    optimisation the full search (``start`` is ignored)."""

    def __init__(self, trials: Sequence[L.Trial], *, imported_noise: float = 4.0,
                 kernels: dict | None = None, start: dict | None = None) -> None:
        import numpy as np
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        X = np.array([L.features(t.allocation, t.load, t.ncpu) for t in trials])
        alpha = np.array([1e-4 * (imported_noise if t.source == "imported" else 1.0) for t in trials])
        self.gps, self.kernels = {}, {}
        for name, ys in (("score", [t.score for t in trials]), ("slack", [max(-3.0, t.slack) for t in trials])):
            fixed = (kernels or {}).get(name)
            if fixed is not None:
                gp = GaussianProcessRegressor(kernel=fixed, alpha=alpha, normalize_y=True, optimizer=None)
            else:
                kernel = (ConstantKernel(1.0, (1e-2, 1e2)) * Matern(length_scale=[0.3, 0.3, 0.5],
                          length_scale_bounds=(0.05, 5.0), nu=2.5) + WhiteKernel(1e-3, (1e-6, 1e-1)))
                gp = GaussianProcessRegressor(kernel=kernel, alpha=alpha, normalize_y=True,
                                              n_restarts_optimizer=1, random_state=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                gp.fit(X, np.array(ys))
            self.gps[name] = _Returning(gp)
            self.kernels[name] = gp.kernel_


class _Returning:
    """scikit-learn's predict(X, return_std=True) as gp.GP.predict(X)."""

    def __init__(self, gp) -> None:
        self.gp = gp

    def predict(self, X):
        return self.gp.predict(X, return_std=True)


class SklearnFitter(L.Fitter):
    def fit(self, trials: Sequence[L.Trial]) -> L.Model:
        real = L.Model
        L.Model = SklearnModel  # Fitter builds ``Model``: the same schedule of optimisations
        try:
            return super().fit(trials)
        finally:
            L.Model = real


def synthetic(a: L.Allocation, load: float) -> tuple[float, float]:
    """tests/diagnose/test_learner.py's surface: (slack, neighbours' share)."""
    demand = 0.4 + 0.8 * load
    cap = NCPU if a.quota_cores is None else a.quota_cores
    got = min(cap, demand, NCPU * a.ratio / (1 + a.ratio))
    return 1.0 - 0.7 * demand / max(got, 1e-3), (NCPU - got) / NCPU


class Tally:
    def __init__(self) -> None:
        self.steps = self.differ = self.differ_fitter = 0
        self.d_slack = self.d_score = self.d_psafe = 0.0
        self.lml_better = self.lml_worse = 0  # optimised fits where numpy's likelihood is higher / lower
        self.examples: list[str] = []

    def compare(self, trials, cands, load, phase, fit_np: L.Fitter, fit_sk: L.Fitter) -> L.Proposal:
        a, b = L.Model(trials), SklearnModel(trials)
        pa = L.propose(trials, cands, load=load, ncpu=NCPU, phase_trials=phase, model=a)
        pb = L.propose(trials, cands, load=load, ncpu=NCPU, phase_trials=phase, model=b)
        fa = L.propose(trials, cands, load=load, ncpu=NCPU, phase_trials=phase, fitter=fit_np)
        fb = L.propose(trials, cands, load=load, ncpu=NCPU, phase_trials=phase, fitter=fit_sk)
        self.steps += 1
        if (pa.allocation, pa.status) != (pb.allocation, pb.status):
            self.differ += 1
            if len(self.examples) < 3:
                self.examples.append(f"{len(trials)} trials: numpy {pa.status} {pa.allocation and pa.allocation.label()} "
                                     f"/ sklearn {pb.status} {pb.allocation and pb.allocation.label()}")
        self.differ_fitter += (fa.allocation, fa.status) != (fb.allocation, fb.status)
        for name in ("score", "slack"):
            d = a.gps[name].lml - b.gps[name].gp.log_marginal_likelihood_value_
            self.lml_better += d > 1e-4
            self.lml_worse += d < -1e-4
        for x, y in zip(a.predict(cands, load, NCPU), b.predict(cands, load, NCPU)):
            self.d_slack = max(self.d_slack, abs(x.slack - y.slack))
            self.d_score = max(self.d_score, abs(x.score - y.score))
            self.d_psafe = max(self.d_psafe, abs(x.p_safe - y.p_safe))
        return fa


def search(draw, loads: Sequence[float], cands, seed: int, budget: int, decide, reset) -> list[tuple]:
    """One search per load in turn (a new phase each, ``reset`` called), all trials kept: a later
    phase's model sees the earlier phases' trials at other loads. ``decide(trials, phase, load)``
    proposes; the search follows it. Returns (load, the phase's trials, its last proposal) per phase."""
    rng = random.Random(seed)
    trials: list[L.Trial] = []
    out = []
    for load in loads:
        phase: list[L.Trial] = []
        reset()
        p = None
        for _ in range(budget):
            p = decide(trials, phase, load)
            if p.allocation is None or p.status == "converged":
                break
            slack, be = draw(rng, p.allocation, load)
            t = L.Trial(ts=float(len(trials)), service="llm", allocation=p.allocation, ncpu=NCPU, load=load,
                        slack=slack, be_share=be, score=L.score(slack, be))
            trials.append(t)
            phase.append(t)
        out.append((load, phase, p))
    return out


def run(draw, loads: Sequence[float], cands, seed: int, budget: int, tally: Tally) -> None:
    """Both models asked at every step (``Tally.compare``); the search follows numpy's Fitter."""
    fit_np, fit_sk = L.Fitter(), SklearnFitter()

    def decide(trials, phase, load):
        if not trials:
            return L.propose(trials, cands, load=load, ncpu=NCPU, phase_trials=phase)
        return tally.compare(trials, cands, load, phase, fit_np, fit_sk)

    search(draw, loads, cands, seed, budget, decide, lambda: (fit_np.reset(), fit_sk.reset()))


def outcome(draw, truth, loads: Sequence[float], cands, seed: int, budget: int, fitter: L.Fitter) -> list[tuple]:
    """The search driven by one model alone (through its Fitter, as the agent runs it): per load
    phase (converged?, trials, SLO-breaking trials, true score of what it holds / the best)."""
    def decide(trials, phase, load):
        return L.propose(trials, cands, load=load, ncpu=NCPU, phase_trials=phase, fitter=fitter)

    out = []
    for load, phase, p in search(draw, loads, cands, seed, budget, decide, fitter.reset):
        held = p.allocation if p is not None else None
        best = max(truth(a, load) for a in cands)
        out.append((p is not None and p.status == "converged", len(phase), sum(t.slack < 0 for t in phase),
                    (truth(held, load) if held is not None else 0.0) / best))
    return out


def fit_costs() -> list[str]:
    """Fit time (optimised and with a reused kernel) and the RSS each model adds, per trial
    count; each model in a fresh interpreter so its imports count (numpy is not counted: the
    agent imports it anyway)."""
    out = []
    for n in (10, 50, 150):
        for which in ("numpy", "sklearn"):
            code = (f"import sys; sys.argv=['x', '{which}', '{n}']; import bench.gp_agreement as g; g._cost()")
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
            out.append(r.stdout.strip() or f"{which} {n}: failed: {r.stderr.strip().splitlines()[-1:]}")
    return out


def _cost() -> None:
    which, n = sys.argv[1], int(sys.argv[2])
    import numpy  # noqa: F401 - the agent has it already (verify/stats.py): not the model's

    rng = random.Random(n)
    cands = L.candidates(NCPU, quota_min=0.5, neighbour_floor=0.5)
    trials = []
    for i in range(n):
        a = rng.choice(cands)
        slack, be = synthetic(a, 0.3)
        slack += rng.gauss(0, 0.02)
        trials.append(L.Trial(ts=float(i), service="llm", allocation=a, ncpu=NCPU, load=0.3, slack=slack,
                              be_share=be, score=L.score(slack, be)))
    base = _rss_mib()
    if which == "numpy":
        import autotune.diagnose.search.gp  # noqa: F401
        cls = L.Model
    else:
        import sklearn.gaussian_process  # noqa: F401
        cls = SklearnModel
    t0 = time.process_time()
    m = cls(trials)
    t1 = time.process_time()
    reps = 20
    for _ in range(reps):
        cls(trials, kernels=m.kernels).predict(cands, 0.3, NCPU)
    t2 = time.process_time()
    print(f"{which:7s} {n:3d} trials: optimised fit {1000 * (t1 - t0):7.1f} ms CPU, refit + predict "
          f"{1000 * (t2 - t1) / reps:6.2f} ms CPU, the model's import and fits add {_rss_mib() - base:5.1f} MiB "
          f"RSS (process peak {_rss_mib('VmHWM:'):.0f} MiB)")


def _rss_mib(field: str = "VmRSS:") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--cache", type=Path, default=HERE / "results" / "coloc-cache")
    ap.add_argument("--no-costs", action="store_true", help="skip the fit-time / RSS table")
    args = ap.parse_args(argv)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("needs scikit-learn (pip install -e '.[dev]')")
        return 2
    cands = L.candidates(NCPU, quota_min=0.5, neighbour_floor=0.5)

    def draw_synthetic(rng, a, load):
        slack, be = synthetic(a, load)
        return slack + rng.gauss(0, 0.02), be

    def truth_synthetic(a, load):
        slack, be = synthetic(a, load)
        return L.score(slack, be) if slack >= 0 else 0.0  # what it holds must keep the SLO

    cases = [(f"synthetic {load}/s", draw_synthetic, truth_synthetic, [load], cands) for load in (0.1, 0.3, 0.5, 0.8)]
    cases.append(("synthetic 0.2 -> 0.6/s", draw_synthetic, truth_synthetic, [0.2, 0.6], cands))
    from bench.learner_replay import _load_value, load_surfaces, mean_score

    surfaces, _meta = load_surfaces(args.cache) if args.cache.exists() else ({}, {})
    for label, surface in sorted(surfaces.items()):
        grid = sorted(surface, key=lambda a: (L.server_cores(a, NCPU), a.ratio))
        cases.append((f"measured {label}", lambda rng, a, load, s=surface: s[a][rng.randrange(len(s[a]))],
                      lambda a, load, s=surface: mean_score(s[a]), [_load_value(label)], grid))
    print("Same trials, both models: surface | steps | proposals that differ (optimised fits) | (through "
          "Fitters) | max |d slack| | max |d score| | max |d P(SLO kept)| | fits where numpy's likelihood "
          "is higher / lower (by > 1e-4)")
    total = Tally()
    t0 = time.monotonic()
    for label, draw, _truth, loads, grid in cases:
        tally = Tally()
        for seed in range(args.seeds):
            run(draw, loads, grid, seed, args.budget, tally)
        print(f"{label} | {tally.steps} | {tally.differ} | {tally.differ_fitter} | {tally.d_slack:.2g} | "
              f"{tally.d_score:.2g} | {tally.d_psafe:.2g} | {tally.lml_better} / {tally.lml_worse}")
        for e in tally.examples:
            print(f"    {e}")
        for k in ("steps", "differ", "differ_fitter", "lml_better", "lml_worse"):
            setattr(total, k, getattr(total, k) + getattr(tally, k))
    print(f"all | {total.steps} | {total.differ} ({100 * total.differ / max(1, total.steps):.1f} %) | "
          f"{total.differ_fitter} ({100 * total.differ_fitter / max(1, total.steps):.1f} %) | | | | "
          f"{total.lml_better} / {total.lml_worse} ({time.monotonic() - t0:.0f} s)")
    print()
    print("Each model drives its own search (through a Fitter): surface | model | phases converged | "
          "trials per phase (mean) | SLO-breaking trials per phase (mean) | true score held / best (mean, min)")
    for label, draw, truth, loads, grid in cases:
        for name, make in (("numpy", L.Fitter), ("sklearn", SklearnFitter)):
            rows = [r for seed in range(args.seeds) for r in outcome(draw, truth, loads, grid, seed, args.budget, make())]
            held = [r[3] for r in rows]
            print(f"{label} | {name} | {sum(r[0] for r in rows)}/{len(rows)} | "
                  f"{sum(r[1] for r in rows) / len(rows):.1f} | {sum(r[2] for r in rows) / len(rows):.2f} | "
                  f"{sum(held) / len(held):.3f}, {min(held):.3f}")
    if not args.no_costs:
        print()
        for line in fit_costs():
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
