"""What verification measures: objectives are named series of the metric vocabulary.

An objective is a flat metric name from ``autotune/detect/metrics.py`` -
``svc.llm.latency.p95_s``, ``svc.llm.psi.cpu.some.stall_pct``, ``psi.cpu.some.stall_pct``,
``svc.batch.cpu.usage_cores`` - and its series over a window of snapshots is that metric as
``derive_metrics`` computes it, once per interval. Nothing here recomputes a metric.

Samples must be roughly independent for the test (``stats.compare``) to mean anything:

- a rate (PSI stall %, cores used) is derived over runs of consecutive snapshots spanning at
  least ``min_interval_s`` (2 s), not per tick; avg10 would be worse still (a 10 s moving
  average: successive 1 s readings share most of their information);
- a latency reading is taken once per reading of its source: a probe repeated between two
  samples counts once.

Journal rows written before objectives were metric names say ``psi``, ``latency_p95``,
``requests`` or ``throughput``; ``LEGACY`` maps them, so they still load, display and evaluate.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from autotune.config import Service
from autotune.detect.metrics import derive_metrics
from autotune.types import Buckets, Direction, LatencyReading, Snapshot

MIN_SAMPLES = 5  # per window; fewer cannot show a significant difference
MIN_TOKENS = 30  # per-token objectives: tokens each window needs before they are used
MAX_TOKEN_SAMPLES = 600  # per window: enough for the test, bounded cost


class Kind(BaseModel):
    """Facts about one metric used as an objective (keyed by its name without ``svc.<s>.``)."""

    model_config = ConfigDict(frozen=True)

    metric: str  # e.g. "psi.cpu.some.stall_pct"
    direction: Direction
    unit: str  # "s", "%", "cores", "" - how reports show it
    service_only: bool = False  # only exists as svc.<s>.<metric>
    per_reading: bool = False  # a value per reading of the source (latency), not per interval
    min_interval_s: float = 0.0  # rates: derive over at least this long
    upper: float | None = None  # a % of wall time cannot exceed 100 (snapshot-time jitter can)
    fallback: str | None = None  # a gauge used when no interval yields a value (every 10 s)
    absolute: bool = False  # effects are differences in the metric's units, not relative
    per_token: str | None = None  # the histogram kind whose every observation is a sample
    quantile: float | None = None  # per-token: the quantile of those observations judged
    needs_slo: bool = False  # derived from the service's SLO (pass its config ``Service``)


FALLBACK_EVERY_S = 10.0  # avg10's own averaging horizon

KINDS: dict[str, Kind] = {k.metric: k for k in (
    Kind(metric="latency.p95_s", direction="lower_is_better", unit="s", service_only=True,
         per_reading=True),
    Kind(metric="latency.requests", direction="higher_is_better", unit="", service_only=True,
         per_reading=True),
    Kind(metric="psi.cpu.some.stall_pct", direction="lower_is_better", unit="%",
         min_interval_s=2.0, upper=100.0, fallback="psi.cpu.some.avg10"),
    Kind(metric="cpu.usage_cores", direction="higher_is_better", unit="cores", service_only=True,
         min_interval_s=2.0),
    # every token generated in the window is a sample: a 10 s window of one running request
    # holds a hundred or more; the verdict is on their p95 (the quantile the SLO is on) and
    # its uncertainty (stats.compare_quantile), never on a median that falls in one bucket
    Kind(metric="latency.itl_p95_s", direction="lower_is_better", unit="s", service_only=True,
         per_token="itl", quantile=0.95),
    # journaled before verdicts were on the p95 (a median of bucketed gaps): still loads
    Kind(metric="latency.itl_p50_s", direction="lower_is_better", unit="s", service_only=True,
         per_token="itl", quantile=0.5),
    # dense when the SLO names a per-token latency: every token generated in the interval is a
    # sample, so one scrape interval (a second) already holds tens of them
    Kind(metric="slo.slack", direction="higher_is_better", unit="slack", service_only=True,
         min_interval_s=1.0, absolute=True, needs_slo=True),
)}

# short names journaled before objectives were metric names
LEGACY: dict[str, str] = {
    "latency_p95": "latency.p95_s",
    "requests": "latency.requests",
    "psi": "psi.cpu.some.stall_pct",
    "throughput": "cpu.usage_cores",
}

# every name ``objective()`` accepts besides a full svc.<s>.<metric>
OBJECTIVES: dict[str, Kind] = {**KINDS, **{old: KINDS[new] for old, new in LEGACY.items()}}


class Objective(BaseModel):
    """One metric on one scope: ``name`` is the flat metric name (``svc.<s>.`` + kind, or the
    host's); ``service`` is None for a host metric."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Kind
    service: str | None = None
    slo_of: tuple[Service, ...] = ()  # the service's config, for SLO-derived metrics

    def _derive(self, window: Sequence[Snapshot]) -> dict[str, float]:
        return derive_metrics(window, services=self.slo_of, host=self.service is None)

    @property
    def direction(self) -> Direction:
        return self.kind.direction

    def _metric(self, metric: str) -> str:
        return f"svc.{self.service}.{metric}" if self.service is not None else metric

    def series(self, window: Sequence[Snapshot]) -> list[float]:
        """Roughly independent values of the metric over ``window`` (oldest first)."""
        if self.kind.per_reading:
            return self._per_reading(window)
        if self.kind.per_token:
            return self._per_token(window)
        out = self._per_interval(window)
        if not out and self.kind.fallback is not None:
            return self._fallback(window)
        return out

    def histogram(self, window: Sequence[Snapshot]) -> Buckets | None:
        """Per-token kinds: the window's ``per_token`` histograms merged (the intervals after its
        first snapshot); None when it holds none."""
        from autotune import histogram

        parts = []
        for s in window[1:] if len(window) > 1 else window:
            svc = s.services.get(self.service or "")
            lat = svc.latency if svc is not None else None
            if lat is not None and lat.ok:
                parts.append(lat.hist.get(self.kind.per_token or ""))
        return histogram.merge(parts)

    def _per_token(self, window: Sequence[Snapshot]) -> list[float]:
        """Every observation of the window's histogram at its bucket's midpoint, thinned evenly
        to MAX_TOKEN_SAMPLES (for plots; verdicts read the histogram itself)."""
        from autotune import histogram

        merged = self.histogram(window)
        return histogram.samples(merged, MAX_TOKEN_SAMPLES) if merged is not None else []

    def observations(self, window: Sequence[Snapshot]) -> int:
        """How many values the window holds: tokens for a per-token kind, else the series'."""
        if self.kind.per_token:
            from autotune import histogram

            return int(histogram.count(self.histogram(window)))
        return len(self.series(window))

    def figure(self, window: Sequence[Snapshot]) -> float | None:
        """The window's one figure of the objective: the quantile a per-token kind is judged on
        (as the metric vocabulary and the status line read it), else the series' median."""
        if self.kind.per_token and self.kind.quantile is not None:
            from autotune import histogram

            return histogram.quantile(self.kind.quantile, self.histogram(window))
        series = self.series(window)
        return statistics.median(series) if series else None

    def _per_reading(self, window: Sequence[Snapshot]) -> list[float]:
        out: list[float] = []
        prev: LatencyReading | None = None
        for s in window:
            svc = s.services.get(self.service or "")
            reading = svc.latency if svc is not None else None
            if reading is None or not reading.ok or reading == prev:
                continue  # no reading, a failed one, or the previous one repeated
            prev = reading
            v = self._derive([s]).get(self.name)
            if v is not None:
                out.append(v)
        return out

    def _per_interval(self, window: Sequence[Snapshot]) -> list[float]:
        """The metric over runs of consecutive snapshots spanning >= min_interval_s. A run that
        yields no value (counter reset, a reading missing at either end) is dropped and the
        next one starts where it ended."""
        out: list[float] = []
        start = 0
        for i in range(1, len(window)):
            if window[i].ts - window[start].ts < self.kind.min_interval_s:
                continue
            v = self._derive(window[start : i + 1]).get(self.name)
            if v is not None:
                out.append(v if self.kind.upper is None else min(self.kind.upper, v))
            start = i
        return out

    def _fallback(self, window: Sequence[Snapshot]) -> list[float]:
        """The fallback gauge, one reading per FALLBACK_EVERY_S (none from a single reading)."""
        name = self._metric(self.kind.fallback or "")
        points = [(s.ts, v) for s in window if (v := derive_metrics([s]).get(name)) is not None]
        if len(points) < 2:
            return []
        out, last_ts = [], -math.inf
        for ts, v in points:
            if ts - last_ts >= FALLBACK_EVERY_S:
                out.append(v)
                last_ts = ts
        return out


def _known() -> str:
    return (", ".join(sorted(LEGACY)) + "; or a metric: " + ", ".join(
        ("svc.<s>." if k.service_only else "[svc.<s>.]") + m for m, k in KINDS.items()))


def _split(name: str) -> tuple[Kind, str | None] | None:
    """(kind, service) of a flat metric name, or None when it is not an objective."""
    if name in KINDS and not KINDS[name].service_only:
        return KINDS[name], None
    if name.startswith("svc."):
        for metric, kind in KINDS.items():
            if name.endswith("." + metric) and len(name) > len("svc.") + len(metric) + 1:
                return kind, name[len("svc."): -len(metric) - 1]
    return None


def objective(name: str, service: str | None = None,
              window: Sequence[Snapshot] = (), slo_of: Sequence[Service] = ()) -> Objective:
    """The objective called ``name``: a flat metric name, or a legacy short name read for
    ``service`` (``psi`` is the service's cgroup PSI when ``window`` has it, else the host's).
    ``slo_of``: config services, for objectives derived from an SLO (``slo.slack``).
    Raises ValueError naming the known objectives."""
    split = _split(name)
    if split is not None:
        kind, svc = split
        return Objective(name=name, kind=kind, service=svc, slo_of=tuple(slo_of))
    if name in LEGACY:
        kind = KINDS[LEGACY[name]]
        if service is None and kind.service_only:
            raise ValueError(f"objective {name!r} is a service's ({kind.metric}); name the service")
        if service is not None and (kind.service_only or _measured(
                Objective(name=f"svc.{service}.{kind.metric}", kind=kind, service=service), window)):
            return Objective(name=f"svc.{service}.{kind.metric}", kind=kind, service=service)
        return Objective(name=kind.metric, kind=kind)
    raise ValueError(f"unknown objective {name!r}; known: {_known()}")


def _measured(obj: Objective, window: Sequence[Snapshot]) -> bool:
    return bool(obj.series(window))


def choose(service: str | None, window: Sequence[Snapshot], *, has_latency: bool,
           slo_of: Sequence[Service] = ()) -> Objective:
    """The objective a change on ``service`` is judged by: its per-token latency's p95 when its
    source reports one and the window holds enough tokens (every token a sample: the densest
    signal an inference server has), else its SLO slack when it declares an SLO (``slo_of``: its
    config) and the window yields enough values per interval, else its p95 latency when its latency source
    (``has_latency``) gave enough distinct readings in ``window`` to test on (a sparse probe
    may not), else its cgroup's CPU pressure, else the host's (a v1-only host has no cgroup PSI)."""
    if service is not None:
        if has_latency:
            per_token = objective(f"svc.{service}.latency.itl_p95_s")
            if per_token.observations(window) >= 2 * MIN_TOKENS:
                return per_token
        if has_latency and slo_of:
            slack = objective(f"svc.{service}.slo.slack", slo_of=slo_of)
            if len(slack.series(window)) >= MIN_SAMPLES:
                return slack
        if has_latency:
            lat = objective(f"svc.{service}.latency.p95_s")
            if len(lat.series(window)) >= MIN_SAMPLES:
                return lat
        psi = objective(f"svc.{service}.psi.cpu.some.stall_pct")
        if _measured(psi, window):
            return psi
    return objective("psi.cpu.some.stall_pct")


def unit(name: str | None) -> str:
    """How to show values of objective ``name`` ("s", "%", "cores" or ""); "" when unknown."""
    if name is None:
        return ""
    split = _split(name)
    kind = split[0] if split is not None else OBJECTIVES.get(name)
    return kind.unit if kind is not None else ""


def objective_series(name: str, window: Sequence[Snapshot], service: str | None = None,
                     slo_of: Sequence[Service] = ()) -> list[float]:
    """Values of objective ``name`` (a metric or legacy name, read for ``service``) over ``window``."""
    return objective(name, service, window, slo_of).series(window)


def show(name: str | None, value: float | None) -> str:
    """A value of objective ``name`` with its unit, for people: slack as a share of the SLO
    target (+12 %), stall in %, latency in s, CPU in cores; "?" when missing."""
    if value is None or not math.isfinite(value):
        return "?"
    u = unit(name)
    if u == "slack":
        return f"{value * 100:+.0f} % slack"
    if u == "%":
        return f"{value:.1f} %"
    if u == "s":
        return f"{value:.3g} s"
    if u == "cores":
        return f"{value:.2f} cores"
    return f"{value:.4g}"
