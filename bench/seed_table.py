"""Reproduce the seed research's table on this host, measured end to end from the client.

    sudo python -m bench.seed_table                # full: GPT-2 124M, c=1,2,4,8, 3 repeats
    sudo python -m bench.seed_table --quick        # smoke: tiny model, few requests (< ~3 min)
    python -m bench.seed_table --estimate [...]    # estimated wall time of those options

Configurations (the neighbour is ``autotune workload noise`` in its own cgroup):
- ``alone``       server only, no limits;
- ``contended``   server + neighbour, no limits;
- ``static``      + server cpu quota 0.5 core and memory max 4 GiB (the seed's "cgroups");
- ``static+psi``  + the seed's gate: defer while system cpu some avg10 > 95 %, 0.5 s retries,
                  drop after 10 (the seed's "psi"), applied in front of each request;
- ``gate``        static limits, requests go through ``autotune gate`` (pressure from the
                  server's own cgroup); not in the default run;
- ``oracle``      per concurrency, the best static allocation: a grid over the server's cpu
                  quota and both cpu weights (``--oracle-quotas``, ``--oracle-ratios``), each
                  point measured; the lowest p95 among points where the neighbour kept its
                  0.5-core floor (measured, from its cgroup's CPU time) is the cell;
- ``autotune``    static limits, managed by ``autotune run --mode apply --local-actuator``
                  with the DEFAULT rule pack and a config declaring only the two services,
                  the server's SLO (``--slo-itl``: per-token p95) and the neighbour's floor
                  (bench/agent_front.py); skipped with the reason when that command is missing.

Per (config, concurrency) the latencies of all repeats are pooled for p50/p95/p99 (numpy
linear percentiles), neighbour ops/s is the mean over the load windows, deferred / rejected
are totals over the repeats. Writes <out>/summary.csv (the columns below), per-run request
CSVs, summary.json and plot.png.
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
from autotune.workload.load import LoadSpec, RequestResult, percentiles, run_load, write_csv
from bench import common
from bench.common import GIB, BenchCgroup, log

SUMMARY_COLUMNS = ["config", "concurrency", "p50_s", "p95_s", "p99_s", "neighbour_ops_per_s",
                   "deferred", "rejected", "runs"]


class BenchConfig(BaseModel):
    name: str
    neighbour: bool = True
    cpu_quota_cores: float | None = None
    memory_max_bytes: int | None = None
    seed_psi: bool = False
    front: str = "server"  # key of FRONTS: what the load generator talks to
    threads: str = "auto"  # server's torch intra-op threads: auto (follows the quota) or a number
    oracle: bool = False  # per concurrency: the best point of a measured allocation grid


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


class Cell(BaseModel):
    config: str
    concurrency: int
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    neighbour_ops_per_s: float | None
    deferred: int
    rejected: int
    runs: int
    errors: int = 0


class Ctx(BaseModel):
    """What a front hook needs: the server's URL, both cgroups, where to log, agent settings."""

    model_config = {"arbitrary_types_allowed": True}
    config: str
    server_url: str
    server_cg: BenchCgroup
    neighbour_cg: BenchCgroup
    out: Path
    slo_itl_s: float = 0.1  # the agent's SLO: per-token p95 (autotune row)
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
    d = ctx.out / "autotune"
    d.mkdir(parents=True, exist_ok=True)
    state = d / "state.db"
    doc = af.agent_config(server_cg=ctx.server_cg, neighbour_cg=ctx.neighbour_cg, server_url=ctx.server_url,
                          slo={"itl_p95_s": ctx.slo_itl_s}, state_path=state,
                          metrics_port=common.free_port())
    problem = af.write_config(d / "config.toml", doc, header="written by bench/seed_table.py for the autotune row")
    if problem:
        raise Skip(f"the agent rejects the config: {problem}")
    snaps = {"start": af.knob_snapshot(ctx.server_cg, ctx.neighbour_cg)}
    agent = af.start_agent(d / "config.toml", d / "agent.log")
    try:
        log(f"autotune: agent pid {agent.pid}, SLO ITL p95 {ctx.slo_itl_s:.3f} s, warm-up {ctx.warmup_s:.0f} s")
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
        log(f"autotune: {summary.get('changes', 0)} changes, verdicts {summary.get('verdicts')}, "
            f"conclusive {summary.get('conclusive_share')}")


FRONTS: dict[str, Callable[[Ctx], object]] = {
    "server": front_server, "gate": front_gate, "autotune": front_autotune,
}


