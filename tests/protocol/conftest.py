"""The reference server (tiny GPT-2) and a gate in front of it, each on a real loopback port."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
openai = pytest.importorskip("openai")

import uvicorn  # noqa: E402

from autotune.gate.core import Gate, GateSettings  # noqa: E402
from autotune.gate.proxy import build_app  # noqa: E402
from autotune.workload.model import Engine, spec_for  # noqa: E402
from autotune.workload.server import create_app  # noqa: E402


class ServerThread:
    """Run an ASGI app on 127.0.0.1:<ephemeral> in a daemon thread; ``stop`` joins it."""

    def __init__(self, app) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(spec_for("tiny"), threads=1)


@pytest.fixture(scope="module")
def server(engine):
    """The workload server: ``.url``, ``.app`` (its metrics and scheduler on ``app.state``)."""
    app = create_app(engine, max_concurrency=2)
    srv = ServerThread(app).start()
    srv.app = app
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def gate(server):
    """A gate (no pressure, fixed limit) in front of the server: ``.url``, ``.gate``."""
    g = Gate(GateSettings(limit=2, threshold_pct=None, adaptive=False), poll_interval_s=0.05)
    srv = ServerThread(build_app(g, server.url)).start()
    srv.gate = g
    yield srv
    srv.stop()


@pytest.fixture(params=["server", "gate"])
def base_url(request, server, gate) -> str:
    """Each protocol case runs against the server directly and through the gate."""
    return server.url if request.param == "server" else gate.url


@pytest.fixture
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0, timeout=60)
