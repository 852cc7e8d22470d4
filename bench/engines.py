"""The inference engines the benchmarks run, as one small spec each: how to start the server in
its cgroup, how the agent reads its latency, its SLO defaults, what the rows start it with,
and what a request costs (for ``--estimate``).

``bench.colocation --engine NAME`` and ``bench.seed_table --engine NAME`` take everything
engine-specific from here; nothing else in bench/ names an engine.

- ``gpt2``: the reference server (``autotune workload serve``, GPT-2 124M or the ``tiny``
  preset), ``--threads auto`` (its torch threads follow its cpu quota), a histogram metrics
  page the agent reads directly.
- ``llamacpp``: llama.cpp's ``llama-server`` with the offline random-weight GGUF (issue 21,
  item 1). Its thread pool is fixed at start, so every row starts it from the worst common case
  (``--threads`` = all cores, under the static 0.5-core quota). **Not connected yet**: the
  harness's llama.cpp start is being added on the ``llama`` branch; ``start_llamacpp`` below is
  the one place to connect it (see ``SEAM(llamacpp)``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

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
    """The dense-window scenario of an engine (bench/README.md, "Dense windows", has the sums)."""

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

    def check(self) -> None:
        """Raise EngineUnavailable when this engine cannot start here."""
        self.start(None, check_only=True)

    def agent_latency(self, server_url: str) -> dict:
        """The agent's [service.latency] table for a server at ``server_url``."""
        doc = {"metrics_url": f"{server_url}/metrics", "flavor": self.flavor}
        if self.probe:
            doc["probe_url"] = server_url
        return doc

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
    # 4 s = two request-service times alone; 0.15 s per token ~ reading speed (bench/README.md)
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
def start_llamacpp(cg, *, model: str = "llama-60m", threads: str = "2", max_concurrency: int = 2,  # noqa: ANN001
                   log_path: Path | None = None, check_only: bool = False):
    """SEAM(llamacpp): start ``llama-server`` in ``cg`` through the harness and return
    (process, base URL), as ``common.start_server`` does for the reference server.

    The llama.cpp engine (pinned build in a cache outside the repo, the offline GGUF,
    ``autotune workload serve --engine llamacpp`` in a cgroup) is being added to
    autotune/workload/harness.py on the ``llama`` branch. To connect it after merging: call the
    harness's llama.cpp start here with ``model`` (the GGUF preset), ``threads`` (its
    ``--threads``), ``max_concurrency`` (``-np``) and ``log_path``, and let ``check_only`` raise
    EngineUnavailable with the harness's own reason when the build or the model is missing.
    tests/bench/test_bench_engines.py holds the seam's contract.
    """
    raise EngineUnavailable(
        "the llama.cpp engine is not connected to the benchmarks yet: bench/engines.py "
        "start_llamacpp (SEAM(llamacpp)) waits for the harness's llama.cpp start (issue 21, item 1)")


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
    doc="llama.cpp's llama-server with the offline 60M random-weight GGUF (issue 21, item 1)",
    models=("llama-60m",),
    start=start_llamacpp,
    # the worst common case: a pool of every core, started under the 0.5-core quota
    static_threads=lambda ncpu: str(ncpu),
    flavor="llamacpp",
    probe=True,  # its page has counters, no histograms: TTFT and e2e quantiles come from a probe
    # 0.39 s per 50-token request alone: TTFT 1 s / ITL 0.05 s leave ~2.5x its alone figures
    slo={"llama-60m": Slo(ttft_p95_s=1.0, itl_p95_s=0.05)},
    seed_slo_itl={"llama-60m": 0.05},
    cost={"llama-60m": Cost(start_s=10.0, drain_s=2.0, s_per_request=_LLAMA_SEED,
                            source="/work/shared/LLAMACPP-NOTES.md (measured 2026-12-07, no committed run)")},
    dense=Dense(model="llama-60m", max_tokens=16, schedule="dense-llamacpp.yaml",
                slo=Slo(ttft_p95_s=0.5, itl_p95_s=0.05)),  # first estimates: see the schedule file
    grid_threads=lambda ncpu: ["1", str(ncpu)] if ncpu > 1 else ["1"],
)

ENGINES: dict[str, Engine] = {e.name: e for e in (GPT2, LLAMACPP)}


def get(name: str) -> Engine:
    try:
        return ENGINES[name]
    except KeyError:
        raise SystemExit(f"--engine {name!r}: choose from {sorted(ENGINES)}") from None


def preflight(engine: Engine) -> int | None:
    """Why a benchmark cannot start here, logged, as its exit status (2); None when it can:
    it needs root (it makes cgroups and moves processes into them) and a usable engine."""
    if os.geteuid() != 0:
        common.log("needs root: it creates cgroups and moves processes into them")
        return 2
    try:
        engine.check()
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
    and are not measured."""

    def __init__(self, engine: Engine, cg, *, model: str, max_concurrency: int, max_tokens: int,  # noqa: ANN001
                 out: Path, weights_file: Path | None = None) -> None:
        self.engine, self.cg, self.model = engine, cg, model
        self.weights_file = weights_file  # its weights mapped from this file (page cache), or anonymous
        self.max_concurrency, self.max_tokens, self.out = max_concurrency, max_tokens, out
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.threads: str | None = None  # the running server's --threads
        self.starts = 0

    def health(self) -> dict:
        try:
            return httpx.get(f"{self.url}/health", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return {}

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
            h = self.health()
            if h and not h.get("running") and not h.get("waiting"):
                return
            time.sleep(0.5)
        common.log("server: still busy after the drain; going on")

    def stop(self) -> None:
        if self.proc is not None:
            common.stop(self.proc)
            self.proc = None
