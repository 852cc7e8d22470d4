"""The metric vocabulary: the only flat names for what a Snapshot says, and the one place
that derives them. Gauges come from the last snapshot, rates from first -> last.

Every consumer of flat readings goes through here: the detector and rules (``derive_metrics``
over a window), per-sample series such as the sample store's bucket stats (``steps``: one dict
per snapshot, rates over the pair ending there; ``series``: one name), the audit report and
``status`` (``gauges``: one snapshot), the Prometheus exporter (the last two snapshots), and the
engine's SLO context (``slo_ratios``). Raw counters (PSI ``total_usec``, vmstat counts) are not
flat metrics: they stay in the Snapshot, and their rates are metrics here.

Pure: no /proc, no clock. A metric whose inputs are missing, or whose counter went backwards
(reset, process restarted), is simply absent - never NaN, never an exception. Rules and symptom
specs reference these names; ``is_known_metric`` is what the rule loader checks them against.

Every name, its unit and how it is derived is declared once, in ``detect/registry.py`` (the
table: ``docs/metric-names.md``); this module derives the names of the typed sources (PSI,
vmstat, /proc/stat, meminfo, loadavg, cgroups, processes, latency) and, through the registry,
those of the sensors the registry declares. ``cpu.cap_cores``, ``cpu.share_cores`` and
``threads.*`` (but the observed pool) come from the config through ``pool_facts``, which the
engine calls too (like ``slo_ratios``); the context metrics (``CONTEXT_METRICS``) are filled by
the diagnosis engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from autotune import histogram
from autotune import slo as slo_table
from autotune.detect import registry
from autotune.detect.registry import CONTEXT_METRICS, MEM_EVENTS
from autotune.types import CgroupReading, LatencyReading, PsiReading, ServiceReading, Snapshot

PSI_RES = ("cpu", "memory", "io", "irq")
PSI_LINES = ("some", "full")
PSI_FIELDS = ("avg10", "avg60", "avg300")


def is_known_metric(name: str) -> bool:
    """True if ``name`` is a metric this module (or the engine's context) can produce.

    Service metrics may use the placeholder ``svc.$service.`` or a literal service name.
    """
    return bool(registry.known_pattern().match(name))


def derive_metrics(
    window: Sequence[Snapshot],
    *,
    ncpu: int | None = None,
    services: Iterable[object] = (),
    host: bool = True,
) -> dict[str, float]:
    """Metrics over ``window`` (oldest first). One snapshot gives gauges only.

    ``ncpu`` overrides the CPU count seen in /proc/stat. ``services`` are config ``Service``
    objects; their ``name``, ``slo``, ``latency`` and ``threads`` are used, for the ``slo.*``
    metrics (with the page flavor the newest latency reading names, for what the source can
    measure) and the thread pools (``pool_facts``).
    ``host=False``: the services' metrics only, for callers that read nothing else (a service's
    verification objective, the search's trial facts): the host's ~190 vmstat rates were most
    of a derivation's cost.
    """
    out: dict[str, float] = {}
    if not window:
        return out
    first, last = window[0], window[-1]
    dt = last.ts - first.ts
    rate_ok = len(window) > 1 and dt > 0

    ncpu_v = ncpu or (last.stat and (last.stat.ncpu or len(last.stat.per_cpu))) or None
    if ncpu_v:
        out["host.ncpu"] = float(ncpu_v)
    if host:
        _psi(out, "psi", first.psi, last.psi, dt if rate_ok else 0.0)
        if rate_ok:
            for key, val in last.vmstat.items():
                _rate(out, f"vmstat.{key}.rate", first.vmstat.get(key), val, dt)
        _stat(out, first, last, dt if rate_ok else 0.0)
        _load(out, last, ncpu_v)
        _mem(out, last.meminfo_bytes)
        registry.derive_sensor_metrics(out, first.readings, last.readings, dt if rate_ok else 0.0)

    for name, svc in last.services.items():
        prev = first.services.get(name)
        prefix = f"svc.{name}."
        svc_out: dict[str, float] = {}
        _service(svc_out, prev, svc, [s.services.get(name) for s in window], dt if rate_ok else 0.0)
        out.update({prefix + k: v for k, v in svc_out.items()})
    flavors = {name: svc.latency.flavor for name, svc in last.services.items()
               if svc.latency is not None and svc.latency.flavor}
    services = list(services)
    out.update(slo_ratios(out, services, flavors))
    out.update(pool_facts(out, services))
    return out


def gauges(snapshot: Snapshot, *, ncpu: int | None = None, services: Iterable[object] = ()) -> dict[str, float]:
    """The metrics one snapshot gives on its own (no rates): ``derive_metrics([snapshot])``."""
    return derive_metrics([snapshot], ncpu=ncpu, services=services)


def steps(window: Sequence[Snapshot], **kw) -> list[tuple[float, dict[str, float]]]:
    """(ts, metrics) at each snapshot: its gauges plus rates over the pair ending there."""
    return [(snap.ts, derive_metrics(window[max(0, i - 1) : i + 1], **kw)) for i, snap in enumerate(window)]


def series(window: Sequence[Snapshot], name: str, **kw) -> list[tuple[float, float]]:
    """(ts, value) of ``name`` at each snapshot; rates use the pair ending there."""
    return [(ts, m[name]) for ts, m in steps(window, **kw) if name in m]


def slo_ratios(metrics: dict[str, float], services: Iterable[object],
               flavors: dict[str, str] | None = None) -> dict[str, float]:
    """``svc.<s>.slo.*_ratio`` = latency / SLO target, ``slo.slack`` and ``slo.targets`` for
    each config ``Service``. The one place they are computed (the engine calls it too).

    Only targets the service's declared latency source can measure count (autotune/slo.py;
    ``flavors``: the page flavor each service's reading names, for ``flavor = "auto"``): an
    itl_p95_s target on a llama.cpp page, which has no histograms, is not a target at all.
    Slack is Heracles' (target - latency) / target of the binding target, i.e. 1 - the largest
    ratio. An idle service (its source reads, nothing ran, waited or finished in the window)
    has full slack, 1: there is no latency to protect, so its resources may go back."""
    out: dict[str, float] = {}
    for svc in services:
        name, slo = getattr(svc, "name", None), getattr(svc, "slo", None)
        fields = slo_table.counted(svc, (flavors or {}).get(name or ""))
        ratios = []
        for field in fields:
            spec = slo_table.FIELDS[field]
            lat = metrics.get(f"svc.{name}.{spec.metric}")
            if lat is not None:
                out[f"svc.{name}.{spec.ratio}"] = ratio = lat / getattr(slo, field)
                ratios.append(ratio)
        targets = len(fields)
        out[f"svc.{name}.slo.targets"] = float(targets)
        if ratios:
            out[f"svc.{name}.slo.ratio"] = max(ratios)
            out[f"svc.{name}.slo.slack"] = 1.0 - max(ratios)
        elif targets and _idle(metrics, f"svc.{name}."):
            out[f"svc.{name}.slo.slack"] = 1.0
    return out


def pool_facts(metrics: dict[str, float], services: Iterable[object]) -> dict[str, float]:
    """``svc.<s>.cpu.cap_cores`` / ``cpu.share_cores`` / ``cpu.attainable_cores`` and the config's word on each service's thread pool
    (``threads.pool`` when declared, ``threads.pool_declared``, ``threads.pool_fixed``,
    ``threads.lever``). A declared count is the pool it runs with its own setting: it fills the
    windows where none was observed (idle), and an observed pool wins (it is what runs now, also
    after the ``threads`` knob changed it). The one place they are computed (the engine calls
    it too)."""
    out: dict[str, float] = {}
    services = list(services)
    caps = {}
    for svc in services:
        p = f"svc.{getattr(svc, 'name', None)}."
        found = [metrics.get(p + "cpu.quota_cores"), metrics.get(p + "cpuset.ncpu"), metrics.get("host.ncpu")]
        if any(found):
            caps[p] = out[p + "cpu.cap_cores"] = min(c for c in found if c)
    busy = [f"svc.{getattr(n, 'name', None)}." for n in services if getattr(n, "role", None) == "neighbour"
            and metrics.get(f"svc.{getattr(n, 'name', None)}.cpu.usage_cores", 0.0) > 0.1]
    for svc in services:
        name, th = getattr(svc, "name", None), getattr(svc, "threads", None)
        p = f"svc.{name}."
        weight, cpus = metrics.get(p + "cpu.weight"), metrics.get(p + "cpuset.ncpu") or metrics.get("host.ncpu")
        rivals = [r for r in busy if r != p]
        if p in caps and weight and cpus:
            by_caps = cpus - sum(min(caps.get(r, cpus), cpus) for r in rivals)
            by_weight = cpus * weight / (weight + sum(metrics.get(r + "cpu.weight", 100.0) for r in rivals))
            out[p + "cpu.share_cores"] = min(caps[p], max(by_caps, by_weight))
        host_cpus = metrics.get("host.ncpu")
        if host_cpus and cpus:  # the most any quota / weight step could give it here (its cpuset stays)
            floors = sum(getattr(o, "min_cpu_cores", None) or 0.0 for o in services if getattr(o, "name", None) != name)
            out[p + "cpu.attainable_cores"] = max(0.0, min(cpus, host_cpus - floors))
        out[p + "threads.lever"] = 1.0 if th is not None and th.has_lever else 0.0
        if th is not None and th.count is not None and p + "threads.pool" not in metrics:
            out[p + "threads.pool"] = float(th.count)
            out[p + "threads.pool_declared"] = 1.0
        if p + "threads.pool" in out or p + "threads.pool" in metrics:
            out[p + "threads.pool_fixed"] = 0.0 if th is not None and th.pool == "follows-quota" else 1.0
    return out


def _idle(metrics: dict[str, float], prefix: str) -> bool:
    """The latency source read, and nothing ran, waited or finished in the window (finished:
    requests, or tokens where the page counts no requests, as llama.cpp's)."""
    running, waiting = metrics.get(prefix + "latency.running"), metrics.get(prefix + "latency.waiting")
    done = [metrics.get(prefix + k) for k in ("latency.requests", "latency.tokens")]
    if running is None or waiting is None or all(v is None for v in done):
        return False
    return not running and not waiting and not any(done)


# -- helpers ---------------------------------------------------------------------------------
def _rate(out: dict[str, float], key: str, a: float | None, b: float | None, dt: float, scale: float = 1.0) -> None:
    """Per-second rate of a counter; skipped on missing ends, reset (b < a) or dt <= 0."""
    if a is None or b is None or dt <= 0 or b < a:
        return
    out[key] = (b - a) * scale / dt


def _psi(out, prefix: str, first: dict[str, PsiReading | None], last: dict[str, PsiReading | None], dt: float) -> None:
    for res, reading in last.items():
        if reading is None:
            continue
        prev = first.get(res)
        for line_name in PSI_LINES:
            line = getattr(reading, line_name)
            if line is None:
                continue
            base = f"{prefix}.{res}.{line_name}."
            out[base + "avg10"] = line.avg10_pct
            out[base + "avg60"] = line.avg60_pct
            out[base + "avg300"] = line.avg300_pct
            prev_line = getattr(prev, line_name) if prev is not None else None
            if prev_line is not None:
                # usec stalled per usec of wall time, as a percentage
                _rate(out, base + "stall_pct", prev_line.total_usec, line.total_usec, dt, scale=1e-6 * 100)


def _stat(out, first: Snapshot, last: Snapshot, dt: float) -> None:
    s1, s0 = last.stat, first.stat
    if s1 is None:
        return
    if s1.procs_running is not None:
        out["stat.procs_running"] = float(s1.procs_running)
    if s1.procs_blocked is not None:
        out["stat.procs_blocked"] = float(s1.procs_blocked)
    if s0 is None or dt <= 0:
        return
    _rate(out, "stat.ctxt.rate", s0.ctxt, s1.ctxt, dt)
    _rate(out, "stat.forks.rate", s0.processes, s1.processes, dt)
    a, b = s0.total, s1.total
    d_total = b.total_s - a.total_s
    if d_total <= 0 or b.busy_s < a.busy_s:
        return
    for key, d in (
        ("cpu.util_pct", b.busy_s - a.busy_s),
        ("cpu.iowait_pct", b.iowait_s - a.iowait_s),
        ("cpu.system_pct", b.system_s - a.system_s),
        ("cpu.steal_pct", b.steal_s - a.steal_s),
    ):
        if d >= 0:
            out[key] = min(100.0, 100.0 * d / d_total)


def _load(out, last: Snapshot, ncpu: int | None) -> None:
    la = last.loadavg
    if la is None:
        return
    out["load.1"], out["load.5"], out["load.15"] = la.load1, la.load5, la.load15
    if ncpu:
        out["load.runnable_per_cpu"] = la.runnable / ncpu
        out["load.1_per_cpu"] = la.load1 / ncpu


def _mem(out, mi: dict[str, int]) -> None:
    total, avail = mi.get("MemTotal"), mi.get("MemAvailable")
    if avail is not None:
        out["mem.available_bytes"] = float(avail)
    if total:
        out["mem.total_bytes"] = float(total)
        if avail is not None:
            out["mem.available_pct"] = 100.0 * avail / total
    st, sf = mi.get("SwapTotal"), mi.get("SwapFree")
    if st is not None:
        out["mem.swap_total_bytes"] = float(st)
    if st and sf is not None:
        out["mem.swap_used_pct"] = 100.0 * (st - sf) / st


def _service(
    out, prev: ServiceReading | None, svc: ServiceReading, history: list[ServiceReading | None], dt: float
) -> None:
    cg, cg0 = svc.cgroup, (prev.cgroup if prev else None)
    if cg is not None:
        _cgroup(out, cg0, cg, dt)
    procs = svc.processes
    if procs:
        out["processes"] = float(len(procs))
        out["threads"] = float(sum(p.num_threads for p in procs))
        out["rss_bytes"] = float(sum(p.rss_bytes for p in procs))
    running = [sum(p.running_threads for p in h.processes) for h in history if h is not None and h.processes]
    if running:
        out["running_threads"] = sum(running) / len(running)
    pool = observed_pool(prev, svc, dt)
    if pool is not None:
        out["threads.pool"], out["threads.pool_declared"] = float(pool), 0.0
    if prev is not None and dt > 0 and procs:
        before = {p.pid: p for p in prev.processes}
        pairs = [(before[p.pid], p) for p in procs if p.pid in before]
        if pairs:
            for key, attr in (("majflt", "major_faults"), ("minflt", "minor_faults"),
                              ("nvcsw", "ctx_voluntary"), ("nivcsw", "ctx_involuntary")):
                deltas = [getattr(b, attr) - getattr(a, attr) for a, b in pairs]
                # a pid whose counter went backwards was reused: leave it out
                out[f"{key}.rate"] = sum(d for d in deltas if d >= 0) / dt
            if "cpu.usage_cores" not in out:
                cpu = [(b.cpu_user_s + b.cpu_system_s) - (a.cpu_user_s + a.cpu_system_s) for a, b in pairs]
                out["cpu.usage_cores"] = sum(c for c in cpu if c >= 0) / dt
    _latency(out, svc.latency, history)


POOL_BUSY_CORES = 0.05  # the busiest thread must use this much for a pool to be observed (starved: ~0.1)
POOL_SHARE = 0.3  # a compute thread burns at least this share of the busiest one's CPU
POOL_MIN_CORES = 0.02


def observed_pool(prev: ServiceReading | None, svc: ServiceReading, dt: float) -> int | None:
    """Compute threads over the window: threads that burned CPU together (each at least
    POOL_SHARE of the busiest one's, from their CPU time at both ends). A fixed pool's threads
    all run (or spin at a barrier) while it generates, so they burn alike, while the HTTP and
    housekeeping threads barely register. None while the service is idle or unreadable."""
    if prev is None or dt <= 0:
        return None
    before = {(p.pid, tid): c for p in prev.processes for tid, c in p.thread_cpu_s.items()}
    rates = [(c - before[(p.pid, tid)]) / dt for p in svc.processes for tid, c in p.thread_cpu_s.items()
             if (p.pid, tid) in before and c >= before[(p.pid, tid)]]
    busiest = max(rates, default=0.0)
    if busiest < POOL_BUSY_CORES:
        return None
    return sum(r >= max(POOL_SHARE * busiest, POOL_MIN_CORES) for r in rates)


# window quantiles from merged histograms: metric suffix -> (histogram kind, quantile)
_QUANTILES = {"p50_s": ("e2e", 0.5), "p95_s": ("e2e", 0.95), "p99_s": ("e2e", 0.99),
              "ttft_p50_s": ("ttft", 0.5), "ttft_p95_s": ("ttft", 0.95), "ttft_p99_s": ("ttft", 0.99),
              "itl_p50_s": ("itl", 0.5), "itl_p95_s": ("itl", 0.95), "itl_p99_s": ("itl", 0.99)}
_KIND_KEYS = {kind: [(key, q) for key, (k, q) in _QUANTILES.items() if k == kind] for kind in ("e2e", "ttft", "itl")}
# counts summed over the window's scrapes
_COUNTS = ("requests", "tokens", "ttft_samples", "itl_samples", "prompt_tokens")


def _latency(out, lat: LatencyReading | None, history: list[ServiceReading | None]) -> None:
    """Latency over the window: the intervals after the first snapshot (the first one's
    interval lies before the window), or the one snapshot's own interval. A snapshot taken
    between two scrapes (the page has its own period) has no reading: the newest one in the
    window stands for it; a failed newest reading means no latency."""
    own = [h.latency for h in (history[1:] if len(history) > 1 else history)
           if h is not None and h.latency is not None]
    lat = lat if lat is not None else (own[-1] if own else None)
    if lat is None or not lat.ok:
        return
    readings = [r for r in own if r.ok]
    for key in ("running", "waiting"):
        if getattr(lat, key) is not None:
            out[f"latency.{key}"] = float(getattr(lat, key))
    for key in _COUNTS:
        vals = [getattr(r, key) for r in readings if getattr(r, key) is not None]
        if vals:
            out[f"latency.{key}"] = float(sum(vals))
    merged = {kind: histogram.merge(r.hist.get(kind) for r in readings) for kind in ("e2e", "ttft", "itl")}
    for kind, keys in _KIND_KEYS.items():
        values = (histogram.quantiles([q for _, q in keys], merged[kind]) if merged[kind] is not None
                  else [getattr(lat, key, None) for key, _ in keys])
        for (key, _), v in zip(keys, values):
            if v is not None:
                out[f"latency.{key}"] = float(v)
    itl = merged["itl"]
    timed = [(r.token_seconds, r.tokens) for r in readings if r.token_seconds is not None and r.tokens]
    if itl is not None and histogram.count(itl) > 0:
        out["latency.itl_mean_s"] = itl.sum / histogram.count(itl)
    elif timed:  # llama.cpp: seconds and tokens of the requests that ended in the window
        out["latency.itl_mean_s"] = sum(t for t, _ in timed) / sum(n for _, n in timed)
    elif lat.itl_mean_s is not None and lat.token_seconds is None:
        out["latency.itl_mean_s"] = float(lat.itl_mean_s)
    prompt = [(r.prompt_seconds, r.prompt_tokens) for r in readings if r.prompt_seconds and r.prompt_tokens]
    if prompt:
        out["latency.prompt_tokens_per_s"] = sum(n for _, n in prompt) / sum(t for t, _ in prompt)
    _probes(out, [p for r in readings for p in r.probes])


# the probe's figures: metric suffix -> (what of each probe, quantile or None for the mean)
_PROBE_FIGURES = {"p50_s": ("e2e", 0.5), "p95_s": ("e2e", 0.95), "p99_s": ("e2e", 0.99),
                  "ttft_p50_s": ("ttft", 0.5), "ttft_p95_s": ("ttft", 0.95),
                  "itl_p95_s": ("gaps", 0.95), "itl_mean_s": ("gaps", None)}


def _probes(out, probes: list) -> None:
    """The window's probe requests: ``latency.probe.*`` (exact quantiles over them), and the
    page's names for what the page did not give (llama.cpp: TTFT, percentiles)."""
    if not probes:
        return
    values = {"e2e": sorted(p.e2e_s for p in probes),
              "ttft": sorted(p.ttft_s for p in probes if p.ttft_s is not None),
              "gaps": sorted(g for p in probes for g in p.gaps_s)}
    out["latency.probe.samples"] = float(len(probes))
    for key, (what, q) in _PROBE_FIGURES.items():
        xs = values[what]
        if not xs:
            continue
        v = sum(xs) / len(xs) if q is None else _exact_quantile(q, xs)
        out[f"latency.probe.{key}"] = v
        out.setdefault(f"latency.{key}", v)


def _exact_quantile(q: float, xs: list[float]) -> float:
    """Linear interpolation between the closest ranks of sorted ``xs`` (numpy's default)."""
    h = (len(xs) - 1) * q
    lo = int(h)
    return xs[lo] if lo + 1 >= len(xs) else xs[lo] + (h - lo) * (xs[lo + 1] - xs[lo])


def _cgroup(out, cg0: CgroupReading | None, cg: CgroupReading, dt: float) -> None:
    if cg.cpu_quota_cores is not None:
        out["cpu.quota_cores"] = cg.cpu_quota_cores
    if cg.cpu_weight is not None:
        out["cpu.weight"] = float(cg.cpu_weight)
    if cg.cpuset_cpus:
        out["cpuset.ncpu"] = float(len(cg.cpuset_cpus))
    if cg.nr_tasks is not None:
        out["tasks"] = float(cg.nr_tasks)
    if cg.memory_current_bytes is not None:
        out["mem.usage_bytes"] = float(cg.memory_current_bytes)
        for lim_key, lim, pct_key in (
            ("mem.max_bytes", cg.memory_max_bytes, "mem.usage_pct_of_max"),
            ("mem.high_bytes", cg.memory_high_bytes, "mem.usage_pct_of_high"),
        ):
            if lim:
                out[lim_key] = float(lim)
                out[pct_key] = 100.0 * cg.memory_current_bytes / lim
    if cg.memory_controller_version is not None:
        out["mem.cgroup_version"] = float(cg.memory_controller_version)
    if cg.memory_low_bytes is not None:
        out["mem.low_bytes"] = float(cg.memory_low_bytes)
    for key in ("anon", "file"):
        if key in cg.memory_stat:
            out[f"mem.{key}_bytes"] = float(cg.memory_stat[key])
    _psi(out, "psi", cg0.psi if cg0 else {}, cg.psi, dt)
    if cg0 is None or dt <= 0:
        return
    for key, stat in (("refault", "workingset_refault_file"), ("pgmajfault", "pgmajfault")):
        _rate(out, f"mem.{key}.rate", cg0.memory_stat.get(stat), cg.memory_stat.get(stat), dt)
    if cg0.memory_current_bytes is not None and cg.memory_current_bytes is not None:
        out["mem.growth_bytes_per_s"] = (cg.memory_current_bytes - cg0.memory_current_bytes) / dt
    _rate(out, "cpu.usage_cores", cg0.cpu_usage_usec, cg.cpu_usage_usec, dt, scale=1e-6)
    if "cpu.usage_cores" in out and cg.cpu_quota_cores:
        out["cpu.quota_util_pct"] = 100.0 * out["cpu.usage_cores"] / cg.cpu_quota_cores
    _rate(out, "cpu.throttled_s_per_s", cg0.throttled_usec, cg.throttled_usec, dt, scale=1e-6)
    if None not in (cg0.nr_periods, cg.nr_periods, cg0.nr_throttled, cg.nr_throttled):
        d_per = cg.nr_periods - cg0.nr_periods
        d_thr = cg.nr_throttled - cg0.nr_throttled
        if d_per > 0 and 0 <= d_thr <= d_per:
            out["cpu.throttled_pct"] = 100.0 * d_thr / d_per
        elif d_per == 0 and d_thr == 0:
            out["cpu.throttled_pct"] = 0.0  # no period ran out: idle or unlimited
    for ev in MEM_EVENTS:
        _rate(out, f"mem.{ev}_events.rate", cg0.memory_events.get(ev), cg.memory_events.get(ev), dt)
