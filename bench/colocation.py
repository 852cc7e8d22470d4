"""Colocation under changing load: does the LLM service keep its SLO while the neighbour works?

    sudo python -m bench.colocation                    # default schedule, all rows, GPT-2 124M
    sudo python -m bench.colocation --quick            # tiny model, short phases (< ~3 min)
    python -m bench.colocation --estimate [options]    # expected wall time, runs nothing

The reference GPT-2 server (latency-critical) and ``autotune workload noise`` (the neighbour:
one CPU burner per CPU, ``--scenario cpu+mem`` adds a 1 GiB memory hog) each run in their own
cgroup. An open-loop streaming client (bench/openloop.py) follows a schedule of phases
(bench/schedules/default.yaml); every row sees the same Poisson arrivals. Per 10-s window:
TTFT p95 and ITL p95 against the SLO, completed and offered requests, the neighbour's ops/s
and CPU, the server's quota and both cpu weights. Per phase: the share of violating windows
(all, and from ``--transient-s`` into the phase on), EMU against ``alone`` baselines, and the
convergence time (bench/coloc_metrics.py has the definitions).

Rows (ROWS, a registry: name + starting allocation + what runs beside the load + agent config
overrides): ``contended`` (no limits), ``static`` (server quota 0.5 core, memory max 4 GiB),
``static+psi`` (+ the seed's client-side PSI gate), ``autotune`` (``autotune run --mode apply
--local-actuator``, default rule pack, the learned search off: rules only, from the static
allocation), ``autotune-learned`` (the agent's defaults: rules + the learned allocation search)
and ``oracle`` (per phase, the best static allocation of a grid measured point by point and
cached).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from autotune.errors import AutotuneError
from autotune.host import Host
from autotune.knobs import get_knob
from autotune.sensors.cgroup import read_cgroup
from autotune.types import CgroupReading
from autotune.workload.load import LoadSpec, run_load
from bench import common
from bench.coloc_metrics import (Alloc, EdgeSample, OracleChoice, PhaseStats, PointResult, Slo,
                                 Window, aggregate_windows, cache_key, known_violation, phase_stats,
                                 select_oracle)
from bench.common import GIB, BenchCgroup, log
from bench.openloop import Phase, RequestRecord, Schedule, load_schedule, parse_phases, run_schedule

HERE = Path(__file__).resolve().parent
SCHEDULES = HERE / "schedules"
CACHE_VERSION = 1
NEIGHBOUR_FLOOR_CORES = 0.5
STATIC = Alloc(quota_cores=0.5, memory_max_bytes=4 * GIB)

# SLO defaults per model (s): see bench/README.md, "Colocation under changing load"
SLO_DEFAULTS = {"gpt2": Slo(ttft_p95_s=4.0, itl_p95_s=0.15), "tiny": Slo(ttft_p95_s=2.0, itl_p95_s=0.25)}


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
    notes: dict = field(default_factory=dict)  # lands in meta.json under the row's name


Controller = Callable[[RowCtx], contextlib.AbstractContextManager[None]]


@dataclass(frozen=True)
class Row:
    """A benchmark row: its starting allocation, what runs beside the load, agent overrides.

    ``controller`` is entered after the allocation is set and before the first request, and
    left after the last one (the agent row starts and stops ``autotune run`` there).
    ``agent_overrides`` are merged into the agent's TOML ({"verification": {"window_s": 15}},
    or {"service:llm": {...}} for one service's table). ``oracle`` rows take their allocation
    per phase from the grid.
    """

    name: str
    doc: str
    alloc: Alloc = field(default_factory=Alloc)
    seed_psi: bool = False
    controller: Controller | None = None
    agent_overrides: dict = field(default_factory=dict)
    oracle: bool = False


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
    slo_values = {"ttft_p95_s": ctx.slo.ttft_p95_s, "itl_p95_s": ctx.slo.itl_p95_s}
    doc = af.agent_config(server_cg=ctx.cgs["server"], neighbour_cg=ctx.cgs["neighbour"],
                          server_url=ctx.server_url,
                          slo={k: slo_values[k] for k in ctx.args.agent_slo_fields},
                          state_path=state, metrics_port=common.free_port(),
                          overrides=merge_overrides(ctx.row.agent_overrides, ctx.args.agent_set))
    problem = af.write_config(config, doc, header="written by bench/colocation.py for one benchmark row")
    if problem:
        raise Skip(f"the agent rejects the config: {problem}")
    agent = af.start_agent(config, ctx.out / "agent.log")
    log(f"{ctx.row.name}: agent pid {agent.pid}, SLO TTFT p95 {ctx.slo.ttft_p95_s:g} s / ITL p95 "
        f"{ctx.slo.itl_p95_s:g} s, default rule pack")
    try:
        yield
    finally:
        ctx.notes["agent_exit_code_during_run"] = agent.poll()
        common.stop(agent)
        summary = af.journal_summary(state)
        ctx.notes["agent_changes"] = {k: v for k, v in summary.items() if k != "entries"}
        (ctx.out / "journal.json").write_text(json.dumps(summary, indent=2))


ROWS: dict[str, Row] = {r.name: r for r in [
    Row("contended", "no limits: server and neighbour share the CPUs at equal weights"),
    Row("static", "server cpu quota 0.5 core, memory max 4 GiB (the seed's cgroups)", alloc=STATIC),
    Row("static+psi", "static + the seed's gate: defer while system cpu some avg10 > 95 %, "
        "0.5-s retries, drop after 10", alloc=STATIC, seed_psi=True),
    Row("autotune", "the agent (apply mode, default rule pack, rules only: [ranker] off) from the "
        "static allocation", alloc=STATIC, controller=agent_controller,
        agent_overrides={"ranker": {"enabled": False}}),
    Row("autotune-learned", "the agent with its defaults: the rule pack plus the learned allocation "
        "search ([ranker] on), from the static allocation", alloc=STATIC, controller=agent_controller),
    Row("oracle", "per phase, the best static allocation of the grid (highest EMU with no "
        "violating window and the neighbour at its floor)", oracle=True),
]}
DEFAULT_ROWS = list(ROWS)


# -- agent config -----------------------------------------------------------------------------
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
    server, neighbour = cgs["server"], cgs["neighbour"]
    server.set_cpu_quota(alloc.quota_cores)
    server.set_memory_max(alloc.memory_max_bytes)
    set_cpu_weight(server, alloc.server_weight)
    set_cpu_weight(neighbour, alloc.neighbour_weight)


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


# -- the server: restarted only when its thread choice would differ -------------------------------
def expected_threads(alloc: Alloc, setting: str) -> int:
    """What ``--threads auto`` picks under ``alloc`` at start (autotune/workload/threads.py)."""
    if setting != "auto":
        return int(setting)
    affinity = len(os.sched_getaffinity(0))
    if alloc.quota_cores is None:
        return affinity
    return max(1, min(affinity, math.floor(alloc.quota_cores)))


class Server:
    def __init__(self, cg: BenchCgroup, args: argparse.Namespace, out: Path) -> None:
        self.cg, self.args, self.out = cg, args, out
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.want: int | None = None
        self.starts = 0

    def health(self) -> dict:
        try:
            return httpx.get(f"{self.url}/health", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return {}

    def ensure(self, alloc: Alloc) -> str:
        """Running, with the threads auto would pick under ``alloc`` (set it first); warm."""
        want = expected_threads(alloc, self.args.server_threads)
        if self.proc is not None and self.proc.poll() is None:
            if want == self.want or self.health().get("threads") == want:
                return self.url
            log(f"server: restarting for {want} torch thread(s) (was {self.want})")
            common.stop(self.proc)
        self.starts += 1
        self.proc, self.url = common.start_server(
            self.cg, model=self.args.model, max_concurrency=self.args.max_concurrency,
            threads=self.args.server_threads, log_path=self.out / f"server_{self.starts}.log")
        self.want = want
        workers = self.args.max_concurrency  # first calls per worker thread are slow: not measured
        asyncio.run(run_load(LoadSpec(url=self.url, requests=2 * workers, concurrency=workers,
                                      max_tokens=self.args.max_tokens)))
        return self.url

    def wait_idle(self, timeout_s: float = 120.0) -> None:
        """Until nothing runs or waits in the server (cancelled requests still cost a token)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            h = self.health()
            if h and not h.get("running") and not h.get("waiting"):
                return
            time.sleep(0.5)
        log("server: still busy after the drain; going on")