# -- running --------------------------------------------------------------------------------------
def _noise_window(before: dict | None, after: dict | None) -> float | None:
    if not before or not after or after["elapsed_s"] <= before["elapsed_s"]:
        return None
    return (after["ops_total"] - before["ops_total"]) / (after["elapsed_s"] - before["elapsed_s"])


def oracle_points(args: argparse.Namespace, ncpu: int) -> list[tuple[float | None, tuple[int, int]]]:
    """Grid points that can keep the neighbour's floor at all: an unlimited server leaves the
    neighbour only its weight share of the CPUs under full contention."""
    from bench.agent_front import NEIGHBOUR_FLOOR_CORES

    out = []
    for q in args.oracle_quotas:
        for srv, nb in args.oracle_ratios:
            left = ncpu - q if q is not None else 0.0
            share = ncpu * nb / (srv + nb)
            if max(left, share) >= NEIGHBOUR_FLOOR_CORES:
                out.append((q, (srv, nb)))
    return out


def _cores_used(cg: BenchCgroup) -> float | None:
    """CPU seconds the cgroup has used so far (its cgroup's own counter)."""
    from autotune.errors import AutotuneError
    from autotune.sensors.cgroup import read_cgroup

    try:
        usage = read_cgroup(cg.host, cg.cpu_cgroup_path()).cpu_usage_usec
    except AutotuneError:
        return None
    return None if usage is None else usage / 1e6


def _set_weights(cgs: dict[str, BenchCgroup], ratio: tuple[int, int]) -> None:
    from autotune.knobs import get_knob

    knob = get_knob("cgroup.cpu_weight")
    for cg, w in ((cgs["server"], 100 * ratio[0]), (cgs["neighbour"], 100 * ratio[1])):
        target = cg.cpu_cgroup_path()
        knob.write(cg.host, target, knob.validate(cg.host, target, str(min(10000, w))))


def run_oracle(args: argparse.Namespace, cgs: dict[str, BenchCgroup], url: str, noise_json: Path,
               out: Path) -> list[Cell]:
    """Per concurrency, every grid point measured once (``--requests`` requests); the cell is
    the point with the lowest p95 among those where the neighbour kept its floor."""
    from bench.agent_front import NEIGHBOUR_FLOOR_CORES

    cells, rows = [], []
    points = oracle_points(args, os.cpu_count() or 2)
    for conc in args.concurrency:
        best: tuple[float, Cell, dict] | None = None
        for quota, ratio in points:
            cgs["server"].set_cpu_quota(quota)
            _set_weights(cgs, ratio)
            time.sleep(3.0)  # the server's thread follower re-reads its quota every 2 s
            spec = LoadSpec(url=url, requests=args.requests, concurrency=conc, max_tokens=args.max_tokens, seed=0)
            n0, c0, t0 = common.read_noise(noise_json), _cores_used(cgs["neighbour"]), time.monotonic()
            res = asyncio.run(run_load(spec))
            n1, c1, dt = common.read_noise(noise_json), _cores_used(cgs["neighbour"]), time.monotonic() - t0
            ops = _noise_window(n0, n1)
            nb_cores = (c1 - c0) / dt if c0 is not None and c1 is not None and dt > 0 else None
            cell = _cell("oracle", conc, res, [ops] if ops is not None else [], 1)
            ok = nb_cores is not None and nb_cores >= 0.95 * NEIGHBOUR_FLOOR_CORES
            row = {"concurrency": conc, "quota_cores": "max" if quota is None else quota,
                   "weights": f"{ratio[0]}:{ratio[1]}", "p95_s": cell.p95_s,
                   "neighbour_ops_per_s": cell.neighbour_ops_per_s, "neighbour_cores": nb_cores,
                   "keeps_floor": ok}
            rows.append(row)
            log(f"oracle c={conc} quota={row['quota_cores']} weights {row['weights']}: p95={_fmt(cell.p95_s)} s, "
                f"neighbour {_fmt(nb_cores)} cores{'' if ok else ' (below its floor)'}")
            write_csv(res, out / f"requests_oracle_c{conc}_q{row['quota_cores']}_w{ratio[0]}-{ratio[1]}.csv")
            if ok and cell.p95_s is not None and (best is None or cell.p95_s < best[0]):
                best = (cell.p95_s, cell, row)
        if best is not None:
            cells.append(best[1])
            best[2]["chosen"] = True
    with open(out / "oracle_points.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["concurrency", "quota_cores", "weights", "p95_s",
                                           "neighbour_ops_per_s", "neighbour_cores", "keeps_floor", "chosen"])
        w.writeheader()
        w.writerows(rows)
    return cells


