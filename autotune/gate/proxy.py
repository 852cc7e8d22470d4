"""The gate as an HTTP reverse proxy in front of an OpenAI-compatible server.

Every path and method is forwarded (``/gate/*`` is ours), but only inference requests (POST
to a completion / chat / embedding path of OpenAI, TGI or llama.cpp, see ``INFERENCE_PATHS``)
go through admission. Everything else (``GET /metrics`` scrapes, ``/health`` probes,
``/v1/models``) passes straight through: a probe must see the server, not the queue, and its
millisecond latency must not teach the adaptive limiter that the server is fast.

Bodies stream through unbuffered in both directions: the request body is passed to the upstream
as it arrives, never held whole, and refused with 413 once it passes ``max_body_bytes`` (from its
Content-Length before admission, or as a chunked body crosses the limit); response chunks (SSE)
are forwarded as they arrive. The admission slot is held until the response body is finished
or the client goes away. Error bodies are vLLM's ``{"error": {"message", "type", "param",
"code"}}`` with the HTTP status as ``code``. The latency fed to the adaptive limiter is the time from admission to the first
upstream body chunk: the whole generation for non-streamed requests, time-to-first-token for
streamed ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from autotune.gate.core import Gate, GateRejected, Ticket

log = logging.getLogger(__name__)

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
}
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
MAX_BODY_BYTES = 16 << 20  # chat bodies with images run to megabytes; the reference server takes 1 MiB
DRAIN_BYTES = 64 << 20  # read and dropped before a 413 so the kernel does not reset the answer away
# vLLM's error types per status (ErrorResponse.type)
ERROR_TYPES = {400: "BadRequestError", 403: "PermissionDeniedError", 404: "NotFoundError",
               413: "BadRequestError", 502: "BadGatewayError", 503: "ServiceUnavailableError"}
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
# POST paths that run the model: OpenAI (vLLM, llama.cpp, TGI's /v1), TGI native, llama.cpp native.
INFERENCE_PATHS = frozenset({
    "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses",
    "/completions", "/chat/completions", "/embeddings",
    "/generate", "/generate_stream",
    "/completion", "/infill", "/embedding", "/rerank", "/v1/rerank", "/reranking",
})


def is_inference(method: str, path: str, paths: frozenset[str] = INFERENCE_PATHS) -> bool:
    return method == "POST" and (path.rstrip("/") or "/") in paths


def openai_error(status: int, message: str, *, reason: str | None = None, param: str | None = None,
                 retry_after_s: int | None = None) -> JSONResponse:
    """vLLM's error body (``code`` is the status), so OpenAI clients surface the message; the
    gate's own reason (queue_full, timeout, upstream_error...) is the ``X-Autotune-Gate`` header."""
    headers = {} if retry_after_s is None else {"Retry-After": str(retry_after_s)}
    if reason:
        headers["X-Autotune-Gate"] = reason
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "InternalServerError"),
                      "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


class BodyTooLarge(Exception):
    """A request body passed the gate's limit while it streamed to the upstream."""

    def __init__(self, seen: int) -> None:
        super().__init__(f"{seen} bytes")
        self.seen = seen


def control_routes(gate: Gate) -> list[Route]:
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(gate.registry), media_type=CONTENT_TYPE_LATEST)

    async def status(request: Request) -> Response:
        return JSONResponse(gate.status().model_dump())

    async def config(request: Request) -> Response:
        client = request.client.host if request.client else ""
        if client not in LOOPBACK:
            return openai_error(403, f"/gate/config accepts loopback clients only (got {client})",
                                reason="forbidden")
        try:
            body = json.loads(await request.body() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            allowed = {"threshold_pct", "limit", "min_limit", "max_limit", "adaptive", "max_queue",
                       "queue_timeout_s", "min_inflight", "min_threshold_pct", "max_threshold_pct"}
            unknown = set(body) - allowed
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}; allowed {sorted(allowed)}")
            st = gate.configure(**body)
        except (ValueError, TypeError) as err:
            return openai_error(400, f"bad /gate/config request: {err}", reason="bad_config")
        return JSONResponse(st.model_dump())

    return [
        Route("/gate/metrics", metrics, methods=["GET"]),
        Route("/gate/status", status, methods=["GET"]),
        Route("/gate/config", config, methods=["POST"]),
    ]