# -- one measured run -----------------------------------------------------------------------------
@dataclass
class Measured:
    records: list[RequestRecord]
    edges: list[EdgeSample]
    windows: list[Window]


def sampler(cgs: dict[str, BenchCgroup], noise_json: Path | None, edges: list[EdgeSample]):
    def on_edge(k: int, t: float) -> None:
        noise = common.read_noise(noise_json) if noise_json else None
        srv, nb = read_cg(cgs["server"]), read_cg(cgs["neighbour"])
        edges.append(EdgeSample(
            k=k, t_s=t,
            noise_ops_total=noise.get("ops_total") if noise else None,
            noise_elapsed_s=noise.get("elapsed_s") if noise else None,
            neighbour_cpu_s=nb.cpu_usage_usec / 1e6 if noise_json and nb and nb.cpu_usage_usec is not None else None,
            server_quota_cores=srv.cpu_quota_cores if srv else None,
            server_weight=srv.cpu_weight if srv else None,
            neighbour_weight=nb.cpu_weight if nb else None))
    return on_edge


def measure(url: str, schedule: Schedule, args: argparse.Namespace, cgs: dict[str, BenchCgroup],
            noise_json: Path | None, slo: Slo, **kw) -> Measured:
    edges: list[EdgeSample] = []
    records = asyncio.run(run_schedule(url, schedule, seed=args.seed, max_tokens=args.max_tokens,
                                       timeout_s=args.timeout_s, window_s=args.window_s,
                                       on_edge=sampler(cgs, noise_json, edges), **kw))
    return Measured(records, edges, aggregate_windows(records, edges, schedule, args.window_s, slo))