def run_config(cfg: BenchConfig, args: argparse.Namespace, host: Host,
               cgs: dict[str, BenchCgroup], out: Path) -> list[Cell]:
    server_cg, neigh_cg = cgs["server"], cgs["neighbour"]
    server_cg.set_cpu_quota(cfg.cpu_quota_cores)
    server_cg.set_memory_max(cfg.memory_max_bytes)
    for cg in (server_cg, neigh_cg):
        cg.reset_cpu_weight()
    noise_json = out / f"noise_{cfg.name}.json"
    neighbour = None
    if cfg.neighbour:
        noise_json.unlink(missing_ok=True)
        neighbour = common.start_neighbour(neigh_cg, cpu=args.noise_cpu, mem_mib=args.noise_mem_mib,
                                           json_path=noise_json, log_path=out / "noise.log")
    server, url = common.start_server(server_cg, model=args.model,
                                      max_concurrency=args.max_concurrency, threads=cfg.threads,
                                      log_path=out / f"server_{cfg.name}.log")
    cells: list[Cell] = []
    try:
        ctx = Ctx(config=cfg.name, server_url=url, server_cg=server_cg, neighbour_cg=neigh_cg, out=out,
                  slo_itl_s=agent_slo(args), warmup_s=args.warmup_s, max_tokens=args.max_tokens)
        with FRONTS[cfg.front](ctx) as front_url:  # type: ignore[operator]
            # warm-up, not measured: one full-length request per server worker, twice (first
            # calls in each worker thread are several times slower: allocations, page faults)
            workers = args.max_concurrency
            asyncio.run(run_load(LoadSpec(url=front_url, requests=2 * workers, concurrency=workers,
                                          max_tokens=args.max_tokens)))
            if cfg.oracle:
                return run_oracle(args, cgs, front_url, noise_json, out)
            admit = common.seed_psi_admit(host) if cfg.seed_psi else None
            for conc in args.concurrency:
                results: list[RequestResult] = []
                ops: list[float] = []
                gate_deferred = 0
                for rep in range(args.repeats):
                    spec = LoadSpec(url=front_url, requests=args.requests, concurrency=conc,
                                    max_tokens=args.max_tokens, seed=rep)
                    before = common.read_noise(noise_json) if neighbour else None
                    g0 = common.gate_counts(front_url) if cfg.front != "server" else None
                    res = asyncio.run(run_load(spec, admit=admit))
                    g1 = common.gate_counts(front_url) if g0 is not None else None
                    after = common.read_noise_after(noise_json, before) if neighbour else None
                    if g0 is not None and g1 is not None:
                        gate_deferred += g1[0] - g0[0]
                    write_csv(res, out / f"requests_{cfg.name}_c{conc}_r{rep}.csv")
                    results += res
                    w = _noise_window(before, after)
                    if w is not None:
                        ops.append(w)
                cell = _cell(cfg.name, conc, results, ops, args.repeats, gate_deferred)
                log(f"{cfg.name} c={conc}: p95={_fmt(cell.p95_s)} s, neighbour "
                    f"{_fmt(cell.neighbour_ops_per_s, 0)} ops/s, deferred {cell.deferred}, "
                    f"rejected {cell.rejected}, errors {cell.errors}")
                cells.append(cell)
    finally:
        common.stop(server)
        if neighbour is not None:
            common.stop(neighbour)
    return cells


# the autotune row's per-token SLO (p95 inter-token latency, s) per model: see bench/README.md
SLO_ITL = {"gpt2": 0.1, "tiny": 0.05}


def agent_slo(args: argparse.Namespace) -> float:
    """The autotune row's SLO: --slo-itl, else the model's default (SLO_ITL)."""
    return args.slo_itl or SLO_ITL.get(args.model, SLO_ITL["gpt2"])


def _cell(name: str, conc: int, results: list[RequestResult], ops: list[float], runs: int,
          gate_deferred: int = 0) -> Cell:
    """``deferred``: requests that saw a 503 or a client-side deferral, plus requests an
    ``autotune gate`` front queued before admitting them (its own counter)."""
    p50, p95, p99 = percentiles([r.latency_s for r in results if r.outcome == "ok"])
    return Cell(config=name, concurrency=conc, p50_s=p50, p95_s=p95, p99_s=p99,
                neighbour_ops_per_s=sum(ops) / len(ops) if ops else None,
                deferred=sum(1 for r in results if r.retries > 0) + gate_deferred,
                rejected=sum(1 for r in results if r.outcome == "rejected"),
                runs=runs, errors=sum(1 for r in results if r.outcome == "error"))


