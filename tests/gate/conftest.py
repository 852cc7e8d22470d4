"""A fake OpenAI-compatible upstream and a uvicorn-in-a-thread runner (always stopped)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


class ServerThread:
    """Run an ASGI app on 127.0.0.1:<ephemeral> in a daemon thread."""

    def __init__(self, app) -> None:
        cfg = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class Upstream:
    delay_s: float = 0.05  # non-stream: total; stream: between chunks
    chunks: int = 3
    inflight: int = 0
    max_inflight: int = 0
    calls: int = 0
    finished: int = 0  # streams that sent every chunk (not cut short by the client)
    chunk_sent_at: list[float] = field(default_factory=list)  # time.monotonic() of each SSE chunk
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self) -> None:
        with self.lock:
            self.calls += 1
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)

    def leave(self) -> None:
        with self.lock:
            self.inflight -= 1


def fake_openai_app(up: Upstream) -> FastAPI:
    app = FastAPI()

    def completion(model: str, text: str) -> dict:
        return {"id": "cmpl-1", "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "fake", "object": "model", "created": 0, "owned_by": "t"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        model = body.get("model", "fake")
        up.enter()
        if not body.get("stream"):
            try:
                await asyncio.sleep(up.delay_s)
                return JSONResponse(completion(model, f"echo:{body.get('prompt')}"))
            finally:
                up.leave()

        async def events():
            try:
                for i in range(up.chunks):
                    if i:
                        await asyncio.sleep(up.delay_s)
                    up.chunk_sent_at.append(time.monotonic())
                    yield f"data: {json.dumps(completion(model, f'tok{i}'))}\n\n"
                yield "data: [DONE]\n\n"
                with up.lock:
                    up.finished += 1
            finally:
                up.leave()

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture
def upstream():
    up = Upstream()
    srv = ServerThread(fake_openai_app(up)).start()
    up.url = srv.url  # type: ignore[attr-defined]
    try:
        yield up
    finally:
        srv.stop()


@pytest.fixture
def run_app():
    """Start ASGI apps in threads; all stopped at teardown."""
    started: list[ServerThread] = []

    def start(app) -> ServerThread:
        s = ServerThread(app).start()
        started.append(s)
        return s

    yield start
    for s in reversed(started):
        s.stop()
