"""The reference server speaks vLLM's OpenAI-compatible protocol, directly and through the gate.

Every case of issue 15 is driven with the official ``openai`` client (or raw httpx where the
client cannot express it: oversized bodies, leaving mid-request), once against the server and
once through the gate in front of it (the ``client`` / ``base_url`` fixtures are parametrized).
Errors must be ``{"error": {"message", "type", "param", "code"}}`` with vLLM's status codes.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from openai.types import Completion
from prometheus_client.parser import text_string_to_metric_families

from autotune.sensors.latency import LatencyScraper

pytestmark = pytest.mark.workload

MODEL = "gpt2-tiny"
CTX = 256  # the tiny preset's n_positions
PROMPT = "Why is the sky blue?"


# -- helpers ----------------------------------------------------------------------------------
def metrics(server) -> dict[str, float]:
    """The server's page, samples summed over labels except finished_reason."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + (f"{{{s.labels['finished_reason']}}}" if "finished_reason" in s.labels else "")
            out[key] = out.get(key, 0.0) + s.value
    return out


def wait_until(pred, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def error_body(err: openai.APIStatusError, status: int, param: str | None) -> dict:
    body = err.response.json()
    assert err.status_code == status
    assert list(body) == ["error"], body
    e = body["error"]
    assert set(e) == {"message", "type", "param", "code"}, e
    assert e["code"] == status and e["param"] == param and e["message"], e
    return e


def refused(client, status: int, param: str | None, **kw) -> dict:
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(**{"model": MODEL, "prompt": PROMPT, **kw})
    return error_body(info.value, status, param)


@pytest.fixture
def slow_tokens(engine, monkeypatch):
    """Each generated token takes >= 50 ms, so a 200-token request outlives any disconnect."""
    real = engine.stream_ids

    def slow(*args, **kw):
        for ev in real(*args, **kw):
            time.sleep(0.05)
            yield ev

    monkeypatch.setattr(engine, "stream_ids", slow)


# -- plain and streamed completions -----------------------------------------------------------
def test_completion_validates_against_the_client_models(client, engine):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, seed=1)
    assert isinstance(r, Completion) and r.object == "text_completion" and r.model == MODEL
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    assert r.usage.prompt_tokens == len(engine.encode(PROMPT))
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5


def test_model_may_be_omitted(base_url):
    r = httpx.post(f"{base_url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}, timeout=30)
    assert r.status_code == 200 and r.json()["model"] == MODEL


def test_stream_has_one_chunk_per_token_and_usage_when_asked(client, engine):
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, stream=True,
                                            stream_options={"include_usage": True}))
    tokens, last = chunks[:-1], chunks[-1]
    assert len(tokens) == 4 and all(len(c.choices) == 1 for c in tokens)
    assert [c.choices[0].finish_reason for c in tokens] == [None, None, None, "length"]
    assert last.choices == [] and last.usage.completion_tokens == 4
    assert last.usage.prompt_tokens == len(engine.encode(PROMPT))
    plain = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, stream=True))
    assert len(plain) == 3 and all(c.usage is None for c in plain)  # no usage unless asked


def test_continuous_usage_stats(base_url):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=30) as r:
        events = [e for e in r.read().decode().split("\n\n") if e.startswith("data: {")]
    import json

    usage = [json.loads(e[6:])["usage"]["completion_tokens"] for e in events]
    assert usage == [1, 2, 3, 3]  # running count on every chunk, then the final usage chunk


# -- errors: OpenAI-shaped 400 / 404, never 422 -------------------------------------------------
@pytest.mark.parametrize("kw, param", [
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 2}, "top_p"),
    ({"n": 0}, "n"),
    ({"logprobs": 25}, "logprobs"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ({"prompt": ""}, "prompt"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),  # vLLM has it; we refuse, never ignore
    ({"suffix": "!"}, "suffix"),
])
def test_bad_requests_are_400_with_the_field_named(client, kw, param):
    e = refused(client, 400, param, **kw)
    assert e["type"] == "BadRequestError"


def test_max_tokens_zero_is_refused_unless_echo(client, engine):
    refused(client, 400, "max_tokens", max_tokens=0)
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0, echo=True)
    assert r.choices[0].text == PROMPT and r.usage.completion_tokens == 0
    assert r.usage.prompt_tokens == len(engine.encode(PROMPT))


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=1)
    e = error_body(info.value, 404, "model")
    assert e["type"] == "NotFoundError" and "gpt-4" in e["message"]