# -- reporting ------------------------------------------------------------------------------------
def _fmt(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def speedups(cells: list[Cell], base: str = "static") -> dict[tuple[str, int], float | None]:
    """p95(base) / p95(config) per concurrency: > 1 means faster than the static limits."""
    ref = {c.concurrency: c.p95_s for c in cells if c.config == base}
    out: dict[tuple[str, int], float | None] = {}
    for c in cells:
        b = ref.get(c.concurrency)
        out[(c.config, c.concurrency)] = b / c.p95_s if b and c.p95_s else None
    return out


def print_table(cells: list[Cell]) -> None:
    from rich.console import Console
    from rich.table import Table

    sp = speedups(cells)
    t = Table(title="End-to-end latency (client clock, s) and neighbour throughput")
    for col in ["config", "conc", "p50", "p95", "p99", "p95 vs static", "neighbour ops/s",
                "deferred", "rejected", "runs"]:
        t.add_column(col, justify="left" if col == "config" else "right")
    for c in cells:
        s = sp.get((c.config, c.concurrency))
        t.add_row(c.config, str(c.concurrency), _fmt(c.p50_s), _fmt(c.p95_s), _fmt(c.p99_s),
                  "-" if s is None else f"{s:.2f}x", _fmt(c.neighbour_ops_per_s, 0),
                  str(c.deferred), str(c.rejected), str(c.runs))
    Console(width=max(120, Console().width)).print(t)


def markdown_table(cells: list[Cell]) -> str:
    """The table for bench/README.md: p95 against ``static`` (speedup) and ``alone`` (target 1.3x)."""
    sp = speedups(cells)
    alone = {c.concurrency: c.p95_s for c in cells if c.config == "alone"}
    lines = ["| config | c | p50 (s) | p95 (s) | p99 (s) | static p95 / p95 | p95 / alone p95 "
             "| neighbour ops/s | deferred | rejected | runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        s, a = sp.get((c.config, c.concurrency)), alone.get(c.concurrency)
        vs_alone = f"{c.p95_s / a:.2f}x" if a and c.p95_s else "-"
        lines.append(f"| {c.config} | {c.concurrency} | {_fmt(c.p50_s)} | {_fmt(c.p95_s)} | {_fmt(c.p99_s)} | "
                     f"{'-' if s is None else f'{s:.2f}x'} | {vs_alone} | {_fmt(c.neighbour_ops_per_s, 0)} | "
                     f"{c.deferred} | {c.rejected} | {c.runs} |")
    return "\n".join(lines)


def read_summary(path: Path) -> list[Cell]:
    """Cells back from a summary.csv (a committed run), empty fields as None."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = [c for c in SUMMARY_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise SystemExit(f"{path}: not a seed_table summary, missing columns {missing}")
    return [Cell.model_validate({k: (None if v == "" else v) for k, v in r.items() if k in Cell.model_fields})
            for r in rows]


def write_outputs(cells: list[Cell], out: Path, meta: dict) -> None:
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        for c in cells:
            w.writerow({k: ("" if v is None else v) for k, v in c.model_dump(include=set(SUMMARY_COLUMNS)).items()})
    (out / "summary.json").write_text(json.dumps(
        {"meta": meta, "cells": [c.model_dump() for c in cells]}, indent=2))
    plot(cells, out / "plot.png")


def plot(cells: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for name in dict.fromkeys(c.config for c in cells):
        color = palette[list(CONFIGS).index(name) % len(palette)] if name in CONFIGS else None
        rows = [c for c in cells if c.config == name]
        xs = [c.concurrency for c in rows if c.p95_s is not None]
        ax1.plot(xs, [c.p95_s for c in rows if c.p95_s is not None], marker="o", label=name, color=color)
        nx = [c.concurrency for c in rows if c.neighbour_ops_per_s is not None]
        if nx:  # same colour per config in both panels (alone has no neighbour)
            ax2.plot(nx, [c.neighbour_ops_per_s for c in rows if c.neighbour_ops_per_s is not None],
                     marker="s", label=name, color=color)
    ax1.set(xlabel="client concurrency", ylabel="p95 end-to-end latency (s)", yscale="log",
            title="LLM service")
    ax2.set(xlabel="client concurrency", ylabel="ops/s", title="Noisy neighbour throughput")
    ticks = sorted({c.concurrency for c in cells})
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model, 4 requests, c=1,4, 1 repeat")
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help=f"comma list from {list(CONFIGS)}")
    p.add_argument("--concurrency", default=None, help="comma list (default 1,2,4,8; quick 1,4)")
    p.add_argument("--repeats", type=int, default=None, help="runs per cell (default 3; quick 1)")
    p.add_argument("--requests", type=int, default=None, help="requests per run (default 20; quick 4)")
    p.add_argument("--max-tokens", type=int, default=50)
    p.add_argument("--model", default="gpt2")
    p.add_argument("--max-concurrency", type=int, default=2, help="server worker threads")
    p.add_argument("--noise-cpu", type=int, default=os.cpu_count() or 2)
    p.add_argument("--noise-mem-mib", type=int, default=1024)
    p.add_argument("--warmup-s", type=float, default=None,
                   help="autotune row: seconds of load before measuring (default 90; quick 45)")
    p.add_argument("--slo-itl", type=float, default=None,
                   help=f"autotune row: the server's per-token p95 SLO, s (default {SLO_ITL})")
    p.add_argument("--oracle-quotas", default=None,
                   help="oracle grid: server cpu quotas in cores, 'max' = none (default 1,1.5,max; quick 1,max)")
    p.add_argument("--oracle-ratios", default=None,
                   help="oracle grid: server:neighbour cpu weight ratios (default 1:1,4:1,16:1; quick 1:1,4:1)")
    p.add_argument("--estimate", action="store_true",
                   help="print the estimated wall time of this run (bench/estimate.py) and exit")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--report", type=Path, default=None, metavar="SUMMARY_CSV",
                   help="print the table of an earlier run's summary.csv; (re)write table.md and plot.png beside it")
    a = p.parse_args(argv)
    if a.warmup_s is None:
        a.warmup_s = 45.0 if a.quick else 90.0
    if a.quick:
        a.model = "tiny"
        a.concurrency = a.concurrency or "1,4"
        a.noise_mem_mib = min(a.noise_mem_mib, 64)
    a.requests = a.requests or (4 if a.quick else 20)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.concurrency = [int(x) for x in str(a.concurrency or "1,2,4,8").split(",") if x]
    a.configs = [x for x in a.configs.split(",") if x]
    quotas = a.oracle_quotas or ("1,max" if a.quick else "1,1.5,max")
    ratios = a.oracle_ratios or ("1:1,4:1" if a.quick else "1:1,4:1,16:1")
    a.oracle_quotas = [None if x.strip() == "max" else float(x) for x in quotas.split(",") if x]
    a.oracle_ratios = [tuple(int(v) for v in x.split(":")) for x in ratios.split(",") if x]
    unknown = [x for x in a.configs if x not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    if a.out is None:
        a.out = Path("bench/results") / time.strftime("%Y%m%d-%H%M%S")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        cells = read_summary(args.report)
        print_table(cells)
        print(markdown_table(cells))
        (args.report.parent / "table.md").write_text(markdown_table(cells) + "\n")
        plot(cells, args.report.parent / "plot.png")
        return 0
    if args.estimate:
        from bench.estimate import estimate_wall_s

        est = estimate_wall_s(args.configs, args.concurrency, requests=args.requests, repeats=args.repeats,
                              model=args.model, warmup_s=args.warmup_s,
                              oracle_points=len(oracle_points(args, os.cpu_count() or 2)))
        print(f"estimated wall time: {est / 60:.0f} min ({len(args.configs)} configs x "
              f"{len(args.concurrency)} concurrencies, {args.requests} requests x {args.repeats} repeats, "
              f"model {args.model})")
        return 0
    if os.geteuid() != 0:
        log("needs root: it creates cgroups and moves processes into them")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    common.install_cleanup()
    host = Host("/", writable=True)
    cells: list[Cell] = []
    skipped: dict[str, str] = {}
    t0 = time.time()
    try:
        cgs = common.bench_cgroups(host)
        for name in args.configs:
            log(f"config {name}")
            try:
                new = run_config(CONFIGS[name], args, host, cgs, args.out)
                cells += new
            except Skip as why:
                skipped[name] = str(why)
                log(f"skipped {name}: {why}")
    finally:
        common.cleanup()
    meta = {"model": args.model, "requests": args.requests, "repeats": args.repeats,
            "agent_slo_itl_p95_s": agent_slo(args) if "autotune" in args.configs else None,
            "oracle_grid": {"quotas": args.oracle_quotas, "ratios": args.oracle_ratios}
            if "oracle" in args.configs else None,
            "warmup_s": args.warmup_s,
            "max_tokens": args.max_tokens, "server_workers": args.max_concurrency,
            "noise_cpu": args.noise_cpu, "noise_mem_mib": args.noise_mem_mib,
            "ncpu": os.cpu_count(), "kernel": os.uname().release, "skipped": skipped,
            "wall_s": time.time() - t0}
    write_outputs(cells, args.out, meta)
    print_table(cells)
    (args.out / "table.md").write_text(markdown_table(cells) + "\n")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
