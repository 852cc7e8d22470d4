"""Wall-time estimate of a seed-table run from measured per-request service times.

The server is CPU-bound, so a run's wall time is ~ requests x (seconds per request at that
concurrency): beyond c=2 (two server workers) throughput no longer grows. Per-request times
below were measured on the 2-core dev VM (GPT-2 124M, 50 tokens, 2 server workers, other
engineers' tests also running: treat as upper-side figures) with
``--configs alone,contended,static,gate --concurrency 1,4 --requests 4 --repeats 1``;
``static+psi`` is taken as ``static``, ``autotune`` as ``alone`` (quota raised to 1.5 cores,
weights favouring the server) and is not measured yet. The tiny model is ~20x cheaper.
"""

from __future__ import annotations

# config -> (s/request at c=1, s/request at c>=2), GPT-2 124M, steady state (after warm-up)
GPT2_S_PER_REQUEST: dict[str, tuple[float, float]] = {
    "alone": (2.1, 1.6),
    "contended": (24.6, 3.2),  # 2 intra-op threads against 2 CPU burners, one request at a time
    "static": (4.4, 4.4),
    "static+psi": (4.4, 4.4),
    "gate": (4.1, 4.2),
    "autotune": (2.1, 1.6),
    "static-seed-threads": (8.0, 8.0),  # ~1.8x static (the brief: 4.49 s vs 2.49 s, 2 vs 1 thread)
}
PER_CONFIG_OVERHEAD_S = {"gpt2": 30.0, "tiny": 10.0}  # server + neighbour start, warm-up requests
TINY_FACTOR = 0.05


def estimate_wall_s(configs: list[str], concurrency: list[int], *, requests: int, repeats: int,
                    model: str = "gpt2", warmup_s: float = 90.0) -> float:
    """Seconds a run with these arguments should take on the dev VM."""
    scale = TINY_FACTOR if model == "tiny" else 1.0
    total = 0.0
    for name in configs:
        c1, cn = GPT2_S_PER_REQUEST[name]
        total += PER_CONFIG_OVERHEAD_S.get(model, 30.0) + (warmup_s if name == "autotune" else 0.0)
        for c in concurrency:
            total += requests * repeats * (c1 if c == 1 else cn) * scale
    return total
