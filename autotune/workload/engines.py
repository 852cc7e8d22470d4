"""The inference servers the harness can start, and what differs between them.

- ``reference``: our GPT-2 server (``autotune workload serve``). Its torch threads follow the
  cgroup quota while it runs (``--threads auto``), it exports vLLM-named histograms, and /health
  reports its thread count and queue.
- ``llamacpp``: llama.cpp's ``llama-server`` (``autotune workload serve --engine llamacpp``, which
  execs the cached binary, so the process in the cgroup is llama-server itself). Its compute
  pool is fixed at start (``--threads``, default every CPU of the host: what a user who copies
  the usual command line gets, and the worst case under a small quota); its /metrics page has
  counters and gauges only (latency flavor ``llamacpp``).

Both answer ``GET /health`` with 200 once they serve (llama-server: 503 while loading the model)
and both speak OpenAI ``/v1/completions`` with SSE streaming. An engine is a small frozen object:
the ``autotune`` arguments that start it, its thread choice, its metrics flavor and how to read
how busy it is.
"""

from __future__ import annotations

import math
import os
from typing import ClassVar

import httpx

from autotune.workload.llamacpp.gguf import DEFAULT_PRESET

THREADS_HELP = ("compute threads: a number, 'all' (every CPU of the host) or 'auto' "
                "(min(affinity cpus, floor(cgroup cpu quota) or 1))")


def parse_threads(text: str) -> str | int:
    """'all', 'auto' or a positive integer; ValueError naming the value otherwise."""
    if text in ("all", "auto"):
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"--threads must be 'all', 'auto' or a positive integer, got {text!r}")
    return n


def host_cpus() -> int:
    return os.cpu_count() or 1


def threads_at_start(setting: str | int, *, affinity_cpus: int, quota_cores: float | None,
                     cpus: int | None = None) -> int:
    """The thread count ``setting`` gives a server started under that allocation ('auto' is
    ``workload/threads.auto_threads``'s rule; 'all' ignores the allocation)."""
    if setting == "all":
        return cpus or host_cpus()
    if setting == "auto":
        return affinity_cpus if quota_cores is None else max(1, min(affinity_cpus, math.floor(quota_cores)))
    return int(setting)


class ServerEngine:
    name: ClassVar[str]
    metrics_flavor: ClassVar[str]  # the latency sensor's flavor for its /metrics page
    health_path: ClassVar[str] = "/health"  # 200 once it serves
    default_model: ClassVar[str]
    default_threads: ClassVar[str]
    threads_follow_quota: ClassVar[bool]  # True: 'auto' re-fits a changed quota while it runs

    def serve_args(self, *, port: int, model: str | None = None, threads: str | None = None,
                   max_concurrency: int = 2, listen: str = "127.0.0.1") -> list[str]:
        """The ``autotune`` arguments that start this engine (the harness adds the interpreter)."""
        args = ["workload", "serve", "--engine", self.name, "--host", listen, "--port", str(port),
                "--model", model or self.default_model, "--threads", threads or self.default_threads,
                "--max-concurrency", str(max_concurrency)]
        return args + self._extra_args()

    def _extra_args(self) -> list[str]:
        return []

    def compute_threads(self, threads: str | None, *, affinity_cpus: int, quota_cores: float | None) -> int:
        """Compute threads right after a start with ``threads`` under this allocation (for the
        reference engine with 'auto' the count then follows the quota; llama.cpp's stays)."""
        return threads_at_start(parse_threads(threads or self.default_threads),
                                affinity_cpus=affinity_cpus, quota_cores=quota_cores)

    def busy(self, url: str, *, timeout_s: float = 5.0) -> tuple[int, int] | None:
        """(requests running, requests waiting) now; None when the server does not answer."""
        raise NotImplementedError


class ReferenceEngine(ServerEngine):
    name = "reference"
    metrics_flavor = "vllm"
    default_model = "gpt2"
    default_threads = "auto"
    threads_follow_quota = True

    def _extra_args(self) -> list[str]:
        return ["--log-level", "warning"]

    def busy(self, url: str, *, timeout_s: float = 5.0) -> tuple[int, int] | None:
        try:
            h = httpx.get(f"{url}{self.health_path}", timeout=timeout_s).json()
            return int(h["running"]), int(h["waiting"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None


class LlamaCppEngine(ServerEngine):
    name = "llamacpp"
    metrics_flavor = "llamacpp"
    default_model = DEFAULT_PRESET
    default_threads = "all"
    threads_follow_quota = False
    context = 1024  # -c: tokens of KV cache, shared by the -np slots

    def server_argv(self, binary: str, model_path: str, *, threads: int, parallel: int,
                    listen: str = "127.0.0.1", port: int = 8000, alias: str | None = None) -> list[str]:
        """llama-server's own command line. ``--ignore-eos``: a random-weight model would end a
        request at a random EOS; every request generating ``max_tokens`` keeps requests
        comparable, as on the reference server."""
        argv = [binary, "-m", model_path, "--threads", str(threads), "--metrics", "--host", listen,
                "--port", str(port), "-c", str(self.context), "-np", str(parallel), "--ignore-eos"]
        return argv + (["--alias", alias] if alias else [])

    def busy(self, url: str, *, timeout_s: float = 5.0) -> tuple[int, int] | None:
        from autotune.sensors.latency import FLAVORS, parse_page

        spec = FLAVORS[self.metrics_flavor]
        try:
            page = parse_page(httpx.get(f"{url}/metrics", timeout=timeout_s).text)
        except (httpx.HTTPError, ValueError):
            return None
        running, waiting = page.scalar(spec.running), page.scalar(spec.waiting)
        if running is None or waiting is None:
            return None
        return int(running), int(waiting)


ENGINES: dict[str, ServerEngine] = {e.name: e for e in (ReferenceEngine(), LlamaCppEngine())}


def get_engine(name: str) -> ServerEngine:
    try:
        return ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}") from None
