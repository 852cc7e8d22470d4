"""Colocation under changing load: does the LLM service keep its SLO while the neighbour works?

    sudo python -m bench.colocation                    # default schedule, all rows, seeds 1,2,3
    sudo python -m bench.colocation --quick            # tiny model, short phases, seeds 1,2
    sudo python -m bench.colocation --dense            # >= 10 requests per 10-s window
    python -m bench.colocation --estimate [options]    # expected wall time, runs nothing
    python -m bench.coloc_report DIR                   # rebuild a run's tables from its files

The server (latency-critical; ``--engine``, bench/engines.py) and ``autotune workload noise``
(the neighbour, ``--scenario``, bench/scenarios.py: one CPU burner per CPU; ``cpu+mem`` adds a
1 GiB memory hog; ``mem`` is a memory-heavy neighbour: a hog sized from MemTotal, a page-cache
streamer and one burner) each run in their own cgroup. An open-loop streaming client (bench/openloop.py) follows a schedule
of phases (bench/schedules/default.yaml). Every row is played once per arrival seed
(``--seeds``), rows interleaved: seed 1 every row, then seed 2 every row, ...; every row of one
seed sees the same Poisson arrivals, so rows compare paired by seed (bench/stats.py).

Per 10-s window: TTFT p95 and ITL p95 against the SLO, completed and offered requests, the
neighbour's ops/s and CPU, the server's quota and both cpu weights. Per phase: the share of
violating windows (all, and from ``--transient-s`` into the phase on), EMU against ``alone``
baselines, the convergence time, requests per window; per load step: the time to the agent's
first applied change and to the first window that holds the SLO again
(bench/coloc_metrics.py has the definitions). Over seeds: mean and 95 % interval of each
figure, and paired differences between rows (bench/coloc_report.py).

Rows (ROWS, a registry: name + starting allocation + what runs beside the load + agent config
overrides): ``contended`` (no limits), ``static`` (server quota 0.5 core, memory max 4 GiB;
the engine's starting thread setting), ``static+psi`` (+ the seed's client-side PSI gate),
``autotune`` (``autotune run --mode apply --local-actuator``, default rule pack, the learned
search off: rules only, from the static allocation), ``autotune-learned`` (the agent's
defaults: rules + the learned allocation search) and ``oracle`` (per load, the best static
allocation of a grid measured point by point, long enough for the windows it is judged on,
then re-checked live on fresh arrivals; cached; with ``--scenario mem`` the grid also caps the
neighbour's cpu quota and memory). On an engine with a fixed pool (llama.cpp) every row starts
it with every core, the oracle's grid has the thread count as a dimension (one setting for the
whole schedule), and the agent rows declare a restart path (bench/restart_server.py) so the
agent may restart the server with another ``--threads`` (``--no-threads-lever``: advice only).

The host is left as found: the host-wide values are read before the run, each agent row ends
with the agent's own ``autotune rollback --all``, and whatever still differs at the end is put
back by force, loudly (bench/common.py HostGuard); meta.json and the last line compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from autotune.errors import AutotuneError
from autotune.host import Host
from autotune.knobs import get_knob
from autotune.sensors.cgroup import read_cgroup
from autotune.sensors.meminfo import read_meminfo
from autotune.sensors.psi import read_psi_file
from autotune.types import CgroupReading, PsiReading
from bench import coloc_report as report
from bench import common, engines, scenarios
from bench.coloc_metrics import (Action, Alloc, EdgeSample, LiveCheck, Measured, OracleChoice, PhaseStats,
                                 PointResult, Slo, Window, aggregate_windows, cache_key, choose_threads, floor_ok,
                                 known_violation, phase_stats, settle_oracle)
from bench.common import GIB, NEIGHBOUR_FLOOR_CORES, BenchCgroup, log
from bench.engines import Server
from bench.openloop import Phase, RequestRecord, Schedule, load_schedule, parse_phases, run_schedule

HERE = Path(__file__).resolve().parent
SCHEDULES = HERE / "schedules"
CACHE_VERSION = 2  # 2: seeds, engines, thread settings in the keys; live re-checks
STATIC = Alloc(quota_cores=0.5, memory_max_bytes=4 * GIB)
GRID_SEED = 1000  # the oracle grid's arrivals; its live re-check uses GRID_SEED + 1; rows 1, 2, 3...
# A measured grid point ends early once a window is certain to violate; over the committed
# 48-point grid (2026-12-02-coloc-gpt2: 3481.7 s wall, 6 rows x 302 s, 2 starts) the points
# took 0.77 of their full length on average. The estimate uses it for the expected figure.
EARLY_STOP_FACTOR = 0.77
ROW_OVERHEAD_S = 3.0  # per row beyond its schedule: allocation, idle check (2026-12-02-coloc-learned-hold)
AGENT_OVERHEAD_S = 6.0  # `autotune config check` + agent start and stop
STREAM_WRITE_MIB_S = 50.0  # the streamer writing its file (dd to /var/tmp here: 56 MB/s, 2026-12-07)


# -- rows -----------------------------------------------------------------------------------------
class Skip(Exception):
    """A row that cannot run here; the message says why (it lands in meta.json)."""


@dataclass
class RowCtx:
    """What a row's controller needs while the load runs."""

    row: "Row"
    args: argparse.Namespace
    out: Path  # the row's own directory (agent config, state, log)
    server_url: str
    cgs: dict[str, BenchCgroup]
    slo: Slo
    server: Server | None = None  # the running server (the threads lever's restart path names it)
    notes: dict = field(default_factory=dict)  # lands in meta.json under the row's name
    actions: list[Action] = field(default_factory=list)  # the agent's applied changes


Controller = Callable[[RowCtx], contextlib.AbstractContextManager[None]]


@dataclass(frozen=True)
class Row:
    """A benchmark row: its starting allocation, what runs beside the load, agent overrides.

    ``controller`` is entered after the allocation is set and before the first request, and
    left after the last one (the agent row starts and stops ``autotune run`` there).
    ``agent_overrides`` are merged into the agent's TOML ({"verification": {"window_s": 15}},
    or {"service:llm": {...}} for one service's table). ``oracle`` rows take their allocation
    per phase from the grid. ``threads_lever``: on an engine with a fixed pool and a threads
    variable (llama.cpp), the agent's config declares a restart path (bench/restart_server.py),
    so the agent may restart the server with another ``--threads``.
    """

    name: str
    doc: str
    alloc: Alloc = field(default_factory=Alloc)
    seed_psi: bool = False
    controller: Controller | None = None
    agent_overrides: dict = field(default_factory=dict)
    oracle: bool = False
    threads_lever: bool = False


