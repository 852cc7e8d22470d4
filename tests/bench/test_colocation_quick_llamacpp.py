"""Smoke test: the colocation benchmark on llama.cpp in --quick (the tiny GGUF, 2 seeds, rows
contended, autotune, oracle), end to end on the real kernel: llama-server started through the
harness from the worst common case (a pool of every core), the oracle's grid over its thread
count (a restart between settings), the agent row's config as a llama.cpp user writes it (its
page and a probe, an SLO those measure, the fixed pool and its restart path), nothing left."""

from __future__ import annotations

import csv
import json
import os
import time
import tomllib
from pathlib import Path

import pytest

from tests.bench.conftest import REPO


def _unavailable() -> str | None:
    import sys

    sys.path.insert(0, str(REPO))
    from bench import engines

    try:
        engines.LLAMACPP.check("tiny")
    except engines.EngineUnavailable as why:
        return str(why)
    return None


WHY = _unavailable()

pytestmark = [
    pytest.mark.benchrun, pytest.mark.slow, pytest.mark.llamacpp, pytest.mark.realkernel, pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the bench creates cgroups: needs root"),
    pytest.mark.skipif(not Path("/sys/fs/cgroup").is_dir(), reason="no cgroup filesystem"),
    pytest.mark.skipif(WHY is not None, reason=f"llama.cpp is not in the cache: {WHY}"),
]


@pytest.mark.timeout(480)
def test_quick_llamacpp_colocation(tmp_path, in_repo):
    from bench import common, engines
    from bench.colocation import QUICK_ROWS, main

    out = tmp_path / "quick"
    t0 = time.monotonic()
    assert main(["--engine", "llamacpp", "--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    print(f"colocation --engine llamacpp --quick: {time.monotonic() - t0:.0f} s")
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["engine"], meta["model"], meta["seeds"], meta["rows"]) == ("llamacpp", "tiny", [1, 2], QUICK_ROWS)
    n = str(engines.ncpu())
    # the grid visits both thread settings: at least one restart between them
    assert meta["server_starts"] >= (2 if n != "1" else 1)
    for seed in ("1", "2"):
        assert meta["per_seed"][seed]["skipped"] == {}, meta["per_seed"][seed]
        notes = meta["per_seed"][seed]["row_notes"]["autotune"]
        assert notes["threads_lever"] is True and notes["agent_slo"] == {"ttft_p95_s": 0.5, "itl_mean_s": 0.025}
        d = out / f"seed-{seed}"
        for row in QUICK_ROWS:
            rows = list(csv.DictReader((d / f"windows_{row}.csv").open()))
            assert [r["phase"] for r in rows] == ["low", "low", "peak", "peak"]
            assert sum(int(r["offered"]) for r in rows) > 0 and sum(int(r["completed"]) for r in rows) > 0, row
        cfg = tomllib.loads((d / "autotune" / "config.toml").read_text())
        llm = next(s for s in cfg["service"] if s["name"] == "llm")
        assert llm["latency"]["flavor"] == "llamacpp" and llm["latency"]["probe_url"]
        assert llm["latency"]["metrics_url"] == llm["latency"]["probe_url"] + "/metrics"
        assert llm["threads"]["count"] == int(n) and llm["threads"]["pool"] == "fixed"
        assert llm["threads"]["env"] == "LLAMA_ARG_THREADS" and "restart_server.py" in llm["threads"]["restart_command"][1]
        log = (d / "autotune" / "agent.log").read_text()
        assert "ttft_p95_s (time to first token p95) measured from the active probe" in log
        assert "itl_mean_s (mean time per generated token) measured from a llama.cpp metrics page: counted" in log
    oracle = json.loads((out / "oracle.json").read_text())
    assert set(oracle) == {"2/s", "6/s"}
    for v in oracle.values():
        assert {p["alloc"]["threads"] for p in v["points"]} == ({"1", n} if n != "1" else {"1"})
        assert v["choice"]["checks"] and "fixes the server's --threads" in v["choice"]["reason"]
    assert len({v["choice"]["alloc"]["threads"] for v in oracle.values()}) == 1  # one setting for every phase
    assert "| autotune | " in (out / "table.md").read_text()
    # nothing left behind
    assert common._procs == [] and common._cgroups == []
    name = f"autotune-bench-{os.getpid()}"
    for line in Path("/proc/self/cgroup").read_text().splitlines():  # made under our own cgroups
        _, ctrls, path = line.split(":", 2)
        mount = "unified" if not ctrls else ctrls
        if Path("/sys/fs/cgroup", mount).is_dir():
            assert not Path(f"/sys/fs/cgroup/{mount}{path.rstrip('/')}/{name}").exists(), (mount, path)
