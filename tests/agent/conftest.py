"""Shared pieces for agent tests: a writable fixture host, a tiny rule pack that always proposes
one sysctl change, a fake clock and a synthetic PSI writer (the sensors read the fixture files,
so the whole sample -> evaluate -> apply -> verify path runs unchanged)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from autotune.config import Config
from autotune.host import Host
from tests.fixtures.hosts import writable_copy

SWAPPINESS = "/proc/sys/vm/swappiness"

RULES = """
symptoms:
  - name: cpu_pressure
    metric: psi.cpu.some.avg10
    op: ">"
    on: 5
    for_s: 0
    clear_for_s: 0
rules:
  - name: test-lower-swappiness
    scope: host
    priority: 50
    cooldown_s: 0
    rationale: test rule (host PSI {metric:psi.cpu.some.avg10} %)
    when:
      all: [{symptom: cpu_pressure}]
    actions:
      - knob: sysctl
        target: vm.swappiness
        value: 10
        bounds: {min: 1, max: 100}
"""


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Psi:
    """Writes /proc/pressure/cpu with a cumulative total growing at ``pct`` % of wall time."""

    def __init__(self, root: Path, seed: int = 1, noise: float = 2.0) -> None:
        self.path = root / "proc/pressure/cpu"
        self.total = 70_000_000
        self.rng = random.Random(seed)
        self.noise = noise  # +- percentage points per tick

    def tick(self, dt_s: float, pct: float) -> None:
        share = max(0.0, pct + self.rng.uniform(-self.noise, self.noise)) / 100
        self.total += int(dt_s * 1e6 * share)
        self.path.write_text(
            f"some avg10={pct:.2f} avg60={pct:.2f} avg300={pct:.2f} total={self.total}\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")


def itl_reading(itl: float, le: tuple[float, ...], *, spread: tuple[float, float], n: int = 40):
    """One second of a simulated service's metrics page as the latency sensor reads it: ``n``
    tokens whose inter-token latencies spread over itl x [lo, lo + width) (``spread``), so the
    quantiles do not all fall in one bucket, as a vLLM ITL histogram with bounds ``le``."""
    from autotune.types import Buckets, LatencyReading

    lo, width = spread
    counts = [0.0] * (len(le) + 1)
    for i in range(n):
        v = itl * (lo + width * i / n)
        counts[next((k for k, b in enumerate(le) if v <= b), len(le))] += 1
    return LatencyReading(source="vllm:plant", ok=True, requests=1, tokens=n, itl_samples=n, running=2,
                          waiting=0, hist={"itl": Buckets(le=le, counts=tuple(counts), sum=itl * n)})


def run_plant(agent, clock: Clock, plant, seconds: int) -> None:
    """One simulated second at a time: the plant (a simulated service) moves, then the agent
    samples, evaluates and verifies, each stage guarded as the daemon runs it."""
    for _ in range(seconds):
        clock.t += 1
        plant.tick()
        for stage in (agent.sample, agent.evaluate, agent.verify):
            agent.guarded(stage.__name__, stage)


@pytest.fixture
def host_root(tmp_path) -> Path:
    return writable_copy("hybrid-local", tmp_path)


@pytest.fixture
def rules_dir(tmp_path) -> Path:
    d = tmp_path / "rules"
    d.mkdir()
    (d / "test.yaml").write_text(RULES)
    return d


def make_cfg(tmp_path: Path, rules_dir: Path, **verification) -> Config:
    v = {"window_s": 20, "settle_s": 2, "rule_cooldown_s": 0, "knob_cooldown_s": 0, **verification}
    return Config.model_validate({
        "agent": {"sample_period_s": 1, "window_s": 10, "evaluate_every_s": 1, "mode": "apply",
                  "state_path": str(tmp_path / "state.db"), "rule_dirs": [str(rules_dir)],
                  "metrics_listen": None},
        "verification": v,
    })


def host(root: Path, writable: bool = True) -> Host:
    return Host(root, writable=writable)


class CannedHttp:
    """A loopback HTTP server answering GET/POST paths with fixed bodies; records what it served."""

    def __init__(self, routes: dict[tuple[str, str], bytes]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.hits: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                if method == "POST":
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.hits.append((method, self.path))
                body = routes.get((method, self.path))
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def do_GET(self):  # noqa: N802 - http.server's name
                self._answer("GET")

            def do_POST(self):  # noqa: N802
                self._answer("POST")

            def log_message(self, *args):
                pass

        self._srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._srv.server_address[1]}"
        threading.Thread(target=self._srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._srv.shutdown()
        self._srv.server_close()


@pytest.fixture
def canned_http():
    servers: list[CannedHttp] = []

    def make(routes: dict[tuple[str, str], bytes]) -> CannedHttp:
        servers.append(CannedHttp(routes))
        return servers[-1]

    yield make
    for s in servers:
        s.close()
