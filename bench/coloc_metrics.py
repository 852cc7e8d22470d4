"""The colocation benchmark's figures, as pure functions of request records and edge samples.

Definitions (bench/METHOD.md, "How the colocation benchmark measures", says the same):
- a **window** is ``window_s`` long and lies inside one phase. Its TTFT p95 is over the
  requests that *arrived* in it (a request that failed before its first token - timeout,
  client-side drop, error - counts as an infinite TTFT, so the users who came then are all
  counted); its ITL p95 is over the inter-token gaps that *ended* in it, from any request;
  ``completed`` = requests that finished OK in it, ``offered`` = requests that arrived in it.
- a window **violates** when TTFT p95 > SLO or ITL p95 > SLO. A window with no arrival and
  no token has no data: it cannot violate and is left out of the violation share.
- **convergence** of a phase = seconds from the phase start to the first window that starts
  a run of ``hold_s`` of non-violating windows inside the phase; None if there is none.
- **EMU** (Heracles) = LC share + BE share. LC share = the phase's LC figure over the same for
  ``alone`` at that phase's load. The LC figure of an open-loop phase is its goodput (requests
  that arrived in it and completed OK / requests that arrived in it): with one arrival seed,
  rows and ``alone`` see the same requests, so the share is completed(row) / completed(alone);
  of a closed-loop phase, the requests sent in it that completed OK per second. BE share = the
  neighbour's ops/s over the phase / its ops/s alone. EMU therefore runs 0..2 (2 = both as
  fast as alone; Heracles normalises LC to its peak instead, so its EMU tops out near 1).
- **requests per window**: the arrivals in each window of a phase, min and median: a window's
  TTFT p95 is a statistic only when it holds enough requests (>= 10 in the dense scenario).
- **reaction** to a load step (a phase after the first): the time from the step to the agent's
  first applied change in the new phase (its journal's applied_ts against the schedule's wall
  clock), and to recovery: the first window that holds the SLO again after a window starting
  within ``transient_s`` of the step broke it (0 if none did; None if none holds again).
- a **breach** (seen from outside, every second): the trailing ``window_s`` of requests judged
  like a window violates; it lasts until a trailing window holds again. Its **fix** time is from
  when it showed to the agent's first change that is not a take (``breaches``).
- the **oracle**: per load, the grid point with the highest EMU among those with no violating
  window and the neighbour at its floor, re-checked live on fresh arrivals; the next-best when it
  breaks the SLO there (``settle_oracle``).
"""

from __future__ import annotations

import hashlib
import json
import math
from bisect import bisect_left

from pydantic import BaseModel

from bench.openloop import Phase, RequestRecord, Schedule, percentile


class Slo(BaseModel):
    ttft_p95_s: float
    itl_p95_s: float


class EdgeSample(BaseModel):
    """What the harness reads at a window edge (all optional: a reading may be missing)."""

    k: int
    t_s: float
    noise_ops_total: int | None = None
    noise_elapsed_s: float | None = None
    neighbour_cpu_s: float | None = None  # cumulative CPU seconds of the neighbour's cgroup
    server_quota_cores: float | None = None  # None = no quota
    server_weight: int | None = None
    neighbour_weight: int | None = None
    neighbour_quota_cores: float | None = None
    neighbour_memory_max_bytes: int | None = None
    # cumulative PSI stall time, us (memory "some": the server cgroup's, the host's; host "full")
    server_mem_some_us: int | None = None
    host_mem_some_us: int | None = None
    host_mem_full_us: int | None = None
    noise_stream_mib_total: int | None = None  # MiB the neighbour's streamer read so far


