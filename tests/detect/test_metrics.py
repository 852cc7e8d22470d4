"""derive_metrics: gauges from the last snapshot, rates first->last, missing/reset -> absent."""

from __future__ import annotations

import math

import pytest

from autotune.config import SLO, LatencySource, Service
from autotune.detect.metrics import derive_metrics, gauges, is_known_metric, series, slo_ratios, steps
from autotune.types import (
    CgroupReading,
    CpuTimes,
    LatencyReading,
    LoadAvg,
    ProcessReading,
    PsiLine,
    PsiReading,
    ServiceReading,
    Snapshot,
    StatReading,
)


def psi(avg10: float, total: int) -> PsiReading:
    line = PsiLine(avg10_pct=avg10, avg60_pct=avg10 / 2, avg300_pct=avg10 / 4, total_usec=total)
    return PsiReading(some=line, full=None)


def proc(pid: int, cpu_s: float, majflt: int, running: int = 1) -> ProcessReading:
    return ProcessReading(
        pid=pid, name="llm", cpu_user_s=cpu_s, cpu_system_s=0.0, rss_bytes=100, num_threads=4,
        running_threads=running, ctx_voluntary=0, ctx_involuntary=0, minor_faults=0, major_faults=majflt,
    )


def snap(ts: float, *, busy: float, idle: float, psi_total: int, vm: int, usage_us: int, periods: int,
         throttled: int, majflt: int, running: int = 1, high: int = 0) -> Snapshot:
    cg = CgroupReading(
        path="/autotune/llm", version=2, cpu_usage_usec=usage_us, nr_periods=periods, nr_throttled=throttled,
        throttled_usec=throttled * 1000, cpu_quota_cores=0.5, cpu_weight=100, cpuset_cpus=[0, 1],
        memory_current_bytes=512, memory_max_bytes=1024, memory_events={"high": high},
        psi={"cpu": psi(30.0, psi_total // 2)},
    )
    svc = ServiceReading(
        name="llm", cgroup=cg, processes=[proc(10, busy, majflt, running)],
        latency=LatencyReading(source="t", ok=True, p95_s=0.8),
    )
    return Snapshot(
        ts=ts,
        psi={"cpu": psi(55.0, psi_total), "memory": None},
        vmstat={"pgmajfault": vm, "compact_stall": 5},
        stat=StatReading(total=CpuTimes(user_s=busy, idle_s=idle),
                         per_cpu={"cpu0": CpuTimes(), "cpu1": CpuTimes()},
                         ctxt=vm * 10, procs_running=5, procs_blocked=0),
        meminfo_bytes={"MemTotal": 1000, "MemAvailable": 250, "SwapTotal": 100, "SwapFree": 75},
        loadavg=LoadAvg(load1=4.0, load5=3.0, load15=2.0, runnable=5, threads=100),
        services={"llm": svc},
    )


def two():
    a = snap(100.0, busy=10, idle=10, psi_total=1_000_000, vm=100, usage_us=1_000_000, periods=100,
             throttled=10, majflt=0, running=1, high=1)
    b = snap(110.0, busy=25, idle=15, psi_total=6_000_000, vm=200, usage_us=6_000_000, periods=200,
             throttled=60, majflt=50, running=3, high=21)
    return [a, b]


def test_rates_and_gauges():
    m = derive_metrics(two(), services=[Service(name="llm", cgroup="/autotune/llm", slo=SLO(p95_latency_s=0.5),
                                                latency=LatencySource(metrics_url="http://x/metrics", flavor="vllm"))])
    assert m["psi.cpu.some.avg10"] == 55.0
    assert m["psi.cpu.some.stall_pct"] == pytest.approx(50.0)  # 5 s stalled in 10 s
    assert m["vmstat.pgmajfault.rate"] == pytest.approx(10.0)
    assert m["vmstat.compact_stall.rate"] == 0.0
    assert m["cpu.util_pct"] == pytest.approx(75.0)  # 15 busy of 20
    assert m["stat.ctxt.rate"] == pytest.approx(100.0)
    assert m["host.ncpu"] == 2.0
    assert m["load.runnable_per_cpu"] == 2.5
    assert m["mem.available_pct"] == 25.0
    assert m["mem.swap_used_pct"] == 25.0
    assert m["svc.llm.cpu.usage_cores"] == pytest.approx(0.5)
    assert m["svc.llm.cpu.quota_cores"] == 0.5
    assert m["svc.llm.cpu.quota_util_pct"] == pytest.approx(100.0)
    assert m["svc.llm.cpu.throttled_pct"] == pytest.approx(50.0)
    assert m["svc.llm.cpu.throttled_s_per_s"] == pytest.approx(0.005)
    assert m["svc.llm.cpuset.ncpu"] == 2.0
    assert m["svc.llm.psi.cpu.some.avg10"] == 30.0
    assert m["svc.llm.mem.usage_pct_of_max"] == 50.0
    assert m["svc.llm.mem.high_events.rate"] == pytest.approx(2.0)
    assert m["svc.llm.running_threads"] == 2.0  # mean of 1 and 3
    assert m["svc.llm.majflt.rate"] == 5.0
    assert m["svc.llm.latency.p95_s"] == 0.8
    assert m["svc.llm.slo.p95_ratio"] == pytest.approx(1.6)
    assert all(math.isfinite(v) for v in m.values())
    assert all(is_known_metric(k) for k in m), [k for k in m if not is_known_metric(k)]


def test_services_only_are_the_services_metrics_of_the_whole():
    svc = [Service(name="llm", cgroup="/autotune/llm", slo=SLO(p95_latency_s=0.5),
                   latency={"metrics_url": "http://x/metrics"})]  # a source that measures the p95
    whole = derive_metrics(two(), services=svc)
    part = derive_metrics(two(), services=svc, host=False)
    assert part == {k: v for k, v in whole.items() if k.startswith("svc.") or k == "host.ncpu"}
    assert "svc.llm.slo.p95_ratio" in part and "vmstat.pgmajfault.rate" not in part


def test_single_snapshot_has_gauges_only():
    m = derive_metrics(two()[:1])
    assert m["psi.cpu.some.avg10"] == 55.0
    assert "psi.cpu.some.stall_pct" not in m
    assert "cpu.util_pct" not in m
    assert "svc.llm.cpu.usage_cores" not in m
    assert "svc.llm.slo.p95_ratio" not in m  # no SLO given


def test_counter_reset_is_skipped_not_negative():
    a, b = two()
    # b's counters went backwards (service restarted, cgroup recreated)
    b = b.model_copy(update={"vmstat": {"pgmajfault": 1}})
    cg = b.services["llm"].cgroup.model_copy(update={"cpu_usage_usec": 5, "nr_periods": 1, "nr_throttled": 0})
    svc = b.services["llm"].model_copy(update={"cgroup": cg})
    b = b.model_copy(update={"services": {"llm": svc}})
    m = derive_metrics([a, b])
    assert "vmstat.pgmajfault.rate" not in m
    assert "svc.llm.cpu.usage_cores" in m  # fallback: process CPU time, which did not reset
    assert m["svc.llm.cpu.usage_cores"] == pytest.approx(1.5)
    assert "svc.llm.cpu.throttled_pct" not in m


def test_missing_sources_are_absent():
    empty = [Snapshot(ts=1.0), Snapshot(ts=2.0, services={"x": ServiceReading(name="x")})]
    m = derive_metrics(empty)
    assert m == {}
    assert derive_metrics([]) == {}


def test_no_time_elapsed_gives_no_rates():
    a, b = two()
    b = b.model_copy(update={"ts": a.ts})
    m = derive_metrics([a, b])
    assert "vmstat.pgmajfault.rate" not in m and "psi.cpu.some.avg10" in m


def test_series_per_sample():
    pts = series(two(), "vmstat.pgmajfault.rate")
    assert pts == [(110.0, pytest.approx(10.0))]
    assert [ts for ts, _ in series(two(), "psi.cpu.some.avg10")] == [100.0, 110.0]


def test_gauges_and_steps_are_derive_metrics():
    a, b = two()
    assert gauges(b) == derive_metrics([b]) and "psi.cpu.some.stall_pct" not in gauges(b)
    assert steps([a, b]) == [(100.0, derive_metrics([a])), (110.0, derive_metrics([a, b]))]


def test_slo_ratio_is_computed_once_from_flat_latency():
    page = LatencySource(metrics_url="http://x/metrics", flavor="vllm")
    svc = Service(name="llm", cgroup="/autotune/llm", slo=SLO(p95_latency_s=0.5, ttft_p95_s=0.2), latency=page)
    flat = {"svc.llm.latency.p95_s": 0.8, "svc.llm.latency.p99_s": 1.0, "svc.other.latency.p95_s": 9.0}
    assert slo_ratios(flat, [svc]) == {  # no p99 SLO, no ttft reading
        "svc.llm.slo.p95_ratio": pytest.approx(1.6), "svc.llm.slo.slack": pytest.approx(-0.6), "svc.llm.slo.ratio": pytest.approx(1.6),
        "svc.llm.slo.targets": 2.0}
    # no latency source configured: nothing can measure the targets, not SLO-controlled
    assert slo_ratios(flat, [svc.model_copy(update={"latency": None})]) == {"svc.llm.slo.targets": 0.0}
    assert slo_ratios(flat, [Service(name="llm", cgroup="/x")]) == {"svc.llm.slo.targets": 0.0}  # no SLO at all
    m = derive_metrics(two(), services=[svc])
    assert {k: v for k, v in m.items() if ".slo." in k} == slo_ratios(m, [svc])


def test_mem_available_without_mem_total():
    m = gauges(Snapshot(ts=1.0, meminfo_bytes={"MemAvailable": 250}))
    assert m == {"mem.available_bytes": 250.0}  # no total: no percentage, but the bytes are known


@pytest.mark.parametrize("name,ok", [
    ("psi.cpu.some.avg10", True), ("psi.cpu.some.avg11", False), ("svc.$service.cpu.throttled_pct", True),
    ("svc.my.svc.mem.high_events.rate", True), ("svc.$service.cpu.bogus", False), ("host.governor_powersave", True),
    ("vmstat.compact_stall.rate", True), ("vmstat.compact_stall", False), ("foo.bar", False),
])
def test_known_metric_names(name, ok):
    assert is_known_metric(name) is ok


def test_memory_interference_metrics():
    """Page cache, anonymous memory, refaults and growth per cgroup; host swap size."""
    def mem_snap(ts: float, cur: int, refault: int, majflt: int) -> Snapshot:
        cg = CgroupReading(path="/n", version=1, memory_current_bytes=cur, memory_controller_version=1,
                           memory_stat={"anon": 300, "file": cur - 300, "workingset_refault_file": refault,
                                        "pgmajfault": majflt})
        return Snapshot(ts=ts, meminfo_bytes={"MemTotal": 1000, "SwapTotal": 0},
                        services={"n": ServiceReading(name="n", cgroup=cg)})

    m = derive_metrics([mem_snap(10.0, 1000, 50, 5), mem_snap(20.0, 800, 250, 45)])
    assert m["svc.n.mem.anon_bytes"] == 300 and m["svc.n.mem.file_bytes"] == 500
    assert m["svc.n.mem.refault.rate"] == 20.0 and m["svc.n.mem.pgmajfault.rate"] == 4.0
    assert m["svc.n.mem.growth_bytes_per_s"] == -20.0  # shrinking is measured, not dropped
    assert m["svc.n.mem.cgroup_version"] == 1.0 and "svc.n.mem.low_bytes" not in m
    assert m["mem.swap_total_bytes"] == 0.0
    for name in ("svc.$service.mem.refault.rate", "svc.$service.mem.file_bytes", "mem.swap_total_bytes",
                 "neighbours.mem.file_bytes", "svc.$service.mem.cgroup_version"):
        assert is_known_metric(name), name


def _pooled(ts: float, cpu: dict[int, float]) -> Snapshot:
    p = ProcessReading(pid=10, name="llama-server", cpu_user_s=sum(cpu.values()), cpu_system_s=0.0, rss_bytes=1,
                       num_threads=len(cpu), running_threads=2, ctx_voluntary=0, ctx_involuntary=0,
                       minor_faults=0, major_faults=0, thread_cpu_s=cpu)
    cg = CgroupReading(path="/autotune/llm", version=2, cpu_quota_cores=0.5, cpu_weight=100, cpuset_cpus=[0, 1])
    return Snapshot(ts=ts, services={"llm": ServiceReading(name="llm", cgroup=cg, processes=[p])})


def test_the_observed_pool_is_the_threads_that_burned_cpu_together():
    """llama.cpp --threads 2 under a 0.5-core quota: two compute threads at ~0.24 core each,
    the HTTP thread at 0.01: a pool of 2 (observed, fixed unless declared otherwise)."""
    a = _pooled(0.0, {10: 5.0, 11: 5.0, 12: 1.0})
    b = _pooled(10.0, {10: 7.4, 11: 7.3, 12: 1.1})
    m = derive_metrics([a, b], ncpu=2, services=[Service(name="llm", cgroup="/autotune/llm")])
    assert m["svc.llm.threads.pool"] == 2.0 and m["svc.llm.threads.pool_declared"] == 0.0
    assert m["svc.llm.threads.pool_fixed"] == 1.0 and m["svc.llm.threads.lever"] == 0.0
    assert m["svc.llm.cpu.cap_cores"] == 0.5
    # idle (the busiest thread under 0.05 core), one snapshot, or a thread that went backwards: no pool
    assert "svc.llm.threads.pool" not in derive_metrics([a, _pooled(10.0, {10: 5.3, 11: 5.3, 12: 1.0})])
    assert "svc.llm.threads.pool" not in derive_metrics([b])
    assert derive_metrics([a, _pooled(10.0, {10: 7.4, 11: 1.0, 12: 1.1})])["svc.llm.threads.pool"] == 1.0


def test_a_declared_pool_fills_the_idle_windows_and_an_observed_one_wins():
    """The declared count is what it runs with its own setting; what burns now (also after the
    threads knob changed it) is the pool while it is observed."""
    from autotune.config import Threads

    a = _pooled(0.0, {10: 5.0, 11: 5.0})
    svc = Service(name="llm", cgroup="/autotune/llm", threads=Threads(count=4, pool="follows-quota",
                                                                      unit="llm", env="OMP_NUM_THREADS"))
    idle = derive_metrics([a, _pooled(10.0, {10: 5.2, 11: 5.0})], ncpu=2, services=[svc])
    assert (idle["svc.llm.threads.pool"], idle["svc.llm.threads.pool_declared"], idle["svc.llm.threads.pool_fixed"],
            idle["svc.llm.threads.lever"]) == (4.0, 1.0, 0.0, 1.0)
    busy = derive_metrics([a, _pooled(10.0, {10: 7.4, 11: 7.3})], ncpu=2, services=[svc])
    assert (busy["svc.llm.threads.pool"], busy["svc.llm.threads.pool_declared"]) == (2.0, 0.0)


def test_share_cores_is_what_it_counts_on_next_to_busy_neighbours():
    from autotune.detect.metrics import pool_facts

    llm, batch = Service(name="llm", cgroup="/a"), Service(name="b", cgroup="/b", role="neighbour")
    m = {"host.ncpu": 2.0, "svc.llm.cpu.weight": 100.0, "svc.b.cpu.weight": 100.0, "svc.b.cpu.usage_cores": 1.8}
    assert pool_facts(m, [llm, batch])["svc.llm.cpu.share_cores"] == 1.0  # equal weights: half of 2 CPUs
    assert pool_facts({**m, "svc.llm.cpu.weight": 400.0}, [llm, batch])["svc.llm.cpu.share_cores"] == 1.6
    assert pool_facts({**m, "svc.b.cpu.quota_cores": 0.5}, [llm, batch])["svc.llm.cpu.share_cores"] == 1.5
    assert pool_facts({**m, "svc.b.cpu.usage_cores": 0.0}, [llm, batch])["svc.llm.cpu.share_cores"] == 2.0
    assert pool_facts({**m, "svc.llm.cpu.quota_cores": 0.5}, [llm, batch])["svc.llm.cpu.share_cores"] == 0.5
    for name in ("svc.x.threads.pool", "svc.x.threads.pool_fixed", "svc.x.cpu.share_cores", "svc.x.threads.lever"):
        assert is_known_metric(name)
