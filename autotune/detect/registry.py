"""The one registry of metric names: each flat metric declared once, with the pattern a rule may
cite, its unit and how it is derived. ``detect/metrics.is_known_metric`` (what the rule loader
and the symptom specs check names against) and the names table in ``docs/metric-names.md``
(``python3 -m autotune.detect.registry``) come from here.

A new host-wide reading is two files: its sensor module (``autotune/sensors/<x>.py``, a function
``(host) -> dict[str, float]`` of flat readings) and its entries here naming that function
(``sensor``), the reading (``field``) and whether the metric is the reading itself or its rate
(``kind``). ``sensors.collect`` runs every sensor the registry names (a failure is one entry in
``Snapshot.missing``, as for the others) and ``derive_metrics`` derives every such metric; the
rule loader accepts its name and the docs table lists it. The older sources (PSI, vmstat,
/proc/stat, meminfo, loadavg, cgroups, processes, latency) have typed readings in the Snapshot
and their derivations in ``detect/metrics.py``; their names are declared here all the same.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Literal

Scope = Literal["host", "service", "context"]

_PSI = r"psi\.(cpu|memory|io|irq)\.(some|full)\.(avg10|avg60|avg300|stall_pct)"
MEM_EVENTS = ("high", "max", "oom", "oom_kill", "low", "failcnt")


@dataclass(frozen=True)
class Metric:
    """One metric (or family of names): ``name`` as the docs write it, ``pattern`` the regex a
    cited name must match (for a service: after ``svc.<s>.``), its ``unit`` and ``source`` (how
    it is derived). ``sensor`` (``module:function``), ``field`` and ``kind``: a metric of a
    registry-declared sensor, derived here without code in detect/metrics.py."""

    scope: Scope
    name: str
    pattern: str
    unit: str
    source: str
    sensor: str | None = None
    field: str | None = None
    kind: Literal["gauge", "rate"] = "gauge"


def _h(name: str, pattern: str, unit: str, source: str, **kw) -> Metric:
    return Metric("host", name, pattern, unit, source, **kw)


def _s(name: str, pattern: str, unit: str, source: str) -> Metric:
    return Metric("service", name, pattern, unit, source)


def _c(name: str, unit: str, source: str) -> Metric:
    return Metric("context", name, re.escape(name), unit, source)


REGISTRY: list[Metric] = [
    # -- host -------------------------------------------------------------------------------
    _h("psi.<res>.<some|full>.<avg10|avg60|avg300>", _PSI, "%", "last /proc/pressure/<res> (res: cpu memory io irq)"),
    _h("psi.<res>.<some|full>.stall_pct", _PSI, "% of wall time", "d total_usec / elapsed"),
    _h("vmstat.<name>.rate", r"vmstat\.[a-z0-9_]+\.rate", "events/s", "d /proc/vmstat counter / elapsed (any field)"),
    _h("cpu.util_pct cpu.iowait_pct cpu.system_pct cpu.steal_pct", r"cpu\.(util|iowait|system|steal)_pct",
       "% of all CPUs", "d /proc/stat"),
    _h("stat.ctxt.rate stat.forks.rate", r"stat\.(ctxt|forks)\.rate", "per s", "d ctxt / d processes"),
    _h("stat.procs_running stat.procs_blocked", r"stat\.procs_(running|blocked)", "tasks", "last /proc/stat"),
    _h("load.1 load.5 load.15", r"load\.(1|5|15)", "tasks", "last /proc/loadavg"),
    _h("load.runnable_per_cpu", r"load\.runnable_per_cpu", "tasks/CPU", "loadavg runnable / host.ncpu"),
    _h("load.1_per_cpu", r"load\.1_per_cpu", "tasks/CPU", "load.1 / host.ncpu"),
    _h("mem.total_bytes mem.available_bytes", r"mem\.(total_bytes|available_bytes)", "bytes", "last meminfo"),
    _h("mem.available_pct mem.swap_used_pct", r"mem\.(available_pct|swap_used_pct)", "%",
       "MemAvailable/MemTotal, (SwapTotal-SwapFree)/SwapTotal"),
    _h("mem.swap_total_bytes", r"mem\.swap_total_bytes", "bytes", "SwapTotal (0: no swap, so swap tuning cannot help)"),
    _h("host.ncpu", r"host\.ncpu", "CPUs", "``ncpu`` argument, else the cpuN lines of /proc/stat"),
    _h("fs.file_handles", r"fs\.file_handles", "handles", "allocated file handles, /proc/sys/fs/file-nr",
       sensor="autotune.sensors.file_nr:read_file_nr", field="allocated"),
    _h("fs.file_handles_pct", r"fs\.file_handles_pct", "% of file-max", "allocated / max, /proc/sys/fs/file-nr",
       sensor="autotune.sensors.file_nr:read_file_nr", field="used_pct"),
    # -- per service (after svc.<s>.) --------------------------------------------------------
    _s("cpu.usage_cores", r"cpu\.usage_cores", "cores",
       "d cgroup cpu usage / elapsed (else sum of its processes' CPU time)"),
    _s("cpu.quota_cores", r"cpu\.quota_cores", "cores", "cgroup quota; absent when unlimited"),
    _s("cpu.quota_util_pct", r"cpu\.quota_util_pct", "%", "usage_cores / quota_cores"),
    _s("cpu.throttled_pct", r"cpu\.throttled_pct", "% of periods", "d nr_throttled / d nr_periods"),
    _s("cpu.throttled_s_per_s", r"cpu\.throttled_s_per_s", "s/s", "d throttled_usec / elapsed"),
    _s("cpu.weight", r"cpu\.weight", "1..10000", "cgroup weight (v1 shares mapped)"),
    _s("cpuset.ncpu", r"cpuset\.ncpu", "CPUs", "len(cpuset.cpus)"),
    _s("cpu.cap_cores", r"cpu\.cap_cores", "cores",
       "the most CPU it can get: min(quota_cores, cpuset.ncpu, host.ncpu) (``pool_facts``)"),
    _s("cpu.share_cores", r"cpu\.share_cores", "cores",
       "what it can count on while the busy neighbours (> 0.1 core) want every CPU: the larger of what their "
       "caps leave and its weight share of its CPUs, at most ``cap_cores`` (``pool_facts``; diagnose/floor.py's "
       "guarantee, from metrics)"),
    _s("cpu.attainable_cores", r"cpu\.attainable_cores", "cores",
       "the most CPU any quota or weight step could give it: its CPUs (cpuset, else the host's) less the other "
       "services' min_cpu_cores floors (``pool_facts``; a fixed thread pool larger than this cannot be given its "
       "CPUs, rules/threads.yaml)"),
    _s("psi.<res>.<some|full>.<avg10|avg60|avg300|stall_pct>", _PSI, "%", "the cgroup's own pressure files"),
    _s("mem.usage_bytes mem.max_bytes mem.high_bytes", r"mem\.(usage_bytes|max_bytes|high_bytes)", "bytes",
       "cgroup memory (limits absent when unlimited)"),
    _s("mem.usage_pct_of_max mem.usage_pct_of_high", r"mem\.(usage_pct_of_max|usage_pct_of_high)", "%",
       "usage / limit"),
    _s("mem.<high|max|oom|oom_kill|low|failcnt>_events.rate", r"mem\.(" + "|".join(MEM_EVENTS) + r")_events\.rate",
       "events/s", "d memory.events"),
    _s("mem.anon_bytes mem.file_bytes", r"mem\.(anon_bytes|file_bytes)", "bytes",
       "memory.stat anon / file (v1: total_rss / total_cache): resident anonymous memory, page cache"),
    _s("mem.low_bytes", r"mem\.low_bytes", "bytes", "memory.low (v2 protection; absent on v1)"),
    _s("mem.cgroup_version", r"mem\.cgroup_version", "1 or 2",
       "the hierarchy that manages the memory controller (which memory levers exist)"),
    _s("mem.refault.rate mem.pgmajfault.rate", r"mem\.(refault|pgmajfault)\.rate", "pages/s, faults/s",
       "d memory.stat workingset_refault_file / pgmajfault: evicted page cache read back, major faults, of the "
       "whole cgroup"),
    _s("mem.growth_bytes_per_s", r"mem\.growth_bytes_per_s", "bytes/s",
       "d memory usage / elapsed (negative when it shrinks)"),
    _s("tasks", r"tasks", "tasks", "cgroup nr_tasks"),
    _s("processes threads", r"(processes|threads)", "count", "last snapshot's matched processes / their threads"),
    _s("running_threads", r"running_threads", "threads", "mean over the window of threads in state R"),
    _s("threads.pool", r"threads\.pool", "threads",
       "its compute-thread pool: observed, the threads that burned at least 30 % of the busiest one's CPU over "
       "the window (/proc/<pid>/task/*/stat; none while the busiest used under 0.05 core), else the declared "
       "``[service.threads] count``"),
    _s("threads.pool_declared", r"threads\.pool_declared", "0/1",
       "1 when ``threads.pool`` is the declared count, 0 when observed"),
    _s("threads.pool_fixed", r"threads\.pool_fixed", "0/1",
       "0 when the config says the pool follows its quota (``pool = \"follows-quota\"``), else 1: a fixed pool "
       "is a constraint (autotune/diagnose/pool.py)"),
    _s("threads.lever", r"threads\.lever", "0/1",
       "1 when the service declares a restart path that sets its threads (the ``threads`` knob)"),
    _s("majflt.rate minflt.rate nvcsw.rate nivcsw.rate", r"(majflt|minflt|nvcsw|nivcsw)\.rate", "per s",
       "d per-process counters (pids in both ends)"),
    _s("rss_bytes", r"rss_bytes", "bytes", "sum of RSS"),
    _s("latency.<p50|p95|p99>_s", r"latency\.p(50|95|99)_s", "s", "end-to-end request latency over the window (*)"),
    _s("latency.ttft_<p50|p95|p99>_s", r"latency\.ttft_p(50|95|99)_s", "s", "time to first token over the window (*)"),
    _s("latency.itl_<p50|p95|p99>_s", r"latency\.itl_p(50|95|99)_s", "s",
       "inter-token latency (gap between output tokens) over the window (*)"),
    _s("latency.itl_mean_s", r"latency\.itl_mean_s", "s",
       "mean time per generated token over the window: histogram sum / count, else (llama.cpp) generation "
       "seconds / tokens of the requests that ended in the window, each request's own time (parallel slots "
       "add up), else the probe's mean token gap"),
    _s("latency.<requests|tokens|ttft_samples|itl_samples>", r"latency\.(requests|tokens|ttft_samples|itl_samples)",
       "count", "completed requests, generated tokens, observations behind ttft / itl, summed over the window's "
       "scrapes"),
    _s("latency.prompt_tokens", r"latency\.prompt_tokens", "count", "prompt tokens processed in the window (llama.cpp)"),
    _s("latency.prompt_tokens_per_s", r"latency\.prompt_tokens_per_s", "tokens/s",
       "prompt throughput: those tokens / the seconds spent processing them (llama.cpp)"),
    _s("latency.running latency.waiting", r"latency\.(running|waiting)", "count",
       "last latency reading (llama.cpp: requests processing / deferred)"),
    _s("latency.probe.<p50|p95|p99|ttft_p50|ttft_p95|itl_p95|itl_mean>_s",
       r"latency\.probe\.(p50_s|p95_s|p99_s|ttft_p50_s|ttft_p95_s|itl_p95_s|itl_mean_s)", "s",
       "the active probe's own requests over the window: end-to-end, time to first token, gaps between its "
       "streamed tokens (exact quantiles of the window's probes)"),
    _s("latency.probe.samples", r"latency\.probe\.samples", "count",
       "probe requests behind them (a probe is a sample of one request, not of every request)"),
    _s("slo.<p95|p99|ttft_p95|itl_p95|itl_mean>_ratio", r"slo\.(p95|p99|ttft_p95|itl_p95|itl_mean)_ratio", "ratio",
       "latency / its SLO target (``slo_ratios``), for targets the declared source can measure; needs ``services``"),
    _s("slo.ratio", r"slo\.ratio", "ratio", "the largest (binding) ratio: how far over its target the service is"),
    _s("slo.slack", r"slo\.slack", "ratio",
       "1 - the largest ratio: (target - latency) / target of the binding target (Heracles' slack); 1 when the "
       "service is idle (no request running, waiting or finished in the window); absent without data"),
    _s("slo.targets", r"slo\.targets", "count",
       "SLO targets the service declares that its declared latency source can measure (autotune/slo.py); 0: the "
       "service is not SLO-controlled and the PSI-driven rules act"),
    # -- context: filled by the diagnosis engine from the config and knob reads ----------------
    _c("neighbours.count", "count", "services with the neighbour role"),
    _c("neighbours.cpu.usage_cores", "cores", "sum of the neighbours' ``cpu.usage_cores``"),
    _c("neighbours.mem.usage_bytes", "bytes", "sum of the neighbours' ``mem.usage_bytes``"),
    _c("neighbours.mem.file_bytes", "bytes", "sum of the neighbours' ``mem.file_bytes``"),
    _c("neighbours.mem.growth_bytes_per_s", "bytes/s", "sum of the neighbours' ``mem.growth_bytes_per_s``"),
    _c("neighbours.min_cpu_cores", "cores", "sum of the neighbours' ``min_cpu_cores``"),
    _c("services.count", "count", "services configured"),
    _c("services.latency_critical.count", "count", "latency-critical services configured"),
    _c("host.governor_powersave", "0/1", "1 when any cpufreq policy runs ``powersave`` (read through the knob)"),
    _c("host.thp.enabled_always", "0/1", "1 when THP ``enabled`` is ``always`` (read through the knob)"),
    _c("host.thp.defrag_always", "0/1", "1 when THP ``defrag`` is ``always`` (read through the knob)"),
]

# the names the engine adds from the config and knob reads
CONTEXT_METRICS: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.scope == "context")


@cache
def known_pattern() -> re.Pattern[str]:
    """Every name a rule may cite: a host or context pattern, or ``svc.<s>.`` + a service one
    (``<s>`` a literal service name or the placeholder ``$service``)."""
    host = [m.pattern for m in REGISTRY if m.scope != "service"]
    svc = [m.pattern for m in REGISTRY if m.scope == "service"]
    return re.compile("^(?:" + "|".join(host) + r"|svc\.[^.\s]+(?:\.[^.\s]+)*?\.(?:" + "|".join(svc) + "))$")


def sensors() -> dict[str, Callable]:
    """The registry-declared sensors: ``module:function`` -> the function (imported once)."""
    return {spec: _load(spec) for spec in dict.fromkeys(m.sensor for m in REGISTRY if m.sensor)}


@cache
def _load(spec: str) -> Callable:
    module, _, fn = spec.partition(":")
    return getattr(importlib.import_module(module), fn)


def derive_sensor_metrics(out: dict[str, float], first_readings: dict[str, dict[str, float]],
                          last_readings: dict[str, dict[str, float]], dt: float) -> None:
    """Each registry metric of a declared sensor: the reading itself (gauge, last snapshot) or
    its rate over the window (rate: absent for one snapshot or a counter that went back)."""
    for m in REGISTRY:
        if m.sensor is None or m.field is None:
            continue
        b = last_readings.get(m.sensor, {}).get(m.field)
        if b is None:
            continue
        if m.kind == "gauge":
            out[m.name] = float(b)
            continue
        a = first_readings.get(m.sensor, {}).get(m.field)
        if a is not None and dt > 0 and b >= a:
            out[m.name] = (b - a) / dt


def markdown() -> str:
    """The names table of docs/metric-names.md."""
    head = {"host": "Host metrics", "service": "Per service `<s>` (prefix `svc.<s>.`)",
            "context": "Context metrics (the diagnosis engine adds them from the config and knob reads)"}
    lines = ["# Metric names", "",
             "What rules, symptom specs, verification objectives, `status` and the report call the agent's",
             "readings. Made from `autotune/detect/registry.py` by `python3 -m autotune.detect.registry`",
             "(a test checks that it matches); the Prometheus series the agent exports are in",
             "[metrics.md](metrics.md).", ""]
    for scope in ("host", "service", "context"):
        lines += [f"## {head[scope]}", "", "| name | unit | from |", "|---|---|---|"]
        for m in REGISTRY:
            if m.scope == scope:
                names = " ".join("`" + n.replace("|", "\\|") + "`" for n in m.name.split())
                lines.append(f"| {names} | {m.unit} | {m.source.replace('``', '`').replace('|', '/')} |")
        lines.append("")
    lines += ["(*) Window quantiles merge the per-scrape histograms every snapshot keeps",
              "(`LatencyReading.hist`, autotune/histogram.py): the p95 of all tokens generated in the window,",
              "however many scrapes it spans. Where the page has no histogram for a figure, the window's probe",
              "requests give it (the `latency.probe.*` figures under the page's names); llama.cpp alone has",
              "none of them.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")
