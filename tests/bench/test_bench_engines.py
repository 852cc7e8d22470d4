"""The engine specs the benchmarks take (``--engine``), and the llama.cpp seam's contract."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import colocation as co  # noqa: E402
from bench import engines, seed_table  # noqa: E402


def test_registry_and_the_reference_server():
    assert set(engines.ENGINES) == {"gpt2", "llamacpp"}
    g = engines.get("gpt2")
    assert g.models == ("gpt2", "tiny") and g.static_threads(8) == "auto"
    assert g.agent_latency("http://h:1") == {"metrics_url": "http://h:1/metrics", "flavor": "auto"}
    assert g.slo_for("gpt2").ttft_p95_s == 4.0 and g.slo_for("tiny").itl_p95_s == 0.25
    assert g.cost_for("tiny").s_per_request["static"][0] < g.cost_for("gpt2").s_per_request["static"][0]
    g.check()  # the reference server is always there
    with pytest.raises(SystemExit, match="choose from"):
        engines.get("vllm")


def test_llamacpp_rows_start_from_the_worst_common_case():
    a = co.parse_args(["--engine", "llamacpp"])
    n = str(engines.ncpu())
    assert a.model == "llama-60m" and a.server_threads == n  # a pool of every core ...
    assert co.ROWS["static"].alloc.quota_cores == 0.5  # ... under the 0.5-core quota
    assert a.grid_threads == (["1", n] if n != "1" else ["1"])  # the oracle may pick the pool size
    assert {p.threads for p in co.grid_points(a)} == set(a.grid_threads)
    assert a.slo == engines.LLAMACPP.slo["llama-60m"]
    lat = engines.LLAMACPP.agent_latency("http://h:2")
    assert lat == {"metrics_url": "http://h:2/metrics", "flavor": "llamacpp", "probe_url": "http://h:2"}
    s = seed_table.parse_args(["--engine", "llamacpp"])
    assert s.model == "llama-60m" and s.server_threads == n
    assert seed_table.agent_slo(s) == engines.LLAMACPP.seed_slo_itl["llama-60m"]


def test_llamacpp_seam_is_marked_and_refuses_until_connected(capsys):
    """SEAM(llamacpp): the start has the reference server's signature, and until the harness's
    llama.cpp start is connected it refuses with a reason; the benchmarks exit 2 with it."""
    ref = inspect.signature(engines.start_reference).parameters
    seam = inspect.signature(engines.start_llamacpp).parameters
    assert list(seam) == [p for p in ref if p != "weights_file"] == [
        "cg", "model", "threads", "max_concurrency", "log_path", "check_only"]
    assert engines.GPT2.maps_weights_file and "weights_file" in ref  # the reference server's own option
    assert "SEAM(llamacpp)" in inspect.getsource(engines.start_llamacpp)
    with pytest.raises(engines.EngineUnavailable, match="not connected"):
        engines.LLAMACPP.check()
    # the estimate still works (it runs nothing), from the engine's own calibration
    assert co.main(["--engine", "llamacpp", "--estimate", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "engine llamacpp" in out and "LLAMACPP-NOTES.md" in out
    assert seed_table.main(["--engine", "llamacpp", "--estimate"]) == 0
    assert "engine llamacpp" in capsys.readouterr().out
    from bench import capacity

    assert capacity.main(["--engine", "llamacpp"]) == 2  # refused before it makes anything


def test_engine_options_reject_a_model_the_engine_does_not_serve():
    with pytest.raises(SystemExit):
        co.parse_args(["--engine", "llamacpp", "--model", "gpt2"])
    with pytest.raises(SystemExit):
        seed_table.parse_args(["--model", "llama-60m"])
