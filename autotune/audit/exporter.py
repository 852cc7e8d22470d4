"""Prometheus ``/metrics`` for the agent: what it sees, what it did, and what it costs.

The agent feeds the latest Snapshot, the active Symptoms and each AuditEvent; a custom
collector renders them at scrape time (so a scrape never blocks the loop and never reads
/proc itself). Gauges and rates are read through the metric vocabulary (``detect.metrics``:
``derive_metrics`` over the last two snapshots); only cumulative counters (PSI stall time,
vmstat counts) and the latency source's up/down come from the snapshot itself. Counters of
actions/rollbacks/refusals follow the audit trail and can be primed from it at start
(``prime_from_trail``) so they survive agent restarts.

Counting conventions (the agent/journal writes events this way):
- ``autotune_actions_total{knob,outcome}``: one per action verdict, i.e. a ``verify`` event with
  outcome kept/rolled_back/failed, or an ``apply`` event with outcome ``failed``;
- ``autotune_rollbacks_total{knob}``: ``rollback`` events; ``autotune_helper_refusals_total{knob}``:
  ``refusal`` events; ``autotune_verification_duration_seconds``: ``detail["duration_s"]`` of
  ``verify`` events.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from autotune.audit.trail import FINAL_OUTCOMES
from autotune.detect.metrics import PSI_LINES, derive_metrics
from autotune.types import Snapshot, Symptom

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from autotune.audit.trail import AuditEvent, AuditTrail

DEFAULT_LISTEN = "127.0.0.1:9753"
# vmstat counters that matter for inference latency: reclaim, swap, faults, compaction, THP, OOM.
KEY_VMSTAT = (
    "pgfault", "pgmajfault", "pswpin", "pswpout", "pgscan_kswapd", "pgscan_direct",
    "pgsteal_kswapd", "pgsteal_direct", "allocstall_normal", "allocstall_movable", "compact_stall",
    "thp_fault_alloc", "thp_fault_fallback", "thp_collapse_alloc", "workingset_refault_file",
    "workingset_refault_anon", "oom_kill",
)
VERIFY_BUCKETS_S = (5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)


def parse_listen(listen: str) -> tuple[str, int]:
    """"127.0.0.1:9753", "[::1]:9753" or ":9753" (all interfaces) -> (addr, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"metrics_listen {listen!r}: expected HOST:PORT such as {DEFAULT_LISTEN}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class _State:
    """Latest readings and counters; swapped under a lock, read by the collector."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.snapshot: Snapshot | None = None
        self.metrics: dict[str, float] = {}  # derive_metrics over (previous, latest) snapshot
        self.symptoms: list[Symptom] = []
        self.actions: Counter[tuple[str, str]] = Counter()
        self.rollbacks: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.events: Counter[str] = Counter()


class _Collector(Collector):
    def __init__(self, state: _State) -> None:
        self.s = state

    def describe(self) -> list[Metric]:
        return []  # dynamic label sets; registering without describe() is fine

    def collect(self):  # noqa: C901 - a flat list of families reads best
        with self.s.lock:
            snap, m, syms = self.s.snapshot, self.s.metrics, list(self.s.symptoms)
            actions, rollbacks = dict(self.s.actions), dict(self.s.rollbacks)
            refusals, events = dict(self.s.refusals), dict(self.s.events)

        a = CounterMetricFamily("autotune_actions", "Action verdicts by knob and outcome.", labels=["knob", "outcome"])
        for (knob, outcome), n in sorted(actions.items()):
            a.add_metric([knob, outcome], n)
        yield a
        r = CounterMetricFamily("autotune_rollbacks", "Changes rolled back, by knob.", labels=["knob"])
        for knob, n in sorted(rollbacks.items()):
            r.add_metric([knob], n)
        yield r
        h = CounterMetricFamily("autotune_helper_refusals", "Requests the privileged helper refused, by knob.",
                                labels=["knob"])
        for knob, n in sorted(refusals.items()):
            h.add_metric([knob], n)
        yield h
        e = CounterMetricFamily("autotune_audit_events", "Audit events written, by kind.", labels=["kind"])
        for kind, n in sorted(events.items()):
            e.add_metric([kind], n)
        yield e

        act = GaugeMetricFamily("autotune_symptom_active", "1 for each active symptom.",
                                labels=["symptom", "service", "metric"])
        val = GaugeMetricFamily("autotune_symptom_value", "Current value of the symptom's metric.",
                                labels=["symptom", "service", "metric"])
        for sy in syms:
            lab = [sy.name, sy.service or "", sy.metric]
            act.add_metric(lab, 1)
            val.add_metric(lab, sy.value)
        yield act
        yield val
        yield GaugeMetricFamily("autotune_symptoms_active", "Number of active symptoms.", value=len(syms))

        if snap is None:
            return
        yield GaugeMetricFamily("autotune_snapshot_timestamp_seconds", "Unix time of the latest snapshot.",
                                value=snap.ts)
        yield GaugeMetricFamily("autotune_snapshot_missing_sources", "Sources missing from the latest snapshot.",
                                value=len(snap.missing))
        avg = GaugeMetricFamily("autotune_psi_avg_percent", "Host PSI running average (% of wall time stalled).",
                                labels=["resource", "kind", "window"])
        tot = CounterMetricFamily("autotune_psi_stall_seconds", "Host PSI cumulative stall time.",
                                  labels=["resource", "kind"])
        for res, reading in sorted(snap.psi.items()):
            for kind in PSI_LINES:
                base = f"psi.{res}.{kind}.avg"
                if base + "10" not in m:
                    continue  # no such file or line
                for window in ("10", "60", "300"):
                    avg.add_metric([res, kind, f"{window}s"], m[base + window])
                tot.add_metric([res, kind], getattr(reading, kind).total_usec / 1e6)
        yield avg
        yield tot
        vm = CounterMetricFamily("autotune_vmstat_events", "Key /proc/vmstat counters.", labels=["counter"])
        for name in KEY_VMSTAT:
            if name in snap.vmstat:
                vm.add_metric([name], snap.vmstat[name])
        yield vm
        vr = GaugeMetricFamily("autotune_vmstat_rate_per_second",
                               "Key /proc/vmstat counters per second over the last sample interval.",
                               labels=["counter"])
        for name in sorted(KEY_VMSTAT):
            if f"vmstat.{name}.rate" in m:
                vr.add_metric([name], m[f"vmstat.{name}.rate"])
        yield vr
        if "mem.available_bytes" in m:
            yield GaugeMetricFamily("autotune_memory_available_bytes", "MemAvailable from /proc/meminfo.",
                                    value=m["mem.available_bytes"])
        lat = GaugeMetricFamily("autotune_service_latency_seconds", "Inference latency percentile per service.",
                                labels=["service", "percentile"])
        ttft = GaugeMetricFamily("autotune_service_ttft_p95_seconds", "Time to first token, p95.", labels=["service"])
        up = GaugeMetricFamily("autotune_service_latency_up", "1 if the latency source answered.", labels=["service"])
        wait = GaugeMetricFamily("autotune_service_requests_waiting", "Requests queued in the server.",
                                 labels=["service"])
        for name, svc in sorted(snap.services.items()):
            if svc.latency is None:
                continue
            up.add_metric([name], 1 if svc.latency.ok else 0)
            p = f"svc.{name}.latency."
            for pct in ("p50", "p95", "p99"):
                if p + pct + "_s" in m:
                    lat.add_metric([name, pct], m[p + pct + "_s"])
            for family, key in ((ttft, "ttft_p95_s"), (wait, "waiting")):
                if p + key in m:
                    family.add_metric([name], m[p + key])
        yield from (lat, ttft, up, wait)


class Exporter:
    """The agent's metrics. Thread-safe: the loop updates, the HTTP thread scrapes."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        from autotune import __version__

        self.registry = registry if registry is not None else CollectorRegistry()
        self._s = _State()
        self.registry.register(_Collector(self._s))
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

    # feeding -------------------------------------------------------------------------------
    def update_snapshot(self, snapshot: Snapshot) -> None:
        with self._s.lock:
            prev = self._s.snapshot
            # rates over the last sample interval; a counter reset or a clock step gives none
            window = [prev, snapshot] if prev is not None else [snapshot]
            self._s.snapshot, self._s.metrics = snapshot, derive_metrics(window)

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
