"""Closed-loop load generator for an OpenAI-style /v1/completions endpoint (httpx, asyncio).

``concurrency`` client tasks each send one request at a time until ``requests`` are done.
Latency is END TO END on the client clock: from the first send attempt to the last byte of the
final answer, so queueing in the server, admission deferrals and 503 retries are all included
(the seed measured inside the server and missed them).

A 503 (admission gate or full server queue) is honoured: wait Retry-After (capped), retry, at
most ``max_retries`` times; a request that got any 503 counts as *deferred*, one that ran out
of retries as *rejected*. An optional ``admit`` hook (async, returns (admitted, deferrals)) lets
a benchmark put a client-side admission policy (the seed's PSI gate) in front of each attempt.
"""

from __future__ import annotations

import asyncio
import csv
import json
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

import httpx
import numpy as np
from pydantic import BaseModel, Field

# The seed research's mix: 8 short English prompts (20-41 characters), cycled.
SEED_PROMPTS = [
    "Write a short story about a robot",
    "Explain quantum computing in simple terms",
    "What are the benefits of exercise?",
    "Describe the process of photosynthesis",
    "How does the internet work?",
    "What is machine learning?",
    "Explain the water cycle",
    "Why is the sky blue?",
]

Mix = Literal["seed", "varied"]
Outcome = Literal["ok", "rejected", "error"]
# Client-side admission: returns (admitted, times deferred before deciding).
AdmitHook = Callable[[], Awaitable[tuple[bool, int]]]

NO_RESPONSE_PAUSE_S = 0.2  # a client whose request got no response waits this long before its next

CSV_COLUMNS = ["index", "prompt_chars", "max_tokens", "status", "outcome", "latency_s",
               "ttft_s", "retries", "completion_tokens", "started_unix", "finished_unix", "error"]


class LoadSpec(BaseModel):
    url: str = "http://127.0.0.1:8000"
    requests: int = Field(20, ge=1)
    concurrency: int = Field(1, ge=1)
    mix: Mix = "seed"
    max_tokens: int = Field(50, ge=1)  # seed mix; the varied mix picks its own
    temperature: float = 0.7
    stream: bool = False
    model: str | None = None
    max_retries: int = Field(10, ge=0)
    retry_cap_s: float = Field(5.0, gt=0)  # never wait longer than this per Retry-After
    timeout_s: float = Field(600.0, gt=0)
    seed: int = 0


class RequestResult(BaseModel):
    index: int
    prompt_chars: int
    max_tokens: int
    status: int  # last HTTP status; 0 = no response (connection error, timeout)
    outcome: Outcome
    latency_s: float  # client end-to-end, including deferrals and retries
    ttft_s: float | None = None  # streamed requests only
    retries: int = 0  # 503s honoured (or admission deferrals)
    completion_tokens: int = 0
    started_unix: float
    finished_unix: float
    error: str = ""


class LoadSummary(BaseModel):
    requests: int
    ok: int
    deferred: int  # requests that were held back at least once, whatever their end
    rejected: int
    errors: int
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    wall_s: float
    ok_per_s: float


