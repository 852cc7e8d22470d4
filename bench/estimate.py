"""Wall-time estimate of a seed-table run from measured per-request service times.

The server is CPU-bound, so a run's wall time is ~ requests x (seconds per request at that
concurrency): beyond c=2 (two server workers) throughput no longer grows. Per-request times
below are cell wall times / requests from the committed full run on the quiet 2-vCPU VM
(bench/results/2026-11-23-gpt2-full: GPT-2 124M, 50 tokens, 2 server workers, 55 min for
``--repeats 2 --requests 20``). ``static-seed-threads`` is not measured: ~1.8x static, from the
brief's 20-token measurement (2 threads 4.49 s vs 1 thread 2.49 s under 0.5 core). The tiny
model is ~20x cheaper.
"""

from __future__ import annotations

# config -> (s/request at c=1, s/request at c>=2), GPT-2 124M, steady state (after warm-up)
GPT2_S_PER_REQUEST: dict[str, tuple[float, float]] = {
    "alone": (2.2, 1.35),
    "contended": (3.0, 1.95),
    "static": (4.6, 4.8),
    "static+psi": (4.6, 4.2),  # the seed's gate drops requests after 10 retries at c>=4
    "gate": (4.8, 4.7),
    "autotune": (2.3, 1.9),
    "static-seed-threads": (8.0, 8.0),  # ~1.8x static (the brief: 4.49 s vs 2.49 s, 2 vs 1 thread)
    # one point of the oracle grid: 1-1.5 cores or all of them at high weight, ~between these
    "oracle": (2.4, 1.6),
}
ORACLE_POINT_OVERHEAD_S = 3.0  # settle after each allocation change
PER_CONFIG_OVERHEAD_S = {"gpt2": 30.0, "tiny": 10.0}  # server + neighbour start, warm-up requests
TINY_FACTOR = 0.05


def estimate_wall_s(configs: list[str], concurrency: list[int], *, requests: int, repeats: int,
                    model: str = "gpt2", warmup_s: float = 90.0, oracle_points: int = 7) -> float:
    """Seconds a run with these arguments should take on the dev VM. The oracle measures each
    of its ``oracle_points`` grid points once per concurrency instead of ``repeats`` times."""
    scale = TINY_FACTOR if model == "tiny" else 1.0
    total = 0.0
    for name in configs:
        c1, cn = GPT2_S_PER_REQUEST[name]
        total += PER_CONFIG_OVERHEAD_S.get(model, 30.0) + (warmup_s if name == "autotune" else 0.0)
        runs = oracle_points if name == "oracle" else repeats
        for c in concurrency:
            total += requests * runs * (c1 if c == 1 else cn) * scale
            if name == "oracle":
                total += oracle_points * ORACLE_POINT_OVERHEAD_S
    return total