class Window(BaseModel):
    start_s: float
    phase_index: int
    phase: str
    rate: float | None  # the phase's configured req/s (open loop)
    concurrency: int | None  # the phase's clients (closed loop)
    ttft_p95_s: float | None
    itl_p95_s: float | None
    completed: int
    offered: int
    failed: int
    tokens: int
    neighbour_ops_per_s: float | None
    neighbour_cores: float | None
    violating: bool
    has_data: bool
    server_quota_cores: float | None = None  # read at the window's start
    server_weight: int | None = None
    neighbour_weight: int | None = None
    neighbour_quota_cores: float | None = None
    neighbour_memory_max_bytes: int | None = None
    # share of the window (%) some task stalled on memory: in the server's cgroup, on the host;
    # and all non-idle host tasks at once ("full"); PSI totals at the window's edges
    server_mem_stall_pct: float | None = None
    host_mem_stall_pct: float | None = None
    host_mem_full_pct: float | None = None
    neighbour_stream_mib_per_s: float | None = None  # the page-cache streamer's reads


WINDOW_COLUMNS = list(Window.model_fields)


def _ttft_or_inf(r: RequestRecord) -> float | None:
    """TTFT for the window p95: measured, +inf for a failure before the first token, None for
    a request the harness cancelled (grid early stop: not an observation)."""
    if r.outcome == "cancelled" and not r.token_s:
        return None
    return r.ttft_s if r.token_s else math.inf


def failed(r: RequestRecord) -> bool:
    return r.outcome in ("timeout", "rejected", "error")