def stats(m: Measured, schedule: Schedule, args: argparse.Namespace) -> list[PhaseStats]:
    return phase_stats(m.windows, m.records, m.edges, schedule, window_s=args.window_s,
                       transient_s=args.transient_s, hold_s=args.hold_s)


# -- cache ----------------------------------------------------------------------------------------
class Cache:
    """One JSON file per measurement under ``dir``, named by the hash of its key (stored inside)."""

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


def base_key(args: argparse.Namespace) -> dict:
    return {"v": CACHE_VERSION, "model": args.model, "max_tokens": args.max_tokens,
            "server_workers": args.max_concurrency, "server_threads": args.server_threads,
            "timeout_s": args.timeout_s, "seed": args.seed, "window_s": args.window_s,
            "ncpu": os.cpu_count()}


def lc_alone_key(args: argparse.Namespace, schedule: Schedule) -> dict:
    return {**base_key(args), "kind": "lc-alone", "schedule": schedule.model_dump()}


def be_alone_key(args: argparse.Namespace) -> dict:
    return {"v": CACHE_VERSION, "kind": "be-alone", "scenario": args.scenario, "noise_cpu": args.noise_cpu,
            "noise_mem_mib": args.noise_mem_mib, "duration_s": args.be_alone_s, "ncpu": os.cpu_count()}


def point_key(args: argparse.Namespace, load: Phase, alloc: Alloc, slo: Slo) -> dict:
    return {**base_key(args), "kind": "oracle-point", "load": load_label(load), "alloc": alloc.model_dump(),
            "settle_s": args.grid_settle_s, "measure_s": args.grid_measure_s, "slo": slo.model_dump(),
            "scenario": args.scenario, "noise_cpu": args.noise_cpu, "noise_mem_mib": args.noise_mem_mib,
            "floor_cores": NEIGHBOUR_FLOOR_CORES}


def load_label(p: Phase) -> str:
    return p.label()


