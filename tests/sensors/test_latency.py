"""Latency sensor: histogram-delta quantiles, sample pages of each flavor, failure modes."""

from __future__ import annotations

import contextlib
import math
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from autotune.sensors.latency import (
    ActiveProbe,
    BackgroundProbe,
    Histogram,
    LatencyScraper,
    compute_window,
    detect_flavor,
    flavor_names,
    histogram_delta,
    histogram_quantile,
    PageParser,
    parse_page,
)

FIX = Path(__file__).parents[1] / "fixtures" / "metrics"


def page(name: str) -> str:
    return (FIX / name).read_text()


def cumulative(values: np.ndarray, bounds: list[float]) -> Histogram:
    b = [(le, float((values <= le).sum())) for le in bounds] + [(float("inf"), float(len(values)))]
    return Histogram(buckets=tuple(b), sum=float(values.sum()), count=float(len(values)))


class Pages:
    """A scraper's fetch that serves a list of bodies in turn."""

    def __init__(self, *bodies: str | Exception, status: int = 200) -> None:
        self.bodies = list(bodies)
        self.status = status

    def __call__(self) -> tuple[int, str]:
        body = self.bodies.pop(0)
        if isinstance(body, Exception):
            raise body
        return self.status, body

    def close(self) -> None:
        pass


# -- quantile arithmetic ------------------------------------------------------------------------
def test_quantiles_from_deltas_match_numpy():
    rng = np.random.default_rng(1)
    bounds = list(np.round(np.arange(0.05, 5.0001, 0.05), 4))  # fine buckets: error <= one width
    before = rng.lognormal(np.log(2.0), 0.3, 5000)  # old regime, must not leak into the window
    window = rng.lognormal(np.log(0.5), 0.4, 3000)
    prev = cumulative(before, bounds)
    cur = cumulative(np.concatenate([before, window]), bounds)
    delta = histogram_delta(prev, cur)
    assert delta.count == 3000
    for q in (0.5, 0.95, 0.99):
        assert histogram_quantile(q, delta) == pytest.approx(np.quantile(window, q), abs=0.05)


def test_uniform_data_interpolates_exactly():
    # 100 observations spread uniformly in (1, 2]: linear interpolation is exact.
    h = Histogram(buckets=((1.0, 0.0), (2.0, 100.0), (float("inf"), 100.0)), count=100)
    assert histogram_quantile(0.5, h) == pytest.approx(1.5)
    assert histogram_quantile(0.95, h) == pytest.approx(1.95)


def test_first_bucket_interpolates_from_zero():
    h = Histogram(buckets=((0.4, 10.0), (1.0, 10.0), (float("inf"), 10.0)))
    assert histogram_quantile(0.5, h) == pytest.approx(0.2)


def test_rank_in_inf_bucket_returns_highest_finite_bound():
    h = Histogram(buckets=((1.0, 1.0), (2.0, 2.0), (float("inf"), 100.0)))
    assert histogram_quantile(0.99, h) == 2.0


def test_empty_window_and_missing_inf_give_none():
    empty = Histogram(buckets=((1.0, 0.0), (float("inf"), 0.0)))
    assert histogram_quantile(0.5, empty) is None
    no_inf = Histogram(buckets=((1.0, 3.0), (2.0, 5.0)))
    assert histogram_quantile(0.5, no_inf) is None


def test_counter_reset_uses_current_histogram():
    prev = Histogram(buckets=((1.0, 50.0), (float("inf"), 100.0)), count=100)
    cur = Histogram(buckets=((1.0, 4.0), (float("inf"), 5.0)), count=5)  # restarted server
    d = histogram_delta(prev, cur)
    assert d == cur
    assert histogram_quantile(0.5, d) == pytest.approx(0.625)


def test_bucket_layout_change_counts_as_reset():
    prev = Histogram(buckets=((1.0, 50.0), (float("inf"), 100.0)), count=100)
    cur = Histogram(buckets=((0.5, 60.0), (1.0, 70.0), (float("inf"), 120.0)), count=120)
    assert histogram_delta(prev, cur) == cur


