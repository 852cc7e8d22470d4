"""The admission gate as a library: ``async with gate.admit(): ...``.

A request is admitted when fewer than ``limit`` requests are in flight AND the selected PSI
some avg10 is at or below ``threshold_pct`` (unknown pressure fails open). Pressure never holds
the ``min_inflight`` (default 1) first requests: with nothing of ours in flight the pressure is
someone else's (a neighbour's), and holding would starve the service forever. Otherwise it waits
in a bounded FIFO queue: a full queue or a wait longer than ``queue_timeout_s`` raises
``GateRejected`` (the proxy turns it into HTTP 503 + Retry-After). Waiters are re-checked on
every release and by a poller every ``poll_interval_s`` while anyone waits (pressure changes
are not events we can subscribe to: PSI triggers are EINVAL here).

With ``adaptive`` on, each completed request's latency feeds ``limiter.update_limit`` and
``limiter.update_threshold``; the agent's knob (POST /gate/config) sets the starting point and
the bounds. The registry holds the counters (at scrape time) and histograms of the queue wait
and of the upstream time of admitted requests, in seconds. Single event loop only: not
thread-safe, no locks needed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field

from autotune.gate.limiter import (
    LimiterConfig,
    LimiterState,
    latency_target,
    update_limit,
    update_threshold,
)
from autotune.gate.pressure import PressureSource


WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0,
                    30.0, 60.0, 120.0, 300.0, 600.0)


class GateSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    threshold_pct: float | None = Field(40.0, ge=0, le=100)  # None: never hold on pressure
    limit: int = Field(4, ge=1)
    min_inflight: int = Field(1, ge=0)  # pressure holds nothing while fewer are in flight
    max_queue: int = Field(64, ge=0)
    queue_timeout_s: float = Field(30.0, gt=0)
    retry_after_s: int = Field(1, ge=0)
    adaptive: bool = True
    limiter: LimiterConfig = LimiterConfig()


class GateRejected(Exception):
    """The gate refused a request: ``reason`` is 'queue_full' or 'timeout'."""

    def __init__(self, reason: str, retry_after_s: int, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.retry_after_s = retry_after_s


class GateStatus(BaseModel):
    """What GET /gate/status returns and the admission knob reads."""

    threshold_pct: float | None
    limit: int
    min_inflight: int
    min_limit: int
    max_limit: int
    min_threshold_pct: float  # the adaptive threshold law stays within these
    max_threshold_pct: float
    adaptive: bool
    max_queue: int
    queue_timeout_s: float
    inflight: int
    queue_length: int
    admitted: int
    deferred: int
    rejected: int
    rejected_queue_full: int
    rejected_timeout: int
    pressure_pct: float | None
    pressure_source: str | None
    pressure_error: str | None
    latency_short_s: float | None
    latency_long_s: float | None
    latency_target_s: float | None


class Ticket:
    """One admitted request. ``release`` is idempotent (stream end and cleanup may both call)."""

    __slots__ = ("gate", "admitted_at", "first_byte_s", "released")

    def __init__(self, gate: Gate, admitted_at: float) -> None:
        self.gate = gate
        self.admitted_at = admitted_at
        self.first_byte_s: float | None = None  # set by the proxy: admission -> first body chunk
        self.released = False

    def release(self, *, latency_s: float | None = None) -> None:
        if not self.released:
            self.released = True
            self.gate._release(latency_s)


class Gate:
    def __init__(self, settings: GateSettings | None = None, pressure: PressureSource | None = None, *,
                 clock: Callable[[], float] = time.monotonic, poll_interval_s: float = 0.1) -> None:
        self.settings = settings or GateSettings()
        self.pressure = pressure
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.inflight = 0
        self.admitted = 0
        self.deferred = 0
        self.rejected_queue_full = 0
        self.rejected_timeout = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._poller: asyncio.Task[None] | None = None
        self._held_for_pressure = False
        self._state = LimiterState(limit=float(self.settings.limit))
        self.passthrough = 0
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_GateCollector(self))
        self.queue_wait = Histogram("autotune_gate_queue_wait_seconds", "Arrival to admission of "
                                    "admitted requests, seconds (0 when admitted at once).",
                                    buckets=WAIT_BUCKETS, registry=self.registry)
        self.upstream_first_byte = Histogram("autotune_gate_upstream_first_byte_seconds",
                                             "Admission to the first upstream body chunk, seconds "
                                             "(what the adaptive limit learns from).",
                                             buckets=UPSTREAM_BUCKETS, registry=self.registry)
        self.upstream_latency = Histogram("autotune_gate_upstream_latency_seconds", "Admission to "
                                          "the end of the upstream response (the slot's hold "
                                          "time), seconds.", buckets=UPSTREAM_BUCKETS,
                                          registry=self.registry)

    # -- admission ------------------------------------------------------------------------------
    def _pressure(self) -> float | None:
        return None if self.pressure is None else self.pressure.read()

    def _blocked_by(self) -> str | None:
        if self.inflight >= self.settings.limit:
            return "limit"
        threshold = self.settings.threshold_pct
        if threshold is not None and self.inflight >= self.settings.min_inflight:
            p = self._pressure()
            if p is not None and p > threshold:
                return "pressure"
        return None

    def _take(self) -> Ticket:
        self.inflight += 1
        self.admitted += 1
        return Ticket(self, self.clock())

    async def acquire(self) -> Ticket:
        """Wait for a slot. GateRejected when the queue is full or the wait times out."""
        s = self.settings
        arrived = self.clock()
        if not self._waiters and self._blocked_by() is None:
            self.queue_wait.observe(0.0)
            return self._take()
        if len(self._waiters) >= s.max_queue:
            self.rejected_queue_full += 1
            raise GateRejected("queue_full", s.retry_after_s,
                               f"admission queue full ({s.max_queue} waiting, {self.inflight} in flight)")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.deferred += 1
        self._dispatch()  # a poller may be needed; also admits at once if state changed
        if self._waiters and (self._poller is None or self._poller.done()):
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            await asyncio.wait_for(fut, s.queue_timeout_s)
        except TimeoutError:
            self._forget(fut)
            self.rejected_timeout += 1
            raise GateRejected("timeout", s.retry_after_s,
                               f"waited {s.queue_timeout_s:g} s for admission ({self._blocked_by() or 'queue'})"
                               ) from None
        except asyncio.CancelledError:  # the client went away while waiting
            self._forget(fut)
            if fut.done() and not fut.cancelled():
                self._release(None)
            raise
        now = self.clock()
        self.queue_wait.observe(max(0.0, now - arrived))
        return Ticket(self, now)

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[Ticket]:
        """Library use: hold a slot for the body; its duration feeds the adaptive limit."""
        ticket = await self.acquire()
        ok = False
        try:
            yield ticket
            ok = True
        finally:
            held = self.clock() - ticket.admitted_at
            if ok:
                self.observe_upstream(first_byte_s=None, total_s=held)
            ticket.release(latency_s=held if ok else None)

    def observe_upstream(self, *, first_byte_s: float | None, total_s: float) -> None:
        """Record one admitted request's upstream timings (the proxy calls this at its end)."""
        if first_byte_s is not None:
            self.upstream_first_byte.observe(max(0.0, first_byte_s))
        self.upstream_latency.observe(max(0.0, total_s))

    def _forget(self, fut: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(fut)
        except ValueError:
            pass

    def _dispatch(self) -> None:
        while self._waiters:
            if self._waiters[0].done():  # cancelled by a timeout
                self._waiters.popleft()
                continue
            why = self._blocked_by()
            if why is not None:
                if why == "pressure":
                    self._held_for_pressure = True
                return
            fut = self._waiters.popleft()
            self.inflight += 1
            self.admitted += 1
            fut.set_result(None)

    async def _poll(self) -> None:
        while self._waiters:
            await asyncio.sleep(self.poll_interval_s)
            self._dispatch()

    def _release(self, latency_s: float | None) -> None:
        inflight_before = self.inflight
        self.inflight = max(0, self.inflight - 1)
        if latency_s is not None and self.settings.adaptive and math.isfinite(latency_s):
            self._adapt(latency_s, inflight_before)
        self._dispatch()

    def _adapt(self, latency_s: float, inflight: int) -> None:
        cfg = self.settings.limiter
        self._state = update_limit(self._state, cfg, latency_s=latency_s, inflight=inflight)
        self.settings.limit = self._state.int_limit
        if self.settings.threshold_pct is not None:
            self.settings.threshold_pct = update_threshold(
                self.settings.threshold_pct, cfg, latency_s=self._state.short_s or latency_s,
                target_s=latency_target(self._state, cfg), pressure_pct=self._pressure(),
                held_for_pressure=self._held_for_pressure,
            )
        self._held_for_pressure = False

    # -- control --------------------------------------------------------------------------------
    def configure(self, *, threshold_pct: float | None | str = "keep", limit: int | None = None,
                  min_limit: int | None = None, max_limit: int | None = None, adaptive: bool | None = None,
                  max_queue: int | None = None, queue_timeout_s: float | None = None,
                  min_inflight: int | None = None, min_threshold_pct: float | None = None,
                  max_threshold_pct: float | None = None) -> GateStatus:
        """Apply a partial update atomically (ValueError, nothing changed, if any part is bad).

        ``threshold_pct=None`` turns the pressure hold off; the default "keep" leaves it.
        A new limit resets the adaptive state to it (the agent's word beats old samples).
        ``min_threshold_pct`` / ``max_threshold_pct`` bound the adaptive threshold law: that is
        how the agent steers an adaptive gate without fighting it; the live threshold is
        clamped into the new bounds.
        """
        s = self.settings
        lim_cfg = s.limiter.model_copy(update={k: v for k, v in (
            ("min_limit", min_limit), ("max_limit", max_limit),
            ("min_threshold", min_threshold_pct), ("max_threshold", max_threshold_pct)) if v is not None})
        lim_cfg = LimiterConfig.model_validate(lim_cfg.model_dump())  # re-check bounds
        new = s.model_dump()
        new["limiter"] = lim_cfg
        if threshold_pct != "keep":
            new["threshold_pct"] = threshold_pct
        for key, val in (("limit", limit), ("adaptive", adaptive), ("max_queue", max_queue),
                         ("queue_timeout_s", queue_timeout_s), ("min_inflight", min_inflight)):
            if val is not None:
                new[key] = val
        new_limit = new["limit"]
        if not lim_cfg.min_limit <= new_limit <= lim_cfg.max_limit:
            if limit is not None:
                raise ValueError(f"limit {new_limit} outside [min_limit {lim_cfg.min_limit}, "
                                 f"max_limit {lim_cfg.max_limit}]")
            new["limit"] = int(min(max(new_limit, lim_cfg.min_limit), lim_cfg.max_limit))
        t = new["threshold_pct"]
        if t is not None and not lim_cfg.min_threshold <= t <= lim_cfg.max_threshold:
            if threshold_pct != "keep":
                raise ValueError(f"threshold {t:g} outside [min_threshold {lim_cfg.min_threshold:g}, "
                                 f"max_threshold {lim_cfg.max_threshold:g}]")
            new["threshold_pct"] = min(max(t, lim_cfg.min_threshold), lim_cfg.max_threshold)
        validated = GateSettings.model_validate(new)  # ValidationError is a ValueError
        self.settings = validated
        if limit is not None or validated.limit != s.limit:
            self._state = LimiterState(limit=float(validated.limit), short_s=self._state.short_s,
                                       long_s=self._state.long_s, samples=self._state.samples)
        self._dispatch()
        return self.status()

    def status(self) -> GateStatus:
        s = self.settings
        return GateStatus(
            threshold_pct=s.threshold_pct, limit=s.limit, min_inflight=s.min_inflight, min_limit=s.limiter.min_limit,
            max_limit=s.limiter.max_limit, min_threshold_pct=s.limiter.min_threshold,
            max_threshold_pct=s.limiter.max_threshold, adaptive=s.adaptive, max_queue=s.max_queue,
            queue_timeout_s=s.queue_timeout_s, inflight=self.inflight,
            queue_length=sum(1 for f in self._waiters if not f.done()), admitted=self.admitted,
            deferred=self.deferred, rejected=self.rejected_queue_full + self.rejected_timeout,
            rejected_queue_full=self.rejected_queue_full, rejected_timeout=self.rejected_timeout,
            pressure_pct=self._pressure(),
            pressure_source=None if self.pressure is None else self.pressure.path,
            pressure_error=None if self.pressure is None else self.pressure.error,
            latency_short_s=self._state.short_s, latency_long_s=self._state.long_s,
            latency_target_s=latency_target(self._state, s.limiter),
        )


class _GateCollector:
    """Exposes the gate's counters as ``autotune_gate_*`` at scrape time (no double bookkeeping)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def collect(self):
        g = self.gate
        st = g.status()
        yield CounterMetricFamily("autotune_gate_admitted", "Requests admitted upstream.", value=st.admitted)
        yield CounterMetricFamily("autotune_gate_deferred", "Requests that had to wait before admission.",
                                  value=st.deferred)
        rej = CounterMetricFamily("autotune_gate_rejected", "Requests refused with 503.", labels=["reason"])
        rej.add_metric(["queue_full"], st.rejected_queue_full)
        rej.add_metric(["timeout"], st.rejected_timeout)
        yield rej
        yield CounterMetricFamily("autotune_gate_passthrough", "Requests forwarded without admission "
                                  "(probes, scrapes, model lists: anything but inference).",
                                  value=g.passthrough)
        yield GaugeMetricFamily("autotune_gate_limit", "Current concurrency limit.", value=st.limit)
        yield GaugeMetricFamily("autotune_gate_inflight", "Requests in flight upstream.", value=st.inflight)
        yield GaugeMetricFamily("autotune_gate_queue_length", "Requests waiting for admission.",
                                value=st.queue_length)
        # ratios (0-1), as every autotune series; the knob and /gate/status speak percent
        yield GaugeMetricFamily("autotune_gate_threshold_ratio", "PSI some avg10 threshold (0-1; -1 = off).",
                                value=-1 if st.threshold_pct is None else st.threshold_pct / 100)
        yield GaugeMetricFamily("autotune_gate_pressure_ratio", "Last PSI some avg10 read (0-1; NaN = unknown).",
                                value=math.nan if st.pressure_pct is None else st.pressure_pct / 100)
