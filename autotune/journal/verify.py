"""Did a change help? Pure statistics over before/after windows of one objective.

``compare`` asks two questions and both must agree before a verdict other than
``inconclusive``: a two-sided Mann-Whitney U test (are the windows different at all?) and a
percentile bootstrap CI of the difference of medians (fixed seed, so the same data always gives
the same verdict) that must exclude zero on the same side. On top, the relative change of the
median must exceed ``min_effect``: a significant 1 % shift is not worth a knob change. Tiny,
empty or constant windows are inconclusive, never an exception.

Samples must be roughly independent for the test to mean anything. That is why the PSI
objective uses ``total_usec`` deltas over >= 2 s intervals rather than ``avg10`` per tick
(avg10 is a 10 s exponential moving average; successive 1 s readings share most of their
information), and why latency readings repeated between two probes count once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import stats

from autotune.types import PsiLine, Snapshot

Direction = Literal["lower_is_better", "higher_is_better"]
Verdict = Literal["improved", "regressed", "inconclusive"]


MIN_SAMPLES = 5  # per window; fewer cannot show a significant difference


class VerifyResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    verdict: Verdict
    p_value: float | None  # Mann-Whitney two-sided; None when not computed
    effect: float | None  # (after_median - before_median) / |before_median|; + means larger
    ci_low: float | None  # bootstrap CI of after_median - before_median, objective units
    ci_high: float | None
    n_before: int
    n_after: int
    before_median: float | None
    after_median: float | None
    direction: Direction
    objective: str | None = None
    reason: str = ""


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


# -- objectives ----------------------------------------------------------------------------
class Objective(Protocol):
    name: str
    direction: Direction

    def series(self, window: Sequence[Snapshot], service: str | None) -> list[float]:
        """Roughly independent samples of the objective over ``window`` (oldest first)."""


class LatencyP95:
    """Inference p95 latency (s) of the service; a reading repeated between probes counts once."""

    name = "latency_p95"
    direction: Direction = "lower_is_better"
    field = "p95_s"

    def series(self, window: Sequence[Snapshot], service: str | None) -> list[float]:
        out, prev = [], None
        for s in window:
            svc = s.services.get(service or "")
            lat = svc.latency if svc else None
            if lat is None or not lat.ok or lat == prev:
                continue
            prev = lat
            v = getattr(lat, self.field)
            if v is not None:
                out.append(float(v))
        return out


class Requests(LatencyP95):
    """Requests completed per latency reading (higher is better)."""

    name = "requests"
    direction: Direction = "higher_is_better"
    field = "requests"


class PsiCpu:
    """CPU pressure 'some' (% of wall time stalled): the service's cgroup PSI when the window
    has it, else the host's. Per-interval values from total_usec deltas over >= min_interval_s;
    if totals are missing, avg10 subsampled every >= 10 s (its own averaging horizon)."""

    name = "psi"
    direction: Direction = "lower_is_better"

    def __init__(self, resource: str = "cpu", min_interval_s: float = 2.0) -> None:
        self.resource = resource
        self.min_interval_s = min_interval_s

    def _line(self, s: Snapshot, service: str | None) -> PsiLine | None:
        if service is not None:
            svc = s.services.get(service)
            r = svc.cgroup.psi.get(self.resource) if svc and svc.cgroup else None
        else:
            r = s.psi.get(self.resource)
        return r.some if r is not None else None

    def series(self, window: Sequence[Snapshot], service: str | None) -> list[float]:
        src = service
        if service is None or not any(self._line(s, service) for s in window):
            src = None  # the service has no cgroup PSI here (v1-only host): use the host's
        points = [(s.ts, line) for s in window if (line := self._line(s, src)) is not None]
        out: list[float] = []
        anchor: tuple[float, PsiLine] | None = None
        for ts, line in points:
            if anchor is None:
                anchor = (ts, line)
                continue
            dt = ts - anchor[0]
            if dt < self.min_interval_s:
                continue
            d = line.total_usec - anchor[1].total_usec
            if d >= 0:  # a reset (cgroup recreated) just restarts the interval
                out.append(min(100.0, d / (dt * 1e6) * 100.0))
            anchor = (ts, line)
        if out or len(points) < 2:
            return out
        # No usable totals: fall back to avg10, one reading per 10 s.
        sub, last_ts = [], -math.inf
        for ts, line in points:
            if ts - last_ts >= 10.0:
                sub.append(line.avg10_pct)
                last_ts = ts
        return sub


class CpuThroughput:
    """CPU cores the service used per interval (cgroup cpu_usage_usec deltas): a batch
    neighbour's throughput proxy, higher is better."""

    name = "throughput"
    direction: Direction = "higher_is_better"

    def __init__(self, min_interval_s: float = 2.0) -> None:
        self.min_interval_s = min_interval_s

    def series(self, window: Sequence[Snapshot], service: str | None) -> list[float]:
        out: list[float] = []
        anchor: tuple[float, int] | None = None
        for s in window:
            svc = s.services.get(service or "")
            usage = svc.cgroup.cpu_usage_usec if svc and svc.cgroup else None
            if usage is None:
                continue
            if anchor is None or usage < anchor[1]:
                anchor = (s.ts, usage)
                continue
            dt = s.ts - anchor[0]
            if dt >= self.min_interval_s:
                out.append((usage - anchor[1]) / (dt * 1e6))
                anchor = (s.ts, usage)
        return out


OBJECTIVES: dict[str, Objective] = {
    o.name: o for o in (LatencyP95(), Requests(), PsiCpu(), CpuThroughput())
}


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError as err:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}") from err


def objective_series(objective_name: str, window: Sequence[Snapshot], service: str | None) -> list[float]:
    return get_objective(objective_name).series(window, service)


def evaluate(
    objective_name: str,
    before: Sequence[Snapshot],
    after: Sequence[Snapshot],
    service: str | None,
    *,
    alpha: float = 0.05,
    min_effect: float = 0.05,
    min_samples: int = MIN_SAMPLES,
) -> VerifyResult:
    """Series from both windows of snapshots, then ``compare`` in the objective's direction."""
    obj = get_objective(objective_name)
    return compare(obj.series(before, service), obj.series(after, service), alpha=alpha,
                   min_effect=min_effect, direction=obj.direction, min_samples=min_samples,
                   objective=obj.name)
