"""Intervals over repeated runs: the mean of a figure with its 95 % interval, and paired
differences between two rows of the same runs.

The unit of replication is the run (one arrival seed, every row played on it): windows inside
one run are not independent (a queue carries from one to the next), runs with different seeds
are. So every interval here is over per-run figures, never over pooled windows or requests.

Why a t interval and not a bootstrap: the benchmarks run 3-5 seeds. A percentile bootstrap of
3 values has 10 distinct resamples and its interval is the range of the data or narrower,
too optimistic exactly where it matters; Student's t with n - 1 degrees of freedom widens the
interval for small n (t = 4.30 at n = 3) and is exact for normal per-run figures. The
comparison of two rows is paired by seed (both rows saw the same arrivals), so the interval is
the t interval of the per-seed differences: run-to-run spread that both rows share (a busier
machine, a burstier seed) cancels, which an unpaired comparison of two means would not allow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from pydantic import BaseModel

LEVEL = 0.95
METHOD = "Student t on per-seed values (paired by seed for differences), 95 %"


class Interval(BaseModel):
    """A figure over ``n`` runs: its mean and 95 % interval (None with fewer than 2 runs)."""

    n: int
    mean: float | None
    lo: float | None = None
    hi: float | None = None
    values: list[float] = []

    def excludes(self, x: float) -> bool | None:
        """True when the interval lies wholly on one side of ``x``; None without an interval."""
        if self.lo is None or self.hi is None:
            return None
        return x < self.lo or x > self.hi

    def text(self, nd: int = 2, scale: float = 1.0, unit: str = "") -> str:
        """``0.97 [0.94, 1.00]`` (``-`` when there is no value; no brackets with one run)."""
        if self.mean is None:
            return "-"
        m = f"{self.mean * scale:.{nd}f}{unit}"
        if self.lo is None or self.hi is None:
            return m
        return f"{m} [{self.lo * scale:.{nd}f}, {self.hi * scale:.{nd}f}]"


def _finite(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def t_quantile(n: int, level: float = LEVEL) -> float:
    """Two-sided Student t quantile for ``n`` values (n - 1 degrees of freedom)."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, n - 1))


def mean_ci(values: Iterable[float | None], level: float = LEVEL) -> Interval:
    """Mean and t interval of the finite values (missing and infinite ones are left out)."""
    v = _finite(values)
    n = len(v)
    if n == 0:
        return Interval(n=0, mean=None)
    m = sum(v) / n
    if n < 2:
        return Interval(n=n, mean=m, values=v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1))
    half = t_quantile(n, level) * sd / math.sqrt(n)
    return Interval(n=n, mean=m, lo=m - half, hi=m + half, values=v)


class Paired(BaseModel):
    """Row ``a`` minus row ``b`` over the seeds where both have the figure."""

    a: str
    b: str
    diff: Interval
    seeds: list[int | str]

    @property
    def differs(self) -> bool | None:
        """Is the difference larger than its interval (the interval excludes 0)? None with < 2 seeds."""
        return self.diff.excludes(0.0)

    def verdict(self) -> str:
        d = self.differs
        if d is None:
            return "n < 2"
        if not d:
            return "no (within the interval)"
        return f"yes: {self.a} {'higher' if (self.diff.mean or 0) > 0 else 'lower'}"


def paired(a: str, b: str, by_seed_a: dict, by_seed_b: dict, *, log: bool = False,
           level: float = LEVEL) -> Paired:
    """Paired t interval of ``a - b`` over the common seeds (``log``: of ln(a / b), for ratios of
    latencies; the interval is then on the log scale, ``exp`` gives the ratio's)."""
    seeds = [s for s in by_seed_a if s in by_seed_b]
    diffs: list[float | None] = []
    used = []
    for s in seeds:
        x, y = by_seed_a[s], by_seed_b[s]
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        if log:
            if x <= 0 or y <= 0:
                continue
            diffs.append(math.log(x / y))
        else:
            diffs.append(x - y)
        used.append(s)
    return Paired(a=a, b=b, diff=mean_ci(diffs, level), seeds=used)


def median(values: Sequence[float]) -> float | None:
    v = sorted(values)
    if not v:
        return None
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2
