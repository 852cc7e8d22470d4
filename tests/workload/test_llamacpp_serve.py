"""End to end on the real llama-server (marked llamacpp): the cached build serves the tiny GGUF in
a cgroup this test creates, through the same harness call the benchmarks use; a streamed
completion arrives token by token (our load client and the benchmark's open-loop client both
count them), and the agent's scraper reads the window off the real /metrics page."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from autotune.host import Host
from autotune.sensors.latency import LatencyScraper
from autotune.workload import harness
from autotune.workload.cache import cache_root
from autotune.workload.engines import get_engine
from autotune.workload.llamacpp import build, gguf
from autotune.workload.load import LoadSpec, run_load

REPO = Path(__file__).resolve().parents[2]
BINARY = build.find_build(cache_root(), build.cpu_key())
TINY = gguf.gguf_path(cache_root(), gguf.PRESETS["tiny"])
CAN_MAKE_TINY = TINY.is_file() or all(importlib.util.find_spec(m) for m in ("torch", "transformers", "tokenizers"))

pytestmark = [
    pytest.mark.llamacpp, pytest.mark.realkernel, pytest.mark.root, pytest.mark.slow,
    pytest.mark.skipif(BINARY is None, reason=f"llama-server is not built in {cache_root()}: "
                                               "run `autotune workload llamacpp build`"),
    pytest.mark.skipif(not CAN_MAKE_TINY, reason="no tiny GGUF and no workload extra to make it"),
    pytest.mark.skipif(os.geteuid() != 0, reason="creates cgroups: needs root"),
    pytest.mark.skipif(not Path("/sys/fs/cgroup").is_dir(), reason="no cgroup filesystem"),
]

MAX_TOKENS = 24


def test_llama_server_in_its_own_cgroup_streams_and_exports_metrics(tmp_path):
    model = gguf.generate(cache_root(), gguf.PRESETS["tiny"]).path  # cached after the first run
    host = Host("/", writable=True)
    cg = harness.RoleCgroup(host, f"autotune-test-llama-{os.getpid()}/server")
    try:
        proc, url = harness.start_server(cg, engine="llamacpp", model=str(model), threads="1",
                                         max_concurrency=2, log_path=tmp_path / "server.log")
        assert proc.pid in cg.pids()  # exec'd in place: the cgroup's process is llama-server itself
        assert Path(f"/proc/{proc.pid}/exe").resolve() == BINARY.resolve()
        scraper = LatencyScraper(f"{url}/metrics", get_engine("llamacpp").metrics_flavor)
        first = scraper.sample(now=time.time())
        assert first.ok, first.error

        results = asyncio.run(run_load(LoadSpec(url=url, requests=2, concurrency=2, stream=True,
                                                max_tokens=MAX_TOKENS)))
        assert [r.outcome for r in results] == ["ok", "ok"], [r.error for r in results]
        assert all(r.completion_tokens == MAX_TOKENS for r in results)  # --ignore-eos: never short
        assert all(r.ttft_s is not None and 0 < r.ttft_s < r.latency_s for r in results)

        sys.path.insert(0, str(REPO))
        from bench.openloop import RequestRecord, stream_one

        async def one() -> RequestRecord:
            rec = RequestRecord(index=0, phase=0, arrival_s=0.0)
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                await stream_one(client, rec, clock=time.monotonic, max_tokens=MAX_TOKENS, seed=1, admit=None)
            return rec

        rec = asyncio.run(one())
        assert rec.outcome == "ok", rec.error
        assert len(rec.token_s) == MAX_TOKENS  # one timestamp per generated token: gaps are ITL
        assert get_engine("llamacpp").busy(url) == (0, 0)

        win = scraper.sample(now=time.time())
        assert win.ok and win.source.startswith("llamacpp:"), win.error
        assert win.tokens == 3 * MAX_TOKENS
        assert win.itl_mean_s is not None and 0 < win.itl_mean_s < 5
        assert win.running == 0 and win.waiting == 0
        assert win.p95_s is None and win.itl_p95_s is None  # no histograms on this server's page
        scraper.close()
    finally:
        harness.cleanup()
    assert not any(host.exists(d) for d in cg.dirs.values())