# -- baselines ------------------------------------------------------------------------------------
def lc_alone(args, schedule, cgs, server: Server, cache: Cache, slo: Slo, out: Path) -> dict[str, float | None]:
    """The server alone over the schedule: per load label, its LC figure (PhaseStats.lc_perf)."""
    key = lc_alone_key(args, schedule)
    got = cache.get(key)
    if got is None:
        log("alone: the server alone over the schedule (no neighbour, no limits)")
        set_alloc(cgs, Alloc())
        url = server.ensure(Alloc())
        m = measure(url, schedule, args, cgs, None, slo)
        server.wait_idle()
        st = stats(m, schedule, args)
        got = {"phases": [s.model_dump() for s in st], "windows": [w.model_dump() for w in m.windows]}
        cache.put(key, got)
    write_windows(out / "windows_alone.csv", [Window.model_validate(w) for w in got["windows"]])
    per_load: dict[str, list[float]] = {}
    for s, p in zip(got["phases"], schedule.phases, strict=True):
        if s["lc_perf"] is not None:
            per_load.setdefault(load_label(p), []).append(s["lc_perf"])
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


def _wait_noise(noise_json: Path, timeout_s: float = 60.0) -> dict | None:
    """The neighbour's first report (its burners and hog are up), then its next one."""
    deadline = time.monotonic() + timeout_s
    first = None
    while time.monotonic() < deadline:
        r = common.read_noise(noise_json)
        if r and first is None:
            first = r
        elif r and first and r["elapsed_s"] > first["elapsed_s"] and (r.get("mem_resident") or not r.get("mem_mib")):
            return r  # a second report, with the hog's pages all touched (when there is a hog)
        time.sleep(0.2)
    log(f"the neighbour did not report twice within {timeout_s:.0f} s; going on")
    return common.read_noise(noise_json)


# -- oracle grid ----------------------------------------------------------------------------------
def grid_points(args: argparse.Namespace) -> list[Alloc]:
    out = []
    for q in args.grid_quotas:
        for s, n in args.grid_ratios:
            out.append(Alloc(quota_cores=q, server_weight=100 * s, neighbour_weight=100 * n,
                             memory_max_bytes=4 * GIB))
    return out


def distinct_loads(schedule: Schedule) -> list[Phase]:
    seen: dict[str, Phase] = {}
    for p in schedule.phases:
        seen.setdefault(load_label(p), p)
    return list(seen.values())


def grid_schedule(load: Phase, args: argparse.Namespace) -> Schedule:
    kind = {"rate": load.rate} if load.rate is not None else {"concurrency": load.concurrency}
    phases = [Phase(name="measure", duration_s=args.grid_measure_s, **kind)]
    if args.grid_settle_s > 0:
        phases.insert(0, Phase(name="settle", duration_s=args.grid_settle_s, **kind))
    return Schedule(phases=phases)


