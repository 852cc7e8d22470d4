"""The completions protocol as vLLM's OpenAI-compatible server speaks it: requests, limits, errors.

Facts taken from vLLM (``entrypoints/openai/completion/protocol.py``, ``engine/serving.py``,
``renderers/params.py``, ``sampling_params.py``), so clients written against vLLM see the same
answers here:

- Every error is ``{"error": {"message", "type", "param", "code"}}`` with ``code`` = the HTTP
  status: 400 ``BadRequestError`` for anything wrong in the request (never FastAPI's 422),
  404 ``NotFoundError`` with ``param="model"`` for a model this server does not serve.
- The context is checked, never cut silently: ``max_input = max_model_len - max_tokens``; a
  prompt longer than that is 400 (``param="input_tokens"``), and a text longer than
  ``max_input`` times the longest token is refused before it is tokenized
  (``param="input_text"``). Truncation happens only when the client asks for it with
  ``truncate_prompt_tokens`` (left side, -1 = ``max_input``), and ``usage.prompt_tokens``
  counts what is left.
- ``max_tokens`` defaults to 16 and must be at least 1, except with ``echo`` where 0 returns
  the prompt alone. ``n``, ``echo``, ``stop`` (strings; the stop text is left out unless
  ``include_stop_str_in_output``), ``logprobs`` (at most 20), ``seed``, ``temperature``,
  ``top_p``, ``top_k``, ``stream_options`` (only with ``stream``; ``include_usage`` then
  defaults to true, ``continuous_usage_stats``) are implemented.
- Sampling options this server does not implement are refused with 400 when set to anything
  but their neutral value, never ignored; unknown extra fields are ignored, as vLLM does.

Token counts are this server's tokenizer's (a small BPE, see model.py); the model has no
end-of-text token, so a choice ends at ``max_tokens`` (``length``) or a stop string (``stop``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
MAX_CHOICES = 16  # prompts x n per request; generation is sequential within a request
DEFAULT_MAX_TOKENS = 16

# Options vLLM accepts that this server does not implement, with their neutral values: any
# other value is refused with 400 rather than silently ignored.
# Sampling options vLLM accepts on both endpoints that this server does not implement, with
# their neutral values (a request that sets one to a neutral value is served).
UNSUPPORTED_SAMPLING: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "logit_bias": (None, {}),
    "use_beam_search": (None, False),
    "min_p": (None, 0, 0.0),
    "min_tokens": (None, 0),
    "stop_token_ids": (None, []),
    "prompt_logprobs": (None,),
    "allowed_token_ids": (None,),
    "bad_words": (None, []),
    "structured_outputs": (None,),
}
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "suffix": (None,),  # vLLM refuses it too
    **UNSUPPORTED_SAMPLING,
    "best_of": (None, 1),
    "response_format": (None,),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
    "prompt_embeds": (None,),
    "logprob_token_ids": (None,),
}


class APIError(Exception):
    """An error answer in vLLM's shape. ``param`` names the offending request field."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 etype: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.etype = etype or {400: "BadRequestError", 404: "NotFoundError",
                               413: "BadRequestError", 503: "ServiceUnavailableError"}.get(
                                   status, "InternalServerError")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.etype, "param": self.param,
                          "code": self.status}}


def bad_request(message: str, param: str | None = None, value: Any = None) -> APIError:
    """400 with vLLM's message suffix ``(parameter=..., value=...)``."""
    extras = [f"{k}={v}" for k, v in (("parameter", param), ("value", value)) if v is not None]
    return APIError(400, f"{message} ({', '.join(extras)})" if extras else message, param=param)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class Sampling(BaseModel):
    """The sampling and streaming fields a completion and a chat completion share (OpenAI's,
    then vLLM's extras): a chat request runs as a completion with the same ones."""

    model_config = ConfigDict(extra="allow")

    n: int = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    user: str | None = None
    # vLLM extras
    top_k: int | None = Field(None, ge=-1)
    ignore_eos: bool = False  # accepted: this model has no end-of-text token to ignore
    include_stop_str_in_output: bool = False