def test_invalid_json_and_unknown_routes_are_openai_shaped(base_url):
    r = httpx.post(f"{base_url}/v1/completions", content=b"{not json", timeout=10,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"
    r = httpx.get(f"{base_url}/v1/nothing-here", timeout=10)
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


# -- the context is checked, never cut silently -------------------------------------------------
def test_context_overflow_is_400_and_processes_nothing(client, server, engine):
    before = metrics(server).get("vllm:prompt_tokens_total", 0)
    refused(client, 400, "prompt", prompt=[5, 99_999])  # a token id outside the vocabulary
    e = refused(client, 400, "input_text", prompt="x" * 90_000)  # the 90k characters
    assert "context length is only 256 tokens" in e["message"]
    long = "the quick brown fox " * 60  # under the character bound, over the token budget
    assert len(engine.encode(long)) > CTX - 16 and len(long) < (CTX - 16) * engine.max_chars_per_token
    e = refused(client, 400, "input_tokens", prompt=long)
    assert f"You passed {len(engine.encode(long))} input tokens" in e["message"]
    refused(client, 400, "max_tokens", max_tokens=CTX + 1)
    ids = engine.encode(long * 4)[:CTX - 10]  # a token-id prompt: 246 + 11 > 256
    refused(client, 400, "input_tokens", prompt=ids, max_tokens=11)
    assert client.completions.create(model=MODEL, prompt=ids, max_tokens=10).usage.prompt_tokens == CTX - 10
    assert metrics(server).get("vllm:prompt_tokens_total", 0) == before + CTX - 10  # only the accepted one


def test_requested_truncation_is_reported_and_counted(client, server, engine):
    long = "the quick brown fox " * 400  # 8000 characters, far over the context
    before = metrics(server).get("vllm:prompt_tokens_total", 0)
    r = client.completions.create(model=MODEL, prompt=long, max_tokens=3,
                                  extra_body={"truncate_prompt_tokens": 20})
    assert r.usage.prompt_tokens == 20
    assert metrics(server).get("vllm:prompt_tokens_total", 0) - before == 20  # tokens actually prefilled
    refused(client, 400, "truncate_prompt_tokens", prompt=long, max_tokens=3,
            extra_body={"truncate_prompt_tokens": CTX})
    r = client.completions.create(model=MODEL, prompt=long, max_tokens=6, extra_body={"truncate_prompt_tokens": -1})
    assert r.usage.prompt_tokens == CTX - 6  # -1 = as much as fits beside max_tokens


# -- n, echo, stop, logprobs ---------------------------------------------------------------------
def test_n_gives_that_many_choices(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, n=3, seed=5)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == 9
    assert len({c.text for c in r.choices}) > 1  # different samples, not one copied
    s = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, n=2, stream=True))
    assert sorted(c.choices[0].index for c in s) == [0, 0, 1, 1]
    refused(client, 400, "n", n=17)


def test_echo_prepends_the_prompt(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, echo=True, seed=2)
    assert r.choices[0].text.startswith(PROMPT) and len(r.choices[0].text) > len(PROMPT)


def test_stop_strings_end_the_choice_and_are_left_out(client):
    greedy = {"model": MODEL, "prompt": PROMPT, "max_tokens": 24, "temperature": 0}
    text = client.completions.create(**greedy).choices[0].text
    stop = next(text[i:i + 2] for i in range(2, len(text) - 1) if text[i:i + 2].strip())
    cut = text.find(stop)
    r = client.completions.create(**greedy, stop=[stop, "never-appears"])
    c = r.choices[0]
    assert c.finish_reason == "stop" and c.text == text[:cut]
    assert c.model_extra.get("stop_reason") == stop  # vLLM's extra field
    assert r.usage.completion_tokens < 24
    kept = client.completions.create(**greedy, stop=stop, extra_body={"include_stop_str_in_output": True})
    assert kept.choices[0].text == text[:cut + len(stop)]
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(**greedy, stop=[stop], stream=True))
    assert streamed == text[:cut]  # held back until it could not be the start of a stop string


def test_logprobs(client, engine):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, logprobs=2, seed=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(1 <= len(top) <= 3 for top in lp.top_logprobs)  # 2 alternatives + the sampled token
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    e = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, logprobs=1, echo=True)
    elp = e.choices[0].logprobs
    n_prompt = len(engine.encode(PROMPT))
    assert len(elp.tokens) == n_prompt + 2 and elp.token_logprobs[0] is None
    assert all(v is not None for v in elp.token_logprobs[1:])
    s = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, logprobs=1, stream=True))
    assert [len(c.choices[0].logprobs.tokens) for c in s] == [1, 1, 1]


