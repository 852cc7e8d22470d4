"""What a request costs the server in CPU: the sums behind a schedule's rates.

    sudo python -m bench.capacity --model tiny --tokens 8,16,50          # ~1 min
    sudo python -m bench.capacity --engine llamacpp --tokens 16 [--threads 1]

The server (``--engine``, bench/engines.py) runs alone in its own cgroup with no limit;
``--requests`` closed-loop requests at ``--concurrency`` per token count; the cost of a request
is its cgroup's CPU time over the batch / the requests. CPU time per request moves little with
other load on the machine (wall time does), so this is the figure to size rates from: at
``cores`` cores the server does at most ``cores / cost`` requests a second. Prints one line per
token count with the capacities at 0.5 core (the static quota), 1 core (about what equal
weights leave it beside the neighbour) and every CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from autotune.host import Host
from autotune.workload.load import LoadSpec, run_load
from bench import common, engines
from bench.seed_table import _cpu_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", default="gpt2", choices=sorted(engines.ENGINES))
    p.add_argument("--model", default=None, help="the engine's model (default: its first)")
    p.add_argument("--tokens", default="8,16,50", help="tokens per request, comma list")
    p.add_argument("--requests", type=int, default=40, help="requests per token count")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--max-concurrency", type=int, default=2, help="server workers / slots")
    p.add_argument("--threads", default=None, help="the server's --threads (default: the engine's starting "
                   "setting: gpt2 auto, llamacpp every core)")
    p.add_argument("--out", type=Path, default=Path("/tmp/autotune-bench-capacity"), help="server log")
    a = p.parse_args(argv)
    spec = engines.get(a.engine)
    model = a.model or spec.models[0]
    if (refused := engines.preflight(spec, model)) is not None:
        return refused
    a.out.mkdir(parents=True, exist_ok=True)
    common.install_cleanup()
    ncpu = engines.ncpu()
    host = Host("/", writable=True)
    guard = common.HostGuard(host)
    try:
        cg = common.bench_cgroups(host, roles=("server",))["server"]
        server = engines.Server(spec, cg, model=model, max_concurrency=a.max_concurrency, max_tokens=8, out=a.out)
        threads = a.threads or spec.static_threads(ncpu)
        url = server.ensure(threads)
        for tokens in (int(x) for x in a.tokens.split(",") if x):
            c0, t0 = _cpu_s(cg), time.monotonic()
            res = asyncio.run(run_load(LoadSpec(url=url, requests=a.requests, concurrency=a.concurrency,
                                                max_tokens=tokens, seed=1)))
            c1, dt = _cpu_s(cg), time.monotonic() - t0
            ok = sum(r.outcome == "ok" for r in res)
            if c0 is None or c1 is None or not ok:
                print(f"{a.engine} {model} {tokens} tokens: no CPU reading or no request completed")
                continue
            cost = (c1 - c0) / a.requests
            print(f"{a.engine} {model} --threads {threads}, {tokens} tokens: {cost:.3f} CPU s per request ({ok}/{a.requests} ok; "
                  f"wall {dt / a.requests:.3f} s per request at c={a.concurrency}, load average "
                  f"{os.getloadavg()[0]:.1f}); at most {0.5 / cost:.1f} req/s on 0.5 core, {1 / cost:.1f} on 1, "
                  f"{ncpu / cost:.1f} on {ncpu}", flush=True)
        server.stop()
    finally:
        common.cleanup()
        print(guard.finish()["line"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
