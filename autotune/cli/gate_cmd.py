"""`autotune gate`: the PSI-gated admission proxy in front of an OpenAI-compatible server."""

from __future__ import annotations

from typing import Annotated

import typer

from autotune.cli.common import RootOpt, fail, positive_seconds, require_extra


def register(app: typer.Typer) -> None:
    @app.command()
    def gate(
        listen: Annotated[str, typer.Option(help="HOST:PORT the proxy listens on.")] = "127.0.0.1:8100",
        upstream: Annotated[str, typer.Option(help="Base URL of the inference server.")] = "http://127.0.0.1:8000",
        pressure: Annotated[str, typer.Option(
            help="PSI source: 'system' (/proc/pressure/cpu), 'cgroup:/path' (its v2 cpu.pressure) or 'none'.")
        ] = "system",
        threshold: Annotated[float, typer.Option(
            min=0, max=100, help="Hold requests while PSI some avg10 > this (percent).")] = 40.0,
        max_concurrency: Annotated[int, typer.Option(min=1, help="Initial concurrency limit.")] = 4,
        min_limit: Annotated[int, typer.Option(min=1, help="Lower bound of the adaptive limit.")] = 1,
        max_limit: Annotated[int, typer.Option(min=1, help="Upper bound of the adaptive limit.")] = 64,
        queue: Annotated[int, typer.Option(min=0, help="Max requests waiting; beyond -> 503.")] = 64,
        timeout: Annotated[float, typer.Option(
            callback=positive_seconds, help="Max seconds a request waits for admission -> 503.")] = 30.0,
        upstream_timeout: Annotated[float, typer.Option(
            callback=positive_seconds, help="Seconds to wait on the upstream.")] = 600.0,
        adaptive: Annotated[bool, typer.Option("--adaptive/--no-adaptive",
                                               help="Adapt limit and threshold from observed latency.")] = True,
        law: Annotated[str, typer.Option(help="Adaptive law: gradient or aimd.")] = "gradient",
        min_inflight: Annotated[int, typer.Option(
            min=0, help="Pressure holds nothing while fewer of our requests are in flight "
                        "(so a neighbour's pressure cannot starve the service; 0 = always gate).")] = 1,
        max_body_bytes: Annotated[int, typer.Option(
            min=1, help="Request bodies over this many bytes are refused with 413 (streamed, never held whole).")
        ] = 16 << 20,
        control_listen: Annotated[str | None, typer.Option(
            help="Serve /gate/* on this HOST:PORT instead of the proxy listener.")] = None,
        root: RootOpt = None,
    ) -> None:
        """Reverse proxy that admits requests while CPU pressure is low and under a concurrency limit."""
        require_extra("gate", what="gate")
        import asyncio

        from autotune.errors import AutotuneError
        from autotune.gate.server import make_gate, parse_listen, serve
        from autotune.host import Host
        from prometheus_client import disable_created_metrics

        disable_created_metrics()  # like the agent's exporter: no *_created series (docs/metrics.md)
        if law not in ("gradient", "aimd"):
            fail(f"--law {law!r}: use gradient or aimd")
        try:
            parse_listen(listen)
            if control_listen:
                parse_listen(control_listen)
            g = make_gate(host=Host(root), pressure=pressure, threshold_pct=threshold, limit=max_concurrency,
                          min_limit=min_limit, max_limit=max_limit, max_queue=queue, queue_timeout_s=timeout,
                          adaptive=adaptive, law=law, min_inflight=min_inflight)
        except AutotuneError as err:
            fail(str(err))
            return
        src = g.pressure.path if g.pressure else "off"
        typer.echo(f"autotune gate: {listen} -> {upstream} (pressure {src}, threshold {threshold:g}%, "
                   f"limit {max_concurrency}, min in flight {min_inflight}, queue {queue}, adaptive {'on' if adaptive else 'off'})", err=True)
        try:
            asyncio.run(serve(g, listen=listen, upstream=upstream, control_listen=control_listen,
                              timeout_s=upstream_timeout, max_body_bytes=max_body_bytes))
        except KeyboardInterrupt:
            pass
