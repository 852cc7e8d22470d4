"""Noisy neighbour: CPU burner processes and a memory hog that report their own throughput.

A fair benchmark must show what a tuning action costs the neighbour, not just what it gains
the LLM service, so the burners count work units (one "op" = SHA-256 of a 16 KiB block, about
10-20 us of one core) and the reporter prints ops/s every ``interval_s`` as a JSON line on
stdout and keeps a JSON summary file up to date (written atomically).

The memory hog allocates ``mem_mib`` MiB and touches every page (so it is resident, not just
reserved); with ``mem_rewrite`` it keeps re-writing them, which keeps them hot and makes
reclaim expensive. The streamer (``stream_mib``) writes a file of that size once and then reads
it end to end, again and again, through the page cache: a file larger than the free memory
makes the kernel evict other cgroups' file pages (a server's code, libraries, mapped weights),
the interference a CPU weight cannot stop. The file is removed on exit. Children inherit the
parent's cgroups: place the parent first.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

from pydantic import BaseModel, Field

OP_BLOCK = 16 * 1024
PAGE = 4096
BATCH = 64  # ops between counter updates (keeps shared-memory traffic negligible)


class NoiseSpec(BaseModel):
    cpu_workers: int = Field(2, ge=0)
    mem_mib: int = Field(0, ge=0)
    mem_rewrite: bool = False
    stream_mib: int = Field(0, ge=0)  # page-cache streamer: file size in MiB (0 = none)
    stream_dir: str | None = None  # where its file goes (default: the temp dir)
    duration_s: float | None = Field(None, gt=0)  # None: until SIGTERM / SIGINT
    interval_s: float = Field(1.0, gt=0)
    json_path: str | None = None


class NoiseReport(BaseModel):
    ts: float  # unix seconds
    elapsed_s: float
    cpu_workers: int
    ops_total: int
    ops_per_s: float  # mean since start
    ops_per_s_last: float  # over the last interval
    mem_mib: int
    mem_resident: bool  # all pages touched at least once
    mem_passes: int  # full write passes over the hog's memory
    stream_mib_total: int = 0  # MiB the streamer read (0 without one)
    final: bool = False


def _burn(counter, stop) -> None:  # noqa: ANN001 - mp.Value / mp.Event
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    block = os.urandom(OP_BLOCK)
    n = 0
    while not stop.is_set():
        for _ in range(BATCH):
            block = hashlib.sha256(block).digest() * (OP_BLOCK // 32)
        n += BATCH
        counter.value = n


def _hog(mib: int, rewrite: bool, passes, stop) -> None:  # noqa: ANN001
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _first_to_go()
    buf = bytearray(mib * 1024 * 1024)
    value = 1
    while True:
        for off in range(0, len(buf), PAGE):
            buf[off] = value
        passes.value += 1
        if not rewrite:
            break
        value = (value % 255) + 1
        if stop.is_set():
            return
    stop.wait()


def _first_to_go() -> None:
    """The hog is the OOM killer's first choice (oom_score_adj 1000): on a host without swap
    a hog sized near the memory must never take a real process down with it. Best effort (a
    process may raise its own score without privileges)."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


STREAM_CHUNK = 1 << 20


def _stream(path: str, mib: int, counter, stop) -> None:  # noqa: ANN001
    """Write ``mib`` MiB to ``path`` (incompressible, so no filesystem shortcut), then read it
    sequentially in a loop, counting MiB read; remove it when stopped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        block = os.urandom(STREAM_CHUNK)
        with open(path, "wb") as f:
            for _ in range(mib):
                if stop.is_set():
                    return
                f.write(block)
        while not stop.is_set():
            with open(path, "rb", buffering=0) as f:
                while not stop.is_set() and f.read(STREAM_CHUNK):
                    counter.value += 1
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def _write_json(path: str, report: NoiseReport) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(report.model_dump_json(indent=2))
    os.replace(tmp, path)


def run_noise(spec: NoiseSpec, *, echo: bool = True) -> NoiseReport:
    """Run burners and hog until duration or SIGTERM/SIGINT; return the final report."""
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    counters = [ctx.Value("Q", 0, lock=False) for _ in range(spec.cpu_workers)]
    passes = ctx.Value("Q", 0, lock=False)
    streamed = ctx.Value("Q", 0, lock=False)
    procs = [ctx.Process(target=_burn, args=(c, stop), daemon=True) for c in counters]
    if spec.mem_mib:
        procs.append(ctx.Process(target=_hog, args=(spec.mem_mib, spec.mem_rewrite, passes, stop),
                                 daemon=True))
    if spec.stream_mib:
        import tempfile

        stream_path = os.path.join(spec.stream_dir or tempfile.gettempdir(), f"autotune-noise-stream-{os.getpid()}.bin")
        procs.append(ctx.Process(target=_stream, args=(stream_path, spec.stream_mib, streamed, stop), daemon=True))
    stopping = False

    def on_signal(_sig, _frm) -> None:  # noqa: ANN001
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    start = time.perf_counter()
    last_t, last_ops = start, 0
    report: NoiseReport | None = None
    for p in procs:
        p.start()
    try:
        while True:
            deadline = last_t + spec.interval_s
            if spec.duration_s is not None:
                deadline = min(deadline, start + spec.duration_s)
            while not stopping and time.perf_counter() < deadline:
                time.sleep(min(0.05, max(0.0, deadline - time.perf_counter())))
            now = time.perf_counter()
            ops = sum(c.value for c in counters)
            done = stopping or (spec.duration_s is not None and now - start >= spec.duration_s)
            report = NoiseReport(
                ts=time.time(), elapsed_s=now - start, cpu_workers=spec.cpu_workers,
                ops_total=ops, ops_per_s=ops / max(now - start, 1e-9),
                ops_per_s_last=(ops - last_ops) / max(now - last_t, 1e-9),
                mem_mib=spec.mem_mib, mem_resident=passes.value > 0, mem_passes=passes.value,
                stream_mib_total=streamed.value, final=done,
            )
            last_t, last_ops = now, ops
            if echo:
                print(report.model_dump_json(), flush=True)
            if spec.json_path:
                _write_json(spec.json_path, report)
            if done:
                return report
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=1)
        for s, h in old.items():
            signal.signal(s, h)
