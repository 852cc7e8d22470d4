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

Per-token objectives (every token a sample, from the server's latency histograms) are judged on
the distributions the histograms give, not on medians of bucketed values (which fall in one
bucket and hid a p95 that went from 68 ms to 13 ms): ``compare_quantile`` takes the quantile
the SLO is on (p95) before and after, its uncertainty from a multinomial bootstrap of the
bucket counts, and decides on that; a rank test with ties on the bucket counts (Mann-Whitney,
``rank_test``) is reported beside it. So the verdict's direction is the quantile's, and the
figures it prints are that quantile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import numpy as np

from autotune.types import Buckets, Direction, Snapshot, Verdict, VerifyResult
from autotune.verify.objectives import (MAX_TOKEN_SAMPLES, MIN_SAMPLES, MIN_TOKENS, OBJECTIVES, objective,
                                        objective_series)

__all__ = ["MIN_SAMPLES", "OBJECTIVES", "VerifyResult", "compare", "compare_quantile", "decide",
           "evaluate", "mann_whitney_p", "objective_series", "rank_test"]

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
    scale = 1.0 if absolute else (abs(bm) or abs(am) or 1.0)
    verdict, why = _verdict(effect, lo, hi, scale, significant=p < alpha and (lo > 0 or hi < 0),
                            min_effect=min_effect, direction=direction, absolute=absolute)
    if verdict == "inconclusive":
        why = why.replace(", CI", f", p={p:.3g}, CI", 1) + (
            f" (needs p<{alpha}, CI excluding 0 and |effect|>{min_effect:g})")
    else:
        why += f" (p={p:.3g})"
    return VerifyResult(verdict=verdict, p_value=p, effect=effect, ci_low=lo, ci_high=hi,
                        reason=why, **base)


def _verdict(effect: float, lo: float, hi: float, scale: float, *, significant: bool,
             min_effect: float, direction: Direction, absolute: bool) -> tuple[Verdict, str]:
    """The verdict from an effect, the CI (lo, hi) of the difference in objective units and
    whether the test found a difference: one rule for ``compare`` and ``compare_quantile``."""
    worse_sign = 1.0 if direction == "lower_is_better" else -1.0
    worse = effect * worse_sign  # > 0: the objective moved the wrong way
    fmt = (lambda x: f"{x:+.3f}") if absolute else (lambda x: f"{x:+.1%}")
    if significant and worse > min_effect and (lo * worse_sign > 0):
        return "regressed", f"worse by {fmt(worse)[1:]}"
    if significant and -worse > min_effect and (hi * worse_sign < 0):
        return "improved", f"better by {fmt(-worse)[1:]}"
    if -min_effect <= lo / scale and hi / scale <= min_effect:
        return "unchanged", (f"no change that matters: CI of the change [{fmt(lo / scale)}, "
                             f"{fmt(hi / scale)}] inside +-{min_effect:g}{'' if absolute else ' (relative)'}")
    return "inconclusive", f"change {fmt(-worse)} better, CI [{lo:.4g}, {hi:.4g}]"


def compare_quantile(
    before: Buckets | None,
    after: Buckets | None,
    *,
    q: float,
    alpha: float = 0.05,
    min_effect: float = 0.05,
    direction: Direction = "lower_is_better",
    min_observations: int = MIN_TOKENS,
    max_observations: int = MAX_TOKEN_SAMPLES,
    n_resamples: int = 2000,
    seed: int = 0,
    objective: str | None = None,
    significant_only: bool = False,
) -> VerifyResult:
    """Compare the ``q`` quantile of two windows' histograms (same bucket layout).

    The quantile is read as Prometheus' ``histogram_quantile`` reads it (autotune/histogram.py);
    its uncertainty comes from resampling each window's bucket counts (multinomial, fixed seed).
    A window counts as at most ``max_observations`` independent tokens (the tokens of one
    request are not independent): more only narrows the CI of what it cannot show better. The
    verdict needs the (1 - alpha) CI of the quantile's change to exclude 0 and the change to
    exceed ``min_effect`` (relative); ``unchanged`` when the whole CI lies inside the margin.
    ``p_value`` is the bootstrap's two-sided p of the quantile's change; the rank test with ties
    (``rank_test``) is in the reason. ``before_median``/``after_median`` hold the quantile."""
    from autotune import histogram

    nb, na = histogram.count(before), histogram.count(after)
    qb = histogram.quantile(q, before) if before is not None else None
    qa = histogram.quantile(q, after) if after is not None else None
    base = dict(n_before=int(round(nb)), n_after=int(round(na)), before_median=qb, after_median=qa,
                direction=direction, objective=objective, quantile=q)
    if nb < min_observations or na < min_observations or qb is None or qa is None:
        return VerifyResult(verdict="inconclusive", reason=f"too few tokens ({nb:.0f} before, "
                            f"{na:.0f} after; need {min_observations} each)", **base)
    assert before is not None and after is not None
    if before.le != after.le:
        return VerifyResult(verdict="inconclusive", reason="the bucket layout changed between the "
                            "windows (the server restarted): nothing to compare", **base)
    effect = _relative(qb, qa)
    pct = f"p{q * 100:g}"
    p_rank, shift = rank_test(before, after, max_observations)
    lo, hi, p = bootstrap_quantile_diff(before, after, q=q, alpha=alpha, n_resamples=n_resamples,
                                        seed=seed, max_observations=max_observations)
    significant = lo > 0 or hi < 0
    figures = f"{pct} {qb:.4g} s -> {qa:.4g} s, bootstrap p={p:.3g}; rank test p={p_rank:.3g} ({shift})"
    if significant_only and not significant:
        return VerifyResult(verdict="inconclusive", p_value=p, effect=effect,
                            reason=f"not significant yet ({figures}; needs p<{alpha:g})", **base)
    verdict, why = _verdict(effect, lo, hi, abs(qb) or abs(qa) or 1.0, significant=significant,
                            min_effect=min_effect, direction=direction, absolute=False)
    over_b, over_a = _beyond_top(before, q), _beyond_top(after, q)
    if over_b or over_a:
        # the quantile is past the page's top finite bucket on a side: read as that bound, its
        # change is only a bound too, so judge on the mean (the histogram's sum is exact)
        verdict, why = _censored_verdict(before, after, over_b, over_a, p_rank, shift, alpha=alpha,
                                         min_effect=min_effect, direction=direction, pct=pct)
        effect = _relative(histogram_mean(before), histogram_mean(after))
        return VerifyResult(verdict=verdict, p_value=p_rank, effect=effect, ci_low=lo, ci_high=hi,
                            reason=f"{why}: {figures}", **base)
    if verdict == "inconclusive":
        why += f" (needs the CI to exclude 0 at alpha {alpha:g} and |effect|>{min_effect:g})"
    return VerifyResult(verdict=verdict, p_value=p, effect=effect, ci_low=lo, ci_high=hi,
                        reason=f"{pct} {why}: {figures}", **base)


def _beyond_top(b: Buckets, q: float) -> bool:
    """More than 1 - q of the observations lie above the top finite bound: the q quantile is
    only known to be at least that bound."""
    total = sum(max(c, 0.0) for c in b.counts)
    over = max(b.counts[-1], 0.0) if len(b.counts) > len(b.le) else 0.0
    return total > 0 and over / total > 1.0 - q


def histogram_mean(b: Buckets) -> float:
    """The mean observation from the histogram's sum and count (exact, whatever the buckets)."""
    total = sum(max(c, 0.0) for c in b.counts)
    return b.sum / total if total > 0 else math.nan


def _censored_verdict(before: Buckets, after: Buckets, over_b: bool, over_a: bool, p_rank: float,
                      shift: str, *, alpha: float, min_effect: float, direction: Direction,
                      pct: str) -> tuple[Verdict, str]:
    """The verdict when the quantile is beyond the top bucket on a side: the rank test says
    whether the windows differ and which way, the exact means say by how much. Never
    ``unchanged``: a change hidden past the top bucket cannot be shown to be small."""
    mb, ma = histogram_mean(before), histogram_mean(after)
    top = before.le[-1]
    side = "both windows" if over_b and over_a else "after the change" if over_a else "before the change"
    head = f"{pct} beyond the page's top bucket ({top:g} s) {side}; judged on the mean {mb:.4g} s -> {ma:.4g} s"
    if not (math.isfinite(mb) and math.isfinite(ma)) or mb <= 0:
        return "inconclusive", head
    change = ma / mb - 1.0
    worse = change if direction == "lower_is_better" else -change
    agrees = (shift == "after higher") == (change > 0)
    if p_rank < alpha and agrees and worse > min_effect:
        return "regressed", f"{head}, worse by {worse:.1%}"
    if p_rank < alpha and agrees and -worse > min_effect:
        return "improved", f"{head}, better by {-worse:.1%}"
    return "inconclusive", f"{head} (needs rank test p<{alpha:g} agreeing and |change|>{min_effect:g})"


def _scaled(b: Buckets, limit: int) -> np.ndarray:
    """Bucket counts (negatives as 0) scaled to at most ``limit`` observations in all."""
    c = np.clip(np.asarray(b.counts, dtype=float), 0.0, None)
    total = c.sum()
    return c * (limit / total) if total > limit else c


def rank_test(before: Buckets, after: Buckets, max_observations: int = MAX_TOKEN_SAMPLES) -> tuple[float, str]:
    """Mann-Whitney U on the bucketed observations (every observation of a bucket tied with the
    others in it), from the counts alone: (two-sided p with tie correction, which window is
    stochastically smaller). Counts are scaled as ``compare_quantile`` scales them."""
    b, a = _scaled(before, max_observations), _scaled(after, max_observations)
    n1, n2 = b.sum(), a.sum()
    below_b = np.concatenate([[0.0], np.cumsum(b)[:-1]])
    u_after = float((a * (below_b + b / 2)).sum())  # pairs (before, after) with after above
    n = n1 + n2
    t = a + b
    var = n1 * n2 / 12 * ((n + 1) - float((t ** 3 - t).sum()) / (n * (n - 1)))
    mean = n1 * n2 / 2
    if var <= 0:
        return 1.0, "no difference"
    z = (abs(u_after - mean) - 0.5) / math.sqrt(var)
    p = float(min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2))))
    shift = "after lower" if u_after < mean else "after higher" if u_after > mean else "no shift"
    return p, shift