# -- sample pages -------------------------------------------------------------------------------
@pytest.mark.parametrize("flavor", ["vllm", "tgi", "llamacpp"])
def test_sample_pages_parse_and_detect(flavor):
    p1 = parse_page(page(f"{flavor}_1.prom"))
    assert detect_flavor(p1) == flavor


def test_vllm_window_reflects_only_the_second_scrape():
    p1, p2 = parse_page(page("vllm_1.prom")), parse_page(page("vllm_2.prom"))
    w = compute_window("vllm", p1, p2, window_s=15)
    assert w.requests == 120  # request_success_total summed over finished_reason
    assert w.running == 4 and w.waiting == 3
    # second scrape's workload was 2x slower (median e2e ~2.4 s vs ~1.2 s)
    assert 1.8 < w.p50_s < 3.2
    assert w.p50_s <= w.p95_s <= w.p99_s
    assert w.ttft_p95_s is not None and w.itl_p50_s is not None
    assert 0.05 < w.itl_mean_s < 0.12
    assert w.unavailable == ()


def test_tgi_window():
    p1, p2 = parse_page(page("tgi_1.prom")), parse_page(page("tgi_2.prom"))
    w = compute_window("tgi", p1, p2, window_s=15)
    assert w.requests == 90  # counter without _total
    assert w.running == 8 and w.waiting == 5
    assert 2.0 < w.p50_s < 4.5  # 2.5x slower workload in the window
    assert w.ttft_p95_s is None and "ttft percentiles" in w.unavailable


def test_llamacpp_window_gives_mean_time_per_token_only():
    p1, p2 = parse_page(page("llamacpp_1.prom")), parse_page(page("llamacpp_2.prom"))
    w = compute_window("llamacpp", p1, p2, window_s=15)
    assert w.itl_mean_s == pytest.approx(24.0 / 400)
    assert w.p95_s is None and w.requests is None
    assert w.running == 2 and w.waiting == 3
    assert {"e2e percentiles", "request count"} <= set(w.unavailable)


def test_scraper_first_sample_has_no_window_then_reports_it():
    src = Pages(page("vllm_1.prom"), page("vllm_2.prom"))
    s = LatencyScraper("http://x/metrics", fetch=src)
    r1 = s.sample(now=100.0)
    assert r1.ok and r1.p95_s is None and r1.running == 2
    r2 = s.sample(now=115.0)
    assert r2.ok and r2.source.startswith("vllm:")
    assert r2.requests == 120 and r2.p95_s is not None and r2.ttft_p95_s is not None
    assert s.last_window.window_s == 15.0


# -- failure modes: always a reading, never an exception ----------------------------------------
@pytest.mark.parametrize(
    "body, needle",
    [
        ("<!DOCTYPE html><html><body>Not found</body></html>", "HTML"),
        ("", "empty"),
        ("this is { not prometheus\n", "not a valid Prometheus"),
        (page("vllm_1.prom")[:1500] + 'vllm:e2e_request_latency_seconds_bucket{le="0.3",mod', "not a valid"),
        ("# TYPE foo counter\nfoo_total 3\n", "no vLLM/TGI/llama.cpp metrics"),
        ("# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 1\n", "lacks vllm:e2e_request"),
    ],
)
def test_bad_pages_give_ok_false_with_error(body, needle):
    s = LatencyScraper("http://x/metrics", fetch=Pages(body))
    r = s.sample(now=1.0)
    assert not r.ok
    assert needle in r.error


def test_http_error_status_gives_ok_false():
    s = LatencyScraper("http://x/metrics", fetch=Pages("nope", status=500))
    r = s.sample(now=1.0)
    assert not r.ok and "HTTP 500" in r.error


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_gives_ok_false():
    s = LatencyScraper(f"http://127.0.0.1:{_closed_port()}/metrics", timeout=1.0)
    r = s.sample(now=1.0)
    assert not r.ok and "cannot scrape" in r.error and "ConnectionRefusedError" in r.error


def test_unknown_flavor_is_a_programming_error():
    with pytest.raises(ValueError):
        LatencyScraper("http://x", flavor="sglang")  # type: ignore[arg-type]


