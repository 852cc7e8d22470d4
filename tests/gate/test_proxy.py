"""The gate end to end: real openai client -> gate (uvicorn) -> fake OpenAI upstream."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from starlette.testclient import TestClient

from autotune.gate.core import Gate, GateSettings
from autotune.gate.limiter import LimiterConfig
from autotune.gate.pressure import PressureSource
from autotune.gate.proxy import build_app
from autotune.host import Host

PSI = "some avg10={:.2f} avg60=1.00 avg300=1.00 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"


def gate_for(**kw) -> Gate:
    pressure = kw.pop("pressure", None)
    kw.setdefault("adaptive", False)
    kw.setdefault("threshold_pct", None)
    return Gate(GateSettings(**kw), pressure, poll_interval_s=0.05)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=20)


def wait_until(pred, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_non_stream_completion_passes_through(upstream, run_app):
    gate = gate_for(limit=4)
    g = run_app(build_app(gate, upstream.url))
    out = client(g.url).completions.create(model="fake", prompt="hello", max_tokens=2)
    assert out.choices[0].text == "echo:hello"
    models = client(g.url).models.list()
    assert [m.id for m in models.data] == ["fake"]
    wait_until(lambda: gate.status().inflight == 0)  # released just after the body is sent
    st = gate.status()
    assert st.admitted == 1 and st.deferred == 0  # GET /v1/models passed without admission
    assert gate.passthrough == 1


def test_stream_chunks_arrive_before_upstream_finishes(upstream, run_app):
    upstream.delay_s, upstream.chunks = 0.3, 4
    gate = gate_for(limit=4)
    g = run_app(build_app(gate, upstream.url))
    stream = client(g.url).completions.create(model="fake", prompt="hi", max_tokens=4, stream=True)
    got = []
    for chunk in stream:
        got.append((time.monotonic(), chunk.choices[0].text))
    assert [t for _, t in got] == ["tok0", "tok1", "tok2", "tok3"]
    last_sent = upstream.chunk_sent_at[-1]
    # unbuffered: the first chunk reached the client ~0.9 s before upstream sent its last one
    assert got[0][0] < last_sent - 0.5
    wait_until(lambda: gate.status().inflight == 0)  # slot freed when the stream ended


def test_queue_full_gives_503_with_retry_after(upstream, run_app):
    upstream.delay_s = 1.0
    gate = gate_for(limit=1, max_queue=0, retry_after_s=3)
    g = run_app(build_app(gate, upstream.url))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client(g.url).completions.create, model="fake", prompt="a", max_tokens=1)
        wait_until(lambda: upstream.inflight == 1)
        with pytest.raises(openai.APIStatusError) as info:
            client(g.url).completions.create(model="fake", prompt="b", max_tokens=1)
        assert info.value.status_code == 503
        r = httpx.post(f"{g.url}/v1/completions", json={"model": "fake", "prompt": "c"})
        assert r.status_code == 503 and r.headers["retry-after"] == "3"
        assert r.json()["error"]["code"] == 503 and r.headers["x-autotune-gate"] == "queue_full"
        assert first.result().choices[0].text == "echo:a"
    st = gate.status()
    assert st.rejected_queue_full == 2 and st.admitted == 1


def test_queue_timeout_gives_503(upstream, run_app):
    upstream.delay_s = 1.0
    gate = gate_for(limit=1, max_queue=4, queue_timeout_s=0.2)
    g = run_app(build_app(gate, upstream.url))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client(g.url).completions.create, model="fake", prompt="a", max_tokens=1)
        wait_until(lambda: upstream.inflight == 1)
        r = httpx.post(f"{g.url}/v1/completions", json={"model": "fake", "prompt": "b"})
        assert r.status_code == 503 and "retry-after" in r.headers
        assert r.json()["error"]["code"] == 503 and r.headers["x-autotune-gate"] == "timeout"
        first.result()
    assert gate.status().rejected_timeout == 1 and gate.status().deferred == 1


def test_pressure_high_holds_until_it_drops(upstream, run_app, tmp_path):
    psi = tmp_path / "proc" / "pressure" / "cpu"
    psi.parent.mkdir(parents=True)
    psi.write_text(PSI.format(80.0))
    source = PressureSource(Host(tmp_path), "system", min_interval_s=0.05)
    gate = gate_for(limit=4, threshold_pct=40, pressure=source, queue_timeout_s=10, min_inflight=0)
    g = run_app(build_app(gate, upstream.url))
    done = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(lambda: (client(g.url).completions.create(model="fake", prompt="p", max_tokens=1),
                                   done.set()))
        wait_until(lambda: gate.status().queue_length == 1)
        time.sleep(0.4)
        assert not done.is_set() and upstream.calls == 0  # held at the gate
        assert gate.status().pressure_pct == 80.0
        psi.write_text(PSI.format(5.0))
        fut.result(timeout=5)
    assert upstream.calls == 1
    st = gate.status()
    assert st.deferred == 1 and st.admitted == 1 and st.rejected == 0


def test_unreadable_pressure_fails_open(upstream, run_app, tmp_path):
    source = PressureSource(Host(tmp_path), "system")  # no /proc/pressure/cpu under this root
    gate = gate_for(limit=2, threshold_pct=10, pressure=source)
    g = run_app(build_app(gate, upstream.url))
    client(g.url).completions.create(model="fake", prompt="p", max_tokens=1)
    st = gate.status()
    assert st.deferred == 0 and st.pressure_pct is None and "not present" in st.pressure_error


def test_concurrency_limit_respected(upstream, run_app):
    upstream.delay_s = 0.2
    gate = gate_for(limit=2, max_queue=20, queue_timeout_s=10)
    g = run_app(build_app(gate, upstream.url))
    c = client(g.url)
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: c.completions.create(model="fake", prompt=str(i), max_tokens=1), range(8)))
    assert sorted(o.choices[0].text for o in outs) == sorted(f"echo:{i}" for i in range(8))
    assert upstream.max_inflight == 2
    wait_until(lambda: gate.status().inflight == 0)
    st = gate.status()
    assert st.admitted == 8 and st.deferred >= 5


def test_upstream_down_gives_502_and_frees_the_slot(run_app):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    gate = gate_for(limit=1)
    g = run_app(build_app(gate, f"http://127.0.0.1:{dead}"))
    r = httpx.post(f"{g.url}/v1/completions", json={"model": "m"})
    assert r.status_code == 502 and r.json()["error"]["code"] == 502
    assert r.headers["x-autotune-gate"] == "upstream_error"
    wait_until(lambda: gate.status().inflight == 0)


def test_control_endpoints(upstream, run_app):
    gate = gate_for(limit=2, limiter=LimiterConfig(max_limit=16))
    g = run_app(build_app(gate, upstream.url))
    client(g.url).completions.create(model="fake", prompt="p", max_tokens=1)
    st = httpx.get(f"{g.url}/gate/status").json()
    assert st["limit"] == 2 and st["admitted"] == 1
    text = httpx.get(f"{g.url}/gate/metrics").text
    assert "autotune_gate_admitted_total 1.0" in text
    assert 'autotune_gate_rejected_total{reason="queue_full"} 0.0' in text
    assert "autotune_gate_limit 2.0" in text
    r = httpx.post(f"{g.url}/gate/config", json={"limit": 6, "threshold_pct": 55})
    assert r.status_code == 200 and r.json()["limit"] == 6 and r.json()["threshold_pct"] == 55
    assert gate.settings.limit == 6
    for bad in ({"limit": 99}, {"limit": 0}, {"threshold_pct": 150}, {"bogus": 1}, [1]):
        r = httpx.post(f"{g.url}/gate/config", json=bad)
        assert r.status_code == 400, bad
        assert "bad /gate/config" in r.json()["error"]["message"]
    assert gate.settings.limit == 6 and gate.settings.threshold_pct == 55  # nothing half-applied


def test_config_refuses_non_loopback_clients():
    gate = gate_for(limit=2)
    with TestClient(build_app(gate, "http://127.0.0.1:9")) as tc:  # TestClient's peer is "testclient"
        r = tc.post("/gate/config", json={"limit": 3})
    assert r.status_code == 403
    assert gate.settings.limit == 2


def test_adaptive_limit_moves_with_latency(upstream, run_app):
    upstream.delay_s = 0.02
    gate = Gate(GateSettings(limit=2, adaptive=True, threshold_pct=None,
                             limiter=LimiterConfig(max_limit=8, short_window=2, long_window=50)))
    g = run_app(build_app(gate, upstream.url))
    c = client(g.url)
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: c.completions.create(model="fake", prompt="p", max_tokens=1), range(60)))
    assert gate.settings.limit > 2  # flat latency, limit in use -> grows
    assert gate.status().latency_long_s is not None


def test_client_leaving_mid_stream_frees_the_slot(upstream, run_app):
    # A stream far longer than any test (10 000 chunks x 0.05 s): whatever frees the slot is
    # the client leaving, never the stream ending. No timing thresholds: wait on conditions.
    upstream.delay_s, upstream.chunks = 0.05, 10_000
    gate = gate_for(limit=1)
    g = run_app(build_app(gate, upstream.url))
    with httpx.stream("POST", f"{g.url}/v1/completions", json={"model": "fake", "prompt": "s", "stream": True},
                      timeout=30) as r:
        # Keep the iterator: a discarded ``next(r.iter_raw())`` generator is closed at once by
        # refcounting, which closes the connection, and the gate then frees the slot before
        # the assertion below (that was the flake under load).
        chunks = r.iter_raw()
        first = next(chunks)
        assert first.startswith(b"data: ")
        wait_until(lambda: len(upstream.chunk_sent_at) >= 3)  # the stream keeps going...
        assert gate.status().inflight == 1  # ...and the slot stays held while we are connected
    wait_until(lambda: gate.status().inflight == 0, timeout=30)
    wait_until(lambda: upstream.inflight == 0, timeout=30)  # and the upstream request was closed too
    assert upstream.finished == 0 and len(upstream.chunk_sent_at) < upstream.chunks
    # the freed slot is usable: the next request is admitted at once
    out = client(g.url).completions.create(model="fake", prompt="next", max_tokens=1)
    assert out.choices[0].text == "echo:next" and gate.status().admitted == 2


def test_probes_and_scrapes_pass_a_full_gate_without_feeding_the_limiter(upstream, run_app):
    upstream.delay_s, upstream.chunks = 0.05, 10_000  # an endless stream holds the only slot
    gate = Gate(GateSettings(limit=1, max_queue=4, threshold_pct=None, adaptive=True), poll_interval_s=0.05)
    g = run_app(build_app(gate, upstream.url))
    with httpx.stream("POST", f"{g.url}/v1/completions", json={"model": "fake", "prompt": "s", "stream": True},
                      timeout=30) as r:
        chunks = r.iter_raw()
        next(chunks)
        assert gate.status().inflight == 1
        for path in ("/v1/models", "/metrics", "/health", "/v1/models/"):
            resp = httpx.get(f"{g.url}{path}", timeout=5)  # would wait behind the stream if admitted
            assert resp.status_code < 500, path  # what upstream said (200, 404, a redirect)
        st = gate.status()
        assert st.inflight == 1 and st.queue_length == 0 and st.deferred == 0 and st.admitted == 1
        assert st.latency_short_s is None  # nothing learned from the probes' millisecond latencies
    assert gate.passthrough == 4
    wait_until(lambda: gate.status().inflight == 0)


def test_inference_paths():
    from autotune.gate.proxy import is_inference

    for path in ("/v1/completions", "/v1/chat/completions", "/generate_stream", "/completion", "/v1/embeddings/"):
        assert is_inference("POST", path), path
    for method, path in (("GET", "/v1/completions"), ("GET", "/metrics"), ("GET", "/health"),
                         ("POST", "/tokenize"), ("GET", "/v1/models"), ("POST", "/gate/config")):
        assert not is_inference(method, path), (method, path)


def test_metrics_page_has_wait_and_upstream_histograms(upstream, run_app):
    from prometheus_client.parser import text_string_to_metric_families

    upstream.delay_s = 0.2
    gate = gate_for(limit=1, max_queue=4, queue_timeout_s=10)
    g = run_app(build_app(gate, upstream.url))
    c = client(g.url)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda i: c.completions.create(model="fake", prompt=str(i), max_tokens=1), range(2)))
    wait_until(lambda: gate.status().inflight == 0)
    samples = {s.name: s.value for f in text_string_to_metric_families(httpx.get(f"{g.url}/gate/metrics").text)
               for s in f.samples if not s.labels.get("le")}
    assert samples["autotune_gate_queue_wait_seconds_count"] == 2
    assert samples["autotune_gate_queue_wait_seconds_sum"] > 0.1  # the second waited for the first
    assert samples["autotune_gate_upstream_latency_seconds_count"] == 2
    assert samples["autotune_gate_upstream_latency_seconds_sum"] >= 0.4
    assert samples["autotune_gate_upstream_first_byte_seconds_count"] == 2


def test_client_leaving_before_the_upstream_answers_frees_the_slot(upstream, run_app):
    # A non-streamed request: nothing flows until upstream is done (5 s here). The gate
    # watches the client meanwhile; when it leaves, the upstream request is dropped too.
    upstream.delay_s = 5.0
    gate = gate_for(limit=1)
    g = run_app(build_app(gate, upstream.url))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{g.url}/v1/completions", json={"model": "fake", "prompt": "a"}, timeout=httpx.Timeout(10, read=0.3))
    wait_until(lambda: gate.status().inflight == 0, timeout=10)
    assert upstream.inflight == 1  # upstream is still at it: the slot was freed by the client leaving
    upstream.delay_s = 0.01
    out = client(g.url).completions.create(model="fake", prompt="next", max_tokens=1)
    assert out.choices[0].text == "echo:next" and gate.status().admitted == 2


class _Counting:
    """An upstream that reads request bodies chunk by chunk and answers how many bytes came."""

    def __init__(self) -> None:
        self.received: list[int] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        n = 0
        while True:
            msg = await receive()
            n += len(msg.get("body", b""))
            if msg["type"] != "http.request" or not msg.get("more_body"):
                break
        self.received.append(n)
        body = b'{"bytes": %d}' % n
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


def test_request_bodies_stream_through_and_over_the_limit_are_413_without_buffering(run_app):
    import psutil

    up = _Counting()
    upstream = run_app(up)
    gate = gate_for(limit=2)
    mib = 1 << 20
    g = run_app(build_app(gate, upstream.url, max_body_bytes=4 * mib))
    chunk = b"x" * mib

    ok = httpx.post(f"{g.url}/v1/completions", content=(chunk for _ in range(3)), timeout=30)
    assert ok.status_code == 200 and ok.json() == {"bytes": 3 * mib}  # chunked, passed on whole

    rss = psutil.Process().memory_info().rss
    big = httpx.post(f"{g.url}/v1/completions", content=(chunk for _ in range(48)), timeout=60)
    grown = psutil.Process().memory_info().rss - rss
    assert big.status_code == 413, big.text
    err = big.json()["error"]
    assert err["code"] == 413 and err["param"] == "body" and err["type"] == "BadRequestError", err
    assert "over the gate's limit of 4194304 bytes" in err["message"]
    assert grown < 24 * mib, grown  # 48 MiB went by; the gate never held it
    assert len(up.received) == 2 and up.received[1] <= 5 * mib  # the upstream saw no more than the limit
    wait_until(lambda: gate.status().inflight == 0)

    admitted = gate.status().admitted
    declared = httpx.post(f"{g.url}/v1/completions", content=b"y" * (5 * mib), timeout=30)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == 413
    assert "declares 5242880 bytes" in declared.json()["error"]["message"]
    assert gate.status().admitted == admitted and len(up.received) == 2  # refused before a slot or the upstream