@contextlib.contextmanager
def agent_controller(ctx: RowCtx) -> Iterator[None]:
    """``autotune run --mode apply --local-actuator`` with the default rule pack and a config
    that declares only the two services, the SLO and the neighbour's floor (plus the row's
    overrides). Skip, with the agent's own words, when it is missing or rejects the config."""
    from bench import agent_front as af

    try:
        af.check_available()
    except af.AgentUnavailable as why:
        raise Skip(str(why)) from None
    ctx.out.mkdir(parents=True, exist_ok=True)
    config = ctx.out / "config.toml"
    state = ctx.out / "state.db"
    state.unlink(missing_ok=True)
    spec = ctx.args.engine_spec
    slo = agent_slo(ctx.args, ctx.slo)
    threads = spec.agent_threads(ctx.server.threads if ctx.server else ctx.args.server_threads)
    lever = (ctx.row.threads_lever and ctx.args.threads_lever and spec.threads_env is not None
             and ctx.server is not None)
    if lever:  # a restart path the agent may use: same cgroup, same port, another --threads
        env_file = (ctx.out / "threads.env").resolve()
        env_file.unlink(missing_ok=True)
        threads.update(ctx.server.restart_path(env_file, (ctx.out / "server_restarts.log").resolve()))
    doc = af.agent_config(server_cg=ctx.cgs["server"], neighbour_cg=ctx.cgs["neighbour"],
                          server_url=ctx.server_url, slo=slo, state_path=state, metrics_port=common.free_port(),
                          overrides=merge_overrides(ctx.row.agent_overrides, ctx.args.agent_set),
                          latency=spec.agent_latency(ctx.server_url), threads=threads)
    problem = af.write_config(config, doc, header="written by bench/colocation.py for one benchmark row")
    if problem:
        raise Skip(f"the agent rejects the config: {problem}")
    ctx.notes["agent_slo"] = slo
    ctx.notes["threads_lever"] = lever
    agent = af.start_agent(config, ctx.out / "agent.log")
    log(f"{ctx.row.name}: agent pid {agent.pid}, its SLO {slo}, default rule pack"
        + (f", threads lever: restart path {spec.threads_env} (pool of {threads['count']})" if lever else ""))
    try:
        yield
    finally:
        ctx.notes["agent_exit_code_during_run"] = agent.poll()
        common.stop(agent)
        summary = af.journal_summary(state)
        ctx.notes["agent_changes"] = {k: v for k, v in summary.items() if k != "entries"}
        ctx.actions = [Action(ts=e["applied_ts"], rule=e["rule"], knob=e["knob"], prior=e["prior"],
                              proposed=e["proposed"], guarded=e.get("mode") == "guard")
                       for e in summary.get("entries", []) if e.get("applied_ts") is not None]
        (ctx.out / "journal.json").write_text(json.dumps(summary, indent=2))
        # the agent's own restore, before the next row: host-wide changes must not leak into it
        ctx.notes["rollback"] = back = af.rollback_all(state, config)
        log(f"{ctx.row.name}: {summary.get('changes', 0)} change(s) by {summary.get('by_rule')}; "
            f"rollback --all restored {back['restored']}"
            + (f"; PROBLEMS: {'; '.join(back['problems'])}" if back["problems"] else ""))


ROWS: dict[str, Row] = {r.name: r for r in [
    Row("contended", "no limits: server and neighbour share the CPUs at equal weights"),
    Row("static", "server cpu quota 0.5 core, memory max 4 GiB (the seed's cgroups)", alloc=STATIC),
    Row("static+psi", "static + the seed's gate: defer while system cpu some avg10 > 95 %, "
        "0.5-s retries, drop after 10", alloc=STATIC, seed_psi=True),
    Row("autotune", "the agent (apply mode, default rule pack, rules only: [search] off) from the "
        "static allocation", alloc=STATIC, controller=agent_controller,
        agent_overrides={"search": {"enabled": False}}, threads_lever=True),
    Row("autotune-learned", "the agent with its defaults: the rule pack plus the learned allocation "
        "search ([search] on), from the static allocation", alloc=STATIC, controller=agent_controller,
        threads_lever=True),
    Row("oracle", "per load, the best static allocation of the grid that held the SLO when "
        "re-checked live (highest EMU with no violating window and the neighbour at its floor)", oracle=True),
]}
DEFAULT_ROWS = list(ROWS)
QUICK_ROWS = ["contended", "autotune", "oracle"]
# --scenario mem: the rows the target is read on (the rules-only row on request:
# ~10 more minutes for 3 seeds)
MEM_ROWS = ["contended", "static", "autotune-learned", "oracle"]


# -- agent config -----------------------------------------------------------------------------
def agent_slo(args: argparse.Namespace, slo: Slo) -> dict[str, float]:
    """The agent's [service.slo]: the bench's SLO stated on ``--agent-slo-fields`` (default: the
    engine's, those its latency source can measure: llama.cpp's page gives a mean per token, its
    probe TTFT; the bench itself judges client-side TTFT and ITL p95 per window)."""
    values = {"ttft_p95_s": slo.ttft_p95_s, "itl_p95_s": slo.itl_p95_s, **args.engine_spec.agent_slo(slo)}
    fields = args.agent_slo_fields or list(args.engine_spec.agent_slo(slo))
    unknown = [f for f in fields if f not in values]
    if unknown:
        raise SystemExit(f"--agent-slo-fields {unknown}: choose from {sorted(values)}")
    return {f: values[f] for f in fields}


def merge_overrides(row: dict, cli: list[str]) -> dict:
    """The row's overrides, then ``--agent-set section.key=value`` ones (value: JSON, else a string)."""
    out = json.loads(json.dumps(row))
    for item in cli:
        path, _, raw = item.partition("=")
        parts = path.split(".")
        if not raw or len(parts) < 2:
            raise SystemExit(f"--agent-set {item!r}: expected section.key=value")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        d = out
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = value
    return out


# -- cgroups: allocation through the agent's knobs, readings through its sensor ----------------
def set_alloc(cgs: dict[str, BenchCgroup], alloc: Alloc) -> None:
    """Every lever a row or the agent may move, to ``alloc`` (None = no limit): nothing an
    earlier row set survives into the next one."""
    server, neighbour = cgs["server"], cgs["neighbour"]
    server.set_cpu_quota(alloc.quota_cores)
    server.set_memory_max(alloc.memory_max_bytes)
    set_cpu_weight(server, alloc.server_weight)
    set_cpu_weight(neighbour, alloc.neighbour_weight)
    neighbour.set_cpu_quota(alloc.neighbour_quota_cores)
    neighbour.set_memory_max(alloc.neighbour_memory_max_bytes)
    neighbour.reset_memory_high()
    server.reset_memory_low()


def set_cpu_weight(cg: BenchCgroup, weight: int) -> None:
    """v2 units (1..10000, default 100), written by the ``cgroup.cpu_weight`` knob (v1: shares)."""
    knob = get_knob("cgroup.cpu_weight")
    target = cg.cpu_cgroup_path()
    knob.write(cg.host, target, knob.validate(cg.host, target, str(weight)))


def read_cg(cg: BenchCgroup) -> CgroupReading | None:
    """The agent's own reading of the cgroup (quota, weight, CPU time); None when unreadable."""
    try:
        return read_cgroup(cg.host, cg.cpu_cgroup_path())
    except AutotuneError:
        return None


def threads_of(alloc: Alloc, args: argparse.Namespace) -> str:
    return alloc.threads if alloc.threads is not None else args.server_threads


def start(server: Server, alloc: Alloc, args: argparse.Namespace) -> str:
    """The server running as ``alloc`` needs it (set the allocation first); its URL."""
    return server.ensure(threads_of(alloc, args))


def thread_groups(keys: list[str], current: str | None) -> list[str]:
    """The order to visit thread settings in: the running server's first, then the rest (each
    other setting costs one server start)."""
    rest = sorted(set(keys) - {current}, reverse=True)
    return ([current] if current in keys else []) + rest


