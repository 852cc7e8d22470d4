"""Gaussian-process regression in numpy alone: what the allocation search (diagnose/search/model.py)
used of scikit-learn's ``GaussianProcessRegressor``, without scipy resident in the agent.

The model is the one the search had: a constant times an anisotropic Matern 5/2 kernel plus
white noise, a fixed per-trial noise ``alpha`` on the diagonal, targets normalised to zero mean
and unit variance, hyperparameters chosen by maximising the log marginal likelihood (Rasmussen &
Williams, "Gaussian Processes for Machine Learning", 2006, eq. 2.30 and 5.9) from the initial
kernel and one seeded random start, as scikit-learn does with ``n_restarts_optimizer=1,
random_state=0``. The formulas (likelihood, its gradient in log-hyperparameters, the predictive
mean and standard deviation, which include the white noise) are scikit-learn's, and
tests/diagnose/test_gp.py checks them against it where it is installed.

Why not scikit-learn: importing ``sklearn.gaussian_process`` added ~77 MB to the agent's
resident memory (scipy, joblib, threadpoolctl), for five hyperparameters and matrices of at most
150 x 150 (state.FIT_TRIALS); and numpy + scipy + scikit-learn were most of the install.
What is written here instead of scipy's L-BFGS-B is a bounded L-BFGS with a projected backtracking
line search (``maximise``): five variables, a smooth objective, the same stopping tolerances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SQRT5 = math.sqrt(5.0)
LOG_2PI = math.log(2.0 * math.pi)
# (low, high) of each hyperparameter, as the search's kernel declared them
AMPLITUDE_BOUNDS = (1e-2, 1e2)
LENGTH_BOUNDS = (0.05, 5.0)
NOISE_BOUNDS = (1e-6, 1e-1)


@dataclass(frozen=True)
class Kernel:
    """``amplitude * Matern(length_scales, nu=2.5) + WhiteKernel(noise)``."""

    amplitude: float = 1.0
    length_scales: tuple[float, ...] = (0.3, 0.3, 0.5)
    noise: float = 1e-3

    @property
    def theta(self) -> np.ndarray:
        """Log-hyperparameters in scikit-learn's order: amplitude, length scales, noise."""
        return np.log([self.amplitude, *self.length_scales, self.noise])

    @classmethod
    def from_theta(cls, theta: np.ndarray) -> Kernel:
        v = np.exp(theta)
        return cls(amplitude=float(v[0]), length_scales=tuple(float(x) for x in v[1:-1]), noise=float(v[-1]))

    def bounds(self) -> np.ndarray:
        """(n, 2) log-bounds of ``theta``."""
        rows = [AMPLITUDE_BOUNDS, *[LENGTH_BOUNDS] * len(self.length_scales), NOISE_BOUNDS]
        return np.log(np.array(rows, dtype=float))


