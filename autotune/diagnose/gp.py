"""Gaussian-process regression in numpy alone: what the allocation search (diagnose/learner.py)
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
150 x 150 (learning.FIT_TRIALS); and numpy + scipy + scikit-learn were most of the install.
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


def _matern(theta: np.ndarray, X: np.ndarray, Y: np.ndarray | None = None,
            grad: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """amplitude * Matern 5/2 between the rows of X and Y (X with itself when Y is None), and,
    for X with itself, its derivatives in log amplitude and each log length scale (n, n, 1 + d)."""
    amp = math.exp(theta[0])
    ls = np.exp(theta[1:-1])
    A = X / ls
    B = A if Y is None else Y / ls
    D = (A[:, None, :] - B[None, :, :]) ** 2  # per-dimension squared scaled distance
    d = np.sqrt(D.sum(axis=-1))
    e = np.exp(-SQRT5 * d)
    K = amp * (1.0 + SQRT5 * d + (5.0 / 3.0) * d * d) * e
    if not grad:
        return K, None
    # d/dlog l_k of amp*(1 + s d + 5/3 d^2) e^{-s d} = amp * 5/3 * D_k * (1 + s d) * e^{-s d}
    dl = amp * (5.0 / 3.0) * D * ((1.0 + SQRT5 * d) * e)[:, :, None]
    return K, np.concatenate([K[:, :, None], dl], axis=-1)


def log_marginal_likelihood(theta: np.ndarray, X: np.ndarray, y: np.ndarray, alpha: np.ndarray,
                            grad: bool = True) -> tuple[float, np.ndarray]:
    """log p(y | X, theta) and its gradient in theta (zeros without ``grad``); (-inf, 0) where K
    is not positive definite."""
    n = len(y)
    Km, dKm = _matern(theta, X, grad=grad)
    noise = math.exp(theta[-1])
    K = Km + np.diag(noise + alpha)
    try:
        L = np.linalg.cholesky(K)
    except np.linalg.LinAlgError:
        return -math.inf, np.zeros_like(theta)
    if not grad:
        z = np.linalg.solve(L, y)  # y' K^-1 y = |L^-1 y|^2
        return -0.5 * float(z @ z) - float(np.log(np.diag(L)).sum()) - 0.5 * n * LOG_2PI, np.zeros_like(theta)
    L_inv = np.linalg.solve(L, np.eye(n))
    K_inv = L_inv.T @ L_inv
    a = K_inv @ y
    lml = -0.5 * float(y @ a) - float(np.log(np.diag(L)).sum()) - 0.5 * n * LOG_2PI
    inner = np.outer(a, a) - K_inv  # symmetric: tr(inner @ dK) = sum(inner * dK)
    g = np.empty_like(theta)
    g[:-1] = 0.5 * np.tensordot(inner, dKm, axes=([0, 1], [0, 1]))
    g[-1] = 0.5 * noise * float(np.trace(inner))
    return lml, g


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
    values = np.array([lml(t) for t in mesh])
    return [mesh[i] for i in np.argsort(-values)[:k]]


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
            starts += _best_of_grid(lambda t: log_marginal_likelihood(t, X, yn, self.alpha, grad=False)[0],
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
        K, _ = _matern(self.theta, X)
        K[np.diag_indices_from(K)] += kernel.noise + self.alpha
        self.L = np.linalg.cholesky(K)
        self.a = np.linalg.solve(self.L.T, np.linalg.solve(self.L, yn))

    def predict(self, Xs) -> tuple[np.ndarray, np.ndarray]:
        """Predictive mean and standard deviation (the white noise included) at the rows of Xs."""
        Xs = np.asarray(Xs, dtype=float)
        Ks, _ = _matern(self.theta, Xs, self.X)
        mu = Ks @ self.a
        V = np.linalg.solve(self.L, Ks.T)
        var = self.kernel.amplitude + self.kernel.noise - np.einsum("ij,ij->j", V, V)
        var = np.maximum(var, 0.0)
        return self.y_std * mu + self.y_mean, np.sqrt(var) * self.y_std
