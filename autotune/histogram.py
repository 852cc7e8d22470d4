"""Latency histograms per interval: from a server's cumulative buckets to window quantiles.

A metrics page's histograms are cumulative since the server started. The latency sensor keeps
the *interval* between two scrapes (``Buckets``: per-bucket counts, not cumulative) in each
snapshot, so any window of snapshots can be merged and its quantile read - the p95 of every
token generated in the last 10 s, not the p95 of the last scrape. Pure; one quantile rule
(Prometheus' ``histogram_quantile``: linear inside a bucket, the highest finite bound for a
rank in the +Inf bucket) for the sensor and the metric vocabulary alike.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from itertools import accumulate
from collections.abc import Iterable, Sequence

from autotune.types import Buckets


def from_cumulative(buckets: Sequence[tuple[float, float]], total_sum: float = 0.0) -> Buckets | None:
    """(le, cumulative count) pairs, last le = +Inf, to ``Buckets``; None without a +Inf bucket."""
    les = [le for le, _ in buckets]
    if len(les) < 2 or not math.isinf(les[-1]):
        return None
    counts: list[float] = []
    below = 0.0
    for _, c in buckets:  # enforce monotonicity like Prometheus (float noise, races)
        c = max(c, below)
        counts.append(c - below)
        below = c
    return Buckets(le=tuple(les[:-1]), counts=tuple(counts), sum=total_sum)


def merge(parts: Iterable[Buckets | None]) -> Buckets | None:
    """Sum intervals into one window. Parts with another bucket layout than the newest are
    dropped (the server restarted with other buckets): a window never mixes layouts."""
    items = [p for p in parts if p is not None]
    if not items:
        return None
    layout = items[-1].le
    same = [p for p in items if p.le == layout]
    counts = [sum(col) for col in zip(*(p.counts for p in same))]
    return Buckets(le=layout, counts=tuple(counts), sum=sum(p.sum for p in same))


def quantile(q: float, b: Buckets | None) -> float | None:
    """The ``q`` quantile of the observations in ``b``; None when it holds none."""
    return quantiles((q,), b)[0]


def quantiles(qs: Sequence[float], b: Buckets | None) -> list[float | None]:
    """``quantile`` of each of ``qs``, the cumulative counts summed once."""
    for q in qs:
        if not 0 <= q <= 1:
            raise ValueError(f"quantile {q} outside [0, 1]")
    if b is None or not b.le:
        return [None] * len(qs)
    cum = list(accumulate(c if c > 0.0 else 0.0 for c in b.counts))
    total = cum[-1]
    if total <= 0:
        return [None] * len(qs)
    return [_at_rank(q * total, cum, b.le) for q in qs]


def _at_rank(rank: float, cum: list[float], le: Sequence[float]) -> float:
    i = bisect_left(cum, rank)
    if i >= len(le):  # the +Inf bucket
        return le[-1]
    upper = le[i]
    if i == 0:
        if upper <= 0:
            return upper
        lower, below = 0.0, 0.0
    else:
        lower, below = le[i - 1], cum[i - 1]
    in_bucket = cum[i] - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket


def count(b: Buckets | None) -> float:
    """Observations in ``b`` (0 for None)."""
    return 0.0 if b is None else float(sum(max(0.0, c) for c in b.counts))


def samples(b: Buckets, limit: int) -> list[float]:
    """The observations in ``b`` as values, each at its bucket's midpoint (the +Inf bucket at
    the highest finite bound), thinned evenly to at most ``limit`` (ascending)."""
    total = count(b)
    if total <= 0 or not b.le:
        return []
    scale = min(1.0, limit / total)
    out: list[float] = []
    carry = 0.0
    for i, c in enumerate(b.counts):
        lower = 0.0 if i == 0 else b.le[i - 1]
        value = b.le[-1] if i >= len(b.le) else (lower + b.le[i]) / 2
        carry += max(0.0, c) * scale
        n = int(carry + 1e-9)
        carry -= n
        out.extend([value] * n)
    return out