def quantile_rows(q: float, le: Sequence[float], counts: np.ndarray) -> np.ndarray:
    """``histogram.quantile(q, ...)`` of every row of ``counts`` (R x buckets), vectorised: the
    same rule, so a resampled quantile is read as the observed one is."""
    counts = np.clip(counts, 0.0, None)
    cum = np.cumsum(counts, axis=1)
    total = cum[:, -1]
    rank = q * total
    i = (cum < rank[:, None]).sum(axis=1)  # bisect_left
    nle = len(le)
    upper_all = np.append(np.asarray(le, dtype=float), le[-1])  # the +Inf bucket reads le[-1]
    lower_all = np.concatenate([[0.0], np.asarray(le, dtype=float)])
    idx = np.minimum(i, nle)
    upper, lower = upper_all[idx], lower_all[idx]
    rows = np.arange(len(counts))
    below = np.where(idx > 0, cum[rows, np.maximum(idx - 1, 0)], 0.0)
    in_bucket = cum[rows, idx] - below
    frac = np.divide(rank - below, in_bucket, out=np.zeros_like(rank), where=in_bucket > 0)
    out = lower + (upper - lower) * frac
    out = np.where((i >= nle) | (in_bucket <= 0) | ((idx == 0) & (upper <= 0)), upper, out)
    return np.where(total > 0, out, np.nan)


