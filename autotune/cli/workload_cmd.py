"""`autotune workload serve|load|noise`: the reference GPT-2 service, its load and a neighbour.

torch/transformers are imported only inside `serve`, so `autotune --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from autotune.cli.common import positive_seconds

workload_app = typer.Typer(help="Reference GPT-2 workload: server, load generator, noisy neighbour.",
                           no_args_is_help=True)


@workload_app.command("serve")
def serve_cmd(
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Listen port.")] = 8000,
    model: Annotated[str, typer.Option(help="Model preset: gpt2 (124M) or tiny.")] = "gpt2",
    threads: Annotated[str, typer.Option(help="torch intra-op threads, or 'auto' = min(affinity "
                                         "cpus, floor(cgroup cpu quota) or 1).")] = "auto",
    max_concurrency: Annotated[int, typer.Option("--max-concurrency", "--max-batch", min=1,
                                                 help="Sequences generated at once.")] = 2,
    max_queue: Annotated[int, typer.Option(min=0, help="Waiting requests before 503 (0 = unbounded).")] = 0,
    log_level: Annotated[str, typer.Option(help="uvicorn / server log level.")] = "info",
    weights_file: Annotated[Optional[Path], typer.Option(
        help="Map the weights from this file (written first if missing): page cache the kernel may "
             "evict under memory pressure, as llama.cpp maps its GGUF (default: anonymous memory).")] = None,
) -> None:
    """Serve GPT-2 (random weights) on an OpenAI-compatible /v1/completions with /metrics."""
    from autotune.cli.common import fail, require_extra

    n: int | None = None
    if threads != "auto":
        try:
            n = int(threads)
        except ValueError:
            fail(f"--threads must be 'auto' or a positive integer, got {threads!r}")
        if n is None or n < 1:
            fail(f"--threads must be 'auto' or a positive integer, got {threads!r}")
    require_extra("workload", what="workload serve")
    from autotune.workload.server import serve
    from autotune.workload.model import PRESETS

    if model not in PRESETS:
        fail(f"--model must be one of {sorted(PRESETS)}, got {model!r}")
    if weights_file is not None and not weights_file.parent.is_dir():
        fail(f"--weights-file {weights_file}: {weights_file.parent} is not a directory")
    serve(host=host, port=port, model=model, threads=n, max_concurrency=max_concurrency,
          max_queue=max_queue, log_level=log_level, weights_file=weights_file)


@workload_app.command("load")
def load_cmd(
    url: Annotated[str, typer.Option(help="Server base URL (gate or server).")] = "http://127.0.0.1:8000",
    requests: Annotated[int, typer.Option(min=1, help="Total requests.")] = 20,
    concurrency: Annotated[int, typer.Option(min=1, help="Concurrent clients (closed loop).")] = 1,
    mix: Annotated[str, typer.Option(help="'seed' (8 short prompts, max_tokens 50) or 'varied'.")] = "seed",
    max_tokens: Annotated[int, typer.Option(min=1, help="max_tokens for the seed mix.")] = 50,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.7,
    stream: Annotated[bool, typer.Option(help="Use SSE streaming (measures TTFT).")] = False,
    max_retries: Annotated[int, typer.Option(min=0, help="503 retries before counting rejected.")] = 10,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Per-request CSV output.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling / mix seed.")] = 0,
) -> None:
    """Send requests, print a JSON summary (p50/p95/p99 end-to-end, deferred, rejected)."""
    import asyncio

    from autotune.cli.common import fail, print_json
    from autotune.workload.load import LoadSpec, run_load, summarize, write_csv

    if mix not in ("seed", "varied"):
        fail(f"--mix must be 'seed' or 'varied', got {mix!r}")
    spec = LoadSpec(url=url, requests=requests, concurrency=concurrency, mix=mix,  # type: ignore[arg-type]
                    max_tokens=max_tokens, temperature=temperature, stream=stream,
                    max_retries=max_retries, seed=seed)
    results = asyncio.run(run_load(spec))
    if csv_path:
        write_csv(results, csv_path)
    print_json(summarize(results).model_dump())


@workload_app.command("noise")
def noise_cmd(
    cpu: Annotated[int, typer.Option(min=0, help="CPU burner processes.")] = 2,
    mem_mib: Annotated[int, typer.Option(min=0, help="Memory hog size in MiB (0 = none).")] = 0,
    mem_rewrite: Annotated[bool, typer.Option(help="Keep re-writing the hog's pages.")] = False,
    stream_mib: Annotated[int, typer.Option(min=0, help="Page-cache streamer: write a file of N MiB, then "
                                            "read it in a loop (0 = none).")] = 0,
    stream_dir: Annotated[Optional[Path], typer.Option(help="Directory for the streamer's file "
                                                       "(default: the temp dir).")] = None,
    duration: Annotated[Optional[float], typer.Option(
        callback=positive_seconds, help="Seconds to run (default: until killed).")] = None,
    interval: Annotated[float, typer.Option(callback=positive_seconds, help="Report every N seconds.")] = 1.0,
    json_path: Annotated[Optional[Path], typer.Option("--json-file", help="Keep a JSON report here.")] = None,
) -> None:
    """Noisy neighbour: burn CPU / hold memory / stream a file through the page cache, print ops/s
    as JSON lines."""
    from autotune.workload.noise import NoiseSpec, run_noise

    run_noise(NoiseSpec(cpu_workers=cpu, mem_mib=mem_mib, mem_rewrite=mem_rewrite, stream_mib=stream_mib,
                        stream_dir=str(stream_dir) if stream_dir else None, duration_s=duration, interval_s=interval,
                        json_path=str(json_path) if json_path else None))


def register(app: typer.Typer) -> None:
    app.add_typer(workload_app, name="workload")
