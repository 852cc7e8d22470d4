"""Run the gate under uvicorn: one data listener, optionally a separate control listener."""

from __future__ import annotations

import asyncio

from autotune.errors import ConfigError
from autotune.gate.core import Gate, GateSettings
from autotune.gate.limiter import LimiterConfig
from autotune.gate.pressure import PressureSource
from autotune.host import Host


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:8100' / '[::1]:8100' / ':8100' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ConfigError(f"listen address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8100")
    try:
        p = int(port)
    except ValueError as err:
        raise ConfigError(f"listen address {text!r}: port {port!r} is not a number") from err
    if not 0 <= p <= 65535:
        raise ConfigError(f"listen address {text!r}: port out of range")
    return (host.strip("[]") or "127.0.0.1"), p


def make_gate(*, host: Host, pressure: str = "system", threshold_pct: float | None = 40.0, limit: int = 4,
              min_limit: int = 1, max_limit: int = 64, max_queue: int = 64, queue_timeout_s: float = 30.0,
              adaptive: bool = True, law: str = "gradient", min_inflight: int = 1) -> Gate:
    try:
        settings = GateSettings(
            threshold_pct=None if pressure == "none" else threshold_pct, limit=limit, min_inflight=min_inflight, max_queue=max_queue,
            queue_timeout_s=queue_timeout_s, adaptive=adaptive,
            limiter=LimiterConfig(law=law, min_limit=min_limit, max_limit=max_limit),
        )
    except ValueError as err:
        raise ConfigError(f"gate settings: {err}") from err
    if not min_limit <= limit <= max_limit:
        raise ConfigError(f"--max-concurrency {limit} outside [--min-limit {min_limit}, --max-limit {max_limit}]")
    source = None if pressure == "none" else PressureSource(host, pressure)
    return Gate(settings, source)


async def serve(gate: Gate, *, listen: str, upstream: str, control_listen: str | None = None,
                timeout_s: float = 600.0, log_level: str = "info", max_body_bytes: int | None = None) -> None:
    import uvicorn

    from autotune.gate.proxy import build_app, build_control_app

    host, port = parse_listen(listen)
    extra = {} if max_body_bytes is None else {"max_body_bytes": max_body_bytes}
    app = build_app(gate, upstream, timeout_s=timeout_s, control=control_listen is None, **extra)
    servers = [uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))]
    if control_listen:
        chost, cport = parse_listen(control_listen)
        servers.append(uvicorn.Server(uvicorn.Config(build_control_app(gate), host=chost, port=cport,
                                                     log_level=log_level)))
    await asyncio.gather(*(s.serve() for s in servers))
