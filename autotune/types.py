"""Typed data passed between stages: monitor -> detect -> diagnose -> fix -> verify.

Sensors fill these; detection, diagnosis and verification read only these (never /proc).
Units are in field names. Counters stay cumulative here; rates are computed over a window
by ``autotune.detect.metrics``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# -- sensor readings ------------------------------------------------------------------------
class PsiLine(_Frozen):
    avg10_pct: float
    avg60_pct: float
    avg300_pct: float
    total_usec: int


class PsiReading(_Frozen):
    """One pressure file. ``full`` is None on kernels that only report ``some`` (cpu < 5.13)."""

    some: PsiLine | None = None
    full: PsiLine | None = None


class CpuTimes(_Frozen):
    """Cumulative CPU time in seconds (converted from USER_HZ ticks)."""

    user_s: float = 0.0
    nice_s: float = 0.0
    system_s: float = 0.0
    idle_s: float = 0.0
    iowait_s: float = 0.0
    irq_s: float = 0.0
    softirq_s: float = 0.0
    steal_s: float = 0.0

    @property
    def busy_s(self) -> float:
        return self.user_s + self.nice_s + self.system_s + self.irq_s + self.softirq_s + self.steal_s

    @property
    def total_s(self) -> float:
        return self.busy_s + self.idle_s + self.iowait_s


class StatReading(_Frozen):
    total: CpuTimes
    ncpu: int | None = None  # cpuN lines: all that was ever read of them
    per_cpu: dict[str, CpuTimes] = {}  # no longer filled (a 128-CPU host kept 128 of them per sample)
    ctxt: int | None = None
    processes: int | None = None
    procs_running: int | None = None
    procs_blocked: int | None = None


class LoadAvg(_Frozen):
    load1: float
    load5: float
    load15: float
    runnable: int
    threads: int


class CgroupReading(_Frozen):
    """One cgroup, in one vocabulary for v1 and v2 (None where the host lacks the file)."""

    path: str  # cgroup path relative to the hierarchy root, e.g. "/autotune/llm"
    version: Literal[1, 2]
    cpu_usage_usec: int | None = None
    nr_periods: int | None = None
    nr_throttled: int | None = None
    throttled_usec: int | None = None
    cpu_quota_cores: float | None = None  # None = unlimited ("max" / -1)
    cpu_period_usec: int | None = None
    cpu_weight: int | None = None  # 1..10000 (v1 shares mapped)
    cpuset_cpus: list[int] | None = None
    memory_current_bytes: int | None = None
    memory_max_bytes: int | None = None  # None = unlimited
    memory_high_bytes: int | None = None
    memory_events: dict[str, int] = {}  # low/high/max/oom/oom_kill (v2); failcnt (v1)
    nr_tasks: int | None = None
    psi: dict[str, PsiReading | None] = {}  # cpu/memory/io pressure of this cgroup (v2 files)


class ProcessReading(_Frozen):
    pid: int
    name: str
    cpu_user_s: float
    cpu_system_s: float
    rss_bytes: int
    num_threads: int
    running_threads: int  # threads in state R at sample time
    ctx_voluntary: int
    ctx_involuntary: int
    minor_faults: int
    major_faults: int
    affinity: list[int] = []


class Buckets(_Frozen):
    """One latency histogram over one interval: observations per bucket (not cumulative).

    ``le`` are the finite upper bounds (seconds, ascending); ``counts`` has one more entry, the
    +Inf bucket. Kept per snapshot so any window merges into a quantile (autotune/histogram.py).
    """

    le: tuple[float, ...]
    counts: tuple[float, ...]
    sum: float = 0.0


class LatencyReading(_Frozen):
    """Windowed inference latency from a metrics page or active probe.

    p50/p95/p99 are end-to-end request latency; ``ttft_*`` time to first token; ``itl_*`` the
    gap between output tokens (inter-token latency; TGI reports it as a per-request mean).
    ``*_samples`` / ``tokens`` / ``requests`` say how much the window held, so a caller can
    discount a quantile drawn from a handful of observations. None = not available.
    """

    source: str
    ok: bool
    error: str | None = None
    p50_s: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None
    ttft_p95_s: float | None = None
    ttft_samples: float | None = None  # first tokens observed in the window
    itl_p50_s: float | None = None
    itl_p95_s: float | None = None
    itl_mean_s: float | None = None  # mean seconds per generated token (llama.cpp: the only figure)
    itl_samples: float | None = None  # observations behind the itl quantiles
    tokens: float | None = None  # tokens generated in the window
    requests: float | None = None  # requests completed in the window
    running: float | None = None
    waiting: float | None = None
    # the interval's histograms by kind ("e2e", "ttft", "itl"), for window quantiles
    hist: dict[str, Buckets] = {}


class ServiceReading(_Frozen):
    name: str
    cgroup: CgroupReading | None = None
    processes: list[ProcessReading] = []
    latency: LatencyReading | None = None
    errors: list[str] = []  # why parts are missing (target gone, permission...)


class Snapshot(_Frozen):
    """Everything sampled at one tick. Missing sources are None / empty, listed in ``missing``."""

    ts: float  # unix time, seconds
    psi: dict[str, PsiReading | None] = {}
    vmstat: dict[str, int] = {}
    stat: StatReading | None = None
    meminfo_bytes: dict[str, int] = {}
    loadavg: LoadAvg | None = None
    services: dict[str, ServiceReading] = {}
    missing: list[str] = []


# -- detection / diagnosis --------------------------------------------------------------------
class Symptom(_Frozen):
    name: str  # e.g. "cpu_pressure"
    service: str | None = None  # None for host-wide symptoms
    metric: str
    value: float
    threshold: float
    since_ts: float  # when the breach started
    detail: str = ""


class VerifyPlan(_Frozen):
    """How a change is verified, decided by the rule that proposed it (journaled with it).

    ``compare``: before vs after window of the objective (regressed -> roll back). ``guard``: a
    give-back; kept while the service's SLO holds, rolled back at once when it breaks, and then
    no give-back for that service for ``lockout_s``. Windows default to [verification]."""

    mode: Literal["compare", "guard"] = "compare"
    window_s: float | None = None
    settle_s: float | None = None
    lockout_s: float = 0.0


class Action(_Frozen):
    """A concrete change proposed by a rule for one target."""

    knob: str  # registry name, e.g. "cgroup.cpu_quota", "sysctl", "thp", "advice"
    target: str  # knob-specific target: cgroup path, sysctl key, THP file, service name
    service: str | None = None
    current: str | None = None  # normalized current value (None if unreadable)
    proposed: str
    rule: str
    rationale: str
    priority: int = 50
    advisory: bool = False  # recommendation only; never applied (e.g. mlock model weights)
    score: float | None = None  # predicted improvement (learned ranker), higher is better
    evidence: dict[str, float] = Field(default_factory=dict)
    verify: VerifyPlan = VerifyPlan()


class Recommendation(_Frozen):
    ts: float
    duration_s: float
    samples: int
    symptoms: list[Symptom]
    actions: list[Action]
    notes: list[str] = []


# -- verification ----------------------------------------------------------------------------
Direction = Literal["lower_is_better", "higher_is_better"]
# compare: improved | regressed | unchanged (measured, too small to matter) | inconclusive;
# guard (a give-back, verify/stage.py): held | violated (the SLO broke: rolled back at once)
Verdict = Literal["improved", "regressed", "unchanged", "inconclusive", "held", "violated"]


class VerifyResult(BaseModel):
    """The verdict on one change (autotune/verify/stats.compare), as journal and audit keep it.

    Every field but ``verdict`` has a default and unknown keys are ignored, so rows written by
    other versions (or by tests holding only a verdict and an effect) still load."""

    model_config = ConfigDict(frozen=True)

    verdict: Verdict
    p_value: float | None = None  # Mann-Whitney two-sided; None when not computed
    effect: float | None = None  # (after_median - before_median) / |before_median| (absolute
    # objectives: the plain difference); + means larger
    ci_low: float | None = None  # bootstrap CI of after_median - before_median, objective units
    ci_high: float | None = None
    n_before: int = 0
    n_after: int = 0
    before_median: float | None = None
    after_median: float | None = None
    direction: Direction = "lower_is_better"
    objective: str | None = None  # the objective's name (autotune/verify/objectives.py)
    reason: str = ""
