"""Did a change help? Pure statistics over before/after windows of one objective.

``compare`` asks two questions and both must agree before a verdict other than
``inconclusive``: a two-sided Mann-Whitney U test (are the windows different at all?) and a
percentile bootstrap CI of the difference of medians (fixed seed, so the same data always gives
the same verdict) that must exclude zero on the same side. On top, the relative change of the
median must exceed ``min_effect``: a significant 1 % shift is not worth a knob change. Tiny,
empty or constant windows are inconclusive, never an exception.

Samples must be roughly independent for the test to mean anything; ``objectives`` says how
each objective's series is taken so that they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import stats

from autotune.types import Direction, Snapshot, Verdict, VerifyResult
from autotune.verify.objectives import MIN_SAMPLES, OBJECTIVES, objective, objective_series

__all__ = ["MIN_SAMPLES", "OBJECTIVES", "VerifyResult", "compare", "decide", "evaluate",
           "objective_series"]


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
) -> VerifyResult:
    """Compare two windows of an objective. ``min_effect`` is relative (0.05 = 5 %)."""
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
    effect = _relative(bm, am)
    if np.ptp(np.concatenate([b, a])) == 0:
        return VerifyResult(verdict="inconclusive", p_value=1.0, effect=0.0, ci_low=0.0,
                            ci_high=0.0, reason="all samples identical", **base)
    p = float(stats.mannwhitneyu(b, a, alternative="two-sided").pvalue)
    if not math.isfinite(p):
        p = 1.0
    boot = stats.bootstrap(
        (b, a), lambda x, y, axis: np.median(y, axis=axis) - np.median(x, axis=axis),
        vectorized=True, paired=False, n_resamples=n_resamples, method="percentile",
        confidence_level=1 - alpha, rng=np.random.default_rng(seed),
    )
    lo, hi = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    worse_sign = 1.0 if direction == "lower_is_better" else -1.0
    worse = effect * worse_sign  # > 0: the objective moved the wrong way
    significant = p < alpha and (lo > 0 or hi < 0)
    if significant and worse > min_effect and (lo * worse_sign > 0):
        verdict: Verdict = "regressed"
        why = f"worse by {worse:.1%} (p={p:.3g})"
    elif significant and -worse > min_effect and (hi * worse_sign < 0):
        verdict = "improved"
        why = f"better by {-worse:.1%} (p={p:.3g})"
    else:
        verdict = "inconclusive"
        why = (f"change {-worse:+.1%} better, p={p:.3g}, CI [{lo:.4g}, {hi:.4g}] "
               f"(needs p<{alpha}, CI excluding 0 and |effect|>{min_effect:.0%})")
    return VerifyResult(verdict=verdict, p_value=p, effect=effect, ci_low=lo, ci_high=hi,
                        reason=why, **base)


def decide(result: VerifyResult, on_inconclusive: Literal["keep", "rollback"] = "keep") -> str:
    """'keep' or 'rollback' for a verified change."""
    if result.verdict == "improved":
        return "keep"
    if result.verdict == "regressed":
        return "rollback"
    return on_inconclusive


def evaluate(
    objective_name: str,
    before: Sequence[Snapshot],
    after: Sequence[Snapshot],
    service: str | None = None,
    *,
    alpha: float = 0.05,
    min_effect: float = 0.05,
    min_samples: int = MIN_SAMPLES,
) -> VerifyResult:
    """The objective's series from both windows, then ``compare`` in its direction. The result
    carries ``objective_name`` as given (a metric name, or a legacy name read for ``service``)."""
    obj = objective(objective_name, service, [*before, *after])
    return compare(obj.series(before), obj.series(after), alpha=alpha, min_effect=min_effect,
                   direction=obj.direction, min_samples=min_samples, objective=objective_name)
