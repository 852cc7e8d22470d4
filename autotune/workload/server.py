"""OpenAI-compatible completions server for the reference GPT-2 workload (FastAPI + uvicorn).

Concurrency is real: a pool of ``max_concurrency`` inference threads, each generating one
request at a time (torch releases the GIL inside its ops, so two sequences do progress in
parallel on two cores). Requests beyond the pool wait in a FIFO and count as *waiting*; with
``max_queue`` > 0, arrivals that find the queue full get 503 + Retry-After. Continuous batching
would use the CPU better but is not needed to create the contention the agent must handle.

Endpoints: POST /v1/completions (stream or not), GET /v1/models, GET /health, GET /metrics.
Server-side timings (unix seconds) of recent requests are kept in ``app.state.records`` and
returned in each non-streamed response under ``timing`` (an extra field OpenAI clients ignore).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from autotune.workload.metrics import ServerMetrics
from autotune.workload.model import Engine, TokenEvent

log = logging.getLogger("autotune.workload.server")


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | list[str] = ""
    max_tokens: int = Field(16, ge=0, le=4096)
    temperature: float = Field(1.0, ge=0, le=10)
    stream: bool = False
    seed: int | None = None


class RequestRecord(BaseModel):
    """Server-side timeline of one request, unix seconds."""

    id: str
    arrived: float
    started: float | None = None
    first_token: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    worker: str | None = None


class Scheduler:
    """Worker pool + waiting/running accounting + metrics around Engine.stream."""

    def __init__(self, engine: Engine, metrics: ServerMetrics, *, max_concurrency: int,
                 max_queue: int = 0, keep_records: int = 10000) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_concurrency = max(1, max_concurrency)
        self.max_queue = max(0, max_queue)
        self.pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="infer")
        self.lock = threading.Lock()
        self.waiting = 0
        self.running = 0
        self.records: deque[RequestRecord] = deque(maxlen=keep_records)

    def full(self) -> bool:
        return self.max_queue > 0 and self.waiting >= self.max_queue

    def _set_gauges(self) -> None:
        self.metrics.labels(self.metrics.waiting).set(self.waiting)
        self.metrics.labels(self.metrics.running).set(self.running)

    def start(self, req: CompletionRequest, prompt: str,
              loop: asyncio.AbstractEventLoop) -> tuple[RequestRecord, asyncio.Queue, threading.Event]:
        """Queue a request; events (TokenEvent, then None; or an Exception) arrive on the queue."""
        rec = RequestRecord(id=f"cmpl-{uuid.uuid4().hex[:24]}", arrived=time.time())
        self.records.append(rec)
        out: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        with self.lock:
            self.waiting += 1
            self._set_gauges()
        self.pool.submit(self._run, req, prompt, rec, out, cancel, loop)
        return rec, out, cancel

    def _run(self, req: CompletionRequest, prompt: str, rec: RequestRecord, out: asyncio.Queue,
             cancel: threading.Event, loop: asyncio.AbstractEventLoop) -> None:
        m = self.metrics
        with self.lock:
            self.waiting -= 1
            self.running += 1
            self._set_gauges()
        rec.started = time.time()
        rec.worker = threading.current_thread().name
        m.labels(m.queue).observe(rec.started - rec.arrived)
        rec.prompt_tokens = len(self.engine.encode(prompt))
        last: float | None = None
        final: Exception | None = None
        try:
            for ev in self.engine.stream(prompt, req.max_tokens, req.temperature, req.seed):
                now = time.time()
                if last is None:
                    rec.first_token = now
                    m.labels(m.ttft).observe(now - rec.arrived)
                else:
                    m.labels(m.tpot).observe(now - last)
                last = now
                rec.completion_tokens += 1
                loop.call_soon_threadsafe(out.put_nowait, ev)
                if cancel.is_set():  # client went away: free the worker
                    break
            rec.finished = time.time()
            m.labels(m.e2e).observe(rec.finished - rec.arrived)
            m.success.labels(model_name=m.model_name, finished_reason="length").inc()
            m.labels(m.prompt_tokens).inc(rec.prompt_tokens)
            m.labels(m.generation_tokens).inc(rec.completion_tokens)
        except Exception as err:  # noqa: BLE001 - report to the client, keep the worker alive
            log.exception("generation failed for %s", rec.id)
            rec.finished = time.time()
            final = err
        finally:
            # Accounting first, then the end-of-stream event: whoever sees the response
            # complete also sees the gauges and counters that include it.
            with self.lock:
                self.running -= 1
                self._set_gauges()
            loop.call_soon_threadsafe(out.put_nowait, final)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _chunk(rec: RequestRecord, model: str, text: str, finish: str | None) -> dict[str, Any]:
    return {
        "id": rec.id, "object": "text_completion", "created": int(rec.arrived), "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
    }


def create_app(engine: Engine, *, max_concurrency: int = 2, max_queue: int = 0,
               retry_after_s: int = 1) -> FastAPI:
    """Build the app around a loaded Engine (the caller picks threads and model size)."""
    model_name = engine.spec.name
    metrics = ServerMetrics(model_name)
    sched = Scheduler(engine, metrics, max_concurrency=max_concurrency, max_queue=max_queue)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202
        yield
        sched.shutdown()

    app = FastAPI(title="autotune GPT-2 workload", lifespan=lifespan)
    app.state.scheduler = sched
    app.state.records = sched.records
    app.state.metrics = metrics

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "threads": engine.threads,
                "max_concurrency": sched.max_concurrency, "running": sched.running,
                "waiting": sched.waiting}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": model_name, "object": "model", "created": 0, "owned_by": "autotune"}]}

    @app.get("/metrics")
    async def prom() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Response:
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            return JSONResponse({"error": {"message": "exactly one prompt per request",
                                           "type": "invalid_request_error"}}, status_code=400)
        if sched.full():
            metrics.labels(metrics.rejected).inc()
            return JSONResponse({"error": {"message": "server queue full, retry later",
                                           "type": "overloaded"}}, status_code=503,
                                headers={"Retry-After": str(retry_after_s)})
        loop = asyncio.get_running_loop()
        rec, queue, cancel = sched.start(req, prompts[0], loop)
        name = req.model or model_name

        if req.stream:
            async def events():
                try:
                    while True:
                        ev = await queue.get()
                        if ev is None:
                            yield f"data: {json.dumps(_chunk(rec, name, '', 'length'))}\n\n"
                            break
                        if isinstance(ev, Exception):
                            err = {"error": {"message": str(ev), "type": "server_error"}}
                            yield f"data: {json.dumps(err)}\n\n"
                            break
                        yield f"data: {json.dumps(_chunk(rec, name, ev.text, None))}\n\n"
                    yield "data: [DONE]\n\n"
                finally:
                    cancel.set()

            return StreamingResponse(events(), media_type="text/event-stream")

        parts: list[TokenEvent] = []
        try:
            while True:
                ev = await queue.get()
                if ev is None:
                    break
                if isinstance(ev, Exception):
                    return JSONResponse({"error": {"message": str(ev), "type": "server_error"}},
                                        status_code=500)
                parts.append(ev)
        finally:
            cancel.set()
        body = _chunk(rec, name, "".join(p.text for p in parts), "length")
        body["usage"] = {"prompt_tokens": rec.prompt_tokens,
                         "completion_tokens": rec.completion_tokens,
                         "total_tokens": rec.prompt_tokens + rec.completion_tokens}
        body["timing"] = rec.model_dump()
        return JSONResponse(body)

    return app


def serve(*, host: str = "127.0.0.1", port: int = 8000, model: str = "gpt2",
          threads: int | None = None, max_concurrency: int = 2, max_queue: int = 0,
          log_level: str = "info") -> None:
    """Load the model and run uvicorn until interrupted. ``threads=None`` means auto."""
    import uvicorn

    from autotune.workload.model import spec_for
    from autotune.workload.threads import auto_threads

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    if threads is None:
        choice = auto_threads()
        threads = choice.threads
        log.info("torch threads: %d (auto: %s; cgroup %s)", threads, choice.reason, choice.cgroup)
    else:
        log.info("torch threads: %d (from --threads)", threads)
    t0 = time.perf_counter()
    engine = Engine(spec_for(model), threads=threads)
    log.info("model %s: %.1fM parameters built in %.1f s; %d workers, max queue %s",
             engine.spec.name, engine.n_params / 1e6, time.perf_counter() - t0,
             max_concurrency, max_queue or "unbounded")
    app = create_app(engine, max_concurrency=max_concurrency, max_queue=max_queue)
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), access_log=False)
