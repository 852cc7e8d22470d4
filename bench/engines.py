"""The inference engines the benchmarks run, as one small spec each: how to start the server in
its cgroup, how the agent reads its latency, its SLO defaults, what the rows start it with,
and what a request costs (for ``--estimate``).

``bench.colocation --engine NAME`` and ``bench.seed_table --engine NAME`` take everything
engine-specific from here; nothing else in bench/ names an engine.

- ``gpt2``: the reference server (``autotune workload serve``, GPT-2 124M or the ``tiny``
  preset), ``--threads auto`` (its torch threads follow its cpu quota), a histogram metrics
  page the agent reads directly.
- ``llamacpp``: llama.cpp's ``llama-server`` with the offline random-weight GGUF (issue 21,
  item 1), started through the harness (``autotune workload serve --engine llamacpp``). Its
  thread pool is fixed at start, so every row starts it from the worst common case
  (``--threads`` = all cores, under the static 0.5-core quota); the agent reads its counters
  page plus an active probe, and where a row allows the threads lever it may restart the server
  with another ``--threads`` through a restart path (``Server.restart_path``,
  bench/restart_server.py). Its default schedule is dense (16 tokens per request).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from autotune.workload.engines import get_engine as get_server_engine
from autotune.workload.load import LoadSpec, run_load
from bench import common
from bench.coloc_metrics import Slo


class EngineUnavailable(Exception):
    """The engine cannot run here; the message says why and what would fix it."""


@dataclass(frozen=True)
class Cost:
    """What ``--estimate`` multiplies out, and where each figure was measured.

    ``s_per_request``: seed-table config -> (s per request at c=1, at c>=2), steady state
    (cell wall time / requests); ``start_s``: server start + warm-up requests; ``drain_s``: the
    mean wait after a colocation row's last phase (requests still in flight, the drain to idle).
    """

    start_s: float
    drain_s: float
    s_per_request: dict[str, tuple[float, float]]
    source: str


@dataclass(frozen=True)
class Dense:
    """The dense-window scenario of an engine (bench/METHOD.md, "Dense windows", has the sums)."""

    model: str
    max_tokens: int
    schedule: str  # file under bench/schedules/
    slo: Slo


StartFn = Callable[..., tuple[subprocess.Popen, str]]


@dataclass(frozen=True)
class Engine:
    name: str
    doc: str
    models: tuple[str, ...]
    start: StartFn  # (cg, *, model, threads, max_concurrency, log_path) -> (process, base URL)
    static_threads: Callable[[int], str]  # CPU count -> the --threads every row starts with
    flavor: str  # the agent's [service.latency] flavor
    slo: dict[str, Slo]  # colocation SLO per model
    seed_slo_itl: dict[str, float]  # seed table's agent SLO (ITL p95, s) per model
    cost: dict[str, Cost]  # per model
    dense: Dense | None = None
    probe: bool = False  # the agent also probes the server (no latency histograms on its page)
    grid_threads: Callable[[int], list[str]] = field(default=lambda ncpu: [])  # extra oracle dimension
    # its start takes ``weights_file`` (the weights mapped from a file: page cache); llama.cpp
    # maps its GGUF by itself
    maps_weights_file: bool = False
    server_engine: str = "reference"  # autotune/workload/engines.py's name for it (start, busy)
    # the agent's [service.slo]: which fields it states the bench's SLO on (the ones its
    # latency source can measure, autotune/slo.py) and their values from the bench's Slo
    agent_slo: Callable[[Slo], dict[str, float]] = field(
        default=lambda slo: {"ttft_p95_s": slo.ttft_p95_s, "itl_p95_s": slo.itl_p95_s})
    seed_itl_field: str = "itl_p95_s"  # the seed table's per-token SLO field
    pool_fixed: bool = False  # its compute pool is fixed at start (llama.cpp), not sized from its quota
    threads_env: str | None = None  # the variable a restart path sets its threads by (the lever)
    default_rows: tuple[str, ...] | None = None  # colocation rows by default (None: every row)
    schedule: str = "default.yaml"  # colocation's default schedule (bench/schedules/)
    max_tokens: int = 50  # colocation's tokens per request by default
    grid_quotas: str = "0.5,1,1.5,max"  # colocation's oracle grid by default
    grid_ratios: str = "1:4,1:1,4:1"
    grid_measure_s: float = 60.0  # per grid point and per live re-check

    def check(self, model: str | None = None) -> None:
        """Raise EngineUnavailable when this engine cannot start ``model`` (its first) here."""
        self.start(None, model=model or self.models[0], check_only=True)

    def agent_latency(self, server_url: str) -> dict:
        """The agent's [service.latency] table for a server at ``server_url``."""
        doc = {"metrics_url": f"{server_url}/metrics", "flavor": self.flavor}
        if self.probe:
            doc["probe_url"] = server_url
        return doc

    def agent_threads(self, threads: str) -> dict:
        """The agent's [service.threads] for a server started with ``--threads threads``: a fact
        about the server, not tuning (the restart path is added by the row that allows it)."""
        if not self.pool_fixed:
            return {"pool": "follows-quota"}
        return {"count": int(threads), "pool": "fixed"}

    def slo_for(self, model: str) -> Slo:
        return self.slo.get(model) or next(iter(self.slo.values()))

    def cost_for(self, model: str) -> Cost:
        return self.cost.get(model) or next(iter(self.cost.values()))