def build_requests(spec: LoadSpec) -> list[tuple[str, int]]:
    """(prompt, max_tokens) for each request: deterministic for a given spec.seed."""
    if spec.mix == "seed":
        return [(SEED_PROMPTS[i % len(SEED_PROMPTS)], spec.max_tokens) for i in range(spec.requests)]
    rng = random.Random(spec.seed)
    text = " ".join(SEED_PROMPTS) + " "
    out = []
    for _ in range(spec.requests):
        chars = rng.choice([24, 120, 480])
        prompt = (text * (chars // len(text) + 1))[:chars]
        out.append((prompt, rng.choice([16, 50, 128])))
    return out


def _retry_after(resp: httpx.Response, cap_s: float) -> float:
    try:
        return min(cap_s, max(0.0, float(resp.headers.get("retry-after", "1"))))
    except ValueError:
        return min(cap_s, 1.0)


async def _one(client: httpx.AsyncClient, spec: LoadSpec, index: int, prompt: str,
               max_tokens: int, admit: AdmitHook | None) -> RequestResult:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": spec.temperature,
            "stream": spec.stream, "seed": spec.seed * 100003 + index}
    if spec.stream:
        body["stream_options"] = {"include_usage": True}
    if spec.model:
        body["model"] = spec.model
    started, t0 = time.time(), time.perf_counter()
    retries, status, ttft, tokens, err = 0, 0, None, 0, ""

    def result(outcome: Outcome) -> RequestResult:
        return RequestResult(index=index, prompt_chars=len(prompt), max_tokens=max_tokens,
                             status=status, outcome=outcome, latency_s=time.perf_counter() - t0,
                             ttft_s=ttft, retries=retries, completion_tokens=tokens,
                             started_unix=started, finished_unix=time.time(), error=err)

    while True:
        if admit is not None:
            admitted, deferrals = await admit()
            retries += deferrals
            if not admitted:
                err = f"dropped by admission after {deferrals} deferrals"
                return result("rejected")
        try:
            if spec.stream:
                async with client.stream("POST", "/v1/completions", json=body) as resp:
                    status = resp.status_code
                    if status == 200:
                        async for line in resp.aiter_lines():
                            if not line.startswith("data: ") or line == "data: [DONE]":
                                continue
                            chunk = json.loads(line[6:])
                            if "error" in chunk:
                                err = str(chunk["error"])[:200]
                                return result("error")
                            if chunk.get("usage"):  # the include_usage chunk: exact count
                                tokens = int(chunk["usage"].get("completion_tokens", tokens))
                            elif chunk.get("choices"):  # one chunk per token (vLLM)
                                tokens += 1
                                if ttft is None:
                                    ttft = time.perf_counter() - t0
                        return result("ok")
                    await resp.aread()
            else:
                resp = await client.post("/v1/completions", json=body)
                status = resp.status_code
                if status == 200:
                    tokens = int(resp.json().get("usage", {}).get("completion_tokens", 0))
                    return result("ok")
        except (httpx.HTTPError, json.JSONDecodeError, KeyError) as e:
            status, err = 0, f"{type(e).__name__}: {e}"[:200]
            return result("error")
        if status != 503:
            err = f"HTTP {status}: {resp.text[:200]}"
            return result("error")
        if retries >= spec.max_retries:
            err = f"503 after {retries} retries"
            return result("rejected")
        retries += 1
        await asyncio.sleep(_retry_after(resp, spec.retry_cap_s))


async def run_load(spec: LoadSpec, *, admit: AdmitHook | None = None,
                   on_result: Callable[[RequestResult], None] | None = None,
                   transport: httpx.AsyncBaseTransport | None = None) -> list[RequestResult]:
    """Send all requests with ``spec.concurrency`` clients; results sorted by index.

    ``transport`` replaces the network (tests pass httpx.MockTransport or ASGITransport).
    """
    work = list(enumerate(build_requests(spec)))
    work.reverse()  # pop() from the end keeps submission order
    results: list[RequestResult] = []
    limits = httpx.Limits(max_connections=spec.concurrency + 2)
    async with httpx.AsyncClient(base_url=spec.url, timeout=spec.timeout_s, limits=limits,
                                 transport=transport) as client:
        async def worker() -> None:
            while work:
                index, (prompt, max_tokens) = work.pop()
                r = await _one(client, spec, index, prompt, max_tokens, admit)
                results.append(r)
                if on_result:
                    on_result(r)
                if r.outcome == "error" and r.status == 0:  # no server: do not spin on refusals
                    await asyncio.sleep(NO_RESPONSE_PAUSE_S)

        await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    return sorted(results, key=lambda r: r.index)


async def run_load_until_signalled(spec: LoadSpec, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
                                   ) -> tuple[list[RequestResult], int | None]:
    """``run_load`` that a signal in ``signals`` stops: the requests in flight are cancelled and
    the results so far returned with the signal's number (None when all requests ran).

    The handlers are installed even where the shell ignores SIGINT (a job started with ``&``),
    so ``kill -INT`` and Ctrl-C after ``fg`` stop it with a summary.
    """
    loop = asyncio.get_running_loop()
    got: list[int] = []
    results: list[RequestResult] = []
    task = asyncio.ensure_future(run_load(spec, on_result=results.append))

    def stop(signum: int) -> None:
        got.append(signum)
        task.cancel()

    for sig in signals:
        loop.add_signal_handler(sig, stop, sig)
    try:
        try:
            return await task, None
        except asyncio.CancelledError:
            if not got:
                raise
            return sorted(results, key=lambda r: r.index), got[0]
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def failure_reason(results: list[RequestResult], url: str) -> str | None:
    """One line on why requests failed (count, the most common error), None when none did."""
    failed = [r for r in results if r.outcome == "error"]
    if not failed:
        return None
    common = Counter(r.error.split(":")[0] or f"HTTP {r.status}" for r in failed).most_common(1)[0][0]
    first = next(r.error for r in failed if (r.error.split(":")[0] or f"HTTP {r.status}") == common)
    first = " ".join(first.split())[:160]  # an error page's HTML is not one line
    return f"{len(failed)} of {len(results)} requests to {url} failed; most often {first}"


def write_csv(results: list[RequestResult], path: str | Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in results:
            w.writerow({k: ("" if v is None else v) for k, v in r.model_dump().items()})


def percentiles(latencies: list[float]) -> tuple[float | None, float | None, float | None]:
    """p50/p95/p99 with numpy's default (linear) method, as the seed's tables used."""
    if not latencies:
        return None, None, None
    p = np.percentile(np.asarray(latencies), [50, 95, 99])
    return float(p[0]), float(p[1]), float(p[2])


def summarize(results: list[RequestResult]) -> LoadSummary:
    ok = [r.latency_s for r in results if r.outcome == "ok"]
    p50, p95, p99 = percentiles(ok)
    wall = (max((r.finished_unix for r in results), default=0.0)
            - min((r.started_unix for r in results), default=0.0))
    return LoadSummary(
        requests=len(results), ok=len(ok),
        deferred=sum(1 for r in results if r.retries > 0),
        rejected=sum(1 for r in results if r.outcome == "rejected"),
        errors=sum(1 for r in results if r.outcome == "error"),
        p50_s=p50, p95_s=p95, p99_s=p99, wall_s=wall,
        ok_per_s=len(ok) / wall if wall > 0 else 0.0,
    )
