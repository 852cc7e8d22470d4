"""The engine abstraction: command lines, thread choices, metrics flavors, and how the harness
and `autotune workload serve --engine llamacpp` start llama-server (a fake binary stands in)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from autotune.sensors.latency import FLAVORS
from autotune.workload import engines, harness
from autotune.workload.engines import LlamaCppEngine, ReferenceEngine, get_engine, parse_threads, threads_at_start
from autotune.workload.llamacpp import build, gguf

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests/fixtures/metrics"


def test_parse_threads():
    assert parse_threads("all") == "all" and parse_threads("auto") == "auto" and parse_threads("3") == 3
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(ValueError, match="'all', 'auto' or a positive integer"):
            parse_threads(bad)


def test_threads_at_start():
    assert threads_at_start("all", affinity_cpus=1, quota_cores=0.5, cpus=8) == 8
    assert threads_at_start("auto", affinity_cpus=4, quota_cores=0.5) == 1
    assert threads_at_start("auto", affinity_cpus=4, quota_cores=2.7) == 2
    assert threads_at_start("auto", affinity_cpus=2, quota_cores=None) == 2
    assert threads_at_start(3, affinity_cpus=1, quota_cores=0.5) == 3


def test_engines_defaults_and_flavors():
    ref, llama = get_engine("reference"), get_engine("llamacpp")
    assert isinstance(ref, ReferenceEngine) and isinstance(llama, LlamaCppEngine)
    assert ref.metrics_flavor in FLAVORS and llama.metrics_flavor == "llamacpp" in FLAVORS
    assert ref.threads_follow_quota and not llama.threads_follow_quota
    # the worst common case: llama.cpp's pool is every CPU whatever the quota; ours fits it
    assert llama.compute_threads(None, affinity_cpus=2, quota_cores=0.5) == engines.host_cpus()
    assert ref.compute_threads(None, affinity_cpus=2, quota_cores=0.5) == 1
    assert llama.compute_threads("auto", affinity_cpus=2, quota_cores=0.5) == 1
    with pytest.raises(ValueError, match="unknown engine 'vllm'; choose one of reference, llamacpp"):
        get_engine("vllm")


def test_serve_args():
    assert get_engine("reference").serve_args(port=9, max_concurrency=3) == [
        "workload", "serve", "--engine", "reference", "--host", "127.0.0.1", "--port", "9", "--model", "gpt2",
        "--threads", "auto", "--max-concurrency", "3", "--log-level", "warning"]
    assert get_engine("llamacpp").serve_args(port=9, threads="2", model="tiny") == [
        "workload", "serve", "--engine", "llamacpp", "--host", "127.0.0.1", "--port", "9", "--model", "tiny",
        "--threads", "2", "--max-concurrency", "2"]


def test_llama_server_command_line():
    argv = LlamaCppEngine().server_argv("/c/llama-server", "/c/m.gguf", threads=2, parallel=3, port=1234,
                                        alias="llama60m")
    assert argv == ["/c/llama-server", "-m", "/c/m.gguf", "--threads", "2", "--metrics", "--host", "127.0.0.1",
                    "--port", "1234", "-c", "1024", "-np", "3", "--ignore-eos", "--alias", "llama60m"]


def test_busy_reads_each_engines_own_page(monkeypatch):
    pages = {"/metrics": (FIXTURES / "llamacpp_real_2.prom").read_text()}

    def fake_get(url, timeout):
        path = "/" + url.split("/", 3)[3]
        if path == "/health":
            return httpx.Response(200, json={"status": "ok", "running": 1, "waiting": 4},
                                  request=httpx.Request("GET", url))
        return httpx.Response(200, text=pages[path], request=httpx.Request("GET", url))

    monkeypatch.setattr(httpx, "get", fake_get)
    assert get_engine("reference").busy("http://x:1") == (1, 4)
    assert get_engine("llamacpp").busy("http://x:1") == (2, 1)  # 2 slots busy, 1 request deferred
    pages["/metrics"] = "garbage"
    assert get_engine("llamacpp").busy("http://x:1") is None


def test_harness_starts_the_chosen_engine(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(harness, "free_port", lambda: 4321)
    monkeypatch.setattr(harness, "spawn", lambda argv, cg, log: seen.setdefault("argv", argv) and "proc")
    monkeypatch.setattr(harness, "wait_healthy", lambda url, proc, cancel=None, path="": seen.update(url=url, path=path))
    proc, url = harness.start_server(None, engine="llamacpp", max_concurrency=2, log_path=tmp_path / "l")
    assert (proc, url) == ("proc", "http://127.0.0.1:4321") and seen["path"] == "/health"
    assert seen["argv"][:3] == [sys.executable, "-m", "autotune"]
    assert seen["argv"][3:] == get_engine("llamacpp").serve_args(port=4321, max_concurrency=2)
    seen.clear()
    harness.start_server(None, model="tiny", max_concurrency=2, log_path=tmp_path / "l", threads="auto")
    assert seen["argv"][3:] == ["workload", "serve", "--engine", "reference", "--host", "127.0.0.1", "--port",
                                "4321", "--model", "tiny", "--threads", "auto", "--max-concurrency", "2",
                                "--log-level", "warning"]


# -- `autotune workload serve --engine llamacpp` -------------------------------------------------
def _autotune(args: list[str], cache: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTOTUNE_CACHE": str(cache), "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "autotune", *args], capture_output=True, text=True,
                          timeout=60, env=env, **kw)


def _fake_build(cache: Path) -> Path:
    """A cache whose 'llama-server' prints its pid and argv as JSON, with a valid stamp."""
    key = build.cpu_key()
    binary = build.server_binary(cache, key)
    binary.parent.mkdir(parents=True)
    binary.write_text('#!/bin/sh\nprintf \'{"pid": %s, "argv": "%s"}\\n\' "$$" "$*"\n')
    binary.chmod(0o755)
    (build.build_dir(cache, key) / build.STAMP).write_text(json.dumps(build._stamp(key)))
    return binary


def test_serve_llamacpp_without_a_build_is_one_line(tmp_path):
    r = _autotune(["workload", "serve", "--engine", "llamacpp"], tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"autotune: llama-server is not built for this CPU under {tmp_path}: run "
        "`autotune workload llamacpp build` (15 minutes on 2 cores, over an hour when they are busy)"]


def test_serve_llamacpp_without_the_model_names_the_command(tmp_path):
    _fake_build(tmp_path)
    r = _autotune(["workload", "serve", "--engine", "llamacpp", "--model", "tiny"], tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "`autotune workload llamacpp model --preset tiny` first" in lines[0]


@pytest.mark.parametrize("args, message", [
    (["--threads", "none"], "--threads must be 'all', 'auto' or a positive integer, got 'none'"),
    (["--max-queue", "4"], "--max-queue applies to the reference engine only"),
    (["--log-level", "debug"], "--log-level applies to the reference engine only"),
    (["--model", "/nonexistent.gguf"], "not a preset (llama60m, tiny) nor an existing .gguf file"),
])
def test_serve_llamacpp_bad_options_are_one_line(tmp_path, args, message):
    _fake_build(tmp_path)
    r = _autotune(["workload", "serve", "--engine", "llamacpp", *args], tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr


def test_serve_llamacpp_execs_the_cached_binary_in_place(tmp_path):
    binary = _fake_build(tmp_path)
    model = gguf.gguf_path(tmp_path, gguf.PRESETS["llama60m"])
    model.parent.mkdir(parents=True)
    model.write_bytes(b"GGUF")
    proc = subprocess.Popen([sys.executable, "-m", "autotune", "workload", "serve", "--engine", "llamacpp",
                             "--port", "5555", "--max-concurrency", "3"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "AUTOTUNE_CACHE": str(tmp_path)})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    printed = json.loads(out)
    assert printed["pid"] == proc.pid  # exec, not a child: the harness's process is llama-server
    assert printed["argv"].split() == LlamaCppEngine().server_argv(
        str(binary), str(model), threads=engines.host_cpus(), parallel=3, port=5555, alias="llama60m")[1:]
    assert f"with {engines.host_cpus()} thread(s) (every CPU of the host)" in err


def test_serve_llamacpp_needs_no_workload_extra(tmp_path, monkeypatch):
    """llama-server needs neither torch nor fastapi: only the reference engine checks the extra."""
    from typer.testing import CliRunner

    import importlib.util

    from autotune.cli import common
    from autotune.cli.main import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in common.EXTRAS["workload"] else real(name, *a))
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path))
    res = CliRunner().invoke(app, ["workload", "serve", "--engine", "llamacpp"])
    assert res.exit_code == 2 and "not built for this CPU" in res.output and "extra" not in res.output
