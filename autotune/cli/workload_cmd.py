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
    chat_template: Annotated[Optional[Path], typer.Option(
        "--chat-template", help="Jinja chat template file for /v1/chat/completions (default: ChatML-style).")] = None,
) -> None:
    """Serve GPT-2 (random weights) on OpenAI-compatible /v1/completions and /v1/chat/completions
    with /metrics."""
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
    template = None
    if chat_template is not None:
        from autotune.errors import not_utf8

        try:
            template = chat_template.read_text()
        except UnicodeDecodeError as err:
            fail(not_utf8(chat_template, err))
        except OSError as err:
            fail(f"--chat-template {chat_template}: cannot read ({err.strerror})")
    serve(host=host, port=port, model=model, threads=n, max_concurrency=max_concurrency,
          max_queue=max_queue, log_level=log_level, chat_template=template)


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
    """Send requests, print a JSON summary (p50/p95/p99 end-to-end, deferred, rejected).

    Exit 1 with the reason on stderr when requests failed; SIGINT/SIGTERM stop it with the
    summary of what finished (exit 130 / 143)."""
    import asyncio
    import signal

    from autotune.cli.common import fail, print_json
    from autotune.workload.load import LoadSpec, failure_reason, run_load_until_signalled, summarize, write_csv

    if mix not in ("seed", "varied"):
        fail(f"--mix must be 'seed' or 'varied', got {mix!r}")
    spec = LoadSpec(url=url, requests=requests, concurrency=concurrency, mix=mix,  # type: ignore[arg-type]
                    max_tokens=max_tokens, temperature=temperature, stream=stream,
                    max_retries=max_retries, seed=seed)
    results, signum = asyncio.run(run_load_until_signalled(spec))
    if csv_path:
        write_csv(results, csv_path)
    print_json(summarize(results).model_dump())
    why = failure_reason(results, url)
    if signum is not None:
        name = signal.Signals(signum).name
        typer.secho(f"autotune: workload load: stopped by {name} after {len(results)} of {requests} requests"
                    + (f"; {why}" if why else ""), fg="red", err=True)
        raise typer.Exit(128 + signum)
    if why:
        fail(f"workload load: {why}", code=1)


@workload_app.command("noise")
def noise_cmd(
    cpu: Annotated[int, typer.Option(min=0, help="CPU burner processes.")] = 2,
    mem_mib: Annotated[int, typer.Option(min=0, help="Memory hog size in MiB (0 = none).")] = 0,
    mem_rewrite: Annotated[bool, typer.Option(help="Keep re-writing the hog's pages.")] = False,
    duration: Annotated[Optional[float], typer.Option(
        callback=positive_seconds, help="Seconds to run (default: until killed).")] = None,
    interval: Annotated[float, typer.Option(callback=positive_seconds, help="Report every N seconds.")] = 1.0,
    json_path: Annotated[Optional[Path], typer.Option("--json-file", help="Keep a JSON report here.")] = None,
) -> None:
    """Noisy neighbour: burn CPU / hold memory, print ops/s as JSON lines."""
    from autotune.workload.noise import NoiseSpec, run_noise

    run_noise(NoiseSpec(cpu_workers=cpu, mem_mib=mem_mib, mem_rewrite=mem_rewrite,
                        duration_s=duration, interval_s=interval,
                        json_path=str(json_path) if json_path else None))


def register(app: typer.Typer) -> None:
    app.add_typer(workload_app, name="workload")