# -- a client that leaves ------------------------------------------------------------------------
def test_client_leaving_a_stream_counts_abort(base_url, server, slow_tokens):
    m0 = metrics(server)
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 200, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=30) as r:
        chunks = r.iter_raw()
        assert next(chunks).startswith(b"data: ")
    wait_until(lambda: metrics(server).get("vllm:request_success_total{abort}", 0)
               == m0.get("vllm:request_success_total{abort}", 0) + 1)
    m1 = metrics(server)
    assert m1["vllm:num_requests_running"] == 0
    assert m1.get("vllm:request_success_total{length}") == m0.get("vllm:request_success_total{length}")
    assert m1["vllm:generation_tokens_total"] - m0.get("vllm:generation_tokens_total", 0) < 200


def test_client_leaving_a_plain_request_counts_abort(base_url, server, slow_tokens):
    m0 = metrics(server)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 200},
                   timeout=httpx.Timeout(10, read=0.5))
    wait_until(lambda: metrics(server).get("vllm:request_success_total{abort}", 0)
               == m0.get("vllm:request_success_total{abort}", 0) + 1)
    m1 = metrics(server)
    assert m1["vllm:num_requests_running"] == 0
    assert m1["vllm:generation_tokens_total"] - m0.get("vllm:generation_tokens_total", 0) < 200


# -- request size limit ---------------------------------------------------------------------------
def test_oversized_body_is_refused_quickly_and_metrics_stay_responsive(base_url, server):
    scrape_s: list[float] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            assert httpx.get(f"{server.url}/metrics", timeout=5).status_code == 200
            scrape_s.append(time.monotonic() - t0)

    big = {"model": MODEL, "prompt": "x" * 5_000_000, "max_tokens": 1}  # the 5 MB
    with ThreadPoolExecutor(1) as pool:
        scraper = pool.submit(scrape)
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            openai.OpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0, timeout=30
                          ).completions.create(**big)
        refused_s = time.monotonic() - t0
        chunked = httpx.post(f"{base_url}/v1/completions", content=(b"x" * 100_000 for _ in range(30)),
                             headers={"content-type": "application/json"}, timeout=30)
        stop.set()
        scraper.result()
    error_body(info.value, 413, "body")
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == 413
    assert refused_s < 2.0
    assert scrape_s and max(scrape_s) < 2.0  # the latency sensor's scrape timeout


# -- metrics: current and previous names, read by our own sensor ---------------------------------
def test_metrics_page_has_current_and_previous_itl_names_and_the_thread_gauge(client, server):
    client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5)
    m = metrics(server)
    assert m["vllm:inter_token_latency_seconds_count"] == m["vllm:time_per_output_token_seconds_count"] > 0
    assert m["vllm:inter_token_latency_seconds_sum"] == m["vllm:time_per_output_token_seconds_sum"]
    assert m["vllm:time_to_first_token_seconds_count"] > 0 and m["vllm:e2e_request_latency_seconds_count"] > 0
    assert m["autotune_workload_intra_op_threads"] == 1


def test_latency_sensor_reads_the_live_server_densely(client, server):
    scraper = LatencyScraper(f"{server.url}/metrics")
    assert scraper.sample(now=0.0).ok
    for _ in range(3):
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8)
    r = scraper.sample(now=10.0)
    assert r.ok and r.source.startswith("vllm:")
    assert r.tokens == 24 and r.requests == 3 and r.itl_samples == 3 * 7 and r.ttft_samples == 3
    assert r.itl_p95_s is not None and r.ttft_p95_s is not None and r.itl_mean_s > 0
    assert scraper.last_window.itl_metric == "vllm:inter_token_latency_seconds"


def test_gate_passes_scrapes_and_model_lists_without_admission(gate):
    g = gate.gate
    admitted, passed = g.status().admitted, g.passthrough
    assert httpx.get(f"{gate.url}/metrics", timeout=10).text.count("vllm:inter_token_latency_seconds_bucket") > 5
    assert httpx.get(f"{gate.url}/health", timeout=10).json()["status"] == "ok"
    assert [m.id for m in openai.OpenAI(base_url=f"{gate.url}/v1", api_key="x").models.list().data] == [MODEL]
    assert g.status().admitted == admitted and g.passthrough == passed + 3


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_both_pages(server, gate):
    httpx.post(f"{gate.url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 3}, timeout=30)
    for url, colons in ((f"{gate.url}/gate/metrics", False), (f"{server.url}/metrics", True)):
        out = subprocess.run(["promtool", "check", "metrics"], input=httpx.get(url, timeout=10).text,
                             capture_output=True, text=True, timeout=60)
        problems = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
        if colons:  # vLLM's own names contain ':' (promtool lints it); nothing else may be wrong
            assert problems and all("should not contain ':'" in p and p.startswith("vllm:") for p in problems), problems
        else:
            assert out.returncode == 0 and not problems, problems
