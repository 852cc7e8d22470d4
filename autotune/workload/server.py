"""OpenAI-compatible completions server for the reference GPT-2 workload (FastAPI + uvicorn).

Concurrency is real: a pool of ``max_concurrency`` inference threads, each generating one
request at a time (torch releases the GIL inside its ops, so two sequences do progress in
parallel on two cores). Requests beyond the pool wait in a FIFO and count as *waiting*; with
``max_queue`` > 0, arrivals that find the queue full get 503 + Retry-After. Continuous batching
would use the CPU better but is not needed to create the contention the agent must handle.

The request protocol (limits, errors, n / echo / stop / logprobs / stream_options) is vLLM's,
see protocol.py. Two things protect the event loop, which also serves /metrics to a scraper
with a 2 s timeout: bodies over ``max_body_bytes`` are refused with 413 from their
Content-Length before they are read, and no prompt text longer than the context could hold is
ever tokenized (tokenizing holds the GIL). A client that goes away (stream or not) stops its
generation; the sequence counts ``finished_reason="abort"``.

Each worker applies the ``ThreadFollower``'s intra-op thread count before every request, so
``--threads auto`` follows the cgroup quota and affinity while the server runs.

Endpoints: POST /v1/completions, POST /v1/chat/completions (chat.py: a chat template turns the
messages into one prompt; answers ``chat.completion`` / ``chat.completion.chunk``), GET /v1/models,
GET /health, GET /metrics. Server-side timings
(unix seconds) of recent requests are kept in ``app.state.records`` and returned in each
non-streamed response under ``timing`` (an extra field OpenAI clients ignore).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from autotune.workload import chat
from autotune.workload.metrics import ServerMetrics
from autotune.workload.model import Engine, TokenEvent
from autotune.workload.protocol import (
    APIError,
    CompletionRequest,
    bad_request,
    check_choices,
    input_budget,
    overflow,
    parse_request,
    prompt_list,
    text_overflow,
)
from autotune.workload.threads import ThreadFollower

log = logging.getLogger("autotune.workload.server")

MAX_BODY_BYTES = 1 << 20  # a GPT-2 context is ~4 KB of text; nginx's default body limit


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
    threads: int | None = None  # intra-op threads the worker used


class Prompt(BaseModel):
    """One rendered prompt: token ids that fit the context, and the text ``echo`` returns."""

    ids: list[int]
    text: str


class Delta(BaseModel):
    """New output of one choice: text ready to send, the token behind it, maybe the end."""

    choice: int
    text: str
    token: TokenEvent | None = None
    finish_reason: str | None = None
    stop_reason: str | None = None
    completion_tokens: int = 0  # the request's tokens when this was produced (continuous usage)
    # echo + logprobs: (token id, logprob or None for the first, alternatives) per prompt token
    prompt_logprobs: list[tuple[int, float | None, list[tuple[int, float]]]] | None = None


class Job:
    """One accepted request on its way through the worker pool."""

    def __init__(self, req: CompletionRequest, prompts: list[Prompt], rec: RequestRecord,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.req = req
        self.prompts = prompts
        self.rec = rec
        self.loop = loop
        self.out: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()

    def put(self, item: Delta | Exception | None) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class Scheduler:
    """Worker pool + waiting/running accounting + metrics around Engine.stream_ids."""

    def __init__(self, engine: Engine, metrics: ServerMetrics, *, max_concurrency: int,
                 max_queue: int = 0, keep_records: int = 10000,
                 threads: ThreadFollower | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_concurrency = max(1, max_concurrency)
        self.max_queue = max(0, max_queue)
        self.threads = threads or ThreadFollower(fixed=engine.threads)
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

    def submit(self, req: CompletionRequest, prompts: list[Prompt],
               loop: asyncio.AbstractEventLoop) -> Job:
        """Queue a request; Deltas, then None (or an Exception), arrive on ``job.out``."""
        rec = RequestRecord(id=f"cmpl-{uuid.uuid4().hex[:24]}", arrived=time.time())
        self.records.append(rec)
        job = Job(req, prompts, rec, loop)
        with self.lock:
            self.waiting += 1
            self._set_gauges()
        self.pool.submit(self._run, job)
        return job

    def _run(self, job: Job) -> None:
        m, rec = self.metrics, job.rec
        with self.lock:
            self.waiting -= 1
            self.running += 1
            self._set_gauges()
        rec.started = time.time()
        rec.worker = threading.current_thread().name
        final: Exception | None = None
        try:
            rec.threads = self.threads.apply()
            m.labels(m.queue).observe(rec.started - rec.arrived)
            if job.cancel.is_set():  # the client left while we waited
                m.success.labels(model_name=m.model_name, finished_reason="abort").inc()
            else:
                self._generate(job)
            rec.finished = time.time()
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
            job.put(final)

    def _generate(self, job: Job) -> None:
        import torch

        req, m, rec = job.req, self.metrics, job.rec
        gen = torch.Generator()
        gen.manual_seed((req.seed if req.seed is not None else time.time_ns()) & 0xFFFFFFFFFFFFFFFF)
        stops = req.stops()
        hold = 0 if req.include_stop_str_in_output or not stops else max(map(len, stops)) - 1
        for p_index, prompt in enumerate(job.prompts):
            rec.prompt_tokens += len(prompt.ids)
            plp = None
            if req.echo and req.logprobs is not None:  # one extra forward pass over the prompt
                plp = [(t, v, top) for t, (v, top) in
                       zip(prompt.ids, self.engine.prompt_logprobs(prompt.ids, req.logprobs))]
                m.labels(m.prompt_tokens).inc(len(prompt.ids))
            for k in range(req.n):
                choice = p_index * req.n + k
                first = Delta(choice=choice, text=prompt.text if req.echo else "", prompt_logprobs=plp)
                if req.max_tokens == 0:  # echo only: nothing to generate
                    job.put(first.model_copy(update={"finish_reason": "length"}))
                    m.success.labels(model_name=m.model_name, finished_reason="length").inc()
                    continue
                m.labels(m.prompt_tokens).inc(len(prompt.ids))
                if not self._one_choice(job, first, prompt, stops, hold, gen):
                    m.success.labels(model_name=m.model_name, finished_reason="abort").inc()
                    return

    def _one_choice(self, job: Job, first: Delta, prompt: Prompt, stops: list[str],
                    hold: int, gen: Any) -> bool:
        """Generate one choice; False when the client went away (the caller counts the abort).

        ``first`` (echoed prompt, its logprobs) goes out with the first token's text.
        """
        req, m, rec = job.req, self.metrics, job.rec
        choice = first.choice
        temperature = 1.0 if req.temperature is None else req.temperature
        full, sent, last = "", 0, None
        longest = max(map(len, stops), default=0)
        for ev in self.engine.stream_ids(
                prompt.ids, req.max_tokens or 0, temperature=temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                top_k=0 if req.top_k in (None, -1) else req.top_k,
                logprobs=req.logprobs, generator=gen):
            now = time.time()
            if last is None:
                m.labels(m.ttft).observe(now - rec.arrived)
                if rec.first_token is None:
                    rec.first_token = now
            else:
                m.token_gap(now - last)
            last = now
            m.labels(m.generation_tokens).inc()
            rec.completion_tokens += 1
            full += ev.text
            finish = stop_reason = None
            if stops:
                hit = _first_stop(full, stops, max(0, len(full) - len(ev.text) - longest + 1))
                if hit is not None:
                    pos, stop_reason = hit
                    finish = "stop"
                    full = full[:pos + (len(stop_reason) if req.include_stop_str_in_output else 0)]
            if finish is None and ev.index == (req.max_tokens or 0) - 1:
                finish = "length"
            upto = len(full) if finish else max(sent, len(full) - hold)
            delta = Delta(choice=choice, text=full[sent:upto], token=ev, finish_reason=finish,
                          stop_reason=stop_reason, completion_tokens=rec.completion_tokens)
            if ev.index == 0:
                delta = first.model_copy(update={"text": first.text + delta.text, "token": ev,
                                                 "finish_reason": finish, "stop_reason": stop_reason,
                                                 "completion_tokens": rec.completion_tokens})
            job.put(delta)
            sent = upto
            if finish:
                m.labels(m.e2e).observe(time.time() - rec.arrived)
                m.success.labels(model_name=m.model_name, finished_reason=finish).inc()
                return True
            if job.cancel.is_set():  # client went away: free the worker
                return False
        return True

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _first_stop(text: str, stops: list[str], start: int) -> tuple[int, str] | None:
    """Earliest stop string in ``text[start:]`` as (position, stop)."""
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s, start)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return best


class Logprobs:
    """OpenAI completion logprobs of one choice, built token by token."""

    def __init__(self, engine: Engine, offset: int = 0) -> None:
        self.engine = engine
        self.offset = offset
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []

    def add(self, token_id: int, logprob: float | None, top: list[tuple[int, float]]) -> None:
        text = self.engine.decode_one(token_id)
        self.tokens.append(text)
        self.token_logprobs.append(logprob)
        if logprob is None:
            self.top_logprobs.append(None)
        else:
            alts = {self.engine.decode_one(t): lp for t, lp in top}
            alts.setdefault(text, logprob)
            self.top_logprobs.append(alts)
        self.text_offset.append(self.offset)
        self.offset += len(text)

    def add_delta(self, delta: Delta) -> None:
        for token_id, value, top in delta.prompt_logprobs or ():
            self.add(token_id, value, top)
        if delta.token is not None:
            self.add(delta.token.token_id, delta.token.logprob, delta.token.top_logprobs)

    def body(self) -> dict[str, Any]:
        return {"text_offset": self.text_offset, "token_logprobs": self.token_logprobs,
                "tokens": self.tokens, "top_logprobs": self.top_logprobs}


def render_prompt(engine: Engine, prompt: str | list[int], req: CompletionRequest) -> Prompt:
    """Token ids for one prompt, checked against the context (400s as vLLM words them)."""
    max_len, max_tokens = engine.spec.n_positions, req.max_tokens or 0
    budget = input_budget(max_len, max_tokens)
    keep: int | None = None
    if req.truncate_prompt_tokens is not None:
        keep = budget if req.truncate_prompt_tokens == -1 else req.truncate_prompt_tokens
        if keep > budget:
            raise bad_request(f"truncate_prompt_tokens={keep} cannot be greater than max_model_len - "
                              f"max_tokens = {budget}. Please request a smaller truncation size.",
                              "truncate_prompt_tokens", keep)
        if keep == 0:
            raise bad_request("truncate_prompt_tokens=0 leaves no prompt to complete.",
                              "truncate_prompt_tokens", 0)
    if isinstance(prompt, str):
        if keep is None:
            limit = budget * engine.max_chars_per_token
            if len(prompt) > limit:  # certainly too long: refuse without tokenizing
                raise text_overflow(len(prompt), max_tokens, max_len, limit)
            ids = engine.tokenizer.encode(prompt).ids
        else:
            ids = engine.encode_tail(prompt, keep)
    else:
        bad = next((t for t in prompt if not 0 <= t < engine.spec.vocab_size), None)
        if bad is not None:
            raise bad_request(f"Token id {bad} is out of vocabulary (0..{engine.spec.vocab_size - 1}).",
                              "prompt", bad)
        ids = list(prompt) if keep is None else list(prompt)[-keep:]
    if keep is None and len(ids) > budget:
        raise overflow(len(ids), max_tokens, max_len)
    if not ids:
        raise bad_request("Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
    truncated = keep is not None and isinstance(prompt, str) and len(ids) == keep
    text = prompt if isinstance(prompt, str) and not truncated else engine.decode(ids)
    return Prompt(ids=ids, text=text)


class BodyLimit:
    """ASGI middleware: 413 for request bodies over ``max_bytes``, decided from Content-Length
    before anything is parsed, or as soon as a chunked body passes the limit.

    The rest of the body is read and dropped (up to ``drain_bytes``) before answering: a server
    that closes a connection with unread data in its receive buffer makes the kernel send RST,
    which can destroy the 413 before the client reads it (a proxy in front sees "ReadError").
    Dropping bytes costs the event loop next to nothing; parsing or tokenizing them would not.
    """

    def __init__(self, app: Any, max_bytes: int, drain_bytes: int = 64 << 20) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            size = int(declared) if declared is not None else None
        except ValueError:
            size = None
        if size is not None and size > self.max_bytes:
            await self._drain(receive, 0)
            await _send_error(send, self._too_large(size))
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    total = await self._drain(receive, seen) if msg.get("more_body") else seen
                    raise self._too_large(total)
            return msg

        await self.app(scope, limited, send)

    async def _drain(self, receive: Any, seen: int) -> int:
        while seen <= self.drain_bytes:
            msg = await receive()
            if msg["type"] != "http.request":
                break
            seen += len(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        return seen

    def _too_large(self, size: int) -> APIError:
        return APIError(413, f"request body of {size} bytes is over this server's limit of "
                             f"{self.max_bytes} bytes", param="body")


async def _send_error(send: Any, err: APIError) -> None:
    body = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def create_app(engine: Engine, *, max_concurrency: int = 2, max_queue: int = 0,
               retry_after_s: int = 1, max_body_bytes: int = MAX_BODY_BYTES,
               served_model_names: list[str] | None = None,
               threads: ThreadFollower | None = None, chat_template: str | None = None) -> FastAPI:
    """Build the app around a loaded Engine (the caller picks threads and model size)."""
    names = served_model_names or [engine.spec.name]
    metrics = ServerMetrics(names[0])
    follower = threads or ThreadFollower(fixed=engine.threads)
    metrics.labels(metrics.threads).set(follower.current.threads)
    follower.on_change = lambda c: metrics.labels(metrics.threads).set(c.threads)
    sched = Scheduler(engine, metrics, max_concurrency=max_concurrency, max_queue=max_queue,
                      threads=follower)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202
        yield
        sched.shutdown()

    app = FastAPI(title="autotune GPT-2 workload", lifespan=lifespan)
    app.state.scheduler = sched
    app.state.records = sched.records
    app.state.metrics = metrics

    @app.exception_handler(APIError)
    async def api_error(_request: Request, err: APIError) -> JSONResponse:
        return _error_response(err)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
        first = (err.errors() or [{}])[0]
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return _error_response(bad_request(f"{param or 'request'}: {first.get('msg', 'invalid')}", param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error_response(APIError(err.status_code, str(err.detail)))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": names[0], "threads": follower.current.threads,
                "max_concurrency": sched.max_concurrency, "running": sched.running,
                "waiting": sched.waiting}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": n, "object": "model", "created": 0, "owned_by": "autotune",
             "max_model_len": engine.spec.n_positions} for n in names]}

    @app.get("/metrics")
    async def prom() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        raw = await request.body()
        try:
            data = json.loads(raw)
        except ValueError as err:
            raise bad_request(f"request body is not valid JSON: {err}") from None
        req = parse_request(data)
        if req.model and req.model not in names:
            raise APIError(404, f"The model `{req.model}` does not exist.", param="model")
        texts = prompt_list(req)
        check_choices(len(texts), req.n)
        prompts = [render_prompt(engine, p, req) for p in texts]
        return await _run(req, prompts, req.model or names[0], request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        raw = await request.body()
        try:
            data = json.loads(raw)
        except ValueError as err:
            raise bad_request(f"request body is not valid JSON: {err}") from None
        creq = chat.parse_chat(data)
        if creq.model and creq.model not in names:
            raise APIError(404, f"The model `{creq.model}` does not exist.", param="model")
        text = chat.render(creq, chat_template or chat.DEFAULT_TEMPLATE)
        max_len = engine.spec.n_positions
        limit = creq.output_limit()
        if limit is None:  # vLLM: whatever the context has left after the prompt
            if len(text) > (max_len - 1) * engine.max_chars_per_token:
                raise text_overflow(len(text), 1, max_len, (max_len - 1) * engine.max_chars_per_token)
            limit = max_len - len(engine.tokenizer.encode(text).ids)
            if limit < 1:
                raise overflow(max_len - limit, 1, max_len)
        req = chat.as_completion(creq, text, limit)
        check_choices(1, req.n)
        prompts = [render_prompt(engine, text, req)]
        return await _run(req, prompts, creq.model or names[0], request, chat=True)

    async def _run(req: CompletionRequest, prompts: list[Prompt], name: str, request: Request, *,
                   chat: bool) -> Response:
        if sched.full():
            metrics.labels(metrics.rejected).inc()
            raise APIError(503, "server queue full, retry later", etype="ServiceUnavailableError",
                           headers={"Retry-After": str(retry_after_s)})
        job = sched.submit(req, prompts, asyncio.get_running_loop())
        if req.stream:
            return StreamingResponse(_stream(engine, job, name, chat=chat), media_type="text/event-stream")
        return await _complete(engine, job, name, request, chat=chat)

    if max_body_bytes:
        app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app


def _usage(job: Job, *, completion_tokens: int | None = None) -> dict[str, int]:
    p = job.rec.prompt_tokens
    c = job.rec.completion_tokens if completion_tokens is None else completion_tokens
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _chunk(job: Job, model: str, choices: list[dict[str, Any]], *, obj: str = "text_completion") -> dict[str, Any]:
    rid = job.rec.id if obj == "text_completion" else "chat" + job.rec.id  # chatcmpl-...
    return {"id": rid, "object": obj, "created": int(job.rec.arrived), "model": model, "choices": choices}


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def _stream(engine: Engine, job: Job, model: str, *, chat: bool = False) -> AsyncIterator[str]:
    """SSE chunks: ``text_completion`` ones, or for chat ``chat.completion.chunk`` ones whose
    first per choice carries the role (vLLM's order), then one per token's text."""
    req = job.req
    obj = "chat.completion.chunk" if chat else "text_completion"
    logprobs: dict[int, Logprobs] = {}
    started: set[int] = set()
    try:
        while True:
            ev = await job.out.get()
            if ev is None:
                break
            if isinstance(ev, Exception):
                yield _sse(APIError(500, f"generation failed: {ev}").body())
                yield _sse("[DONE]")
                return
            lp = None
            if req.logprobs is not None:  # each chunk carries the logprobs of its own tokens
                lp = Logprobs(engine, logprobs[ev.choice].offset if ev.choice in logprobs else 0)
                lp.add_delta(ev)
                logprobs[ev.choice] = lp
            if chat:
                if ev.choice not in started:
                    started.add(ev.choice)
                    yield _sse(_chunk(job, model, [{"index": ev.choice, "delta": {"role": "assistant", "content": ""},
                                                    "logprobs": None, "finish_reason": None}], obj=obj))
                choice = {"index": ev.choice, "delta": {"content": ev.text}, "logprobs": None,
                          "finish_reason": ev.finish_reason, "stop_reason": ev.stop_reason}
            else:
                choice = {"index": ev.choice, "text": ev.text, "logprobs": lp.body() if lp else None,
                          "finish_reason": ev.finish_reason, "stop_reason": ev.stop_reason}
            chunk = _chunk(job, model, [choice], obj=obj)
            if req.continuous_usage():  # the count when the token was made, not when it is sent
                chunk["usage"] = _usage(job, completion_tokens=ev.completion_tokens)
            yield _sse(chunk)
        if req.include_usage():
            final = _chunk(job, model, [], obj=obj)
            final["usage"] = _usage(job)
            yield _sse(final)
        yield _sse("[DONE]")
    finally:
        job.cancel.set()  # ended, or the client went away mid-stream (abort)


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _complete(engine: Engine, job: Job, model: str, request: Request, *, chat: bool = False) -> Response:
    """Collect a whole completion; a client that disconnects first aborts the generation."""
    req = job.req
    choices: dict[int, dict[str, Any]] = {}
    logprobs: dict[int, Logprobs] = {}

    async def collect() -> Exception | None:
        while True:
            ev = await job.out.get()
            if ev is None or isinstance(ev, Exception):
                return ev
            c = choices.setdefault(ev.choice, {"index": ev.choice, "text": "", "logprobs": None,
                                               "finish_reason": None, "stop_reason": None})
            c["text"] += ev.text
            c["finish_reason"], c["stop_reason"] = ev.finish_reason, ev.stop_reason
            if req.logprobs is not None:
                logprobs.setdefault(ev.choice, Logprobs(engine)).add_delta(ev)

    collector = asyncio.ensure_future(collect())
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not collector.done():  # the client went away: stop generating, nobody will read
            job.cancel.set()
            collector.cancel()
    if collector.cancelled():
        return Response(status_code=499)
    job.cancel.set()
    err = collector.result()
    if err is not None:
        return _error_response(APIError(500, f"generation failed: {err}"))
    for i, lp in logprobs.items():
        choices[i]["logprobs"] = lp.body()
    if chat:
        body = _chunk(job, model, [{"index": i, "message": {"role": "assistant", "content": c["text"]},
                                    "logprobs": None, "finish_reason": c["finish_reason"],
                                    "stop_reason": c["stop_reason"]} for i, c in sorted(choices.items())],
                      obj="chat.completion")
        body["usage"] = _usage(job)
        return JSONResponse(body)
    body = _chunk(job, model, [choices[i] for i in sorted(choices)])
    body["usage"] = _usage(job)
    body["timing"] = job.rec.model_dump()
    return JSONResponse(body)


def serve(*, host: str = "127.0.0.1", port: int = 8000, model: str = "gpt2",
          threads: int | None = None, max_concurrency: int = 2, max_queue: int = 0,
          log_level: str = "info", max_body_bytes: int = MAX_BODY_BYTES,
          chat_template: str | None = None, weights_file: Path | None = None) -> None:
    """Load the model and run uvicorn until interrupted. ``threads=None`` means auto (followed);
    ``weights_file``: the weights mapped from that file (written first if missing)."""
    import uvicorn

    from autotune.workload.model import spec_for

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    follower = ThreadFollower(fixed=threads)
    c = follower.current
    log.info("torch threads: %d (%s; cgroup %s)", c.threads, c.reason, c.cgroup)
    t0 = time.perf_counter()
    engine = Engine(spec_for(model), threads=c.threads, weights_file=weights_file)
    log.info("model %s: %.1fM parameters built in %.1f s%s; %d workers, max queue %s",
             engine.spec.name, engine.n_params / 1e6, time.perf_counter() - t0,
             f" (mapped from {weights_file})" if weights_file else "", max_concurrency, max_queue or "unbounded")
    app = create_app(engine, max_concurrency=max_concurrency, max_queue=max_queue,
                     max_body_bytes=max_body_bytes, threads=follower, chat_template=chat_template)
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), access_log=False)