# -- active probe -------------------------------------------------------------------------------
def test_active_probe_measures_once_per_interval_and_reports_each_probe_once():
    calls = []
    clock = iter([0.0, 0.25, 100.0, 100.5]).__next__  # t0/t1 of two probes

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "gpt2"}]})
        body = request.content.replace(b" ", b"")
        assert b'"max_tokens":4' in body and b'"stream":true' in body
        return httpx.Response(200, json={"choices": [{"text": "x"}]})  # answered in one piece

    probe = ActiveProbe("http://srv", interval_s=10, client=httpx.Client(transport=httpx.MockTransport(handler)), clock=clock)
    r = probe.sample(now=0.0)
    assert r.ok and r.source == "probe:http://srv" and len(r.probes) == 1
    assert r.probes[0].e2e_s == pytest.approx(0.25) and r.probes[0].ttft_s is None  # not streamed: no TTFT
    assert r.p95_s is None and r.requests is None  # the page's figures stay the page's
    quiet = probe.sample(now=5.0)  # within the interval: no probe, none reported twice
    assert quiet.ok and quiet.probes == ()
    r2 = probe.sample(now=20.0)
    assert [p.e2e_s for p in r2.probes] == [pytest.approx(0.5)]
    assert calls == ["/v1/models", "/v1/completions", "/v1/completions"]


def test_active_probe_connection_refused():
    probe = ActiveProbe(f"http://127.0.0.1:{_closed_port()}", model="m", timeout=1.0)
    out = probe.probe()
    assert isinstance(out, str) and "probe failed" in out and "ConnectError" in out
    r = probe.sample(now=0.0)
    assert not r.ok and "probe failed" in r.error


def test_active_probe_cost_is_bounded():
    with pytest.raises(ValueError, match="1..16"):
        ActiveProbe("http://srv", max_tokens=64)
    from autotune.config import LatencySource

    with pytest.raises(ValueError):
        LatencySource(probe_url="http://srv", probe_interval_s=0.1)  # at most one probe a second
    with pytest.raises(ValueError):
        LatencySource(probe_url="http://srv", probe_max_tokens=17)


def test_background_probe_never_blocks_sampling_on_a_slow_server():
    import threading

    release = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        release.wait(10)  # the server is stuck
        return httpx.Response(200, json={"choices": [{"text": "x"}]})

    probe = ActiveProbe("http://srv", interval_s=0.05, model="m",
                        client=httpx.Client(transport=httpx.MockTransport(handler)))
    bg = BackgroundProbe(probe)
    try:
        t0 = time.monotonic()
        r = bg.sample()
        assert time.monotonic() - t0 < 0.5
        assert not r.ok and "no probe finished yet" in r.error
        release.set()
        deadline = time.monotonic() + 5
        seen = 0
        while seen < 2:  # it keeps probing every interval; each probe is reported once
            r = bg.sample()
            assert r.ok or "no probe finished yet" in r.error
            seen += len(r.probes)
            assert time.monotonic() < deadline, "probe never finished"
            time.sleep(0.01)
    finally:
        bg.close()
    assert not bg._thread.is_alive()