# -- gpt2: the reference server ---------------------------------------------------------------------
def start_reference(cg, *, model: str = "gpt2", threads: str = "auto", max_concurrency: int = 2,  # noqa: ANN001
                    log_path: Path | None = None, check_only: bool = False, weights_file: Path | None = None):
    if check_only:
        return None
    return common.start_server(cg, model=model, max_concurrency=max_concurrency, threads=threads,
                               log_path=log_path, weights_file=weights_file)


# Calibration (bench/results/2026-11-23-gpt2-full, quiet 2-vCPU VM, 55 min measured against 57
# estimated; colocation rows from bench/results/2026-12-02-coloc-learned-hold: 3 rows x 300 s,
# one server start, 941.5 s = 35 + 3 x (300 + 2.2), so ~2 s per row beyond its schedule).
_GPT2_SEED = {
    "alone": (2.2, 1.35),
    "contended": (3.0, 1.95),
    "static": (4.6, 4.8),
    "static+psi": (4.6, 4.2),  # the seed's gate drops requests after 10 retries at c>=4
    "gate": (4.8, 4.7),
    "autotune": (2.3, 1.9),
    "static-seed-threads": (8.0, 8.0),  # ~1.8x static (the brief: 4.49 s vs 2.49 s, 2 vs 1 thread)
    "oracle": (2.4, 1.6),  # 1-1.5 cores or all of them at high weight
}
TINY_FACTOR = 0.05  # the tiny preset per request against GPT-2 (seed-table --quick runs)

GPT2 = Engine(
    name="gpt2",
    doc="the reference server (autotune workload serve): GPT-2 124M, or the tiny preset",
    models=("gpt2", "tiny"),
    start=start_reference,
    static_threads=lambda ncpu: "auto",
    flavor="auto",
    # 4 s = two request-service times alone; 0.15 s per token ~ reading speed (bench/METHOD.md)
    slo={"gpt2": Slo(ttft_p95_s=4.0, itl_p95_s=0.15), "tiny": Slo(ttft_p95_s=2.0, itl_p95_s=0.25)},
    seed_slo_itl={"gpt2": 0.1, "tiny": 0.05},
    cost={
        "gpt2": Cost(start_s=35.0, drain_s=3.0, s_per_request=_GPT2_SEED,
                     source="bench/results/2026-11-23-gpt2-full (seed table), "
                            "2026-12-02-coloc-gpt2 and -learned-hold (colocation)"),
        "tiny": Cost(start_s=15.0, drain_s=2.0,
                     s_per_request={k: (a * TINY_FACTOR, b * TINY_FACTOR) for k, (a, b) in _GPT2_SEED.items()},
                     source="GPT-2's figures x 0.05 (seed-table --quick runs)"),
    },
    # tiny, 8 tokens: ~0.05 CPU s per request (bench.capacity), TTFT ~0.03 s alone; 0.2 s leaves
    # a request room to wait for about two ahead of it, 0.05 s per token is about a CFS throttle
    # gap under the 0.5-core quota (bench/schedules/dense.yaml has the sums)
    dense=Dense(model="tiny", max_tokens=8, schedule="dense.yaml", slo=Slo(ttft_p95_s=0.2, itl_p95_s=0.05)),
    maps_weights_file=True,
)


