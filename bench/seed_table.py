"""Reproduce the seed research's table on this host, measured end to end from the client.

    sudo python -m bench.seed_table                # GPT-2 124M, c=1,2,4,8, 20 requests, 3 repeats
    sudo python -m bench.seed_table --quick        # smoke: tiny model, few requests, 1 repeat
    python -m bench.seed_table --estimate [...]    # estimated wall time of those options
    python -m bench.seed_table --report DIR        # rebuild DIR's table from its cells.csv

Configurations (the neighbour is ``autotune workload noise`` in its own cgroup):
- ``alone``       server only, no limits;
- ``contended``   server + neighbour, no limits;
- ``static``      + server cpu quota 0.5 core and memory max 4 GiB (the seed's "cgroups"),
                  the engine's starting thread setting (gpt2: auto; llamacpp: all cores);
- ``static+psi``  + the seed's gate: defer while system cpu some avg10 > 95 %, 0.5 s retries,
                  drop after 10 (the seed's "psi"), applied in front of each request;
- ``gate``        static limits, requests go through ``autotune gate`` (pressure from the
                  server's own cgroup); not in the default run;
- ``oracle``      per concurrency, the best static allocation: a grid over the server's cpu
                  quota and both cpu weights (``--oracle-quotas``, ``--oracle-ratios``; llama.cpp
                  also its ``--threads``, ``--oracle-threads``: a restart per setting) measured
                  once on its own arrivals (seed 1000); the lowest p95 among points where the
                  neighbour kept its 0.5-core floor is chosen, then re-measured in every repeat
                  like any other row (choosing and judging on the same run favours the
                  chooser: the minimum of noisy p95s is biased low);
- ``autotune``    static limits, managed by ``autotune run --mode apply --local-actuator``
                  with the DEFAULT rule pack and a config declaring only the two services,
                  the server's SLO (``--slo-itl``: per-token p95; llama.cpp: its page's mean),
                  its thread pool and the neighbour's floor (bench/agent_front.py); on llama.cpp
                  also a restart path, so the agent may restart it with another ``--threads``
                  (``--no-threads-lever``: advice only); skipped with the reason when that
                  command is missing.

Repeats are interleaved: repeat 1 runs every configuration, then repeat 2, ...; repeat r sends
the same prompts in the same order (seed r) to every configuration, so configurations compare
paired by repeat. One server runs through the whole bench (restarted only when a
configuration needs another thread setting; ``--threads auto`` follows its quota while it
runs), and one neighbour (stopped for ``alone``). Per (config, concurrency, repeat): p50 / p95 /
p99 over that run's requests, the neighbour's ops/s over it. Over repeats: the mean and 95 %
interval of each (bench/stats.py), and paired ratios of p95 between configurations.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

from autotune.host import Host
from autotune.workload.load import LoadSpec, percentiles, run_load, write_csv
from bench import common, engines
from bench import stats as st
from bench.common import GIB, NEIGHBOUR_FLOOR_CORES, BenchCgroup, log
from bench.engines import Engine, Server

GRID_SEED = 1000  # the oracle grid's prompts; the repeats use seeds 1..N
CELL_COLUMNS = ["config", "concurrency", "repeat", "p50_s", "p95_s", "p99_s", "neighbour_ops_per_s",
                "neighbour_cores", "deferred", "rejected", "errors", "requests"]
SUMMARY_COLUMNS = ["config", "concurrency", "runs", "p50_s", "p95_s", "p95_lo", "p95_hi", "p99_s",
                   "neighbour_ops_per_s", "neighbour_lo", "neighbour_hi", "deferred", "rejected"]
LEGACY_SUMMARY_COLUMNS = ["config", "concurrency", "p50_s", "p95_s", "p99_s", "neighbour_ops_per_s",
                          "deferred", "rejected", "runs"]
CMP_COLUMNS = ["a", "b", "concurrency", "n", "p95_ratio", "lo", "hi", "differs"]


class BenchConfig(BaseModel):
    name: str
    neighbour: bool = True
    cpu_quota_cores: float | None = None
    memory_max_bytes: int | None = None
    seed_psi: bool = False
    front: str = "server"  # key of FRONTS: what the load generator talks to
    threads: str | None = None  # the server's --threads; None = the engine's starting setting
    oracle: bool = False  # per concurrency: the chosen point of a measured allocation grid


CONFIGS: dict[str, BenchConfig] = {
    "alone": BenchConfig(name="alone", neighbour=False),
    "contended": BenchConfig(name="contended"),
    "static": BenchConfig(name="static", cpu_quota_cores=0.5, memory_max_bytes=4 * GIB),
    "static+psi": BenchConfig(name="static+psi", cpu_quota_cores=0.5, memory_max_bytes=4 * GIB,
                              seed_psi=True),
    "gate": BenchConfig(name="gate", cpu_quota_cores=0.5, memory_max_bytes=4 * GIB, front="gate"),
    "oracle": BenchConfig(name="oracle", oracle=True),
    "autotune": BenchConfig(name="autotune", cpu_quota_cores=0.5, memory_max_bytes=4 * GIB,
                            front="autotune"),
    # not in the default run: the seed's static setup also left torch at its default thread
    # count (one per CPU); `static` uses --threads auto, which already fits the 0.5-core quota
    "static-seed-threads": BenchConfig(name="static-seed-threads", cpu_quota_cores=0.5,
                                       memory_max_bytes=4 * GIB, threads=str(os.cpu_count() or 1)),
}
DEFAULT_CONFIGS = [c for c in CONFIGS if c not in ("static-seed-threads", "gate")]
# paired p95 ratios reported over repeats (a / b)
PAIRS = [("autotune", "static"), ("autotune", "oracle"), ("autotune", "alone"), ("oracle", "alone"),
         ("contended", "alone"), ("static+psi", "static")]


class Cell(BaseModel):
    """One configuration at one concurrency in one repeat (its own requests' percentiles)."""

    config: str
    concurrency: int
    repeat: int = 0
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    neighbour_ops_per_s: float | None
    neighbour_cores: float | None = None
    deferred: int
    rejected: int
    errors: int = 0
    requests: int = 0


class Ctx(BaseModel):
    """What a front hook needs: the server's URL, both cgroups, where to log, agent settings."""

    model_config = {"arbitrary_types_allowed": True}
    config: str
    server_url: str
    server_cg: BenchCgroup
    neighbour_cg: BenchCgroup
    out: Path
    engine: str = "gpt2"
    slo_itl_s: float = 0.1  # the agent's per-token SLO (autotune row): the engine's field (p95, or mean)
    server_threads: str = "auto"  # the server's --threads (the agent's [service.threads])
    restart_path: dict | None = None  # the threads lever's restart path (Server.restart_path), if allowed
    warmup_s: float = 90.0  # load before the autotune row's measured cells
    max_tokens: int = 50


class Skip(Exception):
    """A configuration that cannot run here (missing command, not built yet)."""


# -- fronts: what the load generator talks to ---------------------------------------------------
@contextmanager
def front_server(ctx: Ctx) -> Iterator[str]:
    yield ctx.server_url


@contextmanager
def front_gate(ctx: Ctx) -> Iterator[str]:
    """``autotune gate`` in front of the server, reading the server cgroup's own PSI."""
    import subprocess

    help_ = subprocess.run(common.autotune_argv("gate", "--help"), capture_output=True)
    if help_.returncode != 0:
        raise Skip("'autotune gate' is not available")
    port = common.free_port()
    v2 = ctx.server_cg.dirs.get("v2")
    mount = ctx.server_cg.host.cgroup.v2_mount or ""
    pressure = f"cgroup:{v2[len(mount):]}" if v2 else "system"
    proc = common.spawn(common.autotune_argv("gate", "--listen", f"127.0.0.1:{port}",
                                             "--upstream", ctx.server_url, "--pressure", pressure),
                        None, ctx.out / f"gate_{ctx.config}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        common.wait_healthy(url, proc, timeout_s=30)
        yield url
    finally:
        common.stop(proc)


@contextmanager
def front_autotune(ctx: Ctx) -> Iterator[str]:
    """``autotune run --mode apply --local-actuator`` managing both cgroups with the default rule
    pack (bench/agent_front.py), warmed up under load before the measured cells."""
    from bench import agent_front as af

    try:
        af.check_available()
    except af.AgentUnavailable as why:
        raise Skip(f"{why} (the row needs `autotune run --mode apply --local-actuator`)") from None
    d = ctx.out
    d.mkdir(parents=True, exist_ok=True)
    state = d / "state.db"
    state.unlink(missing_ok=True)
    spec = engines.get(ctx.engine)
    doc = af.agent_config(server_cg=ctx.server_cg, neighbour_cg=ctx.neighbour_cg, server_url=ctx.server_url,
                          slo={spec.seed_itl_field: ctx.slo_itl_s}, state_path=state, metrics_port=common.free_port(),
                          latency=spec.agent_latency(ctx.server_url),
                          threads={**spec.agent_threads(ctx.server_threads), **(ctx.restart_path or {})})
    problem = af.write_config(d / "config.toml", doc, header="written by bench/seed_table.py for the autotune row")
    if problem:
        raise Skip(f"the agent rejects the config: {problem}")
    snaps = {"start": af.knob_snapshot(ctx.server_cg, ctx.neighbour_cg)}
    agent = af.start_agent(d / "config.toml", d / "agent.log")
    try:
        log(f"autotune: agent pid {agent.pid}, SLO {spec.seed_itl_field} {ctx.slo_itl_s:.3f} s, warm-up {ctx.warmup_s:.0f} s")
        sent = af.warm_up(ctx.server_url, ctx.warmup_s, max_tokens=ctx.max_tokens)
        if agent.poll() is not None:
            raise RuntimeError(f"the agent exited ({agent.returncode}) during warm-up; see {d / 'agent.log'}")
        snaps["after_warmup"] = af.knob_snapshot(ctx.server_cg, ctx.neighbour_cg)
        log(f"autotune: {sent} warm-up requests; knobs now {snaps['after_warmup']}")
        yield ctx.server_url
    finally:
        snaps["end"] = af.knob_snapshot(ctx.server_cg, ctx.neighbour_cg)
        common.stop(agent)
        (d / "knobs.json").write_text(json.dumps(snaps, indent=2))
        summary = af.journal_summary(state)
        (d / "journal.json").write_text(json.dumps(summary, indent=2))
        back = af.rollback_all(state, d / "config.toml")  # the agent's own restore, before the next configuration
        (d / "rollback.json").write_text(json.dumps(back, indent=2))
        log(f"autotune: {summary.get('changes', 0)} changes, verdicts {summary.get('verdicts')}, "
            f"conclusive {summary.get('conclusive_share')}; rollback --all restored {back['restored']}"
            + (f"; PROBLEMS: {'; '.join(back['problems'])}" if back["problems"] else ""))


FRONTS: dict[str, Callable[[Ctx], object]] = {
    "server": front_server, "gate": front_gate, "autotune": front_autotune,
}


# -- measuring ------------------------------------------------------------------------------------
def _noise_window(before: dict | None, after: dict | None) -> float | None:
    if not before or not after or after["elapsed_s"] <= before["elapsed_s"]:
        return None
    return (after["ops_total"] - before["ops_total"]) / (after["elapsed_s"] - before["elapsed_s"])


def _cpu_s(cg: BenchCgroup) -> float | None:
    """CPU seconds the cgroup has used so far (its cgroup's own counter)."""
    from autotune.errors import AutotuneError
    from autotune.sensors.cgroup import read_cgroup

    try:
        usage = read_cgroup(cg.host, cg.cpu_cgroup_path()).cpu_usage_usec
    except AutotuneError:
        return None
    return None if usage is None else usage / 1e6


def measure_cell(name: str, conc: int, repeat: int, url: str, args: argparse.Namespace, cgs: dict[str, BenchCgroup],
                 noise_json: Path | None, *, seed: int, admit=None, gate: bool = False,  # noqa: ANN001
                 csv_path: Path | None = None) -> Cell:
    """``--requests`` requests at concurrency ``conc`` (prompts from ``seed``), with the
    neighbour's ops/s and cores over the same span. ``deferred``: requests that saw a 503 or a
    client-side deferral, plus requests an ``autotune gate`` front queued (its own counter)."""
    spec = LoadSpec(url=url, requests=args.requests, concurrency=conc, max_tokens=args.max_tokens, seed=seed)
    before = common.read_noise(noise_json) if noise_json else None
    c0, t0 = (_cpu_s(cgs["neighbour"]) if noise_json else None), time.monotonic()
    g0 = common.gate_counts(url) if gate else None
    res = asyncio.run(run_load(spec, admit=admit))
    g1 = common.gate_counts(url) if g0 is not None else None
    after = common.read_noise_after(noise_json, before) if noise_json else None
    c1, dt = (_cpu_s(cgs["neighbour"]) if noise_json else None), time.monotonic() - t0
    if csv_path is not None:
        write_csv(res, csv_path)
    p50, p95, p99 = percentiles([r.latency_s for r in res if r.outcome == "ok"])
    gate_deferred = g1[0] - g0[0] if g0 is not None and g1 is not None else 0
    cell = Cell(config=name, concurrency=conc, repeat=repeat, p50_s=p50, p95_s=p95, p99_s=p99,
                neighbour_ops_per_s=_noise_window(before, after),
                neighbour_cores=(c1 - c0) / dt if c0 is not None and c1 is not None and dt > 0 else None,
                deferred=sum(1 for r in res if r.retries > 0) + gate_deferred,
                rejected=sum(1 for r in res if r.outcome == "rejected"),
                errors=sum(1 for r in res if r.outcome == "error"), requests=len(res))
    log(f"{name} c={conc} repeat {repeat}: p95={_fmt(cell.p95_s)} s, neighbour {_fmt(cell.neighbour_ops_per_s, 0)} "
        f"ops/s ({_fmt(cell.neighbour_cores)} cores), deferred {cell.deferred}, rejected {cell.rejected}, "
        f"errors {cell.errors}")
    return cell


def oracle_points(args: argparse.Namespace, ncpu: int) -> list[tuple[float | None, tuple[int, int], str | None]]:
    """Grid points (quota, weight ratio, --threads or None for the run's) that can keep the
    neighbour's floor at all: an unlimited server leaves the neighbour only its weight share of
    the CPUs under full contention. A fixed pool of t threads (``--oracle-threads``) cannot use
    more than t cores: a quota of t or more is the same point as none, measured once as none."""
    out = []
    fixed = engines.get(args.engine).pool_fixed
    for t in args.oracle_threads or [None]:
        for q in args.oracle_quotas:
            if fixed and t is not None and q is not None and None in args.oracle_quotas and q >= int(t):
                continue
            usable = min(q if q is not None else ncpu, int(t) if fixed and t is not None else ncpu)
            for srv, nb in args.oracle_ratios:
                server_share = ncpu * srv / (srv + nb)  # under full contention, by weight
                if ncpu - min(usable, server_share) >= NEIGHBOUR_FLOOR_CORES:
                    out.append((q, (srv, nb), t))
    return out


def set_alloc(cgs: dict[str, BenchCgroup], quota: float | None, memory_max: int | None,
              ratio: tuple[int, int] = (1, 1)) -> None:
    from autotune.knobs import get_knob

    cgs["server"].set_cpu_quota(quota)
    cgs["server"].set_memory_max(memory_max)
    knob = get_knob("cgroup.cpu_weight")
    for cg, w in ((cgs["server"], 100 * ratio[0]), (cgs["neighbour"], 100 * ratio[1])):
        target = cg.cpu_cgroup_path()
        knob.write(cg.host, target, knob.validate(cg.host, target, str(min(10000, w))))


def choose_oracle(rows: list[dict]) -> dict[int, dict]:
    """Per concurrency, the point with the lowest p95 among those that kept the neighbour's
    floor; with none (a machine busy with other work can leave the neighbour under its floor at
    every point), the lowest-p95 point stands in, marked ``keeps_floor`` False. Marks the
    chosen rows (``chosen``) in place."""
    out: dict[int, dict] = {}
    for conc in dict.fromkeys(r["concurrency"] for r in rows):
        pts = [r for r in rows if r["concurrency"] == conc and r["p95_s"] is not None]
        if not pts:
            continue
        keep = [r for r in pts if r["keeps_floor"]]
        best = min(keep or pts, key=lambda r: r["p95_s"])
        best["chosen"] = True
        out[conc] = best
    return out


def run_oracle_grid(args: argparse.Namespace, cgs: dict[str, BenchCgroup], server: Server, noise_json: Path,
                    out: Path) -> dict[int, dict]:
    """Every grid point once per concurrency on the grid's own prompts; the choice per concurrency."""
    rows = []
    points = oracle_points(args, os.cpu_count() or 2)
    settings = list(dict.fromkeys([server.threads] + [t or args.server_threads for _, _, t in points]))
    for threads in settings:  # the running server's setting first: one restart per other setting
        for conc in args.concurrency:
            for quota, ratio, t in points:
                if (t or args.server_threads) != threads:
                    continue
                set_alloc(cgs, quota, 4 * GIB, ratio)
                url = server.ensure(threads)
                time.sleep(3.0)  # the server's thread follower re-reads its quota every 2 s
                q = "max" if quota is None else quota
                tag = f"_t{t}" if t is not None else ""
                cell = measure_cell("oracle-grid", conc, 0, url, args, cgs, noise_json, seed=GRID_SEED,
                                    csv_path=out / f"requests_oracle_grid_c{conc}_q{q}_w{ratio[0]}-{ratio[1]}{tag}.csv")
                ok = cell.neighbour_cores is not None and cell.neighbour_cores >= 0.95 * NEIGHBOUR_FLOOR_CORES
                rows.append({"concurrency": conc, "quota_cores": q, "weights": f"{ratio[0]}:{ratio[1]}",
                             "threads": t or "", "quota": quota, "ratio": ratio, "p95_s": cell.p95_s,
                             "neighbour_ops_per_s": cell.neighbour_ops_per_s,
                             "neighbour_cores": cell.neighbour_cores, "keeps_floor": ok, "chosen": False})
    rows.sort(key=lambda r: args.concurrency.index(r["concurrency"]))  # stable: grid order within each
    chosen = choose_oracle(rows)
    with open(out / "oracle_points.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["concurrency", "quota_cores", "weights", "threads", "p95_s",
                                           "neighbour_ops_per_s", "neighbour_cores", "keeps_floor", "chosen"],
                           extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    for conc, r in chosen.items():
        log(f"oracle c={conc}: quota {r['quota_cores']}, weights {r['weights']}"
            f"{f', threads {t}' if (t := r['threads']) else ''}"
            f"{'' if r['keeps_floor'] else ' (no point kept the neighbour at its floor: the fastest stands in)'}")
    return chosen


def run_config(cfg: BenchConfig, repeat: int, args: argparse.Namespace, host: Host, cgs: dict[str, BenchCgroup],
               server: Server, noise_json: Path | None, oracle: dict[int, dict], out: Path) -> list[Cell]:
    """One configuration, every concurrency, one repeat (prompts from seed ``repeat``)."""
    threads = cfg.threads or args.server_threads
    if cfg.oracle:
        missing = [c for c in args.concurrency if c not in oracle]
        if missing:
            raise Skip(f"no oracle grid result at concurrency {missing}")
        first = oracle[args.concurrency[0]]
        set_alloc(cgs, first["quota"], 4 * GIB, first["ratio"])
        url = server.ensure(first.get("threads") or threads)
    else:
        set_alloc(cgs, cfg.cpu_quota_cores, cfg.memory_max_bytes)
        url = server.ensure(threads)
    server.wait_idle()
    cells: list[Cell] = []
    d = out / f"repeat-{repeat}"
    d.mkdir(parents=True, exist_ok=True)
    restart = None
    if cfg.front == "autotune" and args.threads_lever and engines.get(args.engine).threads_env:
        (d / cfg.name).mkdir(parents=True, exist_ok=True)  # the agent may restart it with other --threads
        restart = server.restart_path((d / cfg.name / "threads.env").resolve(),
                                      (d / cfg.name / "server_restarts.log").resolve())
    ctx = Ctx(config=cfg.name, server_url=url, server_cg=cgs["server"], neighbour_cg=cgs["neighbour"],
              out=d / cfg.name if cfg.front == "autotune" else d, engine=args.engine, slo_itl_s=agent_slo(args),
              warmup_s=args.warmup_s, max_tokens=args.max_tokens, server_threads=threads, restart_path=restart)
    admit = common.seed_psi_admit(host) if cfg.seed_psi else None
    with FRONTS[cfg.front](ctx) as front_url:  # type: ignore[operator]
        for conc in args.concurrency:
            if cfg.oracle:
                pick = oracle[conc]
                set_alloc(cgs, pick["quota"], 4 * GIB, pick["ratio"])
                front_url = server.ensure(pick.get("threads") or threads)  # a fixed pool: its own setting
                time.sleep(3.0)  # the thread follower
            fname = cfg.name.replace("+", "_")
            cells.append(measure_cell(cfg.name, conc, repeat, front_url, args, cgs,
                                      noise_json if cfg.neighbour else None, seed=repeat, admit=admit,
                                      gate=cfg.front == "gate", csv_path=d / f"requests_{fname}_c{conc}.csv"))
    server.wait_idle()
    server.reclaim()  # the agent restarted it (threads lever): the next configuration starts its own
    return cells


# the autotune row's per-token SLO (p95 inter-token latency, s): the engine's per model
def agent_slo(args: argparse.Namespace) -> float:
    """The autotune row's SLO: --slo-itl, else the engine's default for the model."""
    spec = engines.get(args.engine)
    return args.slo_itl or spec.seed_slo_itl.get(args.model) or next(iter(spec.seed_slo_itl.values()))


# -- over repeats -----------------------------------------------------------------------------------
def summarize(cells: list[Cell]) -> list[dict]:
    """Per (config, concurrency): means and 95 % intervals over the repeats (bench/stats.py)."""
    out = []
    for key in dict.fromkeys((c.config, c.concurrency) for c in cells):
        mine = [c for c in cells if (c.config, c.concurrency) == key]
        p95 = st.mean_ci(c.p95_s for c in mine)
        ops = st.mean_ci(c.neighbour_ops_per_s for c in mine)
        out.append({"config": key[0], "concurrency": key[1], "runs": len(mine),
                    "p50_s": st.mean_ci(c.p50_s for c in mine).mean, "p95_s": p95.mean, "p95_lo": p95.lo,
                    "p95_hi": p95.hi, "p99_s": st.mean_ci(c.p99_s for c in mine).mean,
                    "neighbour_ops_per_s": ops.mean, "neighbour_lo": ops.lo, "neighbour_hi": ops.hi,
                    "deferred": sum(c.deferred for c in mine), "rejected": sum(c.rejected for c in mine)})
    return out


def compare(cells: list[Cell], pairs: list[tuple[str, str]] = PAIRS) -> list[dict]:
    """Paired by repeat (same prompts): the ratio of p95s a / b, its geometric mean over the
    repeats and the 95 % interval (a t interval on the log ratios, exponentiated)."""
    import math

    out = []
    concs = list(dict.fromkeys(c.concurrency for c in cells))
    for a, b in pairs:
        for conc in concs:
            va = {c.repeat: c.p95_s for c in cells if c.config == a and c.concurrency == conc}
            vb = {c.repeat: c.p95_s for c in cells if c.config == b and c.concurrency == conc}
            if not va or not vb:
                continue
            pr = st.paired(a, b, va, vb, log=True)
            if pr.diff.n == 0:
                continue
            ex = (lambda v: None if v is None else math.exp(v))  # noqa: E731
            differs = pr.differs
            out.append({"a": a, "b": b, "concurrency": conc, "n": pr.diff.n, "p95_ratio": ex(pr.diff.mean),
                        "lo": ex(pr.diff.lo), "hi": ex(pr.diff.hi),
                        "differs": "n < 2" if differs is None else
                        ("yes" if differs else "no (within the interval)")})
    return out


def _fmt(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _iv(mean, lo, hi, nd: int = 2) -> str:  # noqa: ANN001
    return st.Interval(n=2 if lo is not None else 1, mean=mean, lo=lo, hi=hi).text(nd)


def markdown_table(summary: list[dict], comparisons: list[dict]) -> str:
    """Per cell: p95 mean [95 % interval] over repeats, against ``static`` and ``alone``; then
    the paired p95 ratios."""
    ref = {(s["config"], s["concurrency"]): s["p95_s"] for s in summary}
    lines = ["| config | c | p50 (s) | p95 (s) | p99 (s) | static p95 / p95 | p95 / alone p95 "
             "| neighbour ops/s | deferred | rejected | runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        p95, c = s["p95_s"], s["concurrency"]
        stat, alone = ref.get(("static", c)), ref.get(("alone", c))
        lines.append(f"| {s['config']} | {c} | {_fmt(s['p50_s'])} | {_iv(p95, s['p95_lo'], s['p95_hi'])} | "
                     f"{_fmt(s['p99_s'])} | {f'{stat / p95:.2f}x' if stat and p95 else '-'} | "
                     f"{f'{p95 / alone:.2f}x' if alone and p95 else '-'} | "
                     f"{_iv(s['neighbour_ops_per_s'], s['neighbour_lo'], s['neighbour_hi'], 0)} | "
                     f"{s['deferred']} | {s['rejected']} | {s['runs']} |")
    if comparisons:
        lines += ["", "Paired by repeat: p95 ratio a / b (geometric mean [95 % interval]); larger than its "
                  "interval = the interval excludes 1.", "",
                  "| a / b | c | p95 ratio | larger than its interval? | repeats |", "|---|---|---|---|---|"]
        for r in comparisons:
            lines.append(f"| {r['a']} / {r['b']} | {r['concurrency']} | {_iv(r['p95_ratio'], r['lo'], r['hi'])} | "
                         f"{r['differs']} | {r['n']} |")
    return "\n".join(lines)


def read_cells(path: Path, columns: list[str] = CELL_COLUMNS, what: str = "cells.csv") -> list[Cell]:
    """Cells back from a run's cells.csv (or a legacy summary.csv), empty fields as None."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise SystemExit(f"{path}: not a seed_table {what}, missing columns {missing}")
    return [Cell.model_validate({k: (None if v == "" else v) for k, v in r.items() if k in Cell.model_fields})
            for r in rows]


def read_summary(path: Path) -> list[Cell]:
    """Cells back from a legacy summary.csv (a run from before the repeated mode)."""
    return read_cells(path, LEGACY_SUMMARY_COLUMNS, "summary")


def report(cells: list[Cell], out: Path, meta: dict | None = None) -> str:
    """Write summary.csv, comparisons.csv, table.md, plot.png from the cells; the table."""
    summary, comparisons = summarize(cells), compare(cells)
    for name, cols, rows in (("summary.csv", SUMMARY_COLUMNS, summary), ("comparisons.csv", CMP_COLUMNS, comparisons)):
        with open(out / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows([{k: ("" if r.get(k) is None else r[k]) for k in cols} for r in rows])
    table = markdown_table(summary, comparisons)
    (out / "table.md").write_text(table + "\n")
    if meta is not None:
        (out / "summary.json").write_text(json.dumps({"meta": meta, "cells": [c.model_dump() for c in cells]},
                                                     indent=2))
    plot(summary, out / "plot.png")
    return table


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for name in dict.fromkeys(s["config"] for s in summary):
        color = palette[list(CONFIGS).index(name) % len(palette)] if name in CONFIGS else None
        rows = [s for s in summary if s["config"] == name and s["p95_s"] is not None]
        xs = [s["concurrency"] for s in rows]
        err = [[s["p95_s"] - (s["p95_lo"] if s["p95_lo"] is not None else s["p95_s"]) for s in rows],
               [(s["p95_hi"] if s["p95_hi"] is not None else s["p95_s"]) - s["p95_s"] for s in rows]]
        ax1.errorbar(xs, [s["p95_s"] for s in rows], yerr=err, marker="o", label=name, color=color, capsize=3)
        nx = [s for s in summary if s["config"] == name and s["neighbour_ops_per_s"] is not None]
        if nx:  # same colour per config in both panels (alone has no neighbour)
            ax2.plot([s["concurrency"] for s in nx], [s["neighbour_ops_per_s"] for s in nx], marker="s",
                     label=name, color=color)
    ax1.set(xlabel="client concurrency", ylabel="p95 end-to-end latency (s), 95 % interval", yscale="log",
            title="LLM service")
    ax2.set(xlabel="client concurrency", ylabel="ops/s", title="Noisy neighbour throughput")
    ticks = sorted({s["concurrency"] for s in summary})
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- estimate -------------------------------------------------------------------------------------
NEIGHBOUR_RESTART_S = 3.0  # the neighbour stopped for `alone` and started again, per repeat
AGENT_START_S = 6.0  # `autotune config check` + agent start and stop
THREAD_FOLLOW_S = 3.0  # after an oracle allocation change


def estimate_wall_s(configs: list[str], concurrency: list[int], *, requests: int, repeats: int,
                    engine: Engine | None = None, model: str = "gpt2", warmup_s: float = 90.0,
                    oracle_points: int = 7, oracle_restarts: int = 0) -> float:
    """Seconds a run with these arguments should take on the dev VM: per repeat, every config at
    every concurrency (requests x its seconds per request, the engine's calibration), the
    autotune row's warm-up and agent start, a neighbour restart around ``alone``; the oracle
    grid once (``oracle_points`` x concurrencies); one server start per thread setting, and
    ``oracle_restarts`` more for the grid's other thread settings."""
    cost = (engine or engines.GPT2).cost_for(model)
    total = cost.start_s * (len({CONFIGS[c].threads for c in configs}) + oracle_restarts)
    for name in configs:
        c1, cn = cost.s_per_request.get(name, cost.s_per_request["contended"])
        per_rep = sum(requests * (c1 if c == 1 else cn) for c in concurrency)
        per_rep += cost.drain_s + (warmup_s + AGENT_START_S if name == "autotune" else 0.0)
        per_rep += THREAD_FOLLOW_S * len(concurrency) if name == "oracle" else 0.0
        total += repeats * per_rep
        if name == "oracle":
            c1, cn = cost.s_per_request["oracle"]
            total += oracle_points * sum(requests * (c1 if c == 1 else cn) + THREAD_FOLLOW_S for c in concurrency)
    if "alone" in configs:
        total += repeats * NEIGHBOUR_RESTART_S
    return total


# -- main -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model, 4 requests, c=1,4, 1 repeat")
    p.add_argument("--engine", default="gpt2", choices=sorted(engines.ENGINES), help="the inference server")
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help=f"comma list from {list(CONFIGS)}")
    p.add_argument("--concurrency", default=None, help="comma list (default 1,2,4,8; quick 1,4)")
    p.add_argument("--repeats", type=int, default=None,
                   help="runs per cell, interleaved: repeat r runs every config on prompts seed r (default 3; quick 1)")
    p.add_argument("--requests", type=int, default=None, help="requests per run (default 20; quick 4)")
    p.add_argument("--max-tokens", type=int, default=50)
    p.add_argument("--model", default=None, help="the engine's model (default: its first; quick: tiny)")
    p.add_argument("--max-concurrency", type=int, default=2, help="server worker threads / slots")
    p.add_argument("--server-threads", default=None,
                   help="the server's --threads (default: the engine's starting setting)")
    p.add_argument("--noise-cpu", type=int, default=os.cpu_count() or 2)
    p.add_argument("--noise-mem-mib", type=int, default=1024)
    p.add_argument("--warmup-s", type=float, default=None,
                   help="autotune row: seconds of load before measuring (default 90; quick 45)")
    p.add_argument("--slo-itl", type=float, default=None,
                   help="autotune row: the server's per-token SLO, s: p95 (llamacpp: its page's mean) (default: the engine's per model)")
    p.add_argument("--oracle-quotas", default=None,
                   help="oracle grid: server cpu quotas in cores, 'max' = none (default 1,1.5,max; quick 1,max)")
    p.add_argument("--oracle-ratios", default=None,
                   help="oracle grid: server:neighbour cpu weight ratios (default 1:1,4:1,16:1; quick 1:1,4:1)")
    p.add_argument("--oracle-threads", default=None,
                   help="oracle grid: the server's --threads as one more dimension (default: the engine's; "
                        "none for gpt2, whose threads follow the quota; llamacpp 1 and every core)")
    p.add_argument("--no-threads-lever", dest="threads_lever", action="store_false",
                   help="the autotune row on an engine with a fixed pool (llamacpp) declares no restart path: "
                        "the agent can then only advise another --threads (default: it declares one)")
    p.add_argument("--estimate", action="store_true",
                   help="print the estimated wall time of this run and exit")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="rebuild DIR's summary, comparisons, table.md and plot.png from its cells.csv "
                        "(or print a legacy summary.csv)")
    a = p.parse_args(argv)
    spec = engines.get(a.engine)
    if a.warmup_s is None:
        a.warmup_s = 45.0 if a.quick else 90.0
    a.model = a.model or ("tiny" if a.quick and "tiny" in spec.models else spec.models[0])
    if a.model not in spec.models:
        p.error(f"--model {a.model!r}: the {a.engine} engine serves {list(spec.models)}")
    if a.quick:
        a.concurrency = a.concurrency or "1,4"
        a.noise_mem_mib = min(a.noise_mem_mib, 64)
    a.server_threads = a.server_threads or spec.static_threads(engines.ncpu())
    a.requests = a.requests or (4 if a.quick else 20)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.concurrency = [int(x) for x in str(a.concurrency or "1,2,4,8").split(",") if x]
    a.configs = [x for x in a.configs.split(",") if x]
    quotas = a.oracle_quotas or ("1,max" if a.quick else "1,1.5,max")
    ratios = a.oracle_ratios or ("1:1,4:1" if a.quick else "1:1,4:1,16:1")
    a.oracle_quotas = [None if x.strip() == "max" else float(x) for x in quotas.split(",") if x]
    a.oracle_ratios = [tuple(int(v) for v in x.split(":")) for x in ratios.split(",") if x]
    a.oracle_threads = ([x for x in a.oracle_threads.split(",") if x] if a.oracle_threads is not None
                        else spec.grid_threads(engines.ncpu()))
    unknown = [x for x in a.configs if x not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    if a.out is None:
        a.out = Path("bench/results") / time.strftime("seed-%Y%m%d-%H%M%S")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        path = args.report
        if path.is_dir():
            table = report(read_cells(path / "cells.csv"), path)
        else:  # a legacy summary.csv: pooled percentiles, no repeats to draw intervals from
            cells = read_summary(path)
            table = markdown_table([{"config": c.config, "concurrency": c.concurrency, "runs": "-",
                                     "p50_s": c.p50_s, "p95_s": c.p95_s, "p95_lo": None, "p95_hi": None,
                                     "p99_s": c.p99_s, "neighbour_ops_per_s": c.neighbour_ops_per_s,
                                     "neighbour_lo": None, "neighbour_hi": None, "deferred": c.deferred,
                                     "rejected": c.rejected} for c in cells], [])
        print(table)
        return 0
    spec = engines.get(args.engine)
    if args.estimate:
        est = estimate_wall_s(args.configs, args.concurrency, requests=args.requests, repeats=args.repeats,
                              engine=spec, model=args.model, warmup_s=args.warmup_s,
                              oracle_points=len(oracle_points(args, os.cpu_count() or 2)),
                              oracle_restarts=2 * len(set(args.oracle_threads) - {args.server_threads}))
        print(f"estimated wall time: {est / 60:.0f} min ({len(args.configs)} configs x "
              f"{len(args.concurrency)} concurrencies, {args.requests} requests x {args.repeats} repeats, "
              f"engine {args.engine}, model {args.model}; calibration: {spec.cost_for(args.model).source})")
        return 0
    if (refused := engines.preflight(spec, args.model)) is not None:
        return refused
    args.out.mkdir(parents=True, exist_ok=True)
    common.install_cleanup()
    host = Host("/", writable=True)
    guard = common.HostGuard(host)
    cells: list[Cell] = []
    skipped: dict[str, str] = {}
    oracle: dict[int, dict] = {}
    noise_json = args.out / "noise.json"
    t0 = time.time()
    server: Server | None = None
    neighbour = None
    try:
        cgs = common.bench_cgroups(host)
        server = Server(spec, cgs["server"], model=args.model, max_concurrency=args.max_concurrency,
                        max_tokens=args.max_tokens, out=args.out)

        def neighbour_running(on: bool) -> None:
            nonlocal neighbour
            if on and neighbour is None:
                noise_json.unlink(missing_ok=True)
                neighbour = common.start_neighbour(cgs["neighbour"], cpu=args.noise_cpu, mem_mib=args.noise_mem_mib,
                                                   json_path=noise_json, log_path=args.out / "noise.log")
                common.wait_neighbour(noise_json)
            elif not on and neighbour is not None:
                common.stop(neighbour)
                neighbour = None

        if any(CONFIGS[c].oracle for c in args.configs):
            neighbour_running(True)
            oracle = run_oracle_grid(args, cgs, server, noise_json, args.out)
        for repeat in range(1, args.repeats + 1):
            for name in args.configs:
                cfg = CONFIGS[name]
                if name in skipped:
                    continue
                log(f"repeat {repeat}: config {name}")
                neighbour_running(cfg.neighbour)
                try:
                    cells += run_config(cfg, repeat, args, host, cgs, server, noise_json, oracle, args.out)
                except Skip as why:
                    skipped[name] = str(why)
                    log(f"skipped {name}: {why}")
    finally:
        common.cleanup()
        host_values = guard.finish()
    with open(args.out / "cells.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CELL_COLUMNS)
        w.writeheader()
        w.writerows([{k: ("" if v is None else v) for k, v in c.model_dump().items()} for c in cells])
    meta = {"engine": args.engine, "model": args.model, "requests": args.requests, "repeats": args.repeats,
            "seeds": list(range(1, args.repeats + 1)), "grid_seed": GRID_SEED, "interval_method": st.METHOD,
            "agent_slo_itl_p95_s": agent_slo(args) if "autotune" in args.configs else None,
            "oracle_grid": {"quotas": args.oracle_quotas, "ratios": args.oracle_ratios,
                            "threads": args.oracle_threads,
                            "chosen": {str(c): {k: r[k] for k in ("quota_cores", "weights", "threads", "p95_s",
                                                                  "keeps_floor")}
                                       for c, r in oracle.items()}} if oracle else None,
            "warmup_s": args.warmup_s, "server_threads": args.server_threads,
            "server_starts": server.starts if server else 0,
            "max_tokens": args.max_tokens, "server_workers": args.max_concurrency,
            "noise_cpu": args.noise_cpu, "noise_mem_mib": args.noise_mem_mib,
            "ncpu": os.cpu_count(), "kernel": os.uname().release, "skipped": skipped,
            "wall_s": time.time() - t0, "host_values": host_values}
    print(report(cells, args.out, meta))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    print(f"wall time {meta['wall_s'] / 60:.1f} min; results in {args.out}")
    print(host_values["line"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
