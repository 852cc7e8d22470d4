"""A realistic Snapshot for size measurements: this host's real /proc plus two services.

Sensors are written elsewhere; this builds the same pydantic model directly from /proc so the
store's byte figures reflect a typical host (full vmstat and meminfo, per-CPU stat, PSI) with
two services, each with a cgroup reading, three processes and a latency reading.
"""

from __future__ import annotations

import random
import zlib
from pathlib import Path

from autotune.types import (
    CgroupReading, CpuTimes, LatencyReading, LoadAvg, ProcessReading, PsiLine, PsiReading,
    ServiceReading, Snapshot, StatReading,
)


def _kv(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = Path(path).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1]) * (1024 if path.endswith("meminfo") else 1)
    return out


def _psi(rng: random.Random, tick: int) -> PsiReading:
    def line() -> PsiLine:
        return PsiLine(avg10_pct=round(rng.uniform(0, 40), 2), avg60_pct=round(rng.uniform(0, 30), 2),
                       avg300_pct=round(rng.uniform(0, 20), 2), total_usec=1_000_000 * tick + rng.randrange(10**6))
    return PsiReading(some=line(), full=line())


def realistic_snapshot(ts: float, *, tick: int = 0, seed: int = 0) -> Snapshot:
    """One tick. ``tick`` advances counters so consecutive snapshots differ like real ones."""
    rng = random.Random(seed * 1_000_003 + tick)
    # About a third of vmstat moves in a second on a busy host; the rest stays put.
    vmstat = {k: v + (tick * 7 + rng.randrange(50) if zlib.crc32(k.encode()) % 3 == 0 else 0)
              for k, v in _kv("/proc/vmstat").items()}
    meminfo = {k: v + rng.randrange(0, 4096) * 4096 for k, v in _kv("/proc/meminfo").items()}

    def cpu(scale: float) -> CpuTimes:
        return CpuTimes(user_s=round(scale * tick * 0.6 + rng.random(), 2), system_s=round(scale * tick * 0.2, 2),
                        idle_s=round(scale * tick * 0.2 + rng.random(), 2), iowait_s=0.01 * tick,
                        irq_s=0.0, softirq_s=round(0.001 * tick, 2), nice_s=0.0, steal_s=0.0)

    stat = StatReading(total=cpu(2), per_cpu={"cpu0": cpu(1), "cpu1": cpu(1)}, ctxt=5000 * tick,
                       processes=100 + tick, procs_running=rng.randrange(1, 5), procs_blocked=0)
    services = {}
    for i, name in enumerate(("llm", "batch")):
        cg = CgroupReading(
            path=f"/autotune/{name}", version=1, cpu_usage_usec=900_000 * tick + rng.randrange(10**5),
            nr_periods=10 * tick, nr_throttled=rng.randrange(0, 10 * tick + 1), throttled_usec=1000 * tick,
            cpu_quota_cores=1.5 if i else None, cpu_period_usec=100_000, cpu_weight=100,
            cpuset_cpus=[0, 1], memory_current_bytes=2_000_000_000 + rng.randrange(10**7),
            memory_max_bytes=None, memory_events={"failcnt": 0}, nr_tasks=12,
            psi={"cpu": _psi(rng, tick), "memory": _psi(rng, tick), "io": _psi(rng, tick)},
        )
        procs = [
            ProcessReading(pid=1000 + 10 * i + j, name=f"{name}-worker", cpu_user_s=round(0.5 * tick + rng.random(), 2),
                           cpu_system_s=round(0.1 * tick, 2), rss_bytes=500_000_000 + rng.randrange(10**6),
                           num_threads=8, running_threads=rng.randrange(0, 3), ctx_voluntary=100 * tick,
                           ctx_involuntary=10 * tick, minor_faults=1000 * tick, major_faults=3, affinity=[0, 1])
            for j in range(3)
        ]
        lat = LatencyReading(source="http://127.0.0.1:8000/metrics", ok=True, p50_s=round(rng.uniform(0.1, 0.3), 4),
                             p95_s=round(rng.uniform(0.3, 0.9), 4), p99_s=round(rng.uniform(0.9, 1.5), 4),
                             ttft_p95_s=round(rng.uniform(0.05, 0.2), 4), requests=float(rng.randrange(5, 50)),
                             running=float(rng.randrange(0, 4)), waiting=float(rng.randrange(0, 4)))
        services[name] = ServiceReading(name=name, cgroup=cg, processes=procs, latency=lat)
    return Snapshot(
        ts=ts, psi={"cpu": _psi(rng, tick), "memory": _psi(rng, tick), "io": _psi(rng, tick)},
        vmstat=vmstat, stat=stat, meminfo_bytes=meminfo,
        loadavg=LoadAvg(load1=round(rng.uniform(0, 4), 2), load5=1.2, load15=1.1, runnable=2, threads=300),
        services=services,
    )
