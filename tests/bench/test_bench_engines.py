"""The engine specs the benchmarks take (``--engine``): the llama.cpp rows, its start, its agent config."""

from __future__ import annotations

import inspect
import os
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
    assert a.model == "llama60m" and a.server_threads == n  # a pool of every core ...
    assert co.ROWS["static"].alloc.quota_cores == 0.5  # ... under the 0.5-core quota
    assert a.rows == ["contended", "static", "autotune", "autotune-learned", "oracle"]
    assert a.schedule.name == "llamacpp.yaml" and a.max_tokens == 16  # dense by default ...
    d = co.parse_args(["--engine", "llamacpp", "--dense"])  # ... so --dense is the same run
    assert (d.schedule, d.max_tokens, d.slo, d.model) == (a.schedule, a.max_tokens, a.slo, a.model)
    assert a.grid_threads == (["1", n] if n != "1" else ["1"])  # the oracle may pick the pool size
    assert {p.threads for p in co.grid_points(a)} == set(a.grid_threads)
    assert a.slo == engines.LLAMACPP.slo["llama60m"]
    lat = engines.LLAMACPP.agent_latency("http://h:2")
    assert lat == {"metrics_url": "http://h:2/metrics", "flavor": "llamacpp", "probe_url": "http://h:2"}
    # the agent's SLO on what its source measures: TTFT p95 (probe), mean per token (page)
    assert co.agent_slo(a, a.slo) == {"ttft_p95_s": a.slo.ttft_p95_s, "itl_mean_s": a.slo.itl_p95_s / 2}
    assert co.agent_slo(co.parse_args([]), co.parse_args([]).slo) == {"ttft_p95_s": 4.0, "itl_p95_s": 0.15}
    assert engines.LLAMACPP.agent_threads("2") == {"count": 2, "pool": "fixed"}
    assert engines.GPT2.agent_threads("auto") == {"pool": "follows-quota"}
    with pytest.raises(SystemExit):
        co.parse_args(["--engine", "llamacpp", "--agent-slo-fields", "p99_latency_s"])
    s = seed_table.parse_args(["--engine", "llamacpp"])
    assert s.model == "llama60m" and s.server_threads == n
    assert seed_table.agent_slo(s) == engines.LLAMACPP.seed_slo_itl["llama60m"]
    assert engines.LLAMACPP.seed_itl_field == "itl_mean_s"


def test_fixed_pool_grid_measures_a_quota_at_or_above_the_pool_once_as_none():
    a = co.parse_args(["--engine", "llamacpp", "--grid-threads", "1,2", "--grid-quotas", "0.5,1,1.5,max",
                       "--grid-ratios", "1:1,4:1"])
    pts = {(p.threads, p.quota_cores) for p in co.grid_points(a)}
    assert pts == {("1", 0.5), ("1", None), ("2", 0.5), ("2", 1.0), ("2", 1.5), ("2", None)}
    assert len(co.grid_points(a)) == 2 * len(pts)
    no_max = co.parse_args(["--engine", "llamacpp", "--grid-threads", "1", "--grid-quotas", "0.5,1"])
    assert {p.quota_cores for p in co.grid_points(no_max)} == {0.5, 1.0}  # nothing stands in for 1: kept
    g = co.parse_args(["--grid-quotas", "0.5,1,max"])  # the reference server's pool follows its quota
    assert {p.quota_cores for p in co.grid_points(g)} == {0.5, 1.0, None}


def test_llamacpp_start_goes_through_the_harness_and_refuses_what_the_cache_lacks(tmp_path, monkeypatch, capsys):
    """The start has the reference server's signature; without the build or the model in the
    cache it refuses with the command that makes it, and the benchmarks exit 2 with that reason."""
    ref = inspect.signature(engines.start_reference).parameters
    start = inspect.signature(engines.start_llamacpp).parameters
    assert list(start) == [p for p in ref if p != "weights_file"] == [
        "cg", "model", "threads", "max_concurrency", "log_path", "check_only"]
    assert engines.GPT2.maps_weights_file and "weights_file" in ref  # the reference server's own option
    calls = []
    monkeypatch.setattr(engines.common, "start_server", lambda cg, **kw: calls.append((cg, kw)) or ("p", "u"))
    assert engines.start_llamacpp("cg", model="tiny", threads="1", max_concurrency=2, log_path=tmp_path / "l") \
        == ("p", "u")
    assert calls == [("cg", {"engine": "llamacpp", "model": "tiny", "max_concurrency": 2, "threads": "1",
                             "log_path": tmp_path / "l"})]
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(engines.EngineUnavailable, match="autotune workload llamacpp build"):
        engines.LLAMACPP.check()
    # the estimate still works (it runs nothing), from the engine's own calibration
    assert co.main(["--engine", "llamacpp", "--estimate", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "engine llamacpp" in out and "bench.capacity --engine llamacpp" in out
    assert seed_table.main(["--engine", "llamacpp", "--estimate"]) == 0
    assert "engine llamacpp" in capsys.readouterr().out
    if os.geteuid() == 0:  # refused before it makes anything (as non-root: refused for that)
        from bench import capacity

        assert capacity.main(["--engine", "llamacpp"]) == 2
        assert "llamacpp build" in capsys.readouterr().err


def test_llamacpp_start_names_a_missing_model(tmp_path, monkeypatch):
    from autotune.workload.llamacpp import build

    monkeypatch.setattr(build, "find_build", lambda root, key: tmp_path / "llama-server")
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path))
    with pytest.raises(engines.EngineUnavailable, match="llamacpp model --preset tiny"):
        engines.LLAMACPP.check("tiny")


def test_engine_options_reject_a_model_the_engine_does_not_serve():
    with pytest.raises(SystemExit):
        co.parse_args(["--engine", "llamacpp", "--model", "gpt2"])
    with pytest.raises(SystemExit):
        seed_table.parse_args(["--model", "llama60m"])
