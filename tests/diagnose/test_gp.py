"""The numpy Gaussian process (diagnose/search/gp.py): scikit-learn's formulas (checked against it
where the dev extra installs it), an optimiser that finds bounded maxima, and an agent path
that never loads scipy or scikit-learn."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from autotune.diagnose.search import gp as G


def data(n: int, seed: int):
    """Features like the search's (quota share, log weight ratio, log load) and a noisy score."""
    rng = np.random.RandomState(seed)
    X = np.c_[rng.choice(np.arange(0.25, 1.01, 0.125), n), rng.choice(np.log2([0.25, 1, 4, 16, 64]) / 6, n),
              np.log1p(rng.uniform(0, 0.5, n))]
    y = np.where(X[:, 0] > 0.4, 1.0 - 0.5 * X[:, 0], 0.5 / (1 + (0.4 - X[:, 0]) * 3)) + rng.normal(0, 0.02, n)
    return X, y, np.full(n, 1e-4)


def test_the_gradient_is_the_likelihoods():
    X, y, alpha = data(20, 1)
    yn = (y - y.mean()) / y.std()
    theta = np.log([1.3, 0.2, 0.7, 0.4, 1e-3])
    lml, grad = G.log_marginal_likelihood(theta, X, yn, alpha)
    assert G.log_marginal_likelihood(theta, X, yn, alpha, grad=False)[0] == pytest.approx(lml, rel=1e-12)
    for i in range(len(theta)):
        h = np.zeros_like(theta)
        h[i] = 1e-6
        numeric = (G.log_marginal_likelihood(theta + h, X, yn, alpha)[0]
                   - G.log_marginal_likelihood(theta - h, X, yn, alpha)[0]) / 2e-6
        assert grad[i] == pytest.approx(numeric, rel=1e-5, abs=1e-7), i


def test_maximise_stops_at_the_bound_that_holds_the_maximum():
    target = np.array([0.3, 2.0, -1.5])  # the second and third lie outside the box

    def f(x):
        return -float(((x - target) ** 2 * [1.0, 10.0, 0.1]).sum()), -2 * (x - target) * [1.0, 10.0, 0.1]

    x, fx = G.maximise(f, np.zeros(3), np.array([[-1.0, 1.0], [-1.0, 1.0], [-1.0, 1.0]]))
    assert x == pytest.approx([0.3, 1.0, -1.0], abs=1e-4)
    assert fx == pytest.approx(-(10.0 + 0.1 * 0.25), abs=1e-6)


def test_a_fit_interpolates_its_trials_and_is_unsure_far_from_them():
    X, y, alpha = data(15, 2)
    gp = G.GP(X, y, alpha)
    mu, sd = gp.predict(X)
    assert np.max(np.abs(mu - y)) < 0.05
    far = np.array([[0.25, 1.0, 3.0]])  # a load ten times any trial's
    assert gp.predict(far)[1][0] > 3 * np.median(sd)
    assert gp.lml > G.log_marginal_likelihood(G.Kernel().theta, X, (y - y.mean()) / y.std(), alpha)[0]


def test_a_reused_kernel_is_not_optimised_again():
    X, y, alpha = data(15, 3)
    first = G.GP(X, y, alpha)
    again = G.GP(X[:10], y[:10], alpha[:10], kernel=first.kernel)
    assert again.kernel == first.kernel and not hasattr(again, "lml")


def test_a_constant_target_and_a_single_trial_fit():
    X, _, alpha = data(4, 4)
    mu, sd = G.GP(X, np.full(4, 0.8), alpha).predict(X)
    assert mu == pytest.approx([0.8] * 4) and np.all(np.isfinite(sd))
    mu, sd = G.GP(X[:1], [0.6], alpha[:1]).predict(X)
    assert mu == pytest.approx([0.6] * 4) and np.all(np.isfinite(sd))


def test_a_singular_kernel_is_an_impossible_likelihood_not_an_error():
    X = np.zeros((3, 3))  # three identical trials, no noise at all: K has rank 1
    lml, grad = G.log_marginal_likelihood(np.log([1.0, 0.3, 0.3, 0.5, 1e-300]), X, np.array([1.0, -1.0, 0.0]),
                                          np.zeros(3))
    assert lml == -math.inf and not grad.any()


@pytest.mark.filterwarnings("ignore:The optimal value found")
@pytest.mark.parametrize("n", [3, 10, 40])
def test_the_same_model_as_scikit_learns(n):
    gpr = pytest.importorskip("sklearn.gaussian_process")
    kernels = pytest.importorskip("sklearn.gaussian_process.kernels")
    X, y, alpha = data(n, n)
    start = (kernels.ConstantKernel(1.0, (1e-2, 1e2)) * kernels.Matern(
        length_scale=[0.3, 0.3, 0.5], length_scale_bounds=(0.05, 5.0), nu=2.5) + kernels.WhiteKernel(1e-3, (1e-6, 1e-1)))
    sk = gpr.GaussianProcessRegressor(kernel=start, alpha=alpha, normalize_y=True, n_restarts_optimizer=1,
                                      random_state=0).fit(X, y)
    # the likelihood and its gradient at scikit-learn's optimum
    lml, grad = sk.log_marginal_likelihood(sk.kernel_.theta, eval_gradient=True)
    ours, our_grad = G.log_marginal_likelihood(sk.kernel_.theta, X, (y - y.mean()) / y.std(), alpha)
    assert ours == pytest.approx(lml, rel=1e-9) and our_grad == pytest.approx(grad, rel=1e-6, abs=1e-9)
    # the same hyperparameters predict the same mean and standard deviation
    Xs, _, _ = data(30, 100 + n)
    fixed = G.GP(X, y, alpha, kernel=G.Kernel.from_theta(sk.kernel_.theta))
    mu, sd = sk.predict(Xs, return_std=True)
    assert fixed.predict(Xs)[0] == pytest.approx(mu, abs=1e-9)
    assert fixed.predict(Xs)[1] == pytest.approx(sd, abs=1e-9)
    # and the optimiser finds at least as likely hyperparameters
    assert G.GP(X, y, alpha).lml >= sk.log_marginal_likelihood_value_ - 1e-4


def test_the_search_never_loads_scipy_or_scikit_learn():
    code = ("import sys\n"
            "from autotune.diagnose.search import model as L\n"
            "cands = L.candidates(2, quota_min=0.5)\n"
            "trials = [L.Trial(ts=float(i), service='s', allocation=a, ncpu=2, load=0.3, slack=0.1 * i - 0.2,"
            " be_share=0.5, score=L.score(0.1 * i - 0.2, 0.5)) for i, a in enumerate(cands[:6])]\n"
            "L.propose(trials, cands, load=0.3, ncpu=2, phase_trials=trials)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'scipy', 'sklearn'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