# -- llamacpp ---------------------------------------------------------------------------------------
def start_llamacpp(cg, *, model: str = "llama60m", threads: str = "2", max_concurrency: int = 2,  # noqa: ANN001
                   log_path: Path | None = None, check_only: bool = False):
    """llama.cpp's ``llama-server`` in ``cg`` through the harness (``autotune workload serve
    --engine llamacpp``, which execs the cached build: the cgroup's process is llama-server);
    ``model`` a GGUF preset of the cache (``llama60m``, ``tiny``), ``threads`` its ``--threads``,
    ``max_concurrency`` its ``-np`` slots. ``check_only``: EngineUnavailable, with the command
    that fixes it, when the build or the model is not in the cache."""
    if check_only:
        llamacpp_missing(model)
        return None
    return common.start_server(cg, engine="llamacpp", model=model, max_concurrency=max_concurrency,
                               threads=threads, log_path=log_path)


def llamacpp_missing(model: str = "llama60m") -> None:
    """EngineUnavailable naming what is missing (the build for this CPU, the GGUF) and the
    command that makes it; nothing when both are in the cache."""
    from autotune.errors import WorkloadError
    from autotune.workload.cache import cache_root
    from autotune.workload.llamacpp import build, gguf

    root = cache_root()
    if build.find_build(root, build.cpu_key()) is None:
        raise EngineUnavailable(f"llama-server is not built for this CPU under {root}: run `autotune workload "
                                "llamacpp build` (about 15 minutes on 2 quiet cores)")
    try:
        gguf.resolve_model(root, model)
    except WorkloadError as err:
        raise EngineUnavailable(str(err)) from None


# Calibration: /work/shared/LLAMACPP-NOTES.md (60M random-weight GGUF, 50 tokens per request,
# measured 2026-12-07 on this 2-vCPU VM; not a committed bench run): --threads 2 alone 0.39 s per
# request; --threads 1 beside the neighbour 0.92 s, under a 0.5-core quota 1.70 s; --threads 2
# under a 0.5-core quota 3.79 s (reps differ 2-6x). Two slots (-np 2) about halve s/request at c>=2.
_LLAMA_SEED = {
    "alone": (0.39, 0.25),
    "contended": (0.92, 0.6),
    "static": (3.8, 3.8),  # the worst common case: --threads 2 under 0.5 core
    "static+psi": (3.8, 3.8),
    "gate": (3.8, 3.8),
    "autotune": (1.7, 1.2),
    "oracle": (0.92, 0.6),
}