class StreamingServer:
    """A tiny OpenAI-style server on a free port: each completion streams ``tokens`` chunks, the
    first after ``ttft[i]`` seconds (i-th request), the next ones ``gap`` apart."""

    def __init__(self, ttft: list[float], gap: float, tokens: int = 4) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self
        self.requests: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the stream ends when the connection closes

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                body = b'{"data": [{"id": "tiny"}]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                import json

                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                i = len(outer.requests)
                outer.requests.append(req)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                time.sleep(ttft[min(i, len(ttft) - 1)])
                for k in range(min(tokens, req["max_tokens"])):
                    if k:
                        time.sleep(gap)
                    chunk = {"choices": [{"index": 0, "text": f"t{k}", "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                final = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
                self.wfile.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        self._srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._srv.server_address[1]}"
        threading.Thread(target=self._srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._srv.shutdown()
        self._srv.server_close()


def test_probe_measures_ttft_gaps_and_e2e_of_a_streamed_completion():
    ttft, gap = [0.05, 0.10, 0.15, 0.20, 0.30], 0.02
    srv = StreamingServer(ttft, gap)
    try:
        probe = ActiveProbe(srv.url, interval_s=1, max_tokens=4)
        outcomes = [probe.probe() for _ in ttft]
    finally:
        srv.close()
    assert all(not isinstance(o, str) for o in outcomes), outcomes
    assert srv.requests[0] == {"model": "tiny", "prompt": "Hi", "max_tokens": 4, "temperature": 0, "stream": True}
    for o, t in zip(outcomes, ttft):
        assert o.ttft_s >= t  # the server held the first token this long: the probe cannot see it sooner
        assert len(o.gaps_s) == 3 and all(g > 0 for g in o.gaps_s)  # the empty final chunk is no token
        # one gap can read short when its chunk waited in a buffer behind the one before it; the
        # server's own pacing bounds the whole request from below
        assert o.e2e_s >= t + 3 * gap and o.e2e_s >= o.ttft_s + sum(o.gaps_s) - 1e-9
    # the window's quantiles are exact quantiles over the window's probes, with their count
    from autotune.detect.metrics import derive_metrics
    from autotune.types import LatencyReading, ServiceReading, Snapshot

    def snap(ts, probes):
        r = LatencyReading(source=f"probe:{srv.url}", ok=True, probes=tuple(probes))
        return Snapshot(ts=ts, services={"llm": ServiceReading(name="llm", latency=r)})

    window = [snap(0.0, []), snap(5.0, outcomes[:2]), snap(10.0, []), snap(15.0, outcomes[2:])]
    m = derive_metrics(window)
    firsts = sorted(o.ttft_s for o in outcomes)
    assert m["svc.llm.latency.probe.samples"] == 5
    assert m["svc.llm.latency.probe.ttft_p50_s"] == pytest.approx(firsts[2])
    assert m["svc.llm.latency.probe.ttft_p95_s"] == pytest.approx(firsts[3] + 0.8 * (firsts[4] - firsts[3]))
    assert m["svc.llm.latency.ttft_p95_s"] == m["svc.llm.latency.probe.ttft_p95_s"]  # no page: the probe's
    assert m["svc.llm.latency.probe.p95_s"] >= m["svc.llm.latency.probe.ttft_p95_s"]
    assert m["svc.llm.latency.probe.itl_mean_s"] >= gap
    # the first snapshot's interval lies before the window: its probe does not count
    m = derive_metrics([snap(0.0, outcomes[:1]), snap(5.0, outcomes[1:2])])
    assert m["svc.llm.latency.probe.samples"] == 1


def test_page_and_probe_give_llamacpp_counters_and_the_probes_ttft():
    from autotune.sensors.latency import PageAndProbe

    srv = StreamingServer([0.05], 0.01)
    try:
        scraper = LatencyScraper("http://x/metrics",
                                 fetch=Pages(page("llamacpp_1.prom"), page("llamacpp_2.prom")))
        both = PageAndProbe(scraper, ActiveProbe(srv.url, interval_s=1))
        r1 = both.sample(now=0.0)
        r2 = both.sample(now=15.0)
    finally:
        srv.close()
    assert r1.ok and r1.flavor == "llamacpp" and len(r1.probes) == 1
    assert r2.ok and r2.source == f"llamacpp:http://x/metrics + probe:{srv.url}"
    assert r2.itl_mean_s == pytest.approx(24.0 / 400) and len(r2.probes) == 1 and r2.probes[0].ttft_s >= 0.05


def test_page_and_probe_stay_ok_when_one_of_them_fails():
    from autotune.sensors.latency import PageAndProbe

    down = ActiveProbe(f"http://127.0.0.1:{_closed_port()}", model="m", timeout=1.0)
    scraper = LatencyScraper("http://x/metrics", fetch=Pages(page("llamacpp_1.prom")))
    r = PageAndProbe(scraper, down).sample(now=0.0)
    assert r.ok and "probe failed" in r.error and r.flavor == "llamacpp"


# -- current names first, previous names as fallback ---------------------------------------------
# Pages under tests/fixtures/metrics/*_current_*.prom follow each server's current documentation
# (vLLM docs usage/metrics.md + vllm/v1/metrics/loggers.py; TGI docs reference/metrics.md;
# llama.cpp tools/server/README.md "Available metrics"), see that directory's README. In both
# windows each flavor served 60 requests x 40 tokens with inter-token latency median ~90 ms.
WINDOW_REQUESTS, WINDOW_TOKENS, ITL_MEDIAN = 60, 60 * 40, 0.09


@pytest.mark.parametrize("flavor", ["vllm", "tgi", "llamacpp"])
def test_current_pages_detect_and_scrape(flavor):
    src = Pages(page(f"{flavor}_current_1.prom"), page(f"{flavor}_current_2.prom"))
    s = LatencyScraper("http://x/metrics", fetch=src)
    assert s.sample(now=0.0).ok
    r = s.sample(now=15.0)
    assert r.ok and r.source.startswith(f"{flavor}:")
    assert r.tokens == WINDOW_TOKENS  # density: tokens generated in the window
    assert r.running == 4 and r.waiting == 1
    assert r.itl_mean_s == pytest.approx(ITL_MEDIAN, rel=0.1)


def test_current_vllm_page_gives_itl_from_the_new_name():
    w = compute_window("vllm", parse_page(page("vllm_current_1.prom")),
                       parse_page(page("vllm_current_2.prom")), window_s=15)
    assert w.itl_metric == "vllm:inter_token_latency_seconds"
    assert w.itl_samples == WINDOW_REQUESTS * 39  # one per gap between tokens
    # buckets 0.075 / 0.1 around the median: interpolation is good to a bucket's width
    assert 0.075 <= w.itl_p50_s <= 0.1 and w.itl_p50_s <= w.itl_p95_s <= 0.15
    assert w.ttft_samples == WINDOW_REQUESTS and 0.2 < w.ttft_p95_s < 0.6
    assert w.requests == WINDOW_REQUESTS and 3.0 < w.p50_s < 4.5  # 0.2 s + 39 x 90 ms
    assert w.unavailable == ()


def test_current_tgi_page_counts_tokens_from_the_generated_tokens_histogram():
    w = compute_window("tgi", parse_page(page("tgi_current_1.prom")),
                       parse_page(page("tgi_current_2.prom")), window_s=15)
    assert w.itl_metric == "tgi_request_mean_time_per_token_duration"
    assert w.itl_samples == WINDOW_REQUESTS  # TGI: one per-request mean per request
    # TGI's buckets are 50 % wide (1e-4 * 1.5^k): the median lands in (0.0876, 0.131]
    assert 0.0876 < w.itl_p50_s <= 0.1314 and w.itl_p50_s <= w.itl_p95_s <= 0.1971
    assert w.tokens == WINDOW_TOKENS and w.requests == WINDOW_REQUESTS
    assert w.ttft_p95_s is None and "ttft percentiles" in w.unavailable


def test_current_llamacpp_page_has_only_the_mean():
    w = compute_window("llamacpp", parse_page(page("llamacpp_current_1.prom")),
                       parse_page(page("llamacpp_current_2.prom")), window_s=15)
    assert w.itl_mean_s == pytest.approx(ITL_MEDIAN)
    assert w.itl_p95_s is None and w.itl_samples is None and w.requests is None
    assert {"per-token percentiles", "request count"} <= set(w.unavailable)


def test_previous_vllm_name_is_the_fallback():
    # vllm_*.prom (older vLLM) has only vllm:time_per_output_token_seconds
    w = compute_window("vllm", parse_page(page("vllm_1.prom")), parse_page(page("vllm_2.prom")))
    assert w.itl_metric == "vllm:time_per_output_token_seconds"
    assert w.itl_p95_s is not None and w.itl_samples == 120


def _itl_page(name: str, values: list[float]) -> str:
    bounds = [0.05, 0.1, 0.2]
    lines = [f"# TYPE {name} histogram"]
    lines += [f'{name}_bucket{{le="{b}"}} {sum(v <= b for v in values)}' for b in bounds]
    lines += [f'{name}_bucket{{le="+Inf"}} {len(values)}', f"{name}_sum {sum(values)}", f"{name}_count {len(values)}"]
    return "\n".join(lines) + "\n"


def test_when_both_vllm_names_are_present_the_current_one_wins():
    e2e = _itl_page("vllm:e2e_request_latency_seconds", [1.0])
    prev = parse_page(e2e + _itl_page("vllm:inter_token_latency_seconds", [])
                      + _itl_page("vllm:time_per_output_token_seconds", []))
    cur = parse_page(e2e + _itl_page("vllm:inter_token_latency_seconds", [0.03] * 10)
                     + _itl_page("vllm:time_per_output_token_seconds", [0.15] * 10))
    w = compute_window("vllm", prev, cur)
    assert w.itl_metric == "vllm:inter_token_latency_seconds" and w.itl_p95_s < 0.05


@contextlib.contextmanager
def serve(body: bytes, *, drop_idle: bool = False):
    """A metrics server on a free port: (base URL, the client addresses of its connections).
    ``drop_idle``: it closes each connection after answering, without saying so (as a server
    whose keep-alive timeout ran out between two scrapes does)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    connections = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def setup(self) -> None:
            super().setup()
            connections.append(self.client_address)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = drop_idle

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", connections
    finally:
        srv.shutdown()
        srv.server_close()


def test_scraper_reuses_one_connection_and_closes_it():
    """Scrapes every 0.2 s must not pay for a new client and connection each time."""
    with serve(page("vllm_current_1.prom").encode()) as (url, connections):
        s = LatencyScraper(f"{url}/metrics")
        readings = [s.sample(now=100.0 + i) for i in range(5)]
        assert all(r.ok for r in readings), [r.error for r in readings]
        assert len(connections) == 1
        s.close()
        assert s._fetch._conn is None
        assert s.sample(now=200.0).ok  # a closed scraper opens a new connection when used again
        assert len(connections) == 2
        s.close()


# -- llama.cpp's counters over a window -----------------------------------------------------------
def test_llamacpp_counters_give_a_window_mean_per_token_prompt_throughput_and_the_queue():
    """llama_slots_*.prom (see the fixtures' README): the counters move when a request ends, each
    slot adding its own time, so the mean is per token as each request saw it."""
    from autotune.detect.metrics import derive_metrics
    from autotune.types import ServiceReading, Snapshot

    src = Pages(*(page(f"llamacpp_slots_{i}.prom") for i in (1, 2, 3, 4)))
    s = LatencyScraper("http://x/metrics", fetch=src)
    readings = [s.sample(now=10.0 * i) for i in range(4)]
    assert all(r.ok and r.flavor == "llamacpp" for r in readings)
    first, r2, r3, r4 = readings
    assert first.itl_mean_s is None and first.running == 2 and first.waiting == 1  # no window yet
    assert r2.tokens == 150 and r2.token_seconds == pytest.approx(12.0)
    assert r2.itl_mean_s == pytest.approx(0.08)  # 12 s of slot time over 150 tokens, in 10 s of wall time
    assert r2.prompt_tokens == 300 and r2.prompt_seconds == pytest.approx(1.5)
    assert r3.itl_mean_s == pytest.approx(0.1) and (r3.running, r3.waiting) == (1, 0)
    assert r4.tokens == 0 and r4.itl_mean_s is None and r4.running == 2  # no request ended: no figure
    assert r2.p95_s is None and r2.itl_p95_s is None and r2.ttft_p95_s is None  # no histograms

    snaps = [Snapshot(ts=10.0 * i, services={"llm": ServiceReading(name="llm", latency=r)})
             for i, r in enumerate(readings)]
    m = derive_metrics(snaps)
    assert m["svc.llm.latency.itl_mean_s"] == pytest.approx(17.0 / 200)  # seconds over tokens, not a mean of means
    assert m["svc.llm.latency.tokens"] == 200 and m["svc.llm.latency.prompt_tokens"] == 400
    assert m["svc.llm.latency.prompt_tokens_per_s"] == pytest.approx(200.0)
    assert (m["svc.llm.latency.running"], m["svc.llm.latency.waiting"]) == (2, 0)
    assert not any(k.startswith("svc.llm.latency.") and k.endswith(("p95_s", "p99_s")) for k in m)


def test_a_scraper_that_lost_its_page_still_names_the_flavor_it_detected():
    s = LatencyScraper("http://x/metrics", fetch=Pages(page("llamacpp_slots_1.prom"), OSError("down")))
    assert s.sample(now=0.0).flavor == "llamacpp"
    r = s.sample(now=1.0)
    assert not r.ok and r.flavor == "llamacpp" and "cannot scrape" in r.error


def test_non_finite_samples_on_a_page_are_no_figures():
    """NaN and +-Inf are legal in the exposition format; none of them becomes a figure (a NaN
    gauge is absent, an infinite bucket count is not an observation)."""
    p1, p2 = page("vllm_1.prom"), page("vllm_2.prom")
    p2 = p2.replace('vllm:num_requests_running{model_name="gpt2"} 4.0',
                    'vllm:num_requests_running{model_name="gpt2"} NaN')
    p2 = p2.replace('vllm:time_per_output_token_seconds_bucket{le="0.01",model_name="gpt2"} 0.0',
                    'vllm:time_per_output_token_seconds_bucket{le="0.01",model_name="gpt2"} +Inf')
    w = compute_window("vllm", parse_page(p1), parse_page(p2), window_s=15)
    assert w.running is None
    figures = [v for v in w.model_dump().values() if isinstance(v, float)]
    assert figures and all(math.isfinite(v) for v in figures)
    assert all(math.isfinite(c) for b in w.hist.values() for c in b.counts)


def test_a_connection_the_server_dropped_is_opened_again():
    with serve(page("vllm_current_1.prom").encode(), drop_idle=True) as (url, connections):
        s = LatencyScraper(f"{url}/metrics")
        readings = [s.sample(now=100.0 + i) for i in range(3)]
        assert all(r.ok for r in readings), [r.error for r in readings]
        assert len(connections) == 3
        s.close()


def test_a_page_too_large_is_an_error_not_a_memory_spike(monkeypatch):
    import autotune.sensors.latency as lat

    monkeypatch.setattr(lat, "MAX_PAGE_BYTES", 1000)
    with serve(page("vllm_current_1.prom").encode()) as (url, _):
        r = LatencyScraper(f"{url}/metrics").sample(now=1.0)
    assert not r.ok and "larger than" in r.error


@pytest.mark.parametrize("flavor", ["vllm", "tgi", "llamacpp"])
def test_a_known_flavor_parses_only_its_own_metrics_to_the_same_window(flavor):
    p1, p2 = page(f"{flavor}_current_1.prom"), page(f"{flavor}_current_2.prom")
    whole = compute_window(flavor, parse_page(p1), parse_page(p2), window_s=15)
    parser = PageParser(flavor_names(flavor, parse_page(p1)))
    first = parser.parse(p1)
    remembered = len(parser._series)
    # the second page's lines are the first's series: read from memory, not parsed again
    assert compute_window(flavor, first, parser.parse(p2), window_s=15) == whole
    assert len(parser._series) == remembered < p2.count("\n")


def test_a_remembered_series_with_a_garbled_value_is_still_an_error():
    parser = PageParser(flavor_names("vllm"))
    parser.parse(page("vllm_1.prom"))
    garbled = page("vllm_2.prom").replace('vllm:e2e_request_latency_seconds_count{model_name="gpt2"} ',
                                          'vllm:e2e_request_latency_seconds_count{model_name="gpt2"} x', 1)
    assert garbled != page("vllm_2.prom")
    with pytest.raises(ValueError, match="not a valid Prometheus"):
        parser.parse(garbled)


def test_after_detection_other_metrics_are_not_parsed_until_a_page_fails():
    junk = 'some_other_metric{broken="label 3\n'  # a bad line, in a family the scraper does not read
    src = Pages(page("vllm_1.prom"), page("vllm_2.prom") + junk, "<html>oops</html>", page("tgi_1.prom"))
    s = LatencyScraper("http://x/metrics", fetch=src)
    assert s.sample(now=1.0).ok
    assert s.sample(now=2.0).ok  # detected vllm: the junk line is never parsed
    assert not s.sample(now=3.0).ok
    r = s.sample(now=4.0)  # after a failure the whole page is looked at again: another server
    assert r.ok and r.source.startswith("tgi:")
