"""Did a change help? Pure statistics over before/after windows of one objective.

``compare`` asks two questions and both must agree before it calls a change ``improved`` or
``regressed``: a two-sided Mann-Whitney U test (are the windows different at all?) and a
percentile bootstrap CI of the difference of medians (fixed seed, so the same data always gives
the same verdict) that must exclude zero on the same side. On top, the change of the median
must exceed ``min_effect``: a significant 1 % shift is not worth a knob change. When the whole
CI lies inside +-``min_effect`` the change is ``unchanged``: measured, and too small to matter
(a conclusive verdict, unlike ``inconclusive``, where the data cannot tell). Tiny, empty or
constant windows are inconclusive, never an exception.

The effect is relative to the before-median by default; an objective whose zero is meaningful
and whose scale is already a ratio (SLO slack) compares absolutely (``absolute=True``).

Implemented on numpy alone (the test matches scipy.stats.mannwhitneyu's two-sided p-value, exact
for small tie-free samples and normal with tie and continuity correction otherwise): importing
scipy.stats costs the long-running agent about 70 MB of resident memory.

Samples must be roughly independent for the test to mean anything; ``objectives`` says how
each objective's series is taken so that they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import numpy as np

from autotune.types import Direction, Snapshot, Verdict, VerifyResult
from autotune.verify.objectives import MIN_SAMPLES, OBJECTIVES, objective, objective_series

__all__ = ["MIN_SAMPLES", "OBJECTIVES", "VerifyResult", "compare", "decide", "evaluate",
           "mann_whitney_p", "objective_series"]

EXACT_MAX = 8  # both samples smaller than this and no ties: exact null distribution (as scipy)


def _clean(xs: Sequence[float]) -> np.ndarray:
    a = np.asarray([x for x in xs if x is not None], dtype=float)
    return a[np.isfinite(a)]


def _relative(before_med: float, after_med: float) -> float:
    """Relative change of the median. From a zero baseline the change is measured against the
    new value (0 -> x counts as 100 %), so an objective that starts at 0 % PSI stays usable."""
    diff = after_med - before_med
    if before_med != 0:
        return diff / abs(before_med)
    if after_med != 0:
        return math.copysign(1.0, diff)
    return 0.0


def compare(
    before: Sequence[float],
    after: Sequence[float],
    *,
    alpha: float = 0.05,
    min_effect: float = 0.05,
    direction: Direction = "lower_is_better",
    min_samples: int = MIN_SAMPLES,
    n_resamples: int = 2000,
    seed: int = 0,
    objective: str | None = None,
    absolute: bool = False,
    significant_only: bool = False,
) -> VerifyResult:
    """Compare two windows of an objective. ``min_effect`` is relative (0.05 = 5 %), or in the
    objective's own units when ``absolute``. ``significant_only`` (a look ahead of the window,
    which acts only on improved/regressed): without p < alpha, answer inconclusive at once,
    skipping the bootstrap (most of a verdict's cost, and an early look comes every second)."""
    b, a = _clean(before), _clean(after)
    nb, na = len(b), len(a)
    bm = float(np.median(b)) if nb else None
    am = float(np.median(a)) if na else None
    base = dict(n_before=nb, n_after=na, before_median=bm, after_median=am,
                direction=direction, objective=objective)
    if nb < min_samples or na < min_samples:
        return VerifyResult(verdict="inconclusive", p_value=None, effect=None, ci_low=None,
                            ci_high=None, reason=f"too few samples ({nb} before, {na} after; "
                            f"need {min_samples} each)", **base)
    assert bm is not None and am is not None
    effect = (am - bm) if absolute else _relative(bm, am)
    if np.ptp(np.concatenate([b, a])) == 0:
        return VerifyResult(verdict="inconclusive", p_value=1.0, effect=0.0, ci_low=0.0,
                            ci_high=0.0, reason="all samples identical", **base)
    p = mann_whitney_p(b, a)
    if significant_only and not p < alpha:
        return VerifyResult(verdict="inconclusive", p_value=p, effect=effect, ci_low=None, ci_high=None,
                            reason=f"not significant yet (p={p:.3g}, needs p<{alpha:g})", **base)
    lo, hi = bootstrap_median_diff(b, a, alpha=alpha, n_resamples=n_resamples, seed=seed)
    worse_sign = 1.0 if direction == "lower_is_better" else -1.0
    worse = effect * worse_sign  # > 0: the objective moved the wrong way
    scale = 1.0 if absolute else (abs(bm) or abs(am) or 1.0)
    fmt = (lambda x: f"{x:+.3f}") if absolute else (lambda x: f"{x:+.1%}")
    significant = p < alpha and (lo > 0 or hi < 0)
    if significant and worse > min_effect and (lo * worse_sign > 0):
        verdict: Verdict = "regressed"
        why = f"worse by {fmt(worse)[1:]} (p={p:.3g})"
    elif significant and -worse > min_effect and (hi * worse_sign < 0):
        verdict = "improved"
        why = f"better by {fmt(-worse)[1:]} (p={p:.3g})"
    elif -min_effect <= lo / scale and hi / scale <= min_effect:
        verdict = "unchanged"
        why = (f"no change that matters: CI of the change [{fmt(lo / scale)}, {fmt(hi / scale)}] "
               f"inside +-{min_effect:g}{'' if absolute else ' (relative)'} (p={p:.3g})")
    else:
        verdict = "inconclusive"
        why = (f"change {fmt(-worse)} better, p={p:.3g}, CI [{lo:.4g}, {hi:.4g}] "
               f"(needs p<{alpha}, CI excluding 0 and |effect|>{min_effect:g})")
    return VerifyResult(verdict=verdict, p_value=p, effect=effect, ci_low=lo, ci_high=hi,
                        reason=why, **base)


def decide(result: VerifyResult, on_inconclusive: Literal["keep", "rollback"] = "keep") -> str:
    """'keep' or 'rollback' for a verified change: a regression (or a give-back that broke the
    SLO) goes back, a measured improvement or a change too small to matter stays."""
    if result.verdict in ("improved", "unchanged", "held"):
        return "keep"
    if result.verdict in ("regressed", "violated"):
        return "rollback"
    return on_inconclusive


def mann_whitney_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided Mann-Whitney U p-value, as scipy.stats.mannwhitneyu(method="auto",
    use_continuity=True) computes it: exact when both samples are smaller than EXACT_MAX and
    tie-free, else the normal approximation with tie correction."""
    n1, n2 = len(x), len(y)
    both = np.concatenate([x, y])
    ranks, ties = _ranks(both)
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    u2 = n1 * n2 - u1
    if n1 < EXACT_MAX and n2 < EXACT_MAX and not ties:
        dist = _u_distribution(n1, n2)
        total = float(sum(dist))
        k = int(round(max(u1, u2)))
        sf = sum(dist[k:]) / total  # P(U >= max)
        return float(min(1.0, 2 * sf))
    n = n1 + n2
    tie_term = sum(t ** 3 - t for t in ties)
    var = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if var <= 0:
        return 1.0
    z = (max(u1, u2) - n1 * n2 / 2 - 0.5) / math.sqrt(var)
    return float(min(1.0, math.erfc(z / math.sqrt(2))))  # 2 * normal survival at z


def _ranks(values: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Average ranks (1-based) and the sizes of tied groups."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=float)
    ties: list[int] = []
    sorted_v = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        if j > i:
            ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


@lru_cache(maxsize=128)
def _u_distribution(n1: int, n2: int) -> tuple[int, ...]:
    """Counts of each U value (0..n1*n2) over all arrangements of two tie-free samples."""
    if n1 == 0 or n2 == 0:
        return (1,)
    a = _u_distribution(n1 - 1, n2)  # the largest value belongs to sample 1: U gains n2
    b = _u_distribution(n1, n2 - 1)  # ... to sample 2: U unchanged
    out = [0] * (n1 * n2 + 1)
    for u, c in enumerate(a):
        out[u + n2] += c
    for u, c in enumerate(b):
        out[u] += c
    return tuple(out)


_BOOT_BLOCK = 256  # resamples per block (even: the same draws as one block)


def bootstrap_median_diff(before: np.ndarray, after: np.ndarray, *, alpha: float, n_resamples: int,
                          seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI (level 1 - alpha) of median(after) - median(before); fixed seed."""
    rng = np.random.default_rng(seed)

    def medians(x: np.ndarray) -> np.ndarray:
        # resampled in blocks: all at once holds n_resamples x n indices and values (about
        # 10 MB for a 30-s window of 0.2-s samples) at each verdict; the draws are the same
        out = []
        for start in range(0, n_resamples, _BOOT_BLOCK):
            k = min(_BOOT_BLOCK, n_resamples - start)
            out.append(np.median(x[rng.integers(0, len(x), size=(k, len(x)))], axis=1))
        return np.concatenate(out)

    mb = medians(before)
    diffs = medians(after) - mb
    lo, hi = np.percentile(diffs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def evaluate(
    objective_name: str,
    before: Sequence[Snapshot],
    after: Sequence[Snapshot],
    service: str | None = None,
    *,
    alpha: float = 0.05,
    min_effect: float = 0.05,
    min_samples: int = MIN_SAMPLES,
    slo_of: Sequence = (),
    significant_only: bool = False,
) -> VerifyResult:
    """The objective's series from both windows, then ``compare`` in its direction. The result
    carries ``objective_name`` as given (a metric name, or a legacy name read for ``service``)."""
    obj = objective(objective_name, service, [*before, *after], slo_of)
    return compare(obj.series(before), obj.series(after), alpha=alpha, min_effect=min_effect,
                   direction=obj.direction, min_samples=min_samples, objective=objective_name,
                   absolute=obj.kind.absolute, significant_only=significant_only)