LLAMACPP = Engine(
    name="llamacpp",
    server_engine="llamacpp",
    doc="llama.cpp's llama-server with the offline 60M random-weight GGUF (issue 21, item 1), or the tiny one",
    models=("llama60m", "tiny"),
    start=start_llamacpp,
    # the worst common case: a pool of every core, started under the 0.5-core quota
    static_threads=lambda ncpu: str(ncpu),
    flavor="llamacpp",
    probe=True,  # its page has counters, no histograms: TTFT and e2e quantiles come from a probe
    # 16 tokens per request, dense windows (bench/schedules/llamacpp.yaml has the sums): --threads 1
    # serves one in ~0.15 s beside the neighbour; TTFT 0.5 s leaves room to wait for about two
    # ahead of it, 0.05 s per token is about one CFS throttle gap under the 0.5-core quota
    slo={"llama60m": Slo(ttft_p95_s=0.5, itl_p95_s=0.05), "tiny": Slo(ttft_p95_s=0.5, itl_p95_s=0.05)},
    seed_slo_itl={"llama60m": 0.025, "tiny": 0.025},
    cost={"llama60m": Cost(start_s=6.0, drain_s=2.0, s_per_request=_LLAMA_SEED,
                           source="seed table: /work/shared/LLAMACPP-NOTES.md (2026-12-07); colocation: "
                                  "bench.capacity --engine llamacpp (2026-12-07, shared machine); no committed run"),
          "tiny": Cost(start_s=3.0, drain_s=1.0,
                       s_per_request={k: (a * 0.1, b * 0.1) for k, (a, b) in _LLAMA_SEED.items()},
                       source="the 60M model's figures x 0.1 (--quick runs)")},
    # the default schedule is already dense (>= 15 requests per 10-s window): --dense is the same run
    dense=Dense(model="llama60m", max_tokens=16, schedule="llamacpp.yaml", slo=Slo(ttft_p95_s=0.5, itl_p95_s=0.05)),
    grid_threads=lambda ncpu: ["1", str(ncpu)] if ncpu > 1 else ["1"],
    # its page measures the mean time per token only; TTFT p95 comes from the probe. A mean of half
    # the per-token p95 target leaves room for the throttle gaps a p95 sees (bench/METHOD.md)
    agent_slo=lambda slo: {"ttft_p95_s": slo.ttft_p95_s, "itl_mean_s": round(slo.itl_p95_s / 2, 6)},
    seed_itl_field="itl_mean_s",
    pool_fixed=True,
    threads_env="LLAMA_ARG_THREADS",  # llama-server's own variable for --threads
    default_rows=("contended", "static", "autotune", "autotune-learned", "oracle"),
    schedule="llamacpp.yaml",
    max_tokens=16,
    grid_quotas="0.5,1,max",
    grid_ratios="1:1,4:1",
    grid_measure_s=30.0,
)

ENGINES: dict[str, Engine] = {e.name: e for e in (GPT2, LLAMACPP)}


def get(name: str) -> Engine:
    try:
        return ENGINES[name]
    except KeyError:
        raise SystemExit(f"--engine {name!r}: choose from {sorted(ENGINES)}") from None


def preflight(engine: Engine, model: str | None = None) -> int | None:
    """Why a benchmark cannot start here, logged, as its exit status (2); None when it can:
    it needs root (it makes cgroups and moves processes into them) and a usable engine."""
    if os.geteuid() != 0:
        common.log("needs root: it creates cgroups and moves processes into them")
        return 2
    try:
        engine.check(model)
    except EngineUnavailable as why:
        common.log(f"--engine {engine.name}: {why}")
        return 2
    return None


