"""Control laws for the admission gate: pure functions, no clock, no I/O.

Two laws adapt the concurrency limit from the latency of completed requests:

- ``gradient`` (after Netflix's concurrency-limits Gradient2): compare a fast EWMA of latency
  with a slow one; ``limit = limit * clamp(tolerance * long / short, 0.5, 1) + sqrt(limit)``,
  smoothed. While latency stays near its long-run level the sqrt term grows the limit; when
  queueing inflates latency the gradient shrinks it. No latency target needed.
- ``aimd``: additive increase while latency is under ``target_s``, multiplicative decrease
  (``backoff``) when over it.

A third law adapts the PSI threshold: when latency breaches its target while the gate is not
holding on pressure, lower the threshold (hold earlier); when latency is comfortable but
requests were held for pressure, raise it. Always within [min_threshold, max_threshold].

Latencies are in seconds; thresholds in percent (PSI some avg10).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Law = Literal["gradient", "aimd"]


class LimiterConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    law: Law = "gradient"
    min_limit: int = Field(1, ge=1)
    max_limit: int = Field(64, ge=1)
    # gradient law
    smoothing: float = Field(0.2, gt=0, le=1)  # weight of each new limit estimate
    tolerance: float = Field(1.5, ge=1)  # latency may reach long * tolerance before shrinking
    short_window: int = Field(5, ge=1)  # samples in the fast latency EWMA
    long_window: int = Field(200, ge=2)  # samples in the slow latency EWMA
    # aimd law (and threshold law): latency target; None = derive as long EWMA * tolerance
    target_s: float | None = Field(None, gt=0)
    backoff: float = Field(0.9, gt=0, lt=1)
    # threshold law
    min_threshold: float = Field(10.0, ge=0, le=100)
    max_threshold: float = Field(90.0, ge=0, le=100)
    threshold_step: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> LimiterConfig:
        if self.min_limit > self.max_limit:
            raise ValueError(f"min_limit {self.min_limit} > max_limit {self.max_limit}")
        if self.min_threshold > self.max_threshold:
            raise ValueError(f"min_threshold {self.min_threshold} > max_threshold {self.max_threshold}")
        return self


class LimiterState(BaseModel):
    """What the law remembers between samples. ``limit`` is fractional; callers floor it."""

    model_config = ConfigDict(frozen=True)

    limit: float
    short_s: float | None = None  # fast EWMA of latency
    long_s: float | None = None  # slow EWMA of latency
    samples: int = 0

    @property
    def int_limit(self) -> int:
        return max(1, int(self.limit))


def clamp(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


def _ewma(prev: float | None, x: float, window: int) -> float:
    return x if prev is None else prev + (x - prev) / window


def update_limit(
    state: LimiterState, cfg: LimiterConfig, *, latency_s: float, inflight: int
) -> LimiterState:
    """New state after one completed request that took ``latency_s`` with ``inflight`` running.

    A limit is only grown while it is actually used (inflight >= limit / 2): an idle gate has
    learned nothing about whether more concurrency would hurt.
    """
    if not math.isfinite(latency_s) or latency_s < 0:
        return state
    short = _ewma(state.short_s, latency_s, cfg.short_window)
    long = _ewma(state.long_s, latency_s, cfg.long_window)
    # Drift recovery (Gradient2): after a sustained slowdown ends the slow average sits far
    # above the fast one and would let the limit overshoot; pull it down.
    if short > 0 and long / short > 2:
        long *= 0.95
    limit = state.limit
    used = inflight >= limit / 2
    if cfg.law == "gradient":
        gradient = clamp(cfg.tolerance * long / short, 0.5, 1.0) if short > 0 else 1.0
        if gradient >= 1.0 and not used:
            new = limit
        else:
            estimate = limit * gradient + math.sqrt(limit)
            new = limit * (1 - cfg.smoothing) + estimate * cfg.smoothing
    else:
        target = cfg.target_s if cfg.target_s is not None else long * cfg.tolerance
        if latency_s > target:
            new = limit * cfg.backoff
        elif used:
            new = limit + 1.0 / max(1.0, limit)  # +1 per limit's worth of completions
        else:
            new = limit
    new = clamp(new, cfg.min_limit, cfg.max_limit)
    return LimiterState(limit=new, short_s=short, long_s=long, samples=state.samples + 1)


def latency_target(state: LimiterState, cfg: LimiterConfig) -> float | None:
    """The latency the gate aims for: configured, else the slow EWMA times tolerance."""
    if cfg.target_s is not None:
        return cfg.target_s
    return None if state.long_s is None else state.long_s * cfg.tolerance


def update_threshold(
    threshold: float,
    cfg: LimiterConfig,
    *,
    latency_s: float,
    target_s: float | None,
    pressure_pct: float | None,
    held_for_pressure: bool,
) -> float:
    """Move the PSI threshold one step toward what latency says it should be.

    - latency over target while pressure is at or below the threshold (gate not holding):
      pressure is hurting latency before the gate reacts -> lower the threshold.
    - latency comfortably under target (< 0.8 x) although requests were held for pressure:
      the gate is too cautious -> raise the threshold.
    """
    if target_s is None or pressure_pct is None or not math.isfinite(latency_s):
        return clamp(threshold, cfg.min_threshold, cfg.max_threshold)
    new = threshold
    if latency_s > target_s and pressure_pct <= threshold:
        new = threshold - cfg.threshold_step
    elif latency_s < 0.8 * target_s and held_for_pressure:
        new = threshold + cfg.threshold_step
    return clamp(new, cfg.min_threshold, cfg.max_threshold)