def aggregate_windows(records: list[RequestRecord], edges: list[EdgeSample], schedule: Schedule,
                      window_s: float, slo: Slo) -> list[Window]:
    """One Window per ``window_s`` of the schedule (edges: k = 0..n, matched by k)."""
    n = round(schedule.total_s / window_s)
    by_k = {e.k: e for e in edges}
    ttfts: list[list[float]] = [[] for _ in range(n)]
    gaps: list[list[float]] = [[] for _ in range(n)]
    completed, offered, nfailed, tokens = [0] * n, [0] * n, [0] * n, [0] * n

    def slot(t: float | None) -> int | None:
        if t is None or t < 0:
            return None
        k = int(t // window_s)
        return k if k < n else None

    for r in records:
        a = slot(r.arrival_s)
        if a is not None and not (r.outcome == "cancelled" and not r.token_s):
            offered[a] += 1
            v = _ttft_or_inf(r)
            if v is not None:
                ttfts[a].append(v)
            if failed(r):
                nfailed[a] += 1
        if r.outcome == "ok" and (f := slot(r.finished_s)) is not None:
            completed[f] += 1
        for t in r.token_s:
            if (k := slot(t)) is not None:
                tokens[k] += 1
        for end, gap in r.itl_s():
            if (k := slot(end)) is not None:
                gaps[k].append(gap)

    out = []
    for k in range(n):
        start = k * window_s
        i = schedule.phase_at(start + window_s / 2)
        p = schedule.phases[i]
        t95, i95 = percentile(ttfts[k], 95), percentile(gaps[k], 95)
        e0, e1 = by_k.get(k), by_k.get(k + 1)
        ops, cores = rates(e0, e1)
        viol = (t95 is not None and t95 > slo.ttft_p95_s) or (i95 is not None and i95 > slo.itl_p95_s)
        alloc = e0 or e1  # in force when the window began (after a phase change's setting)
        out.append(Window(
            start_s=start, phase_index=i, phase=p.name, rate=p.rate, concurrency=p.concurrency,
            ttft_p95_s=t95, itl_p95_s=i95, completed=completed[k], offered=offered[k], failed=nfailed[k],
            tokens=tokens[k], neighbour_ops_per_s=ops, neighbour_cores=cores, violating=bool(viol),
            has_data=bool(ttfts[k] or gaps[k]),
            server_quota_cores=alloc.server_quota_cores if alloc else None,
            server_weight=alloc.server_weight if alloc else None,
            neighbour_weight=alloc.neighbour_weight if alloc else None,
            neighbour_quota_cores=alloc.neighbour_quota_cores if alloc else None,
            neighbour_memory_max_bytes=alloc.neighbour_memory_max_bytes if alloc else None,
            server_mem_stall_pct=stall_pct(e0, e1, "server_mem_some_us"),
            host_mem_stall_pct=stall_pct(e0, e1, "host_mem_some_us"),
            host_mem_full_pct=stall_pct(e0, e1, "host_mem_full_us"),
            neighbour_stream_mib_per_s=per_s(e0, e1, "noise_stream_mib_total")))
    return out


def per_s(a: EdgeSample | None, b: EdgeSample | None, counter: str) -> float | None:
    """The growth of a cumulative edge counter per second between two edges."""
    if not a or not b or b.t_s <= a.t_s:
        return None
    x, y = getattr(a, counter), getattr(b, counter)
    return None if x is None or y is None else (y - x) / (b.t_s - a.t_s)


def stall_pct(a: EdgeSample | None, b: EdgeSample | None, counter: str) -> float | None:
    """A PSI total (us) between two edges as a share of the time between them, in percent."""
    v = per_s(a, b, counter)
    return None if v is None else 100.0 * v / 1e6


# -- per phase ------------------------------------------------------------------------------------
def violation_pct(windows: list[Window]) -> float | None:
    """Share of windows with data that violate, in percent; None when none has data."""
    data = [w for w in windows if w.has_data]
    if not data:
        return None
    return 100.0 * sum(w.violating for w in data) / len(data)


def convergence_s(windows: list[Window], phase_start_s: float, hold_s: float, window_s: float) -> float | None:
    """Seconds from the phase start to the first window that begins ``hold_s`` of windows
    without a violation, all inside the phase (``windows`` = that phase's, in order)."""
    need = max(1, math.ceil(hold_s / window_s - 1e-9))
    for j in range(len(windows) - need + 1):
        if not any(w.violating for w in windows[j:j + need]):
            return windows[j].start_s - phase_start_s
    return None


def goodput(records: list[RequestRecord], phase: int) -> float | None:
    """Requests that arrived in ``phase`` and completed OK / those that arrived (cancelled
    ones excluded); None when nothing arrived."""
    arrived = [r for r in records if r.phase == phase and r.outcome != "cancelled"]
    if not arrived:
        return None
    return sum(r.outcome == "ok" for r in arrived) / len(arrived)


def completed_per_s(records: list[RequestRecord], phase: int, duration_s: float) -> float:
    """Requests sent in ``phase`` that completed OK, per second of the phase (closed loop)."""
    return sum(r.phase == phase and r.outcome == "ok" for r in records) / duration_s


def mean_rate(edges: list[EdgeSample], k0: int, k1: int) -> tuple[float | None, float | None]:
    """(neighbour ops/s, neighbour cores) between edges k0 and k1, from the cumulative counters."""
    by_k = {e.k: e for e in edges}
    return rates(by_k.get(k0), by_k.get(k1))


def rates(a: EdgeSample | None, b: EdgeSample | None) -> tuple[float | None, float | None]:
    """(neighbour ops/s, neighbour cores) between two edge samples, from the cumulative counters."""
    if not a or not b:
        return None, None
    ops = cores = None
    if None not in (a.noise_ops_total, b.noise_ops_total, a.noise_elapsed_s, b.noise_elapsed_s) \
            and b.noise_elapsed_s > a.noise_elapsed_s:  # type: ignore[operator]
        ops = (b.noise_ops_total - a.noise_ops_total) / (b.noise_elapsed_s - a.noise_elapsed_s)  # type: ignore[operator]
    if a.neighbour_cpu_s is not None and b.neighbour_cpu_s is not None and b.t_s > a.t_s:
        cores = (b.neighbour_cpu_s - a.neighbour_cpu_s) / (b.t_s - a.t_s)
    return ops, cores


class PhaseStats(BaseModel):
    phase_index: int
    phase: str
    rate: float | None
    concurrency: int | None
    windows: int
    violation_pct: float | None
    violation_pct_after: float | None  # windows starting >= transient_s into the phase
    lc_perf: float | None  # open loop: goodput; closed loop: OK completions/s (module docstring)
    neighbour_ops_per_s: float | None
    neighbour_cores: float | None
    convergence_s: float | None
    requests_per_window_min: int | None = None  # arrivals per window (dense windows: >= 10)
    requests_per_window_median: float | None = None
    server_mem_stall_pct: float | None = None  # PSI memory some over the phase, % of its time
    host_mem_stall_pct: float | None = None


def requests_per_window(windows: list[Window]) -> tuple[int | None, float | None]:
    """(min, median) of the requests that arrived per window: how many requests each window's
    TTFT p95 is over. Closed-loop phases count their sends the same way."""
    n = sorted(w.offered for w in windows)
    if not n:
        return None, None
    mid = len(n) // 2
    return n[0], float(n[mid]) if len(n) % 2 else (n[mid - 1] + n[mid]) / 2


def phase_stats(windows: list[Window], records: list[RequestRecord], edges: list[EdgeSample],
                schedule: Schedule, *, window_s: float, transient_s: float, hold_s: float) -> list[PhaseStats]:
    out = []
    for i, (p, start) in enumerate(zip(schedule.phases, schedule.starts(), strict=True)):
        ws = [w for w in windows if w.phase_index == i]
        k0 = round(start / window_s)
        ops, cores = mean_rate(edges, k0, k0 + round(p.duration_s / window_s))
        out.append(PhaseStats(
            phase_index=i, phase=p.name, rate=p.rate, concurrency=p.concurrency, windows=len(ws),
            violation_pct=violation_pct(ws),
            violation_pct_after=violation_pct([w for w in ws if w.start_s >= start + transient_s - 1e-9]),
            lc_perf=goodput(records, i) if p.rate is not None else completed_per_s(records, i, p.duration_s),
            neighbour_ops_per_s=ops, neighbour_cores=cores,
            convergence_s=convergence_s(ws, start, hold_s, window_s),
            requests_per_window_min=requests_per_window(ws)[0],
            requests_per_window_median=requests_per_window(ws)[1],
            server_mem_stall_pct=stall_pct(*_edge_pair(edges, k0, k0 + round(p.duration_s / window_s)),
                                           "server_mem_some_us"),
            host_mem_stall_pct=stall_pct(*_edge_pair(edges, k0, k0 + round(p.duration_s / window_s)),
                                         "host_mem_some_us")))
    return out


def _edge_pair(edges: list[EdgeSample], k0: int, k1: int) -> tuple[EdgeSample | None, EdgeSample | None]:
    by_k = {e.k: e for e in edges}
    return by_k.get(k0), by_k.get(k1)


# -- reaction time after a load step ----------------------------------------------------------------
class Action(BaseModel):
    """One change the agent applied (its journal: applied_ts is the wall clock)."""

    ts: float
    rule: str
    knob: str
    prior: str | None = None
    proposed: str | None = None
    # a take (a give-back, the search's step down): verified as a guard, never the answer to a breach
    guarded: bool = False

    def text(self) -> str:
        return f"{self.rule}: {self.knob} {self.prior} -> {self.proposed}"


class Reaction(BaseModel):
    """What happened after the load step into phase ``phase_index``."""

    phase_index: int
    step: str  # "low 0.1/s -> high 0.3/s"
    direction: str  # up, down, change (open <-> closed loop)
    first_action_s: float | None  # from the step to the agent's first applied change in the phase
    first_action: str = ""
    violated: bool  # a window starting within the transient after the step violated
    recovery_s: float | None  # from the step to the first window that holds again (0: never broke)


def step_direction(a: Phase, b: Phase) -> str:
    if a.rate is not None and b.rate is not None:
        return "up" if b.rate > a.rate else "down" if b.rate < a.rate else "same"
    if a.concurrency is not None and b.concurrency is not None:
        return "up" if b.concurrency > a.concurrency else "down" if b.concurrency < a.concurrency else "same"
    return "change"


def reactions(windows: list[Window], schedule: Schedule, *, transient_s: float, actions: list[Action],
              t0_wall: float | None) -> list[Reaction]:
    """Per load step (every phase after the first): the time from the step to the agent's first
    applied change inside the phase (``actions`` and ``t0_wall``, the wall clock at schedule
    t = 0; None for rows without an agent or with no change in the phase), and to recovery.

    Recovery: if a window starting within ``transient_s`` of the step violates, the step broke
    the SLO, and recovery is the start of the first window after the last violating one of that
    run that holds it (has data, no violation), from the step; None if none does within the
    phase. A step whose first windows all hold never broke: recovery 0. (Violations later in
    the phase are the violating share's business, not the step's.)"""
    out = []
    starts = schedule.starts()
    for i in range(1, len(schedule.phases)):
        a, b = schedule.phases[i - 1], schedule.phases[i]
        start, end = starts[i], starts[i] + b.duration_s
        ws = [w for w in windows if w.phase_index == i]
        first = None
        if t0_wall is not None:
            inside = sorted((x for x in actions if t0_wall + start <= x.ts < t0_wall + end), key=lambda x: x.ts)
            first = inside[0] if inside else None
        early = [j for j, w in enumerate(ws) if w.violating and w.start_s < start + transient_s - 1e-9]
        if not early:
            violated, recovery = False, 0.0
        else:
            j = early[0]
            while j + 1 < len(ws) and (ws[j + 1].violating or not ws[j + 1].has_data):
                j += 1
            k = next((m for m in range(j + 1, len(ws)) if ws[m].has_data and not ws[m].violating), None)
            violated, recovery = True, (ws[k].start_s - start if k is not None else None)
        out.append(Reaction(phase_index=i, step=f"{a.name} {a.label()} -> {b.name} {b.label()}",
                            direction=step_direction(a, b),
                            first_action_s=first.ts - t0_wall - start if first and t0_wall is not None else None,
                            first_action=first.text() if first else "", violated=violated, recovery_s=recovery))
    return out


# -- breaches, seen from outside: when the SLO broke, and how soon the agent answered -------------
class Breach(BaseModel):
    """A stretch over which the trailing ``window_s`` of requests broke the SLO."""

    start_s: float  # schedule time at which the trailing window first broke it
    end_s: float  # the first time it held again (the schedule's end if it never did)
    phase_index: int
    fix_s: float | None  # from start_s to the agent's first corrective change; None: none while it lasted
    fix: str = ""


def breaches(records: list[RequestRecord], schedule: Schedule, *, window_s: float, slo: Slo,
             actions: list[Action], t0_wall: float | None, step_s: float = 1.0) -> list[Breach]:
    """The breaches of a run and the time from each to the agent's first corrective change.

    At every ``step_s`` the trailing ``window_s`` is judged like a window (TTFT p95 over the
    requests that arrived in it, ITL p95 over the gaps that ended in it): a breach starts at
    the first trailing window that violates and ends at the next one that does not (no data
    holds). The corrective change is the first applied one that is not a take (``guarded``)
    from ``window_s`` before the breach showed (the agent may see it rise first: a negative
    figure) until it ends; None when there was none. The brief's goal: <= 2 s."""
    arrivals = sorted((r.arrival_s, v) for r in records if (v := _ttft_or_inf(r)) is not None)
    gaps = sorted(g for r in records for g in r.itl_s())
    a_ts, g_ts = [a for a, _ in arrivals], [e for e, _ in gaps]
    fixes = sorted((x for x in actions if not x.guarded), key=lambda x: x.ts) if t0_wall is not None else []
    out: list[Breach] = []
    start = None
    n = int(math.floor((schedule.total_s - window_s) / step_s + 1e-9))
    for k in range(n + 1):
        t = window_s + k * step_s
        lo, hi = t - window_s, t
        ttft = [v for _, v in arrivals[bisect_left(a_ts, lo):bisect_left(a_ts, hi)]]
        itl = [g for _, g in gaps[bisect_left(g_ts, lo):bisect_left(g_ts, hi)]]
        t95, i95 = percentile(ttft, 95), percentile(itl, 95)
        bad = (t95 is not None and t95 > slo.ttft_p95_s) or (i95 is not None and i95 > slo.itl_p95_s)
        if bad and start is None:
            start = t
        if start is not None and (not bad or k == n):
            end = t if not bad else schedule.total_s
            first = next((x for x in fixes if start - window_s <= x.ts - t0_wall < end), None)  # type: ignore[operator]
            out.append(Breach(start_s=start, end_s=end, phase_index=schedule.phase_at(start - 1e-9),
                              fix_s=None if first is None else first.ts - t0_wall - start,  # type: ignore[operator]
                              fix="" if first is None else first.text()))
            start = None
    return out


class Measured(BaseModel):
    """One schedule played against one allocation or controller."""

    records: list[RequestRecord]
    edges: list[EdgeSample]
    windows: list[Window]
    t0_wall: float | None = None  # wall clock at schedule t = 0 (to place the agent's journal)
    actions: list[Action] = []


def emu(lc_row: float | None, lc_alone: float | None, be_ops: float | None,
        be_alone_ops: float | None) -> tuple[float | None, float | None, float | None]:
    """(LC share, BE share, EMU); a share is None when either side is missing or alone is 0,
    and EMU is None unless both shares are known."""
    lc = lc_row / lc_alone if lc_row is not None and lc_alone else None
    be = be_ops / be_alone_ops if be_ops is not None and be_alone_ops else None
    return lc, be, (lc + be if lc is not None and be is not None else None)


# -- oracle ---------------------------------------------------------------------------------------
class Alloc(BaseModel):
    """A static allocation: server cpu quota (cores; None = none), cpu weights (v2 units 1..10000,
    written as v1 shares x10.24 where cpu is v1), server memory max, the server's thread
    setting (None = the run's ``--server-threads``; an engine with a fixed pool makes it a grid
    dimension), and caps on the neighbour: its cpu quota (cores) and memory max (bytes), None =
    none (the memory-heavy scenario's grid; issue 23)."""

    quota_cores: float | None = None
    server_weight: int = 100
    neighbour_weight: int = 100
    memory_max_bytes: int | None = None
    threads: str | None = None
    neighbour_quota_cores: float | None = None
    neighbour_memory_max_bytes: int | None = None

    def label(self) -> str:
        q = "max" if self.quota_cores is None else f"{self.quota_cores:g}"
        t = f",t={self.threads}" if self.threads is not None else ""
        nq = f",nq={self.neighbour_quota_cores:g}" if self.neighbour_quota_cores is not None else ""
        nm = (f",nm={self.neighbour_memory_max_bytes / 2**30:.1f}G"
              if self.neighbour_memory_max_bytes is not None else "")
        return f"q={q},w={self.server_weight}:{self.neighbour_weight}{t}{nq}{nm}"

    def key(self) -> dict:
        """The allocation in a cache key: the neighbour's caps only when set, so the keys of
        allocations without them are those from before the caps existed (their cache stays)."""
        return self.model_dump(exclude={f for f in ("neighbour_quota_cores", "neighbour_memory_max_bytes")
                                        if getattr(self, f) is None})


class PointResult(BaseModel):
    """One grid point measured at one load."""

    alloc: Alloc
    load: str  # the phase load it was measured at: "0.4/s" or "c=8"
    windows: int  # measured windows that ended (after the settle windows)
    violating: int
    lc_perf: float | None  # as PhaseStats.lc_perf
    neighbour_ops_per_s: float | None
    neighbour_cores: float | None
    stopped_early: bool = False
    requests_per_window_min: int | None = None  # arrivals per measured window (closed loop: None)


class LiveCheck(BaseModel):
    """A candidate allocation replayed at its load on fresh arrivals (the oracle's re-check)."""

    alloc: Alloc
    windows: int
    violating: int
    neighbour_cores: float | None
    stopped_early: bool = False
    holds: bool  # violating share within the allowance and the neighbour at its floor

    @property
    def violating_pct(self) -> float | None:
        return 100.0 * self.violating / self.windows if self.windows else None


class OracleChoice(BaseModel):
    load: str
    alloc: Alloc
    emu: float | None
    valid: bool  # no violating grid window and the neighbour at or above its floor
    reason: str
    checks: list[LiveCheck] = []  # the live re-checks, in the order tried
    holds_live: bool | None = None  # None: not re-checked


def point_emu(p: PointResult, lc_alone: float | None, be_alone_ops: float | None) -> float | None:
    return emu(p.lc_perf, lc_alone, p.neighbour_ops_per_s, be_alone_ops)[2]


# A neighbour capped exactly at its floor measures a few % under it while running flat out:
# CFS hands out the quota per 100-ms period and a window's edges fall between periods.
CAPPED_AT_FLOOR_SHARE = 0.95


def floor_ok(cores: float | None, floor_cores: float, cap_cores: float | None = None) -> bool:
    """Did the neighbour get its floor? ``cap_cores``: its own cpu quota, when the allocation
    caps it: a cap under the floor never holds it; a cap at the floor holds it when the
    neighbour used ``CAPPED_AT_FLOOR_SHARE`` of the cap."""
    if cores is None:
        return False
    if cap_cores is not None and cap_cores <= floor_cores + 1e-9:
        return cap_cores >= floor_cores - 1e-9 and cores >= CAPPED_AT_FLOOR_SHARE * cap_cores
    return cores >= floor_cores


def is_valid(p: PointResult, floor_cores: float) -> bool:
    """The grid's test: measured windows, none violating, the neighbour at its floor."""
    return p.violating == 0 and p.windows > 0 and floor_ok(p.neighbour_cores, floor_cores,
                                                           p.alloc.neighbour_quota_cores)


def rank_points(points: list[PointResult], *, floor_cores: float, lc_alone: float | None,
                be_alone_ops: float | None) -> list[PointResult]:
    """Valid points by EMU, highest first; then the rest, least violating first (fewest
    violating windows per measured window, then the floor held, then EMU)."""

    def e(p: PointResult) -> float:
        v = point_emu(p, lc_alone, be_alone_ops)
        return -math.inf if v is None else v

    valid = sorted((p for p in points if is_valid(p, floor_cores)), key=e, reverse=True)
    rest = sorted((p for p in points if not is_valid(p, floor_cores)),
                  key=lambda p: (p.violating / max(1, p.windows),
                                 not floor_ok(p.neighbour_cores, floor_cores, p.alloc.neighbour_quota_cores), -e(p)))
    return valid + rest


def select_oracle(points: list[PointResult], *, floor_cores: float, lc_alone: float | None,
                  be_alone_ops: float | None) -> OracleChoice | None:
    """Highest EMU among points with no violating window and the neighbour >= ``floor_cores``.

    With no such point, the least bad one stands in (``valid`` False, the reason says why):
    fewest violating windows per measured window, then the floor held, then EMU.
    """
    if not points:
        return None
    ranked = rank_points(points, floor_cores=floor_cores, lc_alone=lc_alone, be_alone_ops=be_alone_ops)
    best = ranked[0]
    n_valid = sum(is_valid(p, floor_cores) for p in points)
    if n_valid:
        return OracleChoice(load=best.load, alloc=best.alloc, emu=point_emu(best, lc_alone, be_alone_ops),
                            valid=True, reason=f"highest EMU of {n_valid} valid point(s) of {len(points)}")
    if any(p.violating == 0 and p.windows > 0 for p in points):
        why = f"every point that held the SLO left the neighbour under {floor_cores:g} cores"
    else:
        why = "every point had a violating window"
    return OracleChoice(load=best.load, alloc=best.alloc, emu=point_emu(best, lc_alone, be_alone_ops),
                        valid=False, reason=f"no valid point ({why}): the least violating one stands in")


def choose_threads(grid: dict[str, list[PointResult]], phases_per_load: dict[str, int], *, floor_cores: float,
                   lc_alone: dict[str, float | None], be_alone_ops: float | None) -> tuple[str | None, str]:
    """The one thread setting the oracle runs every phase with (a fixed pool cannot change
    between phases): the setting whose best grid point is valid in the most phases, then the
    one with the highest EMU summed over the phases; with the reason. (None, "") when the grid
    has no thread dimension (a pool that follows its quota)."""
    settings = sorted({p.alloc.threads for pts in grid.values() for p in pts if p.alloc.threads is not None})
    if len(settings) < 2:
        return (settings[0] if settings else None), ""

    def score(t: str) -> tuple[int, float]:
        valid, total = 0, 0.0
        for label, pts in grid.items():
            n = phases_per_load.get(label, 0)
            c = select_oracle([p for p in pts if p.alloc.threads == t], floor_cores=floor_cores,
                              lc_alone=lc_alone.get(label), be_alone_ops=be_alone_ops)
            if c is not None:
                valid += n * c.valid
                total += n * (c.emu or 0.0)
        return valid, total

    scores = {t: score(t) for t in settings}
    best = max(settings, key=lambda t: scores[t])
    n = sum(phases_per_load.values())
    why = "; ".join(f"--threads {t}: valid on the grid in {v}/{n} phase(s), EMU sum {e:.2f}"
                    for t, (v, e) in scores.items())
    return best, f"it fixes the server's --threads {best} for every load ({why})"


def settle_oracle(points: list[PointResult], check, *, tries: int, floor_cores: float,  # noqa: ANN001
                  lc_alone: float | None, be_alone_ops: float | None) -> OracleChoice | None:
    """The grid's choice, re-checked live: ``check(point) -> LiveCheck`` replays a candidate at
    its load on fresh arrivals. The best-ranked point is tried first; if it does not hold,
    the next, up to ``tries`` candidates. The first that holds is the choice. If none holds,
    the candidate with the lowest live violating share stands in and the reason says that no
    grid point held the SLO at this load (``holds_live`` False)."""
    first = select_oracle(points, floor_cores=floor_cores, lc_alone=lc_alone, be_alone_ops=be_alone_ops)
    if first is None:
        return None
    ranked = rank_points(points, floor_cores=floor_cores, lc_alone=lc_alone, be_alone_ops=be_alone_ops)
    checks: list[tuple[PointResult, LiveCheck]] = []
    for p in ranked[:max(1, tries)]:
        c = check(p)
        checks.append((p, c))
        if c.holds:
            i = len(checks)
            why = (f"{'the best' if i == 1 else f'candidate {i}'} of {len(points)} grid point(s) "
                   f"({'valid on the grid' if is_valid(p, floor_cores) else 'not valid on the grid'}); "
                   f"held live: {c.violating}/{c.windows} violating windows")
            return OracleChoice(load=p.load, alloc=p.alloc, emu=point_emu(p, lc_alone, be_alone_ops),
                                valid=is_valid(p, floor_cores), reason=why,
                                checks=[x for _, x in checks], holds_live=True)
    p, c = min(checks, key=lambda pc: (pc[1].violating / max(1, pc[1].windows),
                                      not floor_ok(pc[1].neighbour_cores, floor_cores,
                                                   pc[1].alloc.neighbour_quota_cores)))
    why = (f"no grid point held the SLO live at this load: {len(checks)} candidate(s) re-checked, "
           f"the least violating ({c.violating}/{c.windows} windows) stands in")
    if not first.valid:
        why += f"; on the grid: {first.reason}"
    return OracleChoice(load=p.load, alloc=p.alloc, emu=point_emu(p, lc_alone, be_alone_ops),
                        valid=is_valid(p, floor_cores), reason=why, checks=[x for _, x in checks],
                        holds_live=False)


def cache_key(fields: dict) -> str:
    """Stable key of everything a cached measurement depends on (canonical JSON, sha256)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:20]


def known_violation(records: list[RequestRecord], now_s: float, window_s: float, k_from: int, k_to: int,
                    slo: Slo) -> bool:
    """True when one of the ended windows k_from..k_to-1 already violates, whatever the requests
    still in flight do: a pending request's TTFT is at least ``now_s - arrival``, and a p95 over
    lower bounds is a lower bound of the p95 (the grid stops a hopeless point early on this)."""
    for k in range(k_from, k_to):
        lo, hi = k * window_s, (k + 1) * window_s
        ttft: list[float] = []
        gaps: list[float] = []
        for r in records:
            if lo <= r.arrival_s < hi:
                if r.token_s:
                    ttft.append(r.token_s[0] - r.arrival_s)
                elif r.finished_s is not None:
                    if r.outcome != "cancelled":
                        ttft.append(math.inf)
                else:
                    ttft.append(now_s - r.arrival_s)
            gaps += [g for end, g in r.itl_s() if lo <= end < hi]
        t95, i95 = percentile(ttft, 95), percentile(gaps, 95)
        if (t95 is not None and t95 > slo.ttft_p95_s) or (i95 is not None and i95 > slo.itl_p95_s):
            return True
    return False