def ncpu() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# -- a running server -------------------------------------------------------------------------------
class Server:
    """One engine's server in the bench's server cgroup, restarted only when its thread setting
    changes (the reference server's ``--threads auto`` follows its cgroup's quota while it runs,
    autotune/workload/threads.py; a fixed pool is fixed until a restart), warmed up after each
    start: the first calls in each worker are several times slower (allocations, page faults)
    and are not measured.

    An agent row with the threads lever may restart the server itself, through the restart
    path ``restart_path`` declares (bench/restart_server.py: same cgroup, same port, another
    ``--threads``); ``reclaim`` afterwards stops whatever runs in the cgroup when it is no
    longer the process started here, so the next row starts from its own setting again."""

    def __init__(self, engine: Engine, cg, *, model: str, max_concurrency: int, max_tokens: int,  # noqa: ANN001
                 out: Path, weights_file: Path | None = None) -> None:
        self.engine, self.cg, self.model = engine, cg, model
        self.weights_file = weights_file  # its weights mapped from this file (page cache), or anonymous
        self.max_concurrency, self.max_tokens, self.out = max_concurrency, max_tokens, out
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.threads: str | None = None  # the running server's --threads
        self.starts = 0
        self.reclaims = 0  # servers an agent restarted, stopped after its row

    def busy(self) -> tuple[int, int] | None:
        """(running, waiting) requests, from what the engine exports (llama-server's /health has
        no queue: its /metrics gauges); None when it does not answer."""
        return get_server_engine(self.engine.server_engine).busy(self.url)

    def ensure(self, threads: str) -> str:
        """Running with ``--threads threads`` (set the cgroup's allocation first); warm. Its URL."""
        if self.proc is not None and self.proc.poll() is None:
            if threads == self.threads:
                return self.url
            common.log(f"server: restarting with --threads {threads} (was {self.threads})")
            self.stop()
        self.starts += 1
        self.proc, self.url = self.engine.start(
            self.cg, model=self.model, threads=threads, max_concurrency=self.max_concurrency,
            log_path=self.out / f"server_{self.starts}.log",
            **({"weights_file": self.weights_file} if self.weights_file is not None else {}))
        self.threads = threads
        workers = self.max_concurrency
        asyncio.run(run_load(LoadSpec(url=self.url, requests=2 * workers, concurrency=workers,
                                      max_tokens=self.max_tokens)))
        return self.url

    def wait_idle(self, timeout_s: float = 120.0) -> None:
        """Until nothing runs or waits in the server (cancelled requests still cost a token)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            b = self.busy()
            if b is not None and b == (0, 0):
                return
            if b is None and self.cg is not None and not self.cg.pids():
                return  # no server at all (a restart the agent's stop cut short): nothing to drain
            time.sleep(0.5)
        common.log("server: still busy after the drain; going on")

    def restart_path(self, env_file: Path, log_path: Path) -> dict:
        """The [service.threads] restart path for the running server (env_file + env +
        restart_command): bench/restart_server.py stops what runs in the server's cgroup and
        starts the same server command with the file's thread count, in the same cgroup, on the
        same port, and returns once it serves."""
        if self.engine.threads_env is None or self.proc is None:
            raise ValueError(f"the {self.engine.name} server has no threads lever")
        eng = get_server_engine(self.engine.server_engine)
        port = int(self.url.rsplit(":", 1)[1])
        argv = common.autotune_argv(*eng.serve_args(port=port, model=self.model, threads="{threads}",
                                                    max_concurrency=self.max_concurrency))
        cmd = [sys.executable, str(Path(__file__).resolve().parent / "restart_server.py"),
               "--env-file", str(env_file), "--env", self.engine.threads_env,
               "--default-threads", str(self.threads), "--health", f"{self.url}{eng.health_path}",
               "--log", str(log_path)]
        for d in dict.fromkeys(self.cg.dirs.values()):
            cmd += ["--cgroup", d]
        return {"env_file": str(env_file), "env": self.engine.threads_env, "restart_command": cmd + ["--", *argv]}

    def reclaim(self) -> bool:
        """After a row whose agent may have restarted the server: True (and everything in the
        cgroup stopped) when what runs there is no longer the process started here."""
        ours = self.proc is not None and self.proc.poll() is None
        if ours and not (self.cg.pids() - {self.proc.pid}):
            return False
        common.log("server: restarted by the agent during the row; stopping it (the next row starts its own)")
        self.reclaims += 1
        self.stop()
        return True

    def stop(self) -> None:
        """Stop the server started here and anything else left in its cgroup (a server the
        agent's restart path started is not our child)."""
        if self.proc is not None:
            common.stop(self.proc)
            self.proc = None
        if self.cg is not None:
            common.stop_cgroup(self.cg)
        self.threads = None