# -- one measured run -----------------------------------------------------------------------------
def sampler(cgs: dict[str, BenchCgroup], noise_json: Path | None, edges: list[EdgeSample], t0: list[float]):
    def on_edge(k: int, t: float) -> None:
        if k == 0:
            t0.append(time.time() - t)
        noise = common.read_noise(noise_json) if noise_json else None
        srv, nb = read_cg(cgs["server"]), read_cg(cgs["neighbour"])
        host_mem = read_psi_file(cgs["server"].host, "/proc/pressure/memory")
        edges.append(EdgeSample(
            k=k, t_s=t,
            noise_ops_total=noise.get("ops_total") if noise else None,
            noise_elapsed_s=noise.get("elapsed_s") if noise else None,
            neighbour_cpu_s=nb.cpu_usage_usec / 1e6 if noise_json and nb and nb.cpu_usage_usec is not None else None,
            server_quota_cores=srv.cpu_quota_cores if srv else None,
            server_weight=srv.cpu_weight if srv else None,
            neighbour_weight=nb.cpu_weight if nb else None,
            neighbour_quota_cores=nb.cpu_quota_cores if nb else None,
            neighbour_memory_max_bytes=nb.memory_max_bytes if nb else None,
            server_mem_some_us=_psi_total(srv.psi.get("memory") if srv else None, "some"),
            host_mem_some_us=_psi_total(host_mem, "some"),
            host_mem_full_us=_psi_total(host_mem, "full"),
            noise_stream_mib_total=noise.get("stream_mib_total") if noise else None))
    return on_edge


def _psi_total(reading: PsiReading | None, line: str) -> int | None:
    got = getattr(reading, line, None) if reading is not None else None
    return got.total_usec if got is not None else None


def measure(url: str, schedule: Schedule, args: argparse.Namespace, cgs: dict[str, BenchCgroup],
            noise_json: Path | None, slo: Slo, seed: int, **kw) -> Measured:
    edges: list[EdgeSample] = []
    t0: list[float] = []
    records = asyncio.run(run_schedule(url, schedule, seed=seed, max_tokens=args.max_tokens,
                                       timeout_s=args.timeout_s, window_s=args.window_s,
                                       on_edge=sampler(cgs, noise_json, edges, t0), **kw))
    return Measured(records=records, edges=edges, t0_wall=t0[0] if t0 else None,
                    windows=aggregate_windows(records, edges, schedule, args.window_s, slo))


def stats(m: Measured, schedule: Schedule, args: argparse.Namespace) -> list[PhaseStats]:
    return phase_stats(m.windows, m.records, m.edges, schedule, window_s=args.window_s,
                       transient_s=args.transient_s, hold_s=args.hold_s)


