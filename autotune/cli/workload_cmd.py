"""`autotune workload serve|load|noise|llamacpp`: the reference services (our GPT-2 server, or
llama.cpp's llama-server), their load and a neighbour.

torch/transformers are imported only inside `serve` and `llamacpp model`, so `autotune --help`
stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from autotune.cli.common import positive_seconds

workload_app = typer.Typer(help="Reference workloads (GPT-2 server, llama.cpp's llama-server), load "
                           "generator, noisy neighbour.",
                           no_args_is_help=True)


@workload_app.command("serve")
def serve_cmd(
    engine: Annotated[str, typer.Option(help="Server: 'reference' (our GPT-2 server) or 'llamacpp' "
                                        "(llama.cpp's llama-server, built by `workload llamacpp build`).")] = "reference",
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Listen port.")] = 8000,
    model: Annotated[Optional[str], typer.Option(
        help="reference: preset gpt2 (124M, default) or tiny; llamacpp: preset llama60m (default) "
             "or tiny, or a .gguf path.")] = None,
    threads: Annotated[Optional[str], typer.Option(
        help="Compute threads: a number, 'all' (every CPU of the host) or 'auto' (min(affinity cpus, "
             "floor(cgroup cpu quota) or 1)). Default: reference 'auto' (re-fit while it runs), "
             "llamacpp 'all' (fixed at start, as llama.cpp's pool is).")] = None,
    max_concurrency: Annotated[int, typer.Option("--max-concurrency", "--max-batch", min=1,
                                                 help="Sequences generated at once (llamacpp: -np slots).")] = 2,
    max_queue: Annotated[Optional[int], typer.Option(
        min=0, help="reference only: waiting requests before 503 (default 0 = unbounded).")] = None,
    log_level: Annotated[Optional[str], typer.Option(help="reference only: uvicorn / server log level "
                                                     "(default info).")] = None,
    chat_template: Annotated[Optional[Path], typer.Option(
        "--chat-template", help="reference only: Jinja chat template file for /v1/chat/completions "
                                "(default: ChatML-style).")] = None,
    weights_file: Annotated[Optional[Path], typer.Option(
        help="reference only: map the weights from this file (written first if missing): page cache the "
             "kernel may evict under memory pressure, as llama.cpp maps its GGUF (default: anonymous memory).")] = None,
) -> None:
    """Serve OpenAI-compatible /v1/completions and /v1/chat/completions with /metrics: GPT-2
    (random weights) or llama-server."""
    from autotune.cli.common import fail
    from autotune.workload.engines import ENGINES, parse_threads

    if engine not in ENGINES:
        fail(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    try:
        setting = parse_threads(threads) if threads is not None else None
    except ValueError as err:
        fail(str(err))
    if engine == "llamacpp":
        for name, value in (("--max-queue", max_queue), ("--log-level", log_level),
                            ("--chat-template", chat_template), ("--weights-file", weights_file)):
            if value is not None:
                fail(f"{name} applies to the reference engine only (llama-server has no such option here)")
        _exec_llama_server(host=host, port=port, model=model, threads=setting or "all",
                           parallel=max_concurrency)
        return
    _serve_reference(host=host, port=port, model=model or "gpt2", threads=setting or "auto",
                     max_concurrency=max_concurrency, max_queue=max_queue or 0, log_level=log_level or "info",
                     chat_template=chat_template, weights_file=weights_file)


def _serve_reference(*, host: str, port: int, model: str, threads: str | int, max_concurrency: int,
                     max_queue: int, log_level: str, chat_template: Path | None,
                     weights_file: Path | None) -> None:
    from autotune.cli.common import fail, require_extra
    from autotune.workload.engines import host_cpus

    require_extra("workload", what="workload serve")
    from autotune.workload.model import PRESETS
    from autotune.workload.server import serve

    if model not in PRESETS:
        fail(f"--model must be one of {sorted(PRESETS)}, got {model!r}")
    n = host_cpus() if threads == "all" else None if threads == "auto" else int(threads)
    template = None
    if chat_template is not None:
        from autotune.errors import not_utf8

        try:
            template = chat_template.read_text()
        except UnicodeDecodeError as err:
            fail(not_utf8(chat_template, err))
        except OSError as err:
            fail(f"--chat-template {chat_template}: cannot read ({err.strerror})")
    if weights_file is not None and not weights_file.parent.is_dir():
        fail(f"--weights-file {weights_file}: {weights_file.parent} is not a directory")
    serve(host=host, port=port, model=model, threads=n, max_concurrency=max_concurrency,
          max_queue=max_queue, log_level=log_level, chat_template=template, weights_file=weights_file)


def _exec_llama_server(*, host: str, port: int, model: str | None, threads: str | int, parallel: int) -> None:
    """Replace this process by the cached llama-server (same pid: the harness's process, its
    cgroup and its signals are llama-server's own). 'auto' is chosen here, once, in the cgroup."""
    import os
    import sys

    from autotune.cli.common import fail
    from autotune.errors import WorkloadError
    from autotune.workload.cache import cache_root
    from autotune.workload.engines import get_engine, host_cpus
    from autotune.workload.llamacpp import build, gguf
    from autotune.workload.threads import auto_threads

    root = cache_root()
    binary = build.find_build(root, build.cpu_key())
    if binary is None:
        fail(f"llama-server is not built for this CPU under {root}: run `autotune workload llamacpp build` "
             "(15 minutes on 2 cores, over an hour when they are busy)")
    try:
        model_path = gguf.resolve_model(root, model or gguf.DEFAULT_PRESET)
    except WorkloadError as err:
        fail(str(err))
    if threads == "all":
        n, why = host_cpus(), "every CPU of the host"
    elif threads == "auto":
        choice = auto_threads()
        n, why = choice.threads, choice.reason
    else:
        n, why = int(threads), "fixed by --threads"
    name = model or gguf.DEFAULT_PRESET
    alias = name if name in gguf.PRESETS else model_path.stem  # the model id /v1/models reports
    argv = get_engine("llamacpp").server_argv(str(binary), str(model_path), threads=n, parallel=parallel,
                                              listen=host, port=port, alias=alias)
    print(f"autotune: llama-server with {n} thread(s) ({why}): {' '.join(argv)}", file=sys.stderr, flush=True)
    os.execv(argv[0], argv)


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


llamacpp_app = typer.Typer(help="llama.cpp's llama-server, built and fed offline into the cache "
                           "($AUTOTUNE_CACHE, else $XDG_CACHE_HOME/autotune, else ~/.cache/autotune).",
                           no_args_is_help=True)
workload_app.add_typer(llamacpp_app, name="llamacpp")


@llamacpp_app.command("build")
def llamacpp_build_cmd(
    jobs: Annotated[Optional[int], typer.Option(min=1, help="Parallel compile jobs (default: ninja's).")] = None,
) -> None:
    """Fetch the pinned llama.cpp (llama-cpp-python sdist, sha256-checked) and build llama-server
    at nice 19 (15 minutes on 2 cores, over an hour when they are busy); a second run finds it
    and builds nothing."""
    import sys

    from autotune.cli.common import fail, print_json
    from autotune.errors import WorkloadError
    from autotune.workload.cache import cache_root
    from autotune.workload.llamacpp import build

    def started(binary: Path, log: Path) -> None:
        print(f"autotune: building {binary} (about 212 steps at nice 19); log: {log}", file=sys.stderr, flush=True)

    try:
        res = build.build(cache_root(), jobs=jobs, on_start=started)
    except WorkloadError as err:
        fail(str(err))
    print_json(res.model_dump(mode="json"))


@llamacpp_app.command("model")
def llamacpp_model_cmd(
    preset: Annotated[str, typer.Option(help="Shape preset: llama60m (60M parameters, default) or tiny.")] = "llama60m",
    hidden: Annotated[Optional[int], typer.Option(help="Override: hidden size.")] = None,
    layers: Annotated[Optional[int], typer.Option(help="Override: transformer layers.")] = None,
    intermediate: Annotated[Optional[int], typer.Option(help="Override: MLP size.")] = None,
    heads: Annotated[Optional[int], typer.Option(help="Override: attention heads.")] = None,
    vocab: Annotated[Optional[int], typer.Option(help="Override: vocabulary size.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Override: weight seed.")] = None,
) -> None:
    """Generate a random-weight Llama GGUF (f16) offline, converted by llama.cpp's own script;
    cached by its parameters. Prints its path (give it to `workload serve --engine llamacpp --model`)."""
    from autotune.cli.common import fail, print_json, require_extra
    from autotune.errors import WorkloadError
    from autotune.workload.cache import cache_root
    from autotune.workload.llamacpp import gguf

    if preset not in gguf.PRESETS:
        fail(f"--preset must be one of {', '.join(gguf.PRESETS)}, got {preset!r}")
    overrides = {k: v for k, v in (("hidden", hidden), ("layers", layers), ("intermediate", intermediate),
                                   ("heads", heads), ("vocab", vocab), ("seed", seed)) if v is not None}
    try:
        spec = gguf.GgufSpec(**{**gguf.PRESETS[preset].model_dump(), **overrides})
    except ValueError as err:
        fail(f"model shape: {_first_error(err)}")
    if not gguf.gguf_path(cache_root(), spec).is_file():
        require_extra("workload", what="workload llamacpp model")
    try:
        res = gguf.generate(cache_root(), spec)
    except WorkloadError as err:
        fail(str(err))
    print_json({**res.model_dump(mode="json"), "name": spec.name})


def _first_error(err: ValueError) -> str:
    """pydantic's first complaint, on one line."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(p) for p in first.get('loc', ())) or 'spec'}: {first.get('msg')}"
    return str(err).splitlines()[0]


@llamacpp_app.command("paths")
def llamacpp_paths_cmd() -> None:
    """Where the pinned source, the build for this CPU and the models are, and what exists."""
    from autotune.cli.common import print_json
    from autotune.workload.cache import cache_root
    from autotune.workload.llamacpp import build, gguf, source

    root = cache_root()
    key = build.cpu_key()
    print_json({
        "cache": str(root), "llama_cpp_python": source.LLAMA_CPP_PYTHON, "commit": source.LLAMA_CPP_COMMIT,
        "sdist": str(source.sdist_path(root)), "source": str(source.source_dir(root)), "cpu_key": key,
        "binary": str(build.server_binary(root, key)), "built": build.find_build(root, key) is not None,
        "models": {name: {"path": str(p), "present": p.is_file()}
                   for name, p in ((n, gguf.gguf_path(root, s)) for n, s in gguf.PRESETS.items())},
    })


def register(app: typer.Typer) -> None:
    app.add_typer(workload_app, name="workload")
