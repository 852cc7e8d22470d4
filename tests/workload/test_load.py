"""Load generator: mixes, CSV rows, 503 + Retry-After handling, admission hook."""

import asyncio
import csv
import json

import httpx
import pytest

from autotune.workload.load import (CSV_COLUMNS, SEED_PROMPTS, LoadSpec, build_requests, run_load,
                                    summarize, write_csv)


def test_seed_mix_matches_seed_research():
    reqs = build_requests(LoadSpec(requests=20))
    assert len(reqs) == 20
    assert all(20 <= len(p) <= 41 for p in SEED_PROMPTS) and len(SEED_PROMPTS) == 8
    assert [p for p, _ in reqs[:8]] == SEED_PROMPTS and reqs[8][0] == SEED_PROMPTS[0]
    assert {n for _, n in reqs} == {50}


def test_varied_mix_is_deterministic_and_varied():
    a = build_requests(LoadSpec(requests=30, mix="varied", seed=1))
    assert a == build_requests(LoadSpec(requests=30, mix="varied", seed=1))
    assert len({len(p) for p, _ in a}) > 1 and len({n for _, n in a}) > 1


class FakeServer:
    """503 with Retry-After for the first ``reject_first`` attempts of each prompt, else 200."""

    def __init__(self, reject_first: int = 0, retry_after: str = "0") -> None:
        self.reject_first, self.retry_after = reject_first, retry_after
        self.attempts: dict[str, int] = {}
        self.in_flight = self.max_in_flight = 0

    async def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        key = f"{body['seed']}"
        self.attempts[key] = self.attempts.get(key, 0) + 1
        if self.attempts[key] <= self.reject_first:
            return httpx.Response(503, headers={"Retry-After": self.retry_after})
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        if body.get("stream"):
            # vLLM's shape: one chunk per token, the last with finish_reason, then usage
            n = body["max_tokens"]
            chunks = [{"choices": [{"text": "a", "finish_reason": None if i < n - 1 else "length"}]}
                      for i in range(n)]
            if (body.get("stream_options") or {}).get("include_usage"):
                chunks.append({"choices": [], "usage": {"completion_tokens": n}})
            text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={"usage": {"completion_tokens": body["max_tokens"]}})


def _run(spec, fake, **kw):
    return asyncio.run(run_load(spec, transport=httpx.MockTransport(fake.handler), **kw))


def test_csv_rows_and_concurrency(tmp_path):
    fake = FakeServer()
    res = _run(LoadSpec(url="http://x", requests=10, concurrency=3, max_tokens=5), fake)
    assert [r.index for r in res] == list(range(10))
    assert fake.max_in_flight == 3  # three clients really in flight at once
    path = tmp_path / "out.csv"
    write_csv(res, path)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0].keys()) == CSV_COLUMNS
    assert len(rows) == 10
    assert all(r["outcome"] == "ok" and r["status"] == "200" for r in rows)
    assert rows[1]["prompt_chars"] == str(len(SEED_PROMPTS[1]))
    assert all(float(r["latency_s"]) > 0 and r["completion_tokens"] == "5" for r in rows)


def test_503_retried_then_ok_counts_deferred():
    fake = FakeServer(reject_first=2)
    res = _run(LoadSpec(url="http://x", requests=4, concurrency=2, max_retries=5), fake)
    assert all(r.outcome == "ok" and r.retries == 2 for r in res)
    s = summarize(res)
    assert (s.ok, s.deferred, s.rejected) == (4, 4, 0)


def test_503_beyond_retries_is_rejected():
    fake = FakeServer(reject_first=100)
    res = _run(LoadSpec(url="http://x", requests=3, max_retries=2), fake)
    assert all(r.outcome == "rejected" and r.status == 503 and r.retries == 2 for r in res)
    assert all(v == 3 for v in fake.attempts.values())  # first try + 2 retries
    s = summarize(res)
    assert (s.ok, s.rejected, s.p95_s) == (0, 3, None)


def test_retry_after_is_honoured_and_capped():
    fake = FakeServer(reject_first=1, retry_after="30")
    res = _run(LoadSpec(url="http://x", requests=1, retry_cap_s=0.2), fake)
    assert res[0].outcome == "ok"
    assert 0.2 <= res[0].latency_s < 5  # waited the cap, not 30 s: latency includes the wait


def test_stream_counts_tokens_and_ttft():
    res = _run(LoadSpec(url="http://x", requests=2, stream=True, max_tokens=4), FakeServer())
    assert all(r.completion_tokens == 4 and 0 < r.ttft_s <= r.latency_s for r in res)


def test_admission_hook_defers_and_drops():
    calls = {"n": 0}

    async def admit():
        calls["n"] += 1
        return (calls["n"] % 2 == 0, 3)  # every other request dropped after 3 deferrals

    res = _run(LoadSpec(url="http://x", requests=4), FakeServer(), admit=admit)
    assert [r.outcome for r in res] == ["rejected", "ok", "rejected", "ok"]
    s = summarize(res)
    assert (s.deferred, s.rejected, s.ok) == (4, 2, 2)


def test_connection_error_is_error_not_crash():
    res = asyncio.run(run_load(LoadSpec(url="http://127.0.0.1:9", requests=2, timeout_s=2)))
    assert all(r.outcome == "error" and r.status == 0 and r.error for r in res)


def test_percentiles_match_numpy_linear():
    from autotune.workload.load import percentiles

    assert percentiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (3.0, 4.8, 4.96)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_cli(*args: str, **kw):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    return subprocess.Popen([sys.executable, "-m", "autotune", "workload", "load", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_failed_requests_exit_1_with_the_reason():
    p = _load_cli("--url", f"http://127.0.0.1:{_closed_port()}", "--requests", "3")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1, (out, err)
    assert json.loads(out)["errors"] == 3
    [line] = err.strip().splitlines()
    assert line.startswith("autotune: workload load: 3 of 3 requests to http://127.0.0.1:") and "ConnectError" in line


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_failing_load_with_its_summary(signame):
    """Even where the shell started it ignoring SIGINT (`cmd &` in a script)."""
    import signal
    import time

    sig = getattr(signal, signame)
    p = _load_cli("--url", f"http://127.0.0.1:{_closed_port()}", "--requests", "100000", "--concurrency", "2",
                  "--stream", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # its handlers are in place once it catches SIGTERM
        caught = next(ln for ln in open(f"/proc/{p.pid}/status") if ln.startswith("SigCgt:"))
        if int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)):
            break
        time.sleep(0.05)
    time.sleep(1.5)  # a few refused requests
    p.send_signal(sig)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 128 + sig, (out, err)
    summary = json.loads(out)
    assert summary["requests"] < 100000 and summary["errors"] == summary["requests"]
    [line] = err.strip().splitlines()
    assert f"stopped by {signame} after {summary['requests']} of 100000 requests" in line
    assert "ConnectError" in line or summary["requests"] == 0