# -- cache ----------------------------------------------------------------------------------------
class Cache:
    """One JSON file per measurement under ``dir``, named by the hash of its key (stored inside).
    Every file a run reads or writes is also copied into the run's own ``cache/`` (``keep``),
    so a results directory holds everything its tables came from."""

    def __init__(self, directory: Path, refresh: set[str]) -> None:
        self.dir, self.refresh = directory, refresh
        self.hits: list[str] = []
        self.misses: list[str] = []

    def path(self, key: dict) -> Path:
        return self.dir / f"{key['kind']}-{cache_key(key)}.json"

    def has(self, key: dict) -> bool:
        """Would ``get`` answer (for the estimate; records nothing)?"""
        p = self.path(key)
        return key["kind"] not in self.refresh and p.exists()

    def get(self, key: dict) -> dict | None:
        p = self.path(key)
        if key["kind"] in self.refresh or not p.exists():
            return None
        data = json.loads(p.read_text())
        if data.get("key") != json.loads(json.dumps(key)):
            return None
        self.hits.append(p.name)
        return data["value"]

    def put(self, key: dict, value: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path(key).write_text(json.dumps({"key": key, "value": value}, indent=1))
        self.misses.append(self.path(key).name)

    def keep(self, into: Path) -> None:
        into.mkdir(parents=True, exist_ok=True)
        for name in dict.fromkeys(self.hits + self.misses):
            if (self.dir / name).exists() and self.dir.resolve() != into.resolve():
                shutil.copy2(self.dir / name, into / name)


def base_key(args: argparse.Namespace, seed: int) -> dict:
    return {"v": CACHE_VERSION, "engine": args.engine, "model": args.model, "max_tokens": args.max_tokens,
            "server_workers": args.max_concurrency, "server_threads": args.server_threads,
            "timeout_s": args.timeout_s, "seed": seed, "window_s": args.window_s, "ncpu": os.cpu_count(),
            **({"weights": "mapped"} if args.weights_file is not None else {})}


def lc_alone_key(args: argparse.Namespace, schedule: Schedule, seed: int) -> dict:
    return {**base_key(args, seed), "kind": "lc-alone", "schedule": schedule.model_dump()}


def _stream_key(args: argparse.Namespace) -> dict:
    """The streamer in a cache key only when there is one (older keys stay as they were)."""
    return {"stream_mib": args.stream_mib} if args.stream_mib else {}


def be_alone_key(args: argparse.Namespace) -> dict:
    return {"v": CACHE_VERSION, "kind": "be-alone", "scenario": args.scenario, "noise_cpu": args.noise_cpu,
            "noise_mem_mib": args.noise_mem_mib, "duration_s": args.be_alone_s, "ncpu": os.cpu_count(),
            **_stream_key(args)}


def point_key(args: argparse.Namespace, load: Phase, alloc: Alloc, slo: Slo) -> dict:
    return {**base_key(args, args.grid_seed), "kind": "oracle-point", "load": load.label(),
            "alloc": alloc.key(), "settle_s": args.grid_settle_s, "measure_s": args.grid_measure_s,
            "slo": slo.model_dump(), "scenario": args.scenario, "noise_cpu": args.noise_cpu,
            "noise_mem_mib": args.noise_mem_mib, "floor_cores": NEIGHBOUR_FLOOR_CORES, **_stream_key(args)}


def check_key(args: argparse.Namespace, load: Phase, alloc: Alloc, slo: Slo) -> dict:
    return {**point_key(args, load, alloc, slo), "kind": "oracle-check", "seed": args.grid_seed + 1,
            "check_s": args.oracle_check_s, "max_violating_pct": args.oracle_max_violating_pct}


# -- baselines ------------------------------------------------------------------------------------
def lc_alone(args, schedule, seed: int, cgs, server: Server, cache: Cache, slo: Slo,
             out: Path) -> dict[str, float | None]:
    """The server alone over the schedule with this seed's arrivals: per load label, its LC
    figure (PhaseStats.lc_perf)."""
    key = lc_alone_key(args, schedule, seed)
    got = cache.get(key)
    if got is None:
        log(f"alone, seed {seed}: the server alone over the schedule (no neighbour, no limits)")
        set_alloc(cgs, Alloc())
        url = start(server, Alloc(), args)
        m = measure(url, schedule, args, cgs, None, slo, seed)
        server.wait_idle()
        st = stats(m, schedule, args)
        got = {"phases": [s.model_dump() for s in st], "windows": [w.model_dump() for w in m.windows]}
        cache.put(key, got)
    out.mkdir(parents=True, exist_ok=True)
    report.write_windows(out / "windows_alone.csv", [Window.model_validate(w) for w in got["windows"]])
    per_load: dict[str, list[float]] = {}
    for s, p in zip(got["phases"], schedule.phases, strict=True):
        if s["lc_perf"] is not None:
            per_load.setdefault(p.label(), []).append(s["lc_perf"])
    return {k: sum(v) / len(v) for k, v in per_load.items()}


def be_alone(args, noise_json: Path, cache: Cache) -> float | None:
    """The neighbour's ops/s with the server idle (no requests), ``be_alone_s`` long."""
    key = be_alone_key(args)
    got = cache.get(key)
    if got is None:
        log(f"alone: the neighbour alone for {args.be_alone_s:g} s")
        a = common.read_noise(noise_json)
        time.sleep(args.be_alone_s)
        b = common.read_noise(noise_json)
        ops = (b["ops_total"] - a["ops_total"]) / (b["elapsed_s"] - a["elapsed_s"]) if a and b else None
        got = {"ops_per_s": ops}
        cache.put(key, got)
    return got["ops_per_s"]


# -- oracle grid ----------------------------------------------------------------------------------
def grid_points(args: argparse.Namespace) -> list[Alloc]:
    """Threads x server quota x weight ratio x neighbour quota x neighbour memory cap. A fixed
    pool of t threads cannot use more than t cores, so a quota of t or more is the same point as
    none: measured once, as none."""
    out = []
    for t in args.grid_threads or [None]:
        for q in args.grid_quotas:
            if (t is not None and q is not None and None in args.grid_quotas and args.engine_spec.pool_fixed
                    and q >= int(t)):
                continue
            for s, n in args.grid_ratios:
                for nq in args.grid_neighbour_quotas:
                    for nm in args.grid_neighbour_mem:
                        out.append(Alloc(quota_cores=q, server_weight=100 * s, neighbour_weight=100 * n,
                                         memory_max_bytes=4 * GIB, threads=t, neighbour_quota_cores=nq,
                                         neighbour_memory_max_bytes=nm))
    return out


def distinct_loads(schedule: Schedule) -> list[Phase]:
    seen: dict[str, Phase] = {}
    for p in schedule.phases:
        seen.setdefault(p.label(), p)
    return list(seen.values())


def point_schedule(load: Phase, settle_s: float, measure_s: float) -> Schedule:
    kind = {"rate": load.rate} if load.rate is not None else {"concurrency": load.concurrency}
    phases = [Phase(name="measure", duration_s=measure_s, **kind)]
    if settle_s > 0:
        phases.insert(0, Phase(name="settle", duration_s=settle_s, **kind))
    return Schedule(phases=phases)


def play_point(args, load: Phase, alloc: Alloc, cgs, server: Server, noise_json: Path, slo: Slo, *,
               measure_s: float, seed: int, stop_after_pct: float = 0.0) -> tuple[Measured, Schedule, bool]:
    """``alloc`` at ``load`` for settle + ``measure_s`` on ``seed``'s arrivals, stopped as soon as
    the ended windows are certain to violate in more than ``stop_after_pct`` % of the measured
    windows (the point can no longer qualify)."""
    sched = point_schedule(load, args.grid_settle_s, measure_s)
    k_settle = round(args.grid_settle_s / args.window_s)
    n_measure = round(measure_s / args.window_s)
    allowed = math.floor(n_measure * stop_after_pct / 100 + 1e-9)

    def hopeless(records: list[RequestRecord], now: float) -> bool:
        k_now = int(now // args.window_s + 1e-9)
        bad = sum(known_violation(records, now, args.window_s, k, k + 1, slo) for k in range(k_settle, k_now))
        return bad > allowed

    set_alloc(cgs, alloc)
    url = start(server, alloc, args)
    m = measure(url, sched, args, cgs, noise_json, slo, seed, stop=hopeless)
    server.wait_idle()
    stopped = len(m.edges) - 1 < len(m.windows)
    return m, sched, stopped


def measured_windows(m: Measured) -> list[Window]:
    n_ended = len(m.edges) - 1  # edges k = 0..n, fewer when stopped early
    return [w for i, w in enumerate(m.windows) if i < n_ended and w.phase == "measure"]


def measure_point(args, load: Phase, alloc: Alloc, cgs, server: Server, noise_json: Path, slo: Slo) -> dict:
    t0 = time.monotonic()
    m, sched, stopped = play_point(args, load, alloc, cgs, server, noise_json, slo,
                                   measure_s=args.grid_measure_s, seed=args.grid_seed)
    ended = measured_windows(m)
    st = stats(m, sched, args)[-1]
    res = PointResult(alloc=alloc, load=load.label(), windows=len(ended),
                      violating=max(sum(w.violating for w in ended), 1 if stopped else 0),
                      lc_perf=st.lc_perf, neighbour_ops_per_s=st.neighbour_ops_per_s,
                      neighbour_cores=st.neighbour_cores, stopped_early=stopped,
                      requests_per_window_min=min((w.offered for w in ended), default=None)
                      if load.rate is not None else None)
    log(f"oracle grid {load.label()} {alloc.label()}: {res.violating}/{res.windows} violating"
        f"{' (stopped early)' if stopped else ''}, neighbour {_f(res.neighbour_cores)} cores "
        f"({time.monotonic() - t0:.0f} s)")
    return {"point": res.model_dump(), "windows": [w.model_dump() for w in m.windows]}


def grid_todo(args: argparse.Namespace, schedule: Schedule) -> list[tuple[Phase, Alloc]]:
    """Every grid point at every distinct load of the schedule (phases with one load share them)."""
    return [(load, a) for a in grid_points(args) for load in distinct_loads(schedule)]


def grid_point(args, load: Phase, alloc: Alloc, cgs, server: Server, noise_json: Path, cache: Cache,
               slo: Slo) -> PointResult:
    key = point_key(args, load, alloc, slo)
    got = cache.get(key)
    if got is None:
        got = measure_point(args, load, alloc, cgs, server, noise_json, slo)
        cache.put(key, got)
    return PointResult.model_validate(got["point"])


def live_check(args, load: Phase, alloc: Alloc, cgs, server: Server, noise_json: Path, cache: Cache,
               slo: Slo) -> LiveCheck:
    """Replay ``alloc`` at ``load`` on fresh arrivals (seed grid + 1) for ``--oracle-check-s``:
    does it hold the SLO in the windows the rows are judged on (cached)?"""
    key = check_key(args, load, alloc, slo)
    got = cache.get(key)
    if got is None:
        m, _, stopped = play_point(args, load, alloc, cgs, server, noise_json, slo, measure_s=args.oracle_check_s,
                                   seed=args.grid_seed + 1, stop_after_pct=args.oracle_max_violating_pct)
        ended = measured_windows(m)
        n = round(args.oracle_check_s / args.window_s)
        bad = sum(w.violating for w in ended)
        if stopped:
            bad = max(bad, math.floor(n * args.oracle_max_violating_pct / 100 + 1e-9) + 1)
        cores = [w.neighbour_cores for w in ended if w.neighbour_cores is not None]
        nb = sum(cores) / len(cores) if cores else None
        chk = LiveCheck(alloc=alloc, windows=len(ended), violating=bad,
                        neighbour_cores=nb, stopped_early=stopped,
                        holds=(not stopped and len(ended) > 0 and 100.0 * bad / len(ended)
                               <= args.oracle_max_violating_pct + 1e-9
                               and floor_ok(nb, NEIGHBOUR_FLOOR_CORES, alloc.neighbour_quota_cores)))
        log(f"oracle check {load.label()} {alloc.label()}: {bad}/{chk.windows} violating, neighbour "
            f"{_f(nb)} cores: {'holds' if chk.holds else 'does not hold'}")
        got = {"check": chk.model_dump(), "windows": [w.model_dump() for w in m.windows]}
        cache.put(key, got)
    return LiveCheck.model_validate(got["check"])


def plan_oracle(args, schedule: Schedule, grid: dict[str, list[PointResult]], lc_ref: dict[str, float | None],
                be_ref: float | None, measure_check) -> dict[str, OracleChoice]:  # noqa: ANN001
    """Per load: the grid's ranking, re-checked live until a candidate holds
    (``measure_check(load, point) -> LiveCheck``; coloc_metrics.settle_oracle).

    A thread setting is fixed when the server starts, and the oracle row cannot restart it
    between phases: when the grid has several (an engine with a fixed pool), the setting valid
    on the grid in the most phases (then with the highest EMU over them) is chosen first
    (coloc_metrics.choose_threads) and every load chooses among its points."""
    out: dict[str, OracleChoice] = {}
    per_load: dict[str, int] = {}
    for p in schedule.phases:
        per_load[p.label()] = per_load.get(p.label(), 0) + 1
    threads, why = choose_threads(grid, per_load, floor_cores=NEIGHBOUR_FLOOR_CORES, lc_alone=lc_ref,
                                  be_alone_ops=be_ref)
    for load in distinct_loads(schedule):
        label = load.label()
        points = [p for p in grid.get(label, []) if threads is None or p.alloc.threads == threads]
        c = settle_oracle(points, lambda p, load=load: measure_check(load, p.alloc),
                          tries=args.oracle_tries, floor_cores=NEIGHBOUR_FLOOR_CORES,
                          lc_alone=lc_ref.get(label), be_alone_ops=be_ref)
        if c is not None:
            if why:
                c.reason += f"; {why}"
            out[label] = c
            log(f"oracle {label}: {c.alloc.label()} ({c.reason})")
    return out


# -- rows -----------------------------------------------------------------------------------------
def row_allocs(row: Row, schedule: Schedule, choices: dict[str, OracleChoice], args) -> list[Alloc]:  # noqa: ANN001
    if row.oracle:
        missing = [p.label() for p in schedule.phases if p.label() not in choices]
        if missing:
            raise Skip(f"no oracle grid result for load(s) {missing}")
        return [choices[p.label()].alloc for p in schedule.phases]
    return [row.alloc] * len(schedule.phases)


def run_row(row: Row, args, schedule: Schedule, seed: int, cgs, server: Server, host: Host, noise_json: Path,
            slo: Slo, choices: dict[str, OracleChoice], out: Path, notes: dict) -> Measured:
    allocs = row_allocs(row, schedule, choices, args)
    set_alloc(cgs, allocs[0])
    url = start(server, allocs[0], args)
    server.wait_idle()
    ctx = RowCtx(row=row, args=args, out=out / row.name.replace("+", "_"), server_url=url, cgs=cgs, slo=slo,
                 server=server)
    # the oracle knows the schedule: its allocation per phase
    on_phase = (lambda i: set_alloc(cgs, allocs[i])) if row.oracle else None
    admit = common.seed_psi_admit(host) if row.seed_psi else None
    cm = row.controller(ctx) if row.controller else contextlib.nullcontext()
    try:
        with cm:
            m = measure(url, schedule, args, cgs, noise_json, slo, seed, admit=admit, on_phase=on_phase)
    finally:
        notes.update(ctx.notes)
    m.actions = ctx.actions
    notes["t0_wall"] = m.t0_wall  # the schedule's t = 0 on the wall clock: the journal's times against it
    server.wait_idle()
    if server.reclaim():  # the agent restarted it (threads lever): the next row starts its own
        notes["server_restarted_by_agent"] = True
    return m


def seed_rows(args, schedule: Schedule, seed: int, cgs, server: Server, host: Host, noise_json: Path, slo: Slo,
              choices: dict[str, OracleChoice], out: Path) -> tuple[dict[str, Measured], dict, dict]:
    """Every row once on ``seed``'s arrivals, grouped by the server setting they need (the
    running server's group first)."""
    results: dict[str, Measured] = {}
    skipped: dict[str, str] = {}
    notes: dict[str, dict] = {}
    keys: dict[str, str] = {}
    for name in args.rows:
        try:
            keys[name] = threads_of(row_allocs(ROWS[name], schedule, choices, args)[0], args)
        except Skip as why:
            skipped[name] = str(why)
    for key in thread_groups(list(keys.values()), server.threads if server.proc is not None else None):
        for name in [n for n, k in keys.items() if k == key]:
            log(f"seed {seed}, row {name}: {ROWS[name].doc}")
            notes[name] = {}
            try:
                results[name] = run_row(ROWS[name], args, schedule, seed, cgs, server, host, noise_json, slo,
                                        choices, out, notes[name])
            except Skip as why:
                skipped[name] = str(why)
                log(f"skipped {name}: {why}")
    return results, skipped, notes


# -- estimate ---------------------------------------------------------------------------------------
def estimate(args: argparse.Namespace, schedule: Schedule,
             cache: Cache) -> tuple[float, float, list[tuple[str, float]]]:
    """(expected s, at most s, parts) of this run: the alone baselines per seed, the oracle grid
    and its live re-checks (what is not cached), then seeds x rows x the schedule, with a
    server start per server setting visited (the engine's calibration: start, drain)."""
    cost = args.engine_spec.cost_for(args.model)
    sched = schedule.total_s
    parts: list[tuple[str, float]] = []
    most = 0.0
    alone = [s for s in args.seeds if not cache.has(lc_alone_key(args, schedule, s))]
    if alone:
        parts.append((f"alone: the server over the schedule, {len(alone)} seed(s)",
                      cost.start_s + len(alone) * (sched + cost.drain_s + ROW_OVERHEAD_S)))
    if args.stream_mib:
        parts.append((f"the neighbour's start: its streamer writes {args.stream_mib} MiB "
                      f"(~{STREAM_WRITE_MIB_S:g} MiB/s) and reads it once", neighbour_start_s(args)))
    if not cache.has(be_alone_key(args)):
        parts.append(("alone: the neighbour", args.be_alone_s + 3))
    if any(ROWS[r].oracle for r in args.rows):
        points = grid_points(args)
        loads = distinct_loads(schedule)
        todo = [(load, a) for a in points for load in loads if not cache.has(point_key(args, load, a, args.slo))]
        full = args.grid_settle_s + args.grid_measure_s + ROW_OVERHEAD_S
        starts = 2 * len({threads_of(a, args) for _, a in todo} - {args.server_threads}) * cost.start_s
        parts.append((f"oracle grid: {len(todo)} of {len(points) * len(loads)} points to measure "
                      f"({args.grid_settle_s + args.grid_measure_s:.0f} s each at most)",
                      len(todo) * full * EARLY_STOP_FACTOR + starts))
        most += len(todo) * full * (1 - EARLY_STOP_FACTOR)
        check = args.grid_settle_s + args.oracle_check_s + ROW_OVERHEAD_S
        parts.append((f"oracle re-checks: {len(loads)} load(s) x 1 candidate expected, up to {args.oracle_tries}",
                      len(loads) * check))
        most += len(loads) * check * (args.oracle_tries - 1)
    groups = len({threads_of(ROWS[r].alloc, args) for r in args.rows if not ROWS[r].oracle} or {None})
    per_seed = sum(sched + cost.drain_s + ROW_OVERHEAD_S + (AGENT_OVERHEAD_S if ROWS[r].controller else 0.0)
                   for r in args.rows)
    # the running server's setting goes first in each seed: one restart per other setting; a row
    # whose agent has the threads lever is expected to restart the server once (a start after it)
    lever = [r for r in args.rows if ROWS[r].threads_lever and args.threads_lever and args.engine_spec.threads_env]
    restarts = len(args.seeds) * (groups - 1 + len(lever)) * cost.start_s
    parts.append((f"rows: {len(args.seeds)} seed(s) x {len(args.rows)} rows x {sched:.0f} s, "
                  f"{groups} server setting(s) per seed"
                  + (f", a fresh server after each of the {len(lever)} row(s) with the threads lever" if lever else ""),
                  len(args.seeds) * per_seed + restarts))
    total = sum(p for _, p in parts) + 5
    return total, total + most, parts


def estimate_text(args: argparse.Namespace, schedule: Schedule, cache: Cache) -> str:
    """The estimate, first line the total (printed by ``--estimate`` and at the start of a run)."""
    total, most, parts = estimate(args, schedule, cache)
    cost = args.engine_spec.cost_for(args.model)
    lines = [f"estimated wall time: {total / 60:.0f} min, at most {most / 60:.0f} min "
             f"({len(args.seeds)} seed(s) x {len(args.rows)} rows x {schedule.total_s:.0f} s schedule, "
             f"engine {args.engine}, model {args.model}, cache {cache.dir})"]
    lines += [f"  {what}: {s / 60:.1f} min" for what, s in parts]
    lines.append(f"  calibration: {cost.source}; server start {cost.start_s:g} s, drain {cost.drain_s:g} s, "
                 f"grid points stop early at {EARLY_STOP_FACTOR:g} of their length on average")
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------
def _f(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def schedule_from(args: argparse.Namespace) -> Schedule:
    if args.phases:
        s = parse_phases(args.phases)
    else:
        s = load_schedule(args.schedule)
    s.check_windows(args.window_s)
    return s


def parse_ratio(text: str) -> tuple[int, int]:
    a, _, b = text.partition(":")
    return int(a), int(b)


def parse_mem_cap(text: str, cap: int | None) -> int | None:
    """A neighbour memory cap of the grid: 'max' (None), 'cap' (the scenario's), or MiB."""
    x = text.strip()
    if x == "max":
        return None
    if x == "cap":
        if cap is None:
            raise ValueError("'cap' is 1.25x the hog of --scenario mem; give MiB or 'max' here")
        return cap
    try:
        return int(float(x) * scenarios.MIB)
    except ValueError:
        raise ValueError(f"{x!r}: expected max, cap or MiB") from None


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: expected a comma list of integers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds {text!r}: expected distinct integers")
    return seeds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"tiny model, 8 tokens, bench/schedules/quick.yaml (2 x 5 s), 2.5-s windows, seeds 1,2, "
                        f"rows {','.join(QUICK_ROWS)}, grid 0.5/max x 1:1")
    p.add_argument("--dense", action="store_true",
                   help="the engine's dense-window scenario (>= 10 requests per window; bench/METHOD.md)")
    p.add_argument("--engine", default="gpt2", choices=sorted(engines.ENGINES), help="the inference server")
    p.add_argument("--rows", default=None, help=f"comma list from {list(ROWS)} (default: the engine's: gpt2 all, "
                   f"llamacpp all but static+psi; quick: {QUICK_ROWS})")
    p.add_argument("--seeds", default=None, help="arrival seeds, comma list; every row runs once per seed, "
                   "rows interleaved (default 1,2,3; quick 1,2)")
    p.add_argument("--repeats", type=int, default=None, help="= --seeds 1,..,N")
    p.add_argument("--scenario", choices=list(scenarios.SCENARIOS), default="cpu",
                   help="the neighbour (bench/scenarios.py): " + "; ".join(
                       f"{k}: {v.doc}" for k, v in scenarios.SCENARIOS.items()).replace("%", "%%"))
    p.add_argument("--schedule", type=Path, default=None, help="YAML schedule (default: the scenario's, "
                   "else the engine's: bench/schedules/default.yaml for gpt2, llamacpp.yaml for llamacpp)")
    p.add_argument("--phases", default=None, help='inline schedule "name:rate:duration_s,name:c=N:duration_s,..."')
    p.add_argument("--slo-ttft", type=float, default=None, help="TTFT p95 SLO, s (default: the engine's per model)")
    p.add_argument("--slo-itl", type=float, default=None, help="inter-token latency p95 SLO, s (the engine's)")
    p.add_argument("--window-s", type=float, default=None, help="window length, s (default 10; quick 2.5)")
    p.add_argument("--transient-s", type=float, default=None,
                   help="violation share 'after' excludes this much of each phase's start (default 20; quick 2.5)")
    p.add_argument("--hold-s", type=float, default=None,
                   help="convergence: the SLO must hold this long (default 30; quick 5)")
    p.add_argument("--timeout-s", type=float, default=None, help="per-request timeout = failure (default 60; quick 15)")
    p.add_argument("--model", default=None, help="the engine's model (default: its first)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per request (default: the engine's, "
                   "gpt2 50, llamacpp 16; quick 8)")
    p.add_argument("--max-concurrency", type=int, default=2, help="server worker threads / slots")
    p.add_argument("--server-threads", default=None,
                   help="the server's --threads every row starts with (default: the engine's: gpt2 auto, "
                        "llamacpp all cores)")
    p.add_argument("--noise-cpu", type=int, default=None,
                   help="neighbour CPU burners (default: one per CPU; --scenario mem: 1)")
    p.add_argument("--noise-mem-mib", "--mem-mib", dest="noise_mem_mib", type=int, default=None,
                   help="the neighbour's anonymous hog, MiB (cpu+mem: 1024; mem: 55 %% of MemTotal; quick 64 / 256)")
    p.add_argument("--stream-mib", type=int, default=None,
                   help="--scenario mem: the file the neighbour streams through the page cache, MiB "
                        "(default 40 %% of MemTotal; quick 512)")
    p.add_argument("--stream-dir", type=Path, default=Path("/var/tmp"),
                   help="where the streamer's file goes (a disk, never tmpfs: removed when the neighbour stops)")
    p.add_argument("--be-alone-s", type=float, default=None, help="neighbour-alone measurement, s (default 30; quick 5)")
    p.add_argument("--grid-quotas", default=None, help="oracle grid: server quotas in cores, 'max' = none "
                   "(default: the engine's, gpt2 0.5,1,1.5,max, llamacpp 0.5,1,max; quick 0.5,max)")
    p.add_argument("--grid-ratios", default=None, help="oracle grid: server:neighbour cpu weight ratios "
                   "(default: the scenario's, else the engine's: gpt2 1:4,1:1,4:1, llamacpp 1:1,4:1; quick 1:1)")
    p.add_argument("--grid-neighbour-quotas", default=None,
                   help="oracle grid: the neighbour's cpu quota in cores, 'max' = none (default max; mem: max,0.5 "
                        "= none or its floor)")
    p.add_argument("--grid-neighbour-mem", default=None,
                   help="oracle grid: the neighbour's memory max, 'max' = none, 'cap' = 1.25x its anonymous "
                        "memory (hog + 128 MiB), or MiB (default max; mem: max,cap)")
    p.add_argument("--grid-threads", default=None, help="oracle grid: the server's --threads as one more "
                   "dimension (default: the engine's; none for gpt2, whose threads follow the quota)")
    p.add_argument("--grid-settle-s", type=float, default=None, help="per grid point, not measured (default 10; quick 0)")
    p.add_argument("--grid-measure-s", type=float, default=None,
                   help="per grid point, measured: several windows at the rows' window length (default: the "
                        "engine's, gpt2 60, llamacpp 30 (dense windows); quick 5)")
    p.add_argument("--grid-seed", type=int, default=GRID_SEED,
                   help="the grid's arrivals; the live re-check uses the next seed (keep both apart from --seeds)")
    p.add_argument("--oracle-check-s", type=float, default=None,
                   help="live re-check of a chosen point at its load, measured s (default: as --grid-measure-s; "
                        "quick 5)")
    p.add_argument("--oracle-tries", type=int, default=None, help="candidates re-checked per load (default 3; quick 2)")
    p.add_argument("--oracle-max-violating-pct", type=float, default=0.0,
                   help="a re-checked point holds when at most this share of its windows violate")
    p.add_argument("--oracle-refresh", action="store_true", help="re-measure the oracle grid and its re-checks")
    p.add_argument("--alone-refresh", action="store_true", help="re-measure the alone baselines")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="measurements reused across runs (default ~/.cache/autotune-bench/colocation); each "
                        "run also keeps a copy of what it used in <out>/cache/")
    p.add_argument("--agent-slo-fields", default=None,
                   help="SLO fields written into the agent's [service.slo] (default: the engine's, those its "
                        "latency source measures: gpt2 ttft_p95_s,itl_p95_s; llamacpp ttft_p95_s (probe),"
                        "itl_mean_s (page, half the ITL p95 target))")
    p.add_argument("--no-threads-lever", dest="threads_lever", action="store_false",
                   help="the agent rows on an engine with a fixed pool (llamacpp) declare no restart path: "
                        "the agent can then only advise another --threads (default: they declare one)")
    p.add_argument("--agent-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="extra agent config for agent rows, e.g. verification.window_s=15 (repeatable)")
    p.add_argument("--compare", default=None, help="row pairs to compare, a:b,... (default: each agent row "
                   "against contended, static and oracle, and the learned row against the rules)")
    p.add_argument("--name", default=None, help="results go to bench/results/NAME (default: a timestamp)")
    p.add_argument("--out", type=Path, default=None, help="results directory (overrides --name)")
    p.add_argument("--estimate", action="store_true", help="print the expected wall time and exit")
    p.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="rebuild DIR's tables from its per-seed files (= python -m bench.coloc_report DIR)")
    a = p.parse_args(argv)
    q = a.quick
    a.engine_spec = spec = engines.get(a.engine)
    dense = spec.dense if a.dense else None
    if a.dense and dense is None:
        p.error(f"--dense: the {a.engine} engine has no dense scenario")
    a.model = a.model or ("tiny" if q and "tiny" in spec.models else dense.model if dense else spec.models[0])
    if a.model not in spec.models:
        p.error(f"--model {a.model!r}: the {a.engine} engine serves {list(spec.models)}")
    if a.seeds is not None and a.repeats is not None:
        p.error("give --seeds or --repeats, not both")
    a.seeds = parse_seeds(a.seeds) if a.seeds else list(range(1, (a.repeats or (2 if q else 3)) + 1))
    if a.grid_seed in a.seeds or a.grid_seed + 1 in a.seeds:
        p.error(f"--grid-seed {a.grid_seed}: the grid and its re-check must not share arrivals with the rows' seeds")
    a.window_s = a.window_s or (2.5 if q else 10.0)
    a.transient_s = a.transient_s if a.transient_s is not None else (2.5 if q else 20.0)
    a.hold_s = a.hold_s or (5.0 if q else 30.0)
    a.timeout_s = a.timeout_s or (15.0 if q else 60.0)
    a.max_tokens = a.max_tokens or (dense.max_tokens if dense else 8 if q else spec.max_tokens)
    sc = a.scenario_spec = scenarios.SCENARIOS[a.scenario]
    own = sc.stream  # the memory scenario brings its own grid and schedule; the others, the engine's
    a.noise_cpu = a.noise_cpu if a.noise_cpu is not None else (sc.noise_cpu or os.cpu_count() or 2)
    a.cap_bytes = None
    if sc.stream:  # the memory-heavy neighbour, sized from MemTotal (bench/scenarios.py)
        size = scenarios.mem_sizing(scenarios.host_mem_total(Host("/")),
                                    hog_mib=a.noise_mem_mib if a.noise_mem_mib is not None else (256 if q else None),
                                    stream_mib=a.stream_mib if a.stream_mib is not None else (512 if q else None))
        a.noise_mem_mib, a.stream_mib, a.cap_bytes = size.hog_mib, size.stream_mib, size.cap_bytes
    else:
        if a.stream_mib:
            p.error(f"--stream-mib: the {a.scenario} scenario has no streamer (--scenario mem has)")
        a.stream_mib = 0
        a.noise_mem_mib = 0 if not sc.mem_default_mib else (
            a.noise_mem_mib if a.noise_mem_mib is not None else (64 if q else sc.mem_default_mib))
    a.weights_file = (scenarios.weights_path(a.stream_dir, os.getpid())
                      if sc.mmap_weights and spec.maps_weights_file else None)
    a.be_alone_s = a.be_alone_s or (5.0 if q else 30.0)
    a.server_threads = a.server_threads or spec.static_threads(engines.ncpu())
    a.grid_quotas = [None if x.strip() == "max" else float(x)
                     for x in (a.grid_quotas or ("max" if q and sc.stream else "0.5,max" if q
                                                 else sc.grid_quotas if own else spec.grid_quotas)).split(",")]
    a.grid_ratios = [parse_ratio(x) for x in (a.grid_ratios or ("1:1" if q else sc.grid_ratios if own
                                                                  else spec.grid_ratios)).split(",")]
    a.grid_neighbour_quotas = [None if x.strip() == "max" else float(x)
                               for x in (a.grid_neighbour_quotas or sc.grid_neighbour_quotas).split(",")]
    try:
        a.grid_neighbour_mem = [parse_mem_cap(x, a.cap_bytes)
                                for x in (a.grid_neighbour_mem or ("cap" if q and sc.stream
                                                                   else sc.grid_neighbour_mem)).split(",")]
    except ValueError as err:
        p.error(f"--grid-neighbour-mem: {err}")
    a.grid_threads = ([x for x in a.grid_threads.split(",") if x] if a.grid_threads is not None
                      else spec.grid_threads(engines.ncpu()))
    a.grid_settle_s = a.grid_settle_s if a.grid_settle_s is not None else (0.0 if q else 10.0)
    a.grid_measure_s = a.grid_measure_s or (5.0 if q else spec.grid_measure_s)
    a.oracle_check_s = a.oracle_check_s or (5.0 if q else spec.grid_measure_s)
    a.oracle_tries = a.oracle_tries or (2 if q else 3)
    a.schedule = a.schedule or SCHEDULES / ("quick.yaml" if q else dense.schedule if dense
                                            else sc.schedule if own else spec.schedule)
    a.agent_slo_fields = [x for x in (a.agent_slo_fields or "").split(",") if x]
    default_rows = QUICK_ROWS if q else MEM_ROWS if sc.stream else spec.default_rows or DEFAULT_ROWS
    a.rows = [x for x in (a.rows or ",".join(default_rows)).split(",") if x]
    unknown = [x for x in a.rows if x not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    base = dense.slo if dense else spec.slo_for(a.model)
    a.slo = Slo(ttft_p95_s=a.slo_ttft or base.ttft_p95_s, itl_p95_s=a.slo_itl or base.itl_p95_s)
    try:
        agent_slo(a, a.slo)
    except SystemExit as err:
        p.error(str(err))
    a.compare = report.parse_pairs(a.compare) if a.compare else report.default_pairs(a.rows)
    if a.cache_dir is None:
        a.cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autotune-bench" / "colocation"
    if a.out is None:
        a.out = HERE / "results" / (a.name or time.strftime("coloc-%Y%m%d-%H%M%S"))
    for d in ("grid_settle_s", "grid_measure_s", "oracle_check_s"):
        v = getattr(a, d)
        if v and abs(v / a.window_s - round(v / a.window_s)) > 1e-6:
            p.error(f"--{d.replace('_', '-')} {v:g} is not a whole number of {a.window_s:g}-s windows")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        return report.main([str(args.report)])
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        schedule = schedule_from(args)
    except (ValueError, OSError) as err:
        log(f"schedule: {err}")
        return 2
    cache = Cache(args.cache_dir, refresh=({"oracle-point", "oracle-check"} if args.oracle_refresh else set())
                  | ({"lc-alone", "be-alone"} if args.alone_refresh else set()))
    if args.estimate:
        print(estimate_text(args, schedule, cache))
        return 0
    if (refused := engines.preflight(args.engine_spec, args.model)) is not None:
        return refused
    host = Host("/", writable=True)
    if (refused := neighbour_preflight(args, host)) is not None:
        return refused
    args.out.mkdir(parents=True, exist_ok=True)
    estimate_s = estimate(args, schedule, cache)[0]  # before the run fills the cache: meta.json keeps it
    log(estimate_text(args, schedule, cache).splitlines()[0])
    common.install_cleanup()
    guard = common.HostGuard(host)
    slo: Slo = args.slo
    t0 = time.time()
    per_seed: dict[int, dict] = {}
    grid: dict[str, list[PointResult]] = {}
    choices: dict[str, OracleChoice] = {}
    lc_refs: dict[int, dict[str, float | None]] = {}
    be_ref: float | None = None
    noise_json = args.out / "noise.json"
    server: Server | None = None
    try:
        cgs = common.bench_cgroups(host)
        server = Server(args.engine_spec, cgs["server"], model=args.model, max_concurrency=args.max_concurrency,
                        max_tokens=args.max_tokens, out=args.out, weights_file=args.weights_file)
        for seed in args.seeds:  # the server alone, before the neighbour starts
            lc_refs[seed] = lc_alone(args, schedule, seed, cgs, server, cache, slo, seed_dir(args.out, seed))
        noise_json.unlink(missing_ok=True)
        common.start_neighbour(cgs["neighbour"], cpu=args.noise_cpu, mem_mib=args.noise_mem_mib,
                               json_path=noise_json, log_path=args.out / "noise.log",
                               stream_mib=args.stream_mib, stream_dir=args.stream_dir if args.stream_mib else None)
        common.wait_neighbour(noise_json, timeout_s=60.0 + neighbour_start_s(args), stream=bool(args.stream_mib))
        be_ref = be_alone(args, noise_json, cache)
        if any(ROWS[r].oracle for r in args.rows):
            todo = grid_todo(args, schedule)
            grid = {load.label(): [] for load in distinct_loads(schedule)}
            current = server.threads if server.proc is not None else None
            for key in thread_groups([threads_of(a, args) for _, a in todo], current):
                for load, alloc in todo:
                    if threads_of(alloc, args) == key:
                        grid[load.label()].append(grid_point(args, load, alloc, cgs, server, noise_json, cache, slo))
            grid_lc = report.mean_refs(lc_refs)
            choices = plan_oracle(args, schedule, grid, grid_lc, be_ref,
                                  lambda load, alloc: live_check(args, load, alloc, cgs, server, noise_json,
                                                                 cache, slo))
        for seed in args.seeds:
            d = seed_dir(args.out, seed)
            results, skipped, notes = seed_rows(args, schedule, seed, cgs, server, host, noise_json, slo, choices, d)
            report.write_seed(d, args, schedule, slo, results, lc_refs[seed], be_ref, choices)
            per_seed[seed] = {"skipped": skipped, "row_notes": notes}
    finally:
        common.cleanup()
        if args.weights_file is not None:
            args.weights_file.unlink(missing_ok=True)
        host_values = guard.finish()
    wall_s = time.time() - t0
    cache.keep(args.out / "cache")
    meta = report.meta(args, schedule, slo, wall_s=wall_s, per_seed=per_seed, cache=cache, lc_refs=lc_refs,
                       be_ref=be_ref, server_starts=server.starts if server else 0, estimate_s=estimate_s)
    meta["host_values"] = host_values
    report.write_oracle(args.out, grid, choices, report.mean_refs(lc_refs), be_ref)
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    report.aggregate(args.out)
    print((args.out / "table.md").read_text())
    for seed, d in per_seed.items():
        for name, why in d["skipped"].items():
            print(f"seed {seed}: skipped {name}: {why}")
    print(f"wall time {wall_s / 60:.1f} min; results in {args.out}")
    for f in host_values["forced"]:
        print(f"RESTORED BY FORCE at the end: {f['label']} {f['found']} -> {f['was']}"
              + (f" FAILED: {f['error']}" if f["error"] else ""))
    print(host_values["line"])
    return 0


def neighbour_preflight(args: argparse.Namespace, host: Host) -> int | None:
    """Why the neighbour must not start here, logged, as the exit status (2); None when it may:
    the memory-heavy neighbour's hog must leave the host room, its file must go to a disk."""
    if not args.noise_mem_mib and not args.stream_mib:
        return None
    if args.stream_mib or args.weights_file is not None:
        for f in scenarios.sweep_stream_files(args.stream_dir):
            log(f"removed a streamer file a killed run left: {f}")
        if (why := scenarios.stream_dir_problem(args.stream_dir, args.stream_mib)) is not None:
            log(why)
            return 2
    avail = read_meminfo(host).get("MemAvailable", 0)
    if (why := scenarios.check_room(avail, args.noise_mem_mib)) is not None:
        log(why)
        return 2
    return None


def neighbour_start_s(args: argparse.Namespace) -> float:
    """The memory-heavy neighbour's start: the streamer writes its file (~STREAM_WRITE_MIB_S)."""
    return args.stream_mib / STREAM_WRITE_MIB_S if args.stream_mib else 0.0


def seed_dir(out: Path, seed: int) -> Path:
    return out / f"seed-{seed}"


if __name__ == "__main__":
    raise SystemExit(main())