def build_app(gate: Gate, upstream: str, *, timeout_s: float = 600.0, control: bool = True,
              client: httpx.AsyncClient | None = None,
              inference_paths: frozenset[str] = INFERENCE_PATHS,
              max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
    """The proxy app. ``control=False`` leaves /gate/* to a separate control listener."""

    def too_large(size: int, *, declared: bool) -> JSONResponse:
        what = "declares" if declared else "is at least"
        return openai_error(413, f"autotune gate: request body {what} {size} bytes, over the gate's limit of "
                                 f"{max_body_bytes} bytes", reason="body_too_large", param="body")

    async def drain(request: Request, seen: int) -> int:
        """Read and drop the rest of a refused body (up to DRAIN_BYTES), so the 413 arrives."""
        try:
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > DRAIN_BYTES:
                    break
        except Exception:  # noqa: BLE001 - the client went away: nothing left to answer
            pass
        return seen
    state: dict[str, httpx.AsyncClient] = {}

    def http() -> httpx.AsyncClient:
        if "client" not in state:
            state["client"] = client or httpx.AsyncClient(
                base_url=upstream.rstrip("/"),
                timeout=httpx.Timeout(timeout_s, connect=10.0),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            )
        return state["client"]

    async def proxy(request: Request) -> Response:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:  # before taking a slot
            await drain(request, 0)
            return too_large(int(declared), declared=True)
        if not is_inference(request.method, request.url.path, inference_paths):
            gate.passthrough += 1
            return await _forward(request, None)
        try:
            ticket = await gate.acquire()
        except GateRejected as err:
            return openai_error(503, f"autotune gate: {err}", reason=err.reason,
                                retry_after_s=err.retry_after_s)
        try:
            return await _forward(request, ticket)
        except BaseException:
            ticket.release()
            raise

    async def _forward(request: Request, ticket: Ticket | None) -> Response:
        """Forward to upstream; ``ticket`` None = pass-through (no slot, no latency learned)."""
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        if "content-length" in request.headers:  # streamed on with its length, not chunked
            headers.append(("content-length", request.headers["content-length"]))
        url = httpx.URL(path=request.url.path, query=request.url.query.encode())
        body_done = asyncio.Event()

        async def upload():
            seen = 0
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > max_body_bytes:
                    raise BodyTooLarge(seen)
                if chunk:
                    yield chunk
            body_done.set()

        has_body = request.method not in ("GET", "HEAD", "OPTIONS") or "content-length" in request.headers \
            or "transfer-encoding" in request.headers
        if not has_body:
            body_done.set()
        req = http().build_request(request.method, url, headers=headers, content=upload() if has_body else None)
        sending = asyncio.ensure_future(http().send(req, stream=True))
        left = asyncio.ensure_future(_client_gone(request, body_done))
        try:
            await asyncio.wait({sending, left}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            left.cancel()
            if not sending.done():  # the client left before the upstream answered (or we are
                sending.cancel()  # cancelled): closing the upstream connection aborts it there too
                await asyncio.gather(sending, return_exceptions=True)
        if sending.cancelled():
            if ticket is not None:
                ticket.release()
            return Response(status_code=499)  # nobody is listening
        try:
            resp = sending.result()
        except BodyTooLarge as err:
            if ticket is not None:
                ticket.release()
            return too_large(await drain(request, err.seen), declared=False)
        except httpx.HTTPError as err:
            if ticket is not None:
                ticket.release()
            return openai_error(502, f"autotune gate: upstream {upstream} failed: {type(err).__name__}: {err}",
                                reason="upstream_error")

        async def body():
            first = True
            try:
                async for chunk in resp.aiter_raw():
                    if first and ticket is not None:
                        ticket.first_byte_s = gate.clock() - ticket.admitted_at
                    first = False
                    yield chunk
            finally:
                await close()

        async def close() -> None:
            await resp.aclose()
            if ticket is None or ticket.released:
                return
            if resp.status_code < 500:
                gate.observe_upstream(first_byte_s=ticket.first_byte_s,
                                      total_s=gate.clock() - ticket.admitted_at)
            ticket.release(latency_s=ticket.first_byte_s if resp.status_code < 500 else None)

        out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
        if "content-length" in resp.headers:
            out_headers["content-length"] = resp.headers["content-length"]
        return _GatedStream(body(), on_close=close, status_code=resp.status_code, headers=out_headers)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        if "client" in state and client is None:
            await state["client"].aclose()

    routes = control_routes(gate) if control else []
    routes.append(Route("/{path:path}", proxy, methods=METHODS))
    return Starlette(routes=routes, lifespan=lifespan)


async def _client_gone(request: Request, body_done: asyncio.Event) -> None:
    """Return when the client disconnects; listens only once its body has been streamed on
    (before that, the body's own reads see a disconnect)."""
    await body_done.wait()
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _GatedStream(StreamingResponse):
    """A streaming response that always frees its admission slot, however it ends (body done,
    client gone before the first chunk, send error): the generator's own ``finally`` does not
    run if the body was never started."""

    def __init__(self, content, *, on_close, **kw) -> None:
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


def build_control_app(gate: Gate) -> Starlette:
    return Starlette(routes=control_routes(gate))
