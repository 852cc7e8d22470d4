"""Chat completions as vLLM's OpenAI-compatible server speaks them: the request, and the chat
template that turns its messages into the one prompt the model completes.

Facts from vLLM (``entrypoints/openai/chat_completion/protocol.py`` and ``serving.py``):
``messages`` (``content`` a string or a list of ``{"type": "text", "text"}`` parts),
``max_completion_tokens`` over the deprecated ``max_tokens`` (neither: what the context has
left), ``n``, ``stop``, ``seed``, ``temperature``, ``top_p``, ``top_k``, ``stream`` and
``stream_options`` as for completions; ``add_generation_prompt`` (default true),
``continue_final_message``, ``chat_template`` and ``chat_template_kwargs`` (vLLM extras). The
answer is ``chat.completion`` with ``choices[].message``, or ``chat.completion.chunk`` chunks
whose ``choices[].delta`` carries the role first, then the text; with
``stream_options.include_usage`` a last chunk has ``choices: []`` and the usage.

GPT-2 ships no chat template (vLLM then needs ``--chat-template``): this server's default is a
ChatML-style Jinja template, rendered in a sandbox as transformers' ``apply_chat_template``
does. Tools, logprobs and the other options it does not implement are refused with 400.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from autotune.workload.protocol import UNSUPPORTED_SAMPLING, CompletionRequest, Sampling, bad_request

DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "{% if not (loop.last and continue_final_message) %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ROLES = ("system", "developer", "user", "assistant", "tool")

# Chat options vLLM accepts that this server does not implement, with their neutral values.
UNSUPPORTED_CHAT: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    **UNSUPPORTED_SAMPLING,
    "response_format": (None, {"type": "text"}),
    "documents": (None,),
}


class ChatRequest(Sampling):
    """POST /v1/chat/completions body (the fields this server reads; others are ignored)."""

    messages: list[dict[str, Any]]
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    def output_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse_chat(data: Any) -> ChatRequest:
    """Validate a decoded JSON body; every problem is a 400 naming the field."""
    if not isinstance(data, dict):
        raise bad_request("request body must be a JSON object")
    for name, neutral in UNSUPPORTED_CHAT.items():
        if name in data and data[name] not in neutral:
            raise bad_request(f"`{name}` is not supported by this server (the autotune reference GPT-2 "
                              "workload implements messages, n, stop, seed, temperature, top_p, top_k, "
                              "max_completion_tokens and stream_options)", name)
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if not isinstance(p, int)) or None
        raise bad_request(f"{param or 'body'}: {first['msg']}", param) from None
    if not req.messages:
        raise bad_request("messages must hold at least one message.", "messages")
    if req.n < 1:
        raise bad_request(f"n must be at least 1, got {req.n}.", "n", req.n)
    limit = req.output_limit()
    if limit is not None and limit < 1:
        raise bad_request(f"max_completion_tokens must be at least 1, got {limit}.", "max_completion_tokens", limit)
    if req.stream_options is not None and not req.stream:
        raise bad_request("Stream options can only be defined when `stream=True`.", "stream_options")
    if req.add_generation_prompt and req.continue_final_message:
        raise bad_request("Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
                          "continue_final_message")
    return req


def _text(message: dict[str, Any], i: int) -> str:
    """A message's content as text: a string, or its text parts joined (other parts: 400)."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad_request(f"messages[{i}].content: only text parts are supported, got {kind!r}",
                                  "messages")
            parts.append(part["text"])
        return "\n".join(parts)
    raise bad_request(f"messages[{i}].content must be a string or a list of text parts", "messages")


def conversation(req: ChatRequest) -> list[dict[str, str]]:
    """The messages as the template sees them: role and text content (400 for anything else)."""
    out = []
    for i, m in enumerate(req.messages):
        role = m.get("role")
        if role not in ROLES:
            raise bad_request(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}", "messages")
        out.append({"role": role, "content": _text(m, i)})
    if req.continue_final_message and out[-1]["role"] != "assistant":
        raise bad_request("continue_final_message needs the last message to be the assistant's.",
                          "continue_final_message")
    return out


@lru_cache(maxsize=16)
def _compiled(template: str):  # noqa: ANN202 - a jinja2 Template
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        return env.from_string(template)
    except TemplateError as err:
        raise bad_request(f"chat_template does not compile: {err}", "chat_template") from None


def render(req: ChatRequest, default_template: str = DEFAULT_TEMPLATE) -> str:
    """The prompt text: the request's (or the server's) template over its messages."""
    from jinja2 import TemplateError

    messages = conversation(req)
    template = _compiled(req.chat_template or default_template)
    try:
        return template.render(messages=messages, add_generation_prompt=req.add_generation_prompt,
                               continue_final_message=req.continue_final_message,
                               **(req.chat_template_kwargs or {}))
    except TemplateError as err:
        raise bad_request(f"chat_template failed to render: {err}", "chat_template") from None


def as_completion(req: ChatRequest, prompt: str, max_tokens: int) -> CompletionRequest:
    """The completion the scheduler runs for a chat request (same sampling, one text prompt)."""
    return CompletionRequest(prompt=prompt, max_tokens=max_tokens,
                             **{name: getattr(req, name) for name in Sampling.model_fields})