def _matern(theta: np.ndarray, X: np.ndarray, Y: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """amplitude * Matern 5/2 between the rows of X and Y (X with itself when Y is None); also
    the per-dimension squared scaled distances D (n, m, dims) and the factor ``common`` with
    dK/dlog l_k = common * D_k (what the likelihood's gradient needs)."""
    amp = math.exp(theta[0])
    ls = np.exp(theta[1:-1])
    A = X / ls
    B = A if Y is None else Y / ls
    D = (A[:, None, :] - B[None, :, :]) ** 2
    d = np.sqrt(D.sum(axis=-1))
    e = np.exp(-SQRT5 * d)
    K = amp * (1.0 + SQRT5 * d + (5.0 / 3.0) * d * d) * e
    # d/dlog l_k of amp*(1 + s d + 5/3 d^2) e^{-s d} = amp * 5/3 * D_k * (1 + s d) * e^{-s d}
    return K, D, amp * (5.0 / 3.0) * (1.0 + SQRT5 * d) * e


def log_marginal_likelihood(theta: np.ndarray, X: np.ndarray, y: np.ndarray, alpha: np.ndarray,
                            grad: bool = True) -> tuple[float, np.ndarray]:
    """log p(y | X, theta) and its gradient in theta (zeros without ``grad``); (-inf, 0) where K
    is not positive definite."""
    n = len(y)
    Km, D, common = _matern(theta, X)
    noise = math.exp(theta[-1])
    K = Km + np.diag(noise + alpha)
    try:
        L = np.linalg.cholesky(K)
    except np.linalg.LinAlgError:
        return -math.inf, np.zeros_like(theta)
    log_det_half = float(np.log(np.diag(L)).sum())
    if not grad:
        return float(log_likelihoods(theta[None, :], X, y, alpha)[0]), np.zeros_like(theta)
    K_inv = np.linalg.inv(K)
    a = K_inv @ y
    lml = -0.5 * float(y @ a) - log_det_half - 0.5 * n * LOG_2PI
    inner = np.outer(a, a) - K_inv  # symmetric: tr(inner @ dK) = sum(inner * dK)
    g = np.empty_like(theta)
    g[0] = 0.5 * float(np.sum(inner * Km))  # dK/dlog amplitude = the Matern part itself
    g[1:-1] = 0.5 * np.tensordot(inner * common, D, axes=([0, 1], [0, 1]))
    g[-1] = 0.5 * noise * float(np.trace(inner))
    return lml, g


def log_likelihoods(thetas: np.ndarray, X: np.ndarray, y: np.ndarray, alpha: np.ndarray,
                    chunk: int = 8) -> np.ndarray:
    """log p(y | X, theta) for each row of ``thetas`` (-inf where K is not positive definite),
    ``chunk`` at a time as stacks of matrices: one numpy call per step instead of one per point
    (a grid of 81 points cost more in call overhead than in arithmetic)."""
    n = len(y)
    diff2 = (X[:, None, :] - X[None, :, :]) ** 2  # (n, n, dims), unscaled
    out = np.empty(len(thetas))
    idx = np.arange(n)
    for lo in range(0, len(thetas), chunk):
        t = thetas[lo: lo + chunk]
        d2 = np.einsum("ijk,ck->cij", diff2, np.exp(-2.0 * t[:, 1:-1]))
        d = np.sqrt(d2)
        K = np.exp(t[:, 0])[:, None, None] * (1.0 + SQRT5 * d + (5.0 / 3.0) * d2) * np.exp(-SQRT5 * d)
        K[:, idx, idx] += np.exp(t[:, -1])[:, None] + alpha
        try:
            L = np.linalg.cholesky(K)
        except np.linalg.LinAlgError:  # one of them is not positive definite: each on its own
            out[lo: lo + len(t)] = [log_likelihoods(one[None, :], X, y, alpha)[0] if len(t) > 1 else -math.inf
                                    for one in t]
            continue
        z = np.linalg.solve(L, np.broadcast_to(y[:, None], (len(t), n, 1)))[..., 0]  # |L^-1 y|^2 = y' K^-1 y
        out[lo: lo + len(t)] = (-0.5 * (z * z).sum(axis=1) - np.log(L[:, idx, idx]).sum(axis=1)
                                - 0.5 * n * LOG_2PI)
    return out


def maximise(f, x0: np.ndarray, bounds: np.ndarray, *, gtol: float = 1e-5, ftol: float = 2.220446049250313e-09,
             max_iter: int = 200, memory: int = 10) -> tuple[np.ndarray, float]:
    """Maximise ``f`` (x -> (value, gradient)) inside the box ``bounds`` from ``x0``: limited-memory
    BFGS (the two-loop recursion, initial scaling s.y / y.y) on the variables not held at a bound,
    a projected backtracking (Armijo) line search; stops when the projected gradient or the
    relative gain falls under scipy L-BFGS-B's default tolerances (``gtol``, ``ftol``)."""
    lo, hi = bounds[:, 0], bounds[:, 1]
    x = np.clip(np.asarray(x0, dtype=float), lo, hi)
    fx, g = f(x)
    if not math.isfinite(fx):
        return x, fx
    pairs: list[tuple[np.ndarray, np.ndarray]] = []  # (s, y) of -f, newest last
    for _ in range(max_iter):
        if np.max(np.abs(np.clip(x + g, lo, hi) - x)) <= gtol:  # projected gradient (ascent)
            break
        free = ~(((x <= lo) & (g < 0)) | ((x >= hi) & (g > 0)))
        d = _direction(np.where(free, g, 0.0), pairs, free)
        if not pairs or float(d @ g) <= 0.0:  # no curvature yet, or not an ascent direction
            pairs.clear()
            d = np.where(free, g, 0.0)
            step = 1.0 / max(1.0, float(np.max(np.abs(d))))  # a first step of at most 1 (log space)
        else:
            step = 1.0
        while True:
            xn = np.clip(x + step * d, lo, hi)
            fn, gn = f(xn)
            if math.isfinite(fn) and fn >= fx + 1e-4 * float(g @ (xn - x)):
                break
            step *= 0.5
            if step < 1e-10:
                return x, fx
        s, y = xn - x, g - gn
        gain = fn - fx
        x, fx, g = xn, fn, gn
        if float(s @ y) > 1e-10:
            pairs = [*pairs[-(memory - 1):], (s, y)]
        if gain <= ftol * max(abs(fx), abs(fx - gain), 1.0):
            break
    return x, fx


def _direction(q: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]], free: np.ndarray) -> np.ndarray:
    """H q by the L-BFGS two-loop recursion over the free variables (held ones stay 0)."""
    q = q.copy()
    sub = [(np.where(free, s, 0.0), np.where(free, y, 0.0)) for s, y in pairs]
    sub = [(s, y) for s, y in sub if float(s @ y) > 1e-10]
    if not sub:
        return q
    alphas = []
    for s, y in reversed(sub):
        a = float(s @ q) / float(s @ y)
        alphas.append(a)
        q -= a * y
    s, y = sub[-1]
    q *= float(s @ y) / float(y @ y)
    for (s, y), a in zip(sub, reversed(alphas)):
        b = float(y @ q) / float(s @ y)
        q += (a - b) * s
    return np.where(free, q, 0.0)