def bootstrap_quantile_diff(before: Buckets, after: Buckets, *, q: float, alpha: float,
                            n_resamples: int, seed: int, max_observations: int) -> tuple[float, float, float]:
    """(lo, hi, two-sided p) of quantile(after) - quantile(before): each window's counts redrawn
    (multinomial, as many observations as it counts, at most ``max_observations``)."""
    rng = np.random.default_rng(seed)

    def draws(b: Buckets) -> np.ndarray:
        c = _scaled(b, max_observations)
        n = max(1, int(round(c.sum())))
        return quantile_rows(q, b.le, rng.multinomial(n, c / c.sum(), size=n_resamples).astype(float))

    diffs = draws(after) - draws(before)
    diffs = diffs[np.isfinite(diffs)]
    lo, hi = np.percentile(diffs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    tail = min(int((diffs <= 0).sum()), int((diffs >= 0).sum()))
    p = min(1.0, 2 * (tail + 1) / (len(diffs) + 1))  # never 0 from a finite resample
    return float(lo), float(hi), p


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
    if obj.kind.per_token and obj.kind.quantile is not None:
        return compare_quantile(obj.histogram(before), obj.histogram(after), q=obj.kind.quantile,
                                alpha=alpha, min_effect=min_effect, direction=obj.direction,
                                objective=objective_name, significant_only=significant_only)
    return compare(obj.series(before), obj.series(after), alpha=alpha, min_effect=min_effect,
                   direction=obj.direction, min_samples=min_samples, objective=objective_name,
                   absolute=obj.kind.absolute, significant_only=significant_only)
