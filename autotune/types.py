"""Typed data passed between stages: monitor -> detect -> diagnose -> fix -> verify.

Sensors fill these; detection, diagnosis and verification read only these (never /proc).
Units are in field names. Counters stay cumulative here; rates are computed over a window
by ``autotune.detect.metrics``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autotune.errors import ParseError

# A knob's comparison of two normalized values (tolerant for numbers): knobs.same_for(name).
Same = Callable[[str | None, str | None], bool]
# (knob, target) -> the live normalized value, or None when the target is gone.
ReadCurrent = Callable[[str, str], "str | None"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# What a kernel counter or gauge can hold: a finite number, never below zero (a share of wall
# time, at most 100 %). A reading outside that is a broken file or a hostile --root tree: the
# sensor drops it as missing with the reason (``reading``), so nothing downstream (detection,
# the journal, the audit trail, JSON output) ever sees inf, NaN or a negative memory size.
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]

M = TypeVar("M", bound=BaseModel)


def reading(model: type[M], source: str, **fields: Any) -> M:
    """``model(**fields)`` for a sensor reading from ``source``; a value the model refuses
    (non-finite, negative, out of range) is a ParseError naming the file and the field."""
    try:
        return model(**fields)
    except ValidationError as err:
        e = err.errors()[0]
        field = ".".join(str(x) for x in e["loc"]) or model.__name__
        raw = e.get("input")
        more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise ParseError(f"{source}: {field} = {raw!r}: {e['msg'].lower()}{more}; "
                         "reading dropped") from None


# -- sensor readings ------------------------------------------------------------------------
class PsiLine(_Frozen):
    avg10_pct: Percent
    avg60_pct: Percent
    avg300_pct: Percent
    total_usec: Count


class PsiReading(_Frozen):
    """One pressure file. ``full`` is None on kernels that only report ``some`` (cpu < 5.13)."""

    some: PsiLine | None = None
    full: PsiLine | None = None


class CpuTimes(_Frozen):
    """Cumulative CPU time in seconds (converted from USER_HZ ticks)."""

    user_s: NonNegative = 0.0
    nice_s: NonNegative = 0.0
    system_s: NonNegative = 0.0
    idle_s: NonNegative = 0.0
    iowait_s: NonNegative = 0.0
    irq_s: NonNegative = 0.0
    softirq_s: NonNegative = 0.0
    steal_s: NonNegative = 0.0

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
    ctxt: Count | None = None
    processes: Count | None = None
    procs_running: Count | None = None
    procs_blocked: Count | None = None


class LoadAvg(_Frozen):
    load1: NonNegative
    load5: NonNegative
    load15: NonNegative
    runnable: Count
    threads: Count


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
    memory_low_bytes: int | None = None  # v2 memory.low (protection); v1 has none
    memory_controller_version: Literal[1, 2] | None = None  # which hierarchy manages memory
    # memory.stat in one vocabulary (v1: the hierarchical total_* lines): anon, file (page
    # cache), workingset_refault_file (evicted file pages read back), pgmajfault (counters)
    memory_stat: dict[str, int] = {}
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
    thread_cpu_s: dict[int, float] = {}  # tid -> CPU seconds so far (its busiest threads only)
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


class ProbeSample(_Frozen):
    """One active-probe request (a short streamed completion): a sample of one request, not of
    every request. Seconds from sending it."""

    e2e_s: float
    ttft_s: float | None = None  # None when the server did not stream
    gaps_s: tuple[float, ...] = ()  # between streamed tokens (the server's decode steps)


class LatencyReading(_Frozen):
    """Windowed inference latency from a metrics page and/or an active probe.

    p50/p95/p99 are end-to-end request latency; ``ttft_*`` time to first token; ``itl_*`` the
    gap between output tokens (inter-token latency; TGI reports it as a per-request mean).
    ``*_samples`` / ``tokens`` / ``requests`` say how much the window held, so a caller can
    discount a quantile drawn from a handful of observations. None = not available. These are
    the page's figures; the probe's requests are only in ``probes``, each in one reading.
    ``ok`` with an ``error``: one of two sources (page and probe) failed, the other read.
    """

    source: str
    ok: bool
    error: str | None = None
    flavor: str | None = None  # the page's flavor (vllm, tgi, llamacpp), declared or detected
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
    # seconds spent generating ``tokens``, per request (llama.cpp counts each slot's own time,
    # so parallel requests add up: a mean per token as each request saw it, not wall time)
    token_seconds: float | None = None
    prompt_tokens: float | None = None  # prompt tokens processed in the window (llama.cpp)
    prompt_seconds: float | None = None  # seconds spent processing them
    requests: float | None = None  # requests completed in the window
    running: float | None = None
    waiting: float | None = None
    # the interval's histograms by kind ("e2e", "ttft", "itl"), for window quantiles
    hist: dict[str, Buckets] = {}
    probes: tuple[ProbeSample, ...] = ()  # probe requests that finished since the last reading


# the cgroup controllers a service is placed in, each in the hierarchy that manages it here
CGROUP_FIELDS = ("cpu", "cpuacct", "cpuset", "memory", "io", "unified")


class ServiceCgroups(_Frozen):
    """Which cgroup one service is in, per controller: the one answer every consumer takes
    (knob targets, the floor, the search, status). A path per controller because on cgroup v1
    each controller is its own hierarchy and a process can sit in a different group in each;
    on pure v2 they are all the same path. ``unified`` is the v2 tree (PSI on a hybrid host).
    None where the service has no cgroup of its own for that controller (``why_not`` says why).
    Filled by ``autotune/sensors/service_cgroups.py``."""

    cpu: str | None = None
    cpuacct: str | None = None
    cpuset: str | None = None
    memory: str | None = None
    io: str | None = None  # v2 io, v1 blkio
    unified: str | None = None
    how: str = ""  # "declared (cgroup =)", "systemd unit llm.service", "from processes (pid 123)"
    why_not: dict[str, str] = {}  # field -> why there is no cgroup to act on there
    notes: list[str] = []  # e.g. its processes sit elsewhere than the declared cgroup
    # the service as a whole has nothing to act on (a declared cgroup or unit that does not
    # exist, no process matched), and what would fix it
    problem: str | None = None
    fix: str | None = None

    def of(self, controller: str) -> str | None:
        """The cgroup for a controller name as knobs say it ("cpu", "cpuset", "memory", "io",
        "blkio", "cpuacct"), or "unified" / "v2" for the v2 tree."""
        field = {"blkio": "io", "v2": "unified"}.get(controller, controller)
        return getattr(self, field) if field in CGROUP_FIELDS else None

    @property
    def paths(self) -> dict[str, str]:
        """field -> path, only where there is one."""
        return {f: p for f in CGROUP_FIELDS if (p := getattr(self, f)) is not None}


class ServiceReading(_Frozen):
    name: str
    cgroup: CgroupReading | None = None
    cgroups: ServiceCgroups | None = None  # where the service is, per controller (None: unresolved)
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
    # the registry-declared sensors' flat readings: "module:function" -> field -> value
    # (autotune/detect/registry.py)
    readings: dict[str, dict[str, float]] = {}
    services: dict[str, ServiceReading] = {}
    missing: list[str] = []

    def service_cgroups(self) -> dict[str, ServiceCgroups]:
        """Each service's resolved cgroups (services not resolved are absent)."""
        return {n: r.cgroups for n, r in self.services.items() if r.cgroups is not None}


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
    score: float | None = None  # predicted improvement (the search), higher is better
    evidence: dict[str, float] = Field(default_factory=dict)
    verify: VerifyPlan = VerifyPlan()
    # why it would not be applied and what would unblock it (a floor, an operator's hold);
    # None when nothing durable stands in its way (autotune/diagnose/blocked.py)
    blocked: str | None = None


class Recommendation(_Frozen):
    ts: float
    duration_s: float
    samples: int
    symptoms: list[Symptom]
    actions: list[Action]
    notes: list[str] = []
    blocked: list[str] = []  # one line per symptom or action nothing can be done for, and why


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
    ci_low: float | None = None  # bootstrap CI of after - before (the figures), objective units
    ci_high: float | None = None
    n_before: int = 0
    n_after: int = 0
    before_median: float | None = None  # the objective's figure: the median of its series, or
    after_median: float | None = None  # the ``quantile`` of its observations when that is set
    quantile: float | None = None  # e.g. 0.95: the figures and the effect are that quantile's
    direction: Direction = "lower_is_better"
    objective: str | None = None  # the objective's name (autotune/verify/objectives.py)
    reason: str = ""