GRID = (1 / 6, 1 / 2, 5 / 6)  # where in each log range the grid's length scales and noise lie


def _best_of_grid(lml, start: np.ndarray, bounds: np.ndarray, k: int) -> list[np.ndarray]:
    """The ``k`` points of a coarse grid with the highest likelihood: the amplitude at ``start``
    (the targets are normalised: about 1), the length scales and the noise at ``GRID`` of their
    log ranges. More starts for the local search, which otherwise stops on whichever ridge of a
    flat likelihood its start leads to."""
    if k <= 0:
        return []
    levels = [np.array([start[0]])] + [lo + (hi - lo) * np.array(GRID) for lo, hi in bounds[1:]]
    mesh = np.stack(np.meshgrid(*levels, indexing="ij"), axis=-1).reshape(-1, len(bounds))
    values = lml(mesh)
    out: list[np.ndarray] = []
    taken: list[float] = []
    for i in np.argsort(-values):
        # a length scale the data does not constrain (one load only) gives equal values: one start
        if len(out) == k or not math.isfinite(values[i]):
            break
        if all(abs(values[i] - v) > 1e-9 * max(1.0, abs(v)) for v in taken):
            out.append(mesh[i])
            taken.append(float(values[i]))
    return out


class GP:
    """One fitted Gaussian process. ``kernel`` given: used as is (a fit is one Cholesky
    factorisation); None: optimised from ``start``, ``restarts`` seeded random starts (the
    two scikit-learn used) and the ``grid_starts`` best points of a coarse grid, the best
    likelihood kept (``self.kernel`` holds the result). Targets ``y`` are normalised."""

    def __init__(self, X, y, alpha, *, kernel: Kernel | None = None, start: Kernel = Kernel(),
                 restarts: int = 1, seed: int = 0, grid_starts: int = 2) -> None:
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float)
        self.alpha = np.broadcast_to(np.asarray(alpha, dtype=float), y.shape).copy()
        self.y_mean = float(np.mean(y))
        sd = float(np.std(y))
        self.y_std = sd if sd != 0.0 else 1.0  # a constant target: scikit-learn's _handle_zeros_in_scale
        self.X = X
        yn = (y - self.y_mean) / self.y_std
        if kernel is None:
            bounds = start.bounds()
            rng = np.random.RandomState(seed)
            starts = [start.theta] + [rng.uniform(bounds[:, 0], bounds[:, 1]) for _ in range(restarts)]
            starts += _best_of_grid(lambda thetas: log_likelihoods(thetas, X, yn, self.alpha),
                                    start.theta, bounds, grid_starts)
            best = None
            for x0 in starts:
                theta, lml = maximise(lambda t: log_marginal_likelihood(t, X, yn, self.alpha), x0, bounds)
                if best is None or lml > best[1]:
                    best = (theta, lml)
            assert best is not None
            kernel = Kernel.from_theta(best[0])
            self.lml = best[1]
        self.kernel = kernel
        self.theta = kernel.theta
        K = _matern(self.theta, X)[0]
        K[np.diag_indices_from(K)] += kernel.noise + self.alpha
        self.L = np.linalg.cholesky(K)
        self.a = np.linalg.solve(self.L.T, np.linalg.solve(self.L, yn))

    def predict(self, Xs) -> tuple[np.ndarray, np.ndarray]:
        """Predictive mean and standard deviation (the white noise included) at the rows of Xs."""
        Xs = np.asarray(Xs, dtype=float)
        Ks = _matern(self.theta, Xs, self.X)[0]
        mu = Ks @ self.a
        V = np.linalg.solve(self.L, Ks.T)
        var = self.kernel.amplitude + self.kernel.noise - np.einsum("ij,ij->j", V, V)
        var = np.maximum(var, 0.0)
        return self.y_std * mu + self.y_mean, np.sqrt(var) * self.y_std