class CompletionRequest(Sampling):
    """POST /v1/completions body (OpenAI's fields, then vLLM's extras)."""

    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]] | None = None
    echo: bool | None = False
    logprobs: int | None = None
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    truncate_prompt_tokens: int | None = Field(None, ge=-1)

    @field_validator("max_tokens", mode="before")
    @classmethod
    def _null_max_tokens(cls, v: Any) -> Any:
        return DEFAULT_MAX_TOKENS if v is None else v

    def stops(self) -> list[str]:
        s = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [x for x in s if x]

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def continuous_usage(self) -> bool:
        return bool(self.include_usage() and self.stream_options
                    and self.stream_options.continuous_usage_stats)


def parse_request(data: Any) -> CompletionRequest:
    """Validate a decoded JSON body; every problem is a 400 naming the field."""
    if not isinstance(data, dict):
        raise bad_request("request body must be a JSON object")
    for name, neutral in UNSUPPORTED.items():
        if name in data and data[name] not in neutral:
            raise bad_request(f"`{name}` is not supported by this server (the autotune reference "
                              f"GPT-2 workload implements n, echo, stop, logprobs, seed, "
                              f"temperature, top_p, top_k and stream_options)", name)
    try:
        req = CompletionRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if not isinstance(p, int)) or None
        raise bad_request(f"{param or 'body'}: {first['msg']}", param) from None
    if req.n < 1:
        raise bad_request(f"n must be at least 1, got {req.n}.", "n", req.n)
    if req.max_tokens is not None and req.max_tokens < 0:
        raise bad_request(f"max_tokens must be at least 1, got {req.max_tokens}.", "max_tokens",
                          req.max_tokens)
    if req.max_tokens == 0 and not req.echo:
        raise bad_request("max_tokens must be at least 1, got 0.", "max_tokens", 0)
    if req.stream_options is not None and not req.stream:
        raise bad_request("Stream options can only be defined when `stream=True`.", "stream_options")
    if req.logprobs is not None:
        wanted = req.logprobs
        if wanted < -1:
            raise bad_request("`logprobs` must be a positive value or -1.", "logprobs", wanted)
        if wanted == -1 or wanted > MAX_LOGPROBS:
            raise bad_request(f"Requested sample logprobs of {'all' if wanted == -1 else wanted}, "
                              f"which is greater than max allowed: {MAX_LOGPROBS}", "logprobs", wanted)
    return req


def prompt_list(req: CompletionRequest) -> list[str | list[int]]:
    """The prompts of a request: each a text or a list of token ids (400 when empty)."""
    p = req.prompt
    empty = "Either prompt or prompt_embeds must be provided and non-empty."
    if p is None or p == "" or p == []:
        raise bad_request(empty, "prompt")
    if isinstance(p, str):
        return [p]
    if all(isinstance(x, int) for x in p):
        return [list(p)]  # type: ignore[arg-type]
    out: list[str | list[int]] = list(p)  # type: ignore[arg-type]
    if any(x == "" or x == [] for x in out):
        raise bad_request(empty, "prompt")
    return out


def check_choices(n_prompts: int, n: int) -> None:
    if n_prompts * n > MAX_CHOICES:
        raise bad_request(f"{n_prompts} prompts x n={n} is {n_prompts * n} choices; this server "
                          f"generates at most {MAX_CHOICES} per request", "n", n)


def input_budget(max_model_len: int, max_tokens: int) -> int:
    """Prompt tokens allowed beside ``max_tokens`` output tokens (400 when none are)."""
    if max_tokens > max_model_len:
        raise bad_request(f"max_tokens={max_tokens} cannot be greater than max_model_len="
                          f"{max_model_len}. Please request fewer output tokens.", "max_tokens", max_tokens)
    return max_model_len - max_tokens


def overflow(n_tokens: int, max_tokens: int, max_model_len: int) -> APIError:
    return bad_request(
        f"You passed {n_tokens} input tokens and requested {max_tokens} output tokens. However, "
        f"the model's context length is only {max_model_len} tokens, resulting in a maximum input "
        f"length of {max_model_len - max_tokens} tokens. Please reduce the length of the input prompt.",
        "input_tokens", n_tokens)


def text_overflow(n_chars: int, max_tokens: int, max_model_len: int, max_chars: int) -> APIError:
    return bad_request(
        f"You passed {n_chars} input characters and requested {max_tokens} output tokens. However, "
        f"the model's context length is only {max_model_len} tokens, resulting in a maximum input "
        f"length of {max_model_len - max_tokens} tokens (at most {max_chars} characters). Please "
        f"reduce the length of the input prompt.", "input_text", n_chars)