def measure_point(args, load: Phase, alloc: Alloc, cgs, server: Server, noise_json: Path, slo: Slo) -> dict:
    sched = grid_schedule(load, args)
    k_settle = round(args.grid_settle_s / args.window_s)

    def hopeless(records: list[RequestRecord], now: float) -> bool:
        k_now = int(now // args.window_s + 1e-9)
        return known_violation(records, now, args.window_s, k_settle, k_now, slo)

    t0 = time.monotonic()
    set_alloc(cgs, alloc)
    url = server.ensure(alloc)
    t1 = time.monotonic()
    m = measure(url, sched, args, cgs, noise_json, slo, stop=hopeless)
    t2 = time.monotonic()
    server.wait_idle()
    t3 = time.monotonic()
    n_ended = len(m.edges) - 1  # edges k = 0..n, fewer when stopped early
    ended = [w for i, w in enumerate(m.windows) if i < n_ended and w.phase == "measure"]
    stopped = n_ended < len(m.windows)
    st = stats(m, sched, args)[-1]
    res = PointResult(alloc=alloc, load=load_label(load), windows=len(ended),
                      violating=max(sum(w.violating for w in ended), 1 if stopped else 0),
                      lc_perf=st.lc_perf, neighbour_ops_per_s=st.neighbour_ops_per_s,
                      neighbour_cores=st.neighbour_cores, stopped_early=stopped)
    log(f"oracle grid {load_label(load)} {alloc.label()}: {res.violating}/{res.windows} violating"
        f"{' (stopped early)' if stopped else ''}, neighbour {_f(res.neighbour_cores)} cores "
        f"(server {t1 - t0:.0f} s, load {t2 - t1:.0f} s, idle {t3 - t2:.0f} s)")
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


def choose(grid: dict[str, list[PointResult]], lc_ref: dict[str, float | None],
           be_ref: float | None) -> dict[str, OracleChoice]:
    out = {}
    for label, points in grid.items():
        c = select_oracle(points, floor_cores=NEIGHBOUR_FLOOR_CORES, lc_alone=lc_ref.get(label),
                          be_alone_ops=be_ref)
        if c is not None:
            out[label] = c
    return out


# -- rows -----------------------------------------------------------------------------------------
def run_row(row: Row, args, schedule: Schedule, cgs, server: Server, host: Host, noise_json: Path,
            slo: Slo, choices: dict[str, OracleChoice], out: Path, notes: dict) -> Measured:
    if row.oracle:
        missing = [load_label(p) for p in schedule.phases if load_label(p) not in choices]
        if missing:
            raise Skip(f"no oracle grid result for load(s) {missing}")
        allocs = [choices[load_label(p)].alloc for p in schedule.phases]
    else:
        allocs = [row.alloc] * len(schedule.phases)
    set_alloc(cgs, allocs[0])
    url = server.ensure(allocs[0])
    server.wait_idle()
    ctx = RowCtx(row=row, args=args, out=out / row.name.replace("+", "_"), server_url=url, cgs=cgs, slo=slo)
    # the oracle knows the schedule: its allocation per phase
    on_phase = (lambda i: set_alloc(cgs, allocs[i])) if row.oracle else None
    admit = common.seed_psi_admit(host) if row.seed_psi else None
    cm = row.controller(ctx) if row.controller else contextlib.nullcontext()
    try:
        with cm:
            m = measure(url, schedule, args, cgs, noise_json, slo, admit=admit, on_phase=on_phase)
    finally:
        notes.update(ctx.notes)
    server.wait_idle()
    return m


def thread_groups(threads: list[int], current: int | None) -> list[int]:
    """The order to visit thread counts in: the running server's first, then from the most."""
    rest = sorted(set(threads) - {current}, reverse=True)
    return ([current] if current in threads else []) + rest


def _row(name: str, args, schedule, cgs, server, host, noise_json, slo, choices, results: dict,
         skipped: dict, notes: dict) -> None:
    log(f"row {name}: {ROWS[name].doc}")
    notes[name] = {}
    try:
        results[name] = run_row(ROWS[name], args, schedule, cgs, server, host, noise_json, slo, choices,
                                args.out, notes[name])
    except Skip as why:
        skipped[name] = str(why)
        log(f"skipped {name}: {why}")


# -- main -----------------------------------------------------------------------------------------
def _f(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def write_windows(path: Path, windows: list[Window]) -> None:
    from bench.coloc_report import write_windows as w

    w(path, windows)


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny model, 16 tokens, bench/schedules/quick.yaml, 5-s windows, grid 0.5/max x 1:1")
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma list from {list(ROWS)}")
    p.add_argument("--scenario", choices=["cpu", "cpu+mem"], default="cpu",
                   help="the neighbour: CPU burners, or burners + a memory hog (--noise-mem-mib)")
    p.add_argument("--schedule", type=Path, default=None, help="YAML schedule (default bench/schedules/default.yaml)")
    p.add_argument("--phases", default=None, help='inline schedule "name:rate:duration_s,name:c=N:duration_s,..."')
    p.add_argument("--slo-ttft", type=float, default=None, help="TTFT p95 SLO, s (default gpt2 4.0, tiny 2.0)")
    p.add_argument("--slo-itl", type=float, default=None, help="inter-token latency p95 SLO, s (gpt2 0.15, tiny 0.25)")
    p.add_argument("--window-s", type=float, default=None, help="window length, s (default 10; quick 5)")
    p.add_argument("--transient-s", type=float, default=None,
                   help="violation share 'after' excludes this much of each phase's start (default 20; quick 5)")
    p.add_argument("--hold-s", type=float, default=None,
                   help="convergence: the SLO must hold this long (default 30; quick 10)")
    p.add_argument("--timeout-s", type=float, default=None, help="per-request timeout = failure (default 60; quick 15)")
    p.add_argument("--seed", type=int, default=0, help="arrival times and prompts")
    p.add_argument("--model", default="gpt2")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per request (default 50; quick 16)")
    p.add_argument("--max-concurrency", type=int, default=2, help="server worker threads")
    p.add_argument("--server-threads", default="auto", help="the server's --threads (auto fits its quota at start)")
    p.add_argument("--noise-cpu", type=int, default=os.cpu_count() or 2, help="neighbour CPU burners")
    p.add_argument("--noise-mem-mib", type=int, default=None, help="hog size for --scenario cpu+mem (1024; quick 64)")
    p.add_argument("--be-alone-s", type=float, default=None, help="neighbour-alone measurement, s (default 30; quick 5)")
    p.add_argument("--grid-quotas", default=None, help="oracle grid: server quotas in cores, 'max' = none "
                   "(default 0.5,1,1.5,max; quick 0.5,max)")
    p.add_argument("--grid-ratios", default=None, help="oracle grid: server:neighbour cpu weight ratios "
                   "(default 1:4,1:1,4:1; quick 1:1)")
    p.add_argument("--grid-settle-s", type=float, default=None, help="per grid point, not measured (default 10; quick 0)")
    p.add_argument("--grid-measure-s", type=float, default=None, help="per grid point, measured (default 30; quick 5)")
    p.add_argument("--oracle-refresh", action="store_true", help="re-measure the oracle grid (ignore its cache)")
    p.add_argument("--alone-refresh", action="store_true", help="re-measure the alone baselines")
    p.add_argument("--cache-dir", type=Path, default=HERE / "results" / "coloc-cache")
    p.add_argument("--agent-slo-fields", default="ttft_p95_s,itl_p95_s",
                   help="SLO fields written into the agent's [service.slo]")
    p.add_argument("--agent-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="extra agent config for agent rows, e.g. verification.window_s=15 (repeatable)")
    p.add_argument("--name", default=None, help="results go to bench/results/NAME (default: a timestamp)")
    p.add_argument("--out", type=Path, default=None, help="results directory (overrides --name)")
    p.add_argument("--estimate", action="store_true", help="print the expected wall time and exit")
    a = p.parse_args(argv)
    q = a.quick
    if q:
        a.model = "tiny"
    a.window_s = a.window_s or (5.0 if q else 10.0)
    a.transient_s = a.transient_s if a.transient_s is not None else (5.0 if q else 20.0)
    a.hold_s = a.hold_s or (10.0 if q else 30.0)
    a.timeout_s = a.timeout_s or (15.0 if q else 60.0)
    a.max_tokens = a.max_tokens or (16 if q else 50)
    a.noise_mem_mib = a.noise_mem_mib if a.noise_mem_mib is not None else (64 if q else 1024)
    if a.scenario == "cpu":
        a.noise_mem_mib = 0
    a.be_alone_s = a.be_alone_s or (5.0 if q else 30.0)
    a.grid_quotas = [None if x.strip() == "max" else float(x)
                     for x in (a.grid_quotas or ("0.5,max" if q else "0.5,1,1.5,max")).split(",")]
    a.grid_ratios = [parse_ratio(x) for x in (a.grid_ratios or ("1:1" if q else "1:4,1:1,4:1")).split(",")]
    a.grid_settle_s = a.grid_settle_s if a.grid_settle_s is not None else (0.0 if q else 10.0)
    a.grid_measure_s = a.grid_measure_s or (5.0 if q else 30.0)
    a.schedule = a.schedule or SCHEDULES / ("quick.yaml" if q else "default.yaml")
    a.agent_slo_fields = [x for x in a.agent_slo_fields.split(",") if x]
    a.rows = [x for x in a.rows.split(",") if x]
    unknown = [x for x in a.rows if x not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    base = SLO_DEFAULTS.get(a.model, SLO_DEFAULTS["gpt2"])
    a.slo = Slo(ttft_p95_s=a.slo_ttft or base.ttft_p95_s, itl_p95_s=a.slo_itl or base.itl_p95_s)
    if a.out is None:
        a.out = HERE / "results" / (a.name or time.strftime("coloc-%Y%m%d-%H%M%S"))
    for d in ("grid_settle_s", "grid_measure_s"):
        v = getattr(a, d)
        if v and abs(v / a.window_s - round(v / a.window_s)) > 1e-6:
            p.error(f"--{d.replace('_', '-')} {v:g} is not a whole number of {a.window_s:g}-s windows")
    return a


def main(argv: list[str] | None = None) -> int:
    from bench import coloc_report as report

    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        schedule = schedule_from(args)
    except (ValueError, OSError) as err:
        log(f"schedule: {err}")
        return 2
    cache = Cache(args.cache_dir, refresh=({"oracle-point"} if args.oracle_refresh else set())
                  | ({"lc-alone", "be-alone"} if args.alone_refresh else set()))
    if args.estimate:
        print(report.estimate_text(args, schedule, cache))
        return 0
    if os.geteuid() != 0:
        log("needs root: it creates cgroups and moves processes into them")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    log(report.estimate_text(args, schedule, cache).splitlines()[0])
    common.install_cleanup()
    host = Host("/", writable=True)
    slo: Slo = args.slo
    t0 = time.time()
    results: dict[str, Measured] = {}
    skipped: dict[str, str] = {}
    notes: dict[str, dict] = {}
    grid: dict[str, list[PointResult]] = {}
    choices: dict[str, OracleChoice] = {}
    lc_ref: dict[str, float | None] = {}
    be_ref: float | None = None
    noise_json = args.out / "noise.json"
    server: Server | None = None
    try:
        cgs = common.bench_cgroups(host)
        server = Server(cgs["server"], args, args.out)
        lc_ref = lc_alone(args, schedule, cgs, server, cache, slo, args.out)
        noise_json.unlink(missing_ok=True)
        common.start_neighbour(cgs["neighbour"], cpu=args.noise_cpu, mem_mib=args.noise_mem_mib,
                               json_path=noise_json, log_path=args.out / "noise.log")
        _wait_noise(noise_json)
        be_ref = be_alone(args, noise_json, cache)
        # grid points and rows grouped by the server's thread count: it restarts once per group
        todo = grid_todo(args, schedule) if any(ROWS[r].oracle for r in args.rows) else []
        plain = [r for r in args.rows if not ROWS[r].oracle]
        setting = args.server_threads
        grid = {load_label(load): [] for load in distinct_loads(schedule)} if todo else {}
        for t in thread_groups([expected_threads(a, setting) for _, a in todo]
                               + [expected_threads(ROWS[r].alloc, setting) for r in plain], server.want):
            for load, alloc in todo:
                if expected_threads(alloc, setting) == t:
                    grid[load_label(load)].append(grid_point(args, load, alloc, cgs, server, noise_json, cache, slo))
            for name in plain:
                if expected_threads(ROWS[name].alloc, setting) == t:
                    _row(name, args, schedule, cgs, server, host, noise_json, slo, choices, results, skipped, notes)
        choices = choose(grid, lc_ref, be_ref)
        for name in [r for r in args.rows if ROWS[r].oracle]:
            _row(name, args, schedule, cgs, server, host, noise_json, slo, choices, results, skipped, notes)
    finally:
        common.cleanup()
    wall_s = time.time() - t0
    meta = report.meta(args, schedule, slo, wall_s=wall_s, skipped=skipped, notes=notes, cache=cache,
                       lc_ref=lc_ref, be_ref=be_ref, server_starts=server.starts if server else 0)
    report.write_all(args, schedule, slo, results, grid, choices, lc_ref, be_ref, meta)
    print((args.out / "table.md").read_text())
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    for w in meta.get("warnings", []):
        print(f"warning: {w}")
    print(f"wall time {wall_s / 60:.1f} min; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
