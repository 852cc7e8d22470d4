"""Prometheus ``/metrics`` for the agent: what it sees, what it did, and what it costs.

The agent feeds each Snapshot, the active Symptoms and each AuditEvent; a custom collector
renders them at scrape time (a scrape never blocks the loop and never reads /proc itself).
Every series is listed in docs/metrics.md. Conventions (https://prometheus.io/docs/practices/naming/):

- base units in the name: ``_seconds``, ``_bytes``, ``_ratio`` (0-1, never percent: PSI
  averages are the kernel's percent / 100, like ``rate(autotune_psi_stall_seconds_total[1m])``);
- raw counters end in ``_total`` (PSI stall time, vmstat counts, audit events); rates are the
  query's job, so there are none here; no ``_created`` series;
- counters with known label values (knobs, outcomes, audit kinds) start at 0, so ``increase()``
  sees the first event and dashboards have series before anything happened;
- latency is a summary ``autotune_service_latency_seconds{service,kind,quantile}`` whose
  quantiles cover the agent's detection window (``[agent] window_s``: the window the rules see,
  read through the metric vocabulary ``detect.metrics.derive_metrics``) and whose ``_sum`` /
  ``_count`` are cumulative since the agent started, like any Prometheus summary.

A window in which nothing was observed has no quantile: the series is absent, not NaN and
not the previous window's value (a stale quantile would read as current; NaN poisons sums and
alerts). Under any load of at least one request per window the series is present at every
scrape, because the window (15 s by default) spans many scrapes; ``_count`` / ``_sum`` and the
SLO slack (1 when the service is idle) never vanish.

Counting conventions (the agent/journal writes events this way):
- ``autotune_actions_total{knob,outcome}``: one per action verdict, i.e. a ``verify`` event with
  outcome kept/rolled_back/failed, or an ``apply`` event with outcome ``failed``;
- ``autotune_rollbacks_total{knob}``: ``rollback`` events; ``autotune_helper_refusals_total{knob}``:
  ``refusal`` events; ``autotune_verification_duration_seconds``: ``detail["duration_s"]`` of
  ``verify`` events. Counters can be primed from the trail at start (``prime_from_trail``) so
  they survive agent restarts.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily,
                                    SummaryMetricFamily)
from prometheus_client.registry import Collector

from autotune import histogram
from autotune.audit.trail import FINAL_OUTCOMES, KINDS
from autotune.detect.metrics import PSI_LINES, derive_metrics
from autotune.types import LatencyReading, Snapshot, Symptom

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from autotune.audit.trail import AuditEvent, AuditTrail
    from autotune.config import Config

DEFAULT_LISTEN = "127.0.0.1:9753"
# vmstat counters that matter for inference latency: reclaim, swap, faults, compaction, THP, OOM.
KEY_VMSTAT = (
    "pgfault", "pgmajfault", "pswpin", "pswpout", "pgscan_kswapd", "pgscan_direct",
    "pgsteal_kswapd", "pgsteal_direct", "allocstall_normal", "allocstall_movable", "compact_stall",
    "thp_fault_alloc", "thp_fault_fallback", "thp_collapse_alloc", "workingset_refault_file",
    "workingset_refault_anon", "oom_kill",
)
VERIFY_BUCKETS_S = (5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
KINDS_LAT = ("e2e", "ttft", "itl")  # the summary's ``kind`` label: request, first token, token gap
# (kind, quantile label) -> vocabulary suffix under ``svc.<s>.latency.``
LATENCY_KEYS = {
    ("e2e", "0.5"): "p50_s", ("e2e", "0.95"): "p95_s", ("e2e", "0.99"): "p99_s",
    ("ttft", "0.5"): "ttft_p50_s", ("ttft", "0.95"): "ttft_p95_s", ("ttft", "0.99"): "ttft_p99_s",
    ("itl", "0.5"): "itl_p50_s", ("itl", "0.95"): "itl_p95_s", ("itl", "0.99"): "itl_p99_s",
}
# SLO target label -> (config SLO field, vocabulary ratio suffix under ``svc.<s>.slo.``)
SLO_TARGETS = {
    "p95": ("p95_latency_s", "p95_ratio"), "p99": ("p99_latency_s", "p99_ratio"),
    "ttft_p95": ("ttft_p95_s", "ttft_p95_ratio"), "itl_p95": ("itl_p95_s", "itl_p95_ratio"),
    "itl_mean": ("itl_mean_s", "itl_mean_ratio"),
}


def parse_listen(listen: str) -> tuple[str, int]:
    """"127.0.0.1:9753", "[::1]:9753" or ":9753" (all interfaces) -> (addr, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"metrics_listen {listen!r}: expected HOST:PORT such as {DEFAULT_LISTEN}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class _State:
    """Latest readings and counters; swapped under a lock, read by the collector."""

    def __init__(self, lookback: int) -> None:
        self.lock = threading.Lock()
        # the detection window: lookback intervals, i.e. lookback + 1 snapshots (as the loop)
        self.window: deque[Snapshot] = deque(maxlen=lookback + 1)
        self.metrics: tuple[float, dict[str, float]] | None = None  # (newest ts, derived) cache
        self.symptoms: list[Symptom] = []
        self.actions: Counter[tuple[str, str]] = Counter()
        self.rollbacks: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        # (service, kind) -> [observations, seconds] summed over every snapshot's interval
        self.latency_totals: dict[tuple[str, str], list[float]] = {}


class _Collector(Collector):
    def __init__(self, state: _State, services: list) -> None:
        self.s = state
        self.services = services

    def describe(self) -> list[Metric]:
        return []  # dynamic label sets; registering without describe() is fine

    def _metrics(self, window: list[Snapshot]) -> dict[str, float]:
        """The vocabulary over the window, computed at most once per snapshot (scrape time:
        nothing is derived while nobody scrapes)."""
        cached = self.s.metrics
        if cached is not None and cached[0] == window[-1].ts:
            return cached[1]
        m = derive_metrics(window, services=self.services)
        with self.s.lock:
            self.s.metrics = (window[-1].ts, m)
        return m

    def collect(self) -> Iterator[Metric]:
        with self.s.lock:
            window, syms = list(self.s.window), list(self.s.symptoms)
            actions, rollbacks = dict(self.s.actions), dict(self.s.rollbacks)
            refusals, events = dict(self.s.refusals), dict(self.s.events)
            totals = {k: tuple(v) for k, v in self.s.latency_totals.items()}
        yield from _audit_families(actions, rollbacks, refusals, events)
        yield from _symptom_families(syms)
        if not window:
            return
        snap, m = window[-1], self._metrics(window)
        # each service's newest latency reading (a snapshot between two scrapes has none)
        latest = {name: svc.latency for s in window for name, svc in s.services.items() if svc.latency is not None}
        yield from _host_families(snap, m)
        yield from _service_families(latest, m, totals, self.services)


def _audit_families(actions, rollbacks, refusals, events) -> Iterator[Metric]:
    a = CounterMetricFamily("autotune_actions", "Action verdicts by knob and outcome.", labels=["knob", "outcome"])
    for (knob, outcome), n in sorted(actions.items()):
        a.add_metric([knob, outcome], n)
    r = CounterMetricFamily("autotune_rollbacks", "Changes rolled back, by knob.", labels=["knob"])
    for knob, n in sorted(rollbacks.items()):
        r.add_metric([knob], n)
    h = CounterMetricFamily("autotune_helper_refusals", "Requests the privileged helper refused, by knob.",
                            labels=["knob"])
    for knob, n in sorted(refusals.items()):
        h.add_metric([knob], n)
    e = CounterMetricFamily("autotune_audit_events", "Audit events written, by kind.", labels=["kind"])
    for kind, n in sorted(events.items()):
        e.add_metric([kind], n)
    yield from (a, r, h, e)


def _symptom_families(syms: list[Symptom]) -> Iterator[Metric]:
    act = GaugeMetricFamily("autotune_symptom_active", "1 for each active symptom.",
                            labels=["symptom", "service", "metric"])
    val = GaugeMetricFamily("autotune_symptom_value", "Current value of the symptom's metric, in that "
                            "metric's unit (docs/metrics.md: vocabulary names).",
                            labels=["symptom", "service", "metric"])
    for sy in syms:
        lab = [sy.name, sy.service or "", sy.metric]
        act.add_metric(lab, 1)
        val.add_metric(lab, sy.value)
    yield from (act, val)
    yield GaugeMetricFamily("autotune_symptoms_active", "Number of active symptoms.", value=len(syms))


def _host_families(snap: Snapshot, m: dict[str, float]) -> Iterator[Metric]:
    yield GaugeMetricFamily("autotune_snapshot_timestamp_seconds", "Unix time of the latest snapshot.",
                            value=snap.ts)
    yield GaugeMetricFamily("autotune_snapshot_missing_sources", "Sources missing from the latest snapshot.",
                            value=len(snap.missing))
    avg = GaugeMetricFamily("autotune_psi_avg_ratio", "Host PSI running average: fraction of wall time "
                            "stalled (the kernel's avg10/60/300 percent / 100).",
                            labels=["resource", "kind", "window"])
    tot = CounterMetricFamily("autotune_psi_stall_seconds", "Host PSI cumulative stall time.",
                              labels=["resource", "kind"])
    for res, reading in sorted(snap.psi.items()):
        for kind in PSI_LINES:
            base = f"psi.{res}.{kind}.avg"
            if base + "10" not in m:
                continue  # no such file or line
            for window in ("10", "60", "300"):
                avg.add_metric([res, kind, f"{window}s"], m[base + window] / 100.0)
            tot.add_metric([res, kind], getattr(reading, kind).total_usec / 1e6)
    yield from (avg, tot)
    vm = CounterMetricFamily("autotune_vmstat_events", "Key /proc/vmstat counters.", labels=["counter"])
    for name in KEY_VMSTAT:
        if name in snap.vmstat:
            vm.add_metric([name], snap.vmstat[name])
    yield vm
    if "mem.available_bytes" in m:
        yield GaugeMetricFamily("autotune_memory_available_bytes", "MemAvailable from /proc/meminfo.",
                                value=m["mem.available_bytes"])


def _service_families(latest: dict[str, LatencyReading], m: dict[str, float],
                      totals: dict[tuple[str, str], tuple[float, float]], services: list) -> Iterator[Metric]:
    lat = SummaryMetricFamily("autotune_service_latency_seconds", "Inference latency per service: "
                              "quantiles over the agent's detection window, _sum/_count since the agent "
                              "started. kind: e2e (request), ttft (first token), itl (gap between tokens).",
                              labels=["service", "kind"])
    up = GaugeMetricFamily("autotune_service_latency_up", "1 if the latency source answered.", labels=["service"])
    running = GaugeMetricFamily("autotune_service_requests_running", "Requests generating in the server.",
                                labels=["service"])
    waiting = GaugeMetricFamily("autotune_service_requests_waiting", "Requests queued in the server.",
                                labels=["service"])
    per_token = GaugeMetricFamily("autotune_service_token_mean_seconds", "Mean seconds per generated token "
                                  "over the detection window (histogram mean, or llama.cpp's counters: each "
                                  "request's own time, parallel slots add up).", labels=["service"])
    probes = GaugeMetricFamily("autotune_service_probe_requests", "Active-probe requests in the detection "
                               "window (the quantiles a page lacks come from these).", labels=["service"])
    for name, reading in sorted(latest.items()):
        up.add_metric([name], 1 if reading.ok else 0)
        p = f"svc.{name}.latency."
        for family, key in ((running, "running"), (waiting, "waiting"), (per_token, "itl_mean_s"),
                            (probes, "probe.samples")):
            if p + key in m:
                family.add_metric([name], m[p + key])
        for kind in KINDS_LAT:
            quantiles = [(q, m[p + key]) for (k, q), key in LATENCY_KEYS.items() if k == kind and p + key in m]
            for q, v in quantiles:  # SummaryMetricFamily.add_metric needs a count and sum; not every source has them
                lat.add_sample("autotune_service_latency_seconds", {"service": name, "kind": kind, "quantile": q}, v)
            if (name, kind) in totals:
                n, total_s = totals[(name, kind)]
                lat.add_sample("autotune_service_latency_seconds_count", {"service": name, "kind": kind}, n)
                lat.add_sample("autotune_service_latency_seconds_sum", {"service": name, "kind": kind}, total_s)
    yield from (lat, up, running, waiting, per_token, probes)

    target = GaugeMetricFamily("autotune_service_slo_target_seconds", "SLO latency target from the config.",
                               labels=["service", "target"])
    ratio = GaugeMetricFamily("autotune_service_slo_ratio", "Latency over the detection window / its SLO "
                              "target (> 1: the target is broken).", labels=["service", "target"])
    slack = GaugeMetricFamily("autotune_service_slo_slack_ratio", "SLO slack, 1 - the largest ratio "
                              "(Heracles); 1 while the service is idle, < 0 when over target.",
                              labels=["service"])
    for svc in services:
        for label, (field, suffix) in SLO_TARGETS.items():
            t = getattr(svc.slo, field, None)
            if t:
                target.add_metric([svc.name, label], t)
            if f"svc.{svc.name}.slo.{suffix}" in m:
                ratio.add_metric([svc.name, label], m[f"svc.{svc.name}.slo.{suffix}"])
        if f"svc.{svc.name}.slo.slack" in m:
            slack.add_metric([svc.name], m[f"svc.{svc.name}.slo.slack"])
    yield from (target, ratio, slack)


class Exporter:
    """The agent's metrics. Thread-safe: the loop updates, the HTTP thread scrapes.

    ``window_s`` / ``sample_period_s`` size the detection window exactly as the loop does
    (``round(window_s / sample_period_s)`` intervals); ``services`` (config ``Service``) give
    the SLO targets; ``knobs`` and the audit kinds are the label values counters start at 0 for.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True,
                 window_s: float = 15.0, sample_period_s: float = 1.0, services: Iterable[object] = (),
                 knobs: Iterable[str] = ()) -> None:
        from autotune import __version__

        disable_created_metrics()  # process-wide: the agent's page has no *_created series
        self.registry = registry if registry is not None else CollectorRegistry()
        self._s = _State(max(1, round(window_s / sample_period_s)))
        with self._s.lock:
            for kind in KINDS:
                self._s.events[kind] += 0
            for knob in knobs:
                self._s.rollbacks[knob] += 0
                self._s.refusals[knob] += 0
                for outcome in FINAL_OUTCOMES:
                    self._s.actions[(knob, outcome)] += 0
        self.registry.register(_Collector(self._s, list(services)))
        if process:  # autotune_process_cpu_seconds_total, autotune_process_resident_memory_bytes, ...
            ProcessCollector(namespace="autotune", registry=self.registry)
        self.verification = Histogram(
            "autotune_verification_duration_seconds", "Time from apply to the verification verdict.",
            buckets=VERIFY_BUCKETS_S, registry=self.registry,
        )
        import platform

        info = InfoMetricFamily("autotune_build", "autotune build information.")
        info.add_metric([], {"version": __version__, "python": platform.python_version()})
        self.registry.register(_Static([info]))
        self.server = None

    @classmethod
    def for_config(cls, cfg: Config, **kw) -> Exporter:
        """The agent's exporter: its window, its services and every registered knob."""
        from autotune.knobs import KNOBS

        return cls(window_s=cfg.agent.window_s, sample_period_s=cfg.agent.sample_period_s,
                   services=cfg.services, knobs=sorted(KNOBS), **kw)

    # feeding -------------------------------------------------------------------------------
    def update_snapshot(self, snapshot: Snapshot) -> None:
        with self._s.lock:
            self._s.window.append(snapshot)
            for name, svc in snapshot.services.items():
                lat = svc.latency
                if lat is None or not lat.ok:
                    continue
                for kind, b in lat.hist.items():
                    tot = self._s.latency_totals.setdefault((name, kind), [0.0, 0.0])
                    tot[0] += histogram.count(b)
                    tot[1] += max(0.0, b.sum)  # a negative interval sum is a reset, not time

    def update_symptoms(self, symptoms: list[Symptom]) -> None:
        with self._s.lock:
            self._s.symptoms = list(symptoms)

    def observe_event(self, event: AuditEvent) -> None:
        """Count one audit event (call after ``AuditTrail.append``)."""
        with self._s.lock:
            self._count(event.kind, event.knob, event.outcome, 1)
        if event.kind == "verify":
            dur = event.detail.get("duration_s")
            if isinstance(dur, (int, float)) and dur >= 0:
                self.verification.observe(dur)

    def prime_from_trail(self, trail: AuditTrail) -> None:
        """Start counters at the trail's totals so they do not reset with the agent."""
        counts = trail.counts(("kind", "knob", "outcome"))
        with self._s.lock:
            for (kind, knob, outcome), n in counts.items():
                self._count(kind, knob, outcome, n)

    def _count(self, kind: str, knob: str | None, outcome: str | None, n: int) -> None:
        k = knob or ""
        self._s.events[kind] += n
        if (kind == "verify" and outcome in FINAL_OUTCOMES) or (kind == "apply" and outcome == "failed"):
            self._s.actions[(k, outcome)] += n
        elif kind == "rollback":
            self._s.rollbacks[k] += n
        elif kind == "refusal":
            self._s.refusals[k] += n

    # serving -------------------------------------------------------------------------------
    def start(self, listen: str = DEFAULT_LISTEN) -> tuple[str, int]:
        """Serve /metrics from a daemon thread; returns the bound (addr, port) (port 0 = any)."""
        from prometheus_client import start_http_server

        addr, port = parse_listen(listen)
        self.server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return addr, self.server.server_address[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class _Static(Collector):
    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        return iter(self.families)
