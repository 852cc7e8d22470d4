"""The completions server: OpenAI shapes, real concurrency, vLLM-named metrics."""

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from autotune.workload.model import Engine, spec_for  # noqa: E402
from autotune.workload.server import create_app  # noqa: E402

pytestmark = pytest.mark.workload


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(spec_for("tiny"), threads=1)


def _post_all(app, bodies):
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/completions", json=b) for b in bodies))
    return asyncio.run(go())


def _metrics(app) -> dict[str, float]:
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return (await c.get("/metrics")).text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(asyncio.run(go())):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def test_completion_non_stream(engine):
    app = create_app(engine, max_concurrency=1)
    (r,) = _post_all(app, [{"model": "gpt2-tiny", "prompt": "Why is the sky blue?", "max_tokens": 7,
                            "temperature": 0.7}])
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["finish_reason"] == "length"
    assert isinstance(body["choices"][0]["text"], str)
    assert body["usage"]["completion_tokens"] == 7
    assert body["usage"]["prompt_tokens"] == len(engine.encode("Why is the sky blue?"))


def test_bad_requests_are_openai_shaped_400s(engine):
    # vLLM answers validation problems with 400 {"error": {...}}, never FastAPI's 422
    app = create_app(engine, max_concurrency=1)
    r1, r2, r3 = _post_all(app, [{"prompt": "x", "max_tokens": -1}, {"prompt": "x", "n": "two"},
                                 {"prompt": ""}])
    for r, param in ((r1, "max_tokens"), (r2, "n"), (r3, "prompt")):
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "BadRequestError" and r.json()["error"]["param"] == param


def test_several_prompts_give_one_choice_each(engine):
    app = create_app(engine, max_concurrency=1)
    (r,) = _post_all(app, [{"prompt": ["a b", "hello there"], "max_tokens": 2}])
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] == len(engine.encode("a b")) + len(engine.encode("hello there"))
    assert body["usage"]["completion_tokens"] == 4


def test_two_workers_overlap_one_worker_serialises(engine):
    bodies = [{"prompt": "Explain the water cycle", "max_tokens": 40}] * 2
    app = create_app(engine, max_concurrency=2)
    t = sorted((r.json()["timing"] for r in _post_all(app, bodies)), key=lambda t: t["started"])
    assert t[1]["started"] < t[0]["finished"]  # second began before first ended: real overlap
    assert {t[0]["worker"], t[1]["worker"]} == {"infer_0", "infer_1"}

    app = create_app(engine, max_concurrency=1)
    t = sorted((r.json()["timing"] for r in _post_all(app, bodies)), key=lambda t: t["started"])
    assert t[1]["started"] >= t[0]["finished"]  # one worker: the second waited
    assert t[1]["started"] - t[1]["arrived"] > 0


def test_metrics_count_requests(engine):
    app = create_app(engine, max_concurrency=2)
    bodies = [{"prompt": p, "max_tokens": n} for p, n in [("a b c", 3), ("hello there", 5), ("x", 4)]]
    assert all(r.status_code == 200 for r in _post_all(app, bodies))
    m = _metrics(app)
    assert m["vllm:request_success_total"] == 3
    assert m["vllm:e2e_request_latency_seconds_count"] == 3
    assert m["vllm:time_to_first_token_seconds_count"] == 3
    assert m["vllm:time_per_output_token_seconds_count"] == (3 - 1) + (5 - 1) + (4 - 1)
    assert m["vllm:inter_token_latency_seconds_count"] == m["vllm:time_per_output_token_seconds_count"]
    assert m["vllm:generation_tokens_total"] == 12
    assert m["vllm:prompt_tokens_total"] == sum(len(engine.encode(b["prompt"])) for b in bodies)
    assert m["vllm:num_requests_running"] == 0
    assert m["vllm:num_requests_waiting"] == 0


def test_full_queue_answers_503(engine):
    app = create_app(engine, max_concurrency=1, max_queue=1)
    sched = app.state.scheduler
    sched.waiting = 1  # as if one request were queued
    (r,) = _post_all(app, [{"prompt": "x", "max_tokens": 1}])
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    sched.waiting = 0
    assert _metrics(app)["autotune_workload_rejected_total"] == 1


@pytest.fixture(scope="module")
def live_server(engine):
    """A real uvicorn on an ephemeral loopback port (exercises SSE framing over TCP)."""
    import uvicorn

    app = create_app(engine, max_concurrency=2)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    server.should_exit = True
    th.join(timeout=5)
    sock.close()


def test_stream_sse(live_server):
    url, _ = live_server
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/health").json()["status"] == "ok"
        assert c.get("/v1/models").json()["data"][0]["id"] == "gpt2-tiny"
        with c.stream("POST", "/v1/completions",
                      json={"prompt": "What is machine learning?", "max_tokens": 6, "stream": True}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert len(chunks) == 6  # one per token; the last one carries finish_reason, as in vLLM
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["length"]
    assert len({c["id"] for c in chunks}) == 1


def test_openai_client_compat(live_server):
    openai = pytest.importorskip("openai")
    url, _ = live_server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    r = client.completions.create(model="gpt2-tiny", prompt="Why is the sky blue?", max_tokens=4)
    assert r.usage.completion_tokens == 4
    chunks = list(client.completions.create(model="gpt2-tiny", prompt="hi", max_tokens=3, stream=True))
    assert len(chunks) == 3


def test_workers_follow_the_thread_choice_and_export_it(engine):
    from autotune.workload.threads import ThreadChoice, ThreadFollower

    wanted = [2]
    follower = ThreadFollower(interval_s=0.0, choose=lambda: ThreadChoice(
        threads=wanted[0], affinity_cpus=2, quota_cores=None, cgroup=None, reason="test"))
    app = create_app(engine, max_concurrency=1, threads=follower)
    body = {"prompt": "a b c", "max_tokens": 2}
    (r,) = _post_all(app, [body])
    assert r.json()["timing"]["threads"] == 2 and _metrics(app)["autotune_workload_intra_op_threads"] == 2
    wanted[0] = 1  # e.g. the agent cut the quota to half a core
    (r,) = _post_all(app, [body])
    assert r.json()["timing"]["threads"] == 1 and _metrics(app)["autotune_workload_intra_op_threads"] == 1
    assert follower.changes == 1
