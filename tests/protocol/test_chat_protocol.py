"""Chat completions as vLLM answers them, with the official ``openai`` client's chat calls (plain,
streamed, streamed with ``include_usage``), against the server and through the gate (the
``client`` / ``base_url`` fixtures are parametrized over both)."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from autotune.workload import chat
from tests.protocol.test_openai_protocol import MODEL, error_body, metrics

pytestmark = pytest.mark.workload

MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Why is the sky blue?"}]


def test_plain_chat_completion(client, engine):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=5, seed=1)
    assert isinstance(r, ChatCompletion) and r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    [c] = r.choices
    assert c.index == 0 and c.message.role == "assistant" and c.finish_reason == "length"
    rendered = chat.render(chat.parse_chat({"messages": MESSAGES}))
    assert r.usage.prompt_tokens == len(engine.encode(rendered)) and r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5
    # the same seed and prompt through completions give the same text: the template is the prompt
    same = client.completions.create(model=MODEL, prompt=rendered, max_tokens=5, seed=1)
    assert c.message.content == same.choices[0].text


def test_streamed_chat_has_the_role_first_then_one_delta_per_token(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, stream=True))
    assert all(isinstance(c, ChatCompletionChunk) and c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    first, *tokens = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert len(tokens) == 4 and all(c.choices[0].delta.role is None for c in tokens)
    assert [c.choices[0].finish_reason for c in tokens] == [None, None, None, "length"]
    assert all(c.usage is None for c in chunks)  # not asked for


def test_streamed_chat_with_include_usage_ends_with_a_usage_chunk(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=3,
                                                 stream=True, stream_options={"include_usage": True}))
    *body, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == 3
    assert last.usage.total_tokens == last.usage.prompt_tokens + 3
    assert all(c.usage is None for c in body) and len(body) == 1 + 3


def test_n_choices_and_a_stop_string(client):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=6, n=2, seed=3)
    assert [c.index for c in r.choices] == [0, 1] and r.usage.completion_tokens == 12
    text = r.choices[0].message.content
    stop = text[2:4]
    cut = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=6, seed=3, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].message.content


def test_without_a_limit_the_answer_fills_the_context(client, engine):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert r.usage.total_tokens == engine.spec.n_positions and r.choices[0].finish_reason == "length"


def test_text_parts_a_request_template_and_its_kwargs(client, engine):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Why is the sky"}, {"type": "text", "text": "blue?"}]}]
    template = "{{ prefix }}{{ messages[-1]['content'] }}"
    r = client.chat.completions.create(model=MODEL, messages=parts, max_completion_tokens=2, extra_body={
        "chat_template": template, "chat_template_kwargs": {"prefix": "Q: "}})
    assert r.usage.prompt_tokens == len(engine.encode("Q: Why is the sky\nblue?"))


@pytest.mark.parametrize("kw, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"logprobs": True}, "logprobs"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"extra_body": {"chat_template": "{% for %}"}}, "chat_template"),
])
def test_bad_chat_requests_are_400_with_the_field_named(client, kw, param):
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(**{"model": MODEL, "messages": MESSAGES, **kw})
    error_body(info.value, 400, param)


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=MESSAGES, max_completion_tokens=1)
    error_body(info.value, 404, "model")


def test_chat_tokens_count_on_the_metrics_page(base_url, server):
    before = metrics(server).get("vllm:generation_tokens_total", 0.0)
    r = httpx.post(f"{base_url}/v1/chat/completions", timeout=30,
                   json={"model": MODEL, "messages": MESSAGES, "max_completion_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert metrics(server)["vllm:generation_tokens_total"] - before == 3
