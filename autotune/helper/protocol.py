"""Wire format between agent and helper: one JSON object per line over a Unix stream socket.

Requests are strict (no type coercion, no unknown fields, bounded string sizes, valid Unicode)
so that a malformed message is refused with a reason instead of being guessed at. Every request
line gets exactly one response line: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error":
{"code": ..., "reason": ...}}``. Parsing never raises anything but ``BadRequest``: a 5,000-digit
JSON integer or a lone surrogate is a refusal, not a dropped connection.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from autotune.knobs.base import KnobState

PROTOCOL_VERSION = 1
MAX_FIELD = 4096
MAX_RAW_ENTRIES = 4096

ErrorCode = Literal[
    "bad_request",  # not JSON / wrong shape / wrong types
    "too_large",  # request longer than policy.limits.max_request_bytes
    "peer_refused",  # SO_PEERCRED uid/gid not in policy.peers
    "rate_limited",  # peer exceeded policy.limits rate
    "unknown_knob",  # knob not in policy (or not installed)
    "target_refused",  # target not allowed, path traversal, symlink escape, raw pid
    "out_of_range",  # value outside policy range / values
    "invalid_value",  # knob itself rejects the value
    "drift",  # expect_before does not match the current value
    "target_gone",  # cgroup / service / file vanished
    "host_error",  # the kernel refused or a file could not be read
    "busy",  # too many connections in flight; nothing was read: retry after retry_after_s
    "internal",  # a bug in the helper; it keeps serving
]

KnobName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_.]*$")]
Text = Annotated[str, Field(max_length=MAX_FIELD)]


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    request_id: Annotated[str, Field(max_length=128)] | None = None


class PingRequest(_Req):
    op: Literal["ping"]


class ReadRequest(_Req):
    op: Literal["read"]
    knob: KnobName
    target: Text


class ApplyRequest(_Req):
    op: Literal["apply"]
    knob: KnobName
    target: Text
    value: Text
    dry_run: bool = False
    expect_before: Text | None = None  # value the client believes is current; mismatch -> drift


class RawState(BaseModel):
    """The value and raw record of a KnobState the client recorded for the request's knob and
    target (named once, by the request; every raw path is re-checked by the helper)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    value: Text
    raw: Annotated[dict[Text, Text], Field(max_length=MAX_RAW_ENTRIES)] = {}


class RestoreRequest(_Req):
    op: Literal["restore"]
    knob: KnobName
    target: Text
    state: RawState


Request = Annotated[
    Union[PingRequest, ReadRequest, ApplyRequest, RestoreRequest], Field(discriminator="op")
]
_REQUEST = TypeAdapter(Request)


class ErrorInfo(BaseModel):
    code: ErrorCode
    reason: str
    retry_after_s: float | None = None  # "busy": when trying again is likely to succeed


class Result(BaseModel):
    """What happened: states before/after (after None when nothing was written)."""

    before: KnobState | None = None
    after: KnobState | None = None
    proposed: str | None = None
    changed: bool = False
    dry_run: bool = False
    version: int | None = None  # ping only


class Response(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ok: bool
    request_id: str | None = None
    result: Result | None = None
    error: ErrorInfo | None = None

    @classmethod
    def refuse(cls, code: str, reason: str, request_id: str | None = None, *,
               retry_after_s: float | None = None) -> "Response":
        return cls(ok=False, request_id=request_id,
                   error=ErrorInfo(code=code, reason=reason, retry_after_s=retry_after_s))


class BadRequest(Exception):
    """A request line that cannot be parsed; ``reason`` is safe to send back."""

    def __init__(self, reason: str, request_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id


_SURROGATE = re.compile("[\ud800-\udfff]")


def _surrogate(data: object) -> str | None:
    """Where a lone surrogate (not valid Unicode, cannot be answered or audited) hides in parsed
    JSON, or None. Iterative: nesting depth is already bounded by the JSON parser."""
    stack: list[tuple[str, object]] = [("(request)", data)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return where
        elif isinstance(item, dict):
            for k, v in item.items():
                name = k if isinstance(k, str) and k.isascii() and len(k) <= 64 else "(a key)"
                stack += [(f"{where}: key", k), (name, v)]
        elif isinstance(item, list):
            stack += [(f"{where}[{i}]", v) for i, v in enumerate(item)]
    return None


def parse_request(line: bytes) -> Request:
    """bytes (without the newline) -> a typed request, or BadRequest naming the problem."""
    if not line.strip():
        raise BadRequest("empty request line: send one JSON object per line")
    try:
        text = line.decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError as err:
        raise BadRequest(f"request is not UTF-8 (byte {err.start})") from err
    except RecursionError as err:
        raise BadRequest("request is not valid JSON: nested too deeply") from err
    except ValueError as err:  # JSONDecodeError, and int() past sys.get_int_max_str_digits()
        raise BadRequest(f"request is not valid JSON: {str(err)[:200]}") from err
    if not isinstance(data, dict):
        raise BadRequest(f"request must be a JSON object, got {type(data).__name__}")
    bad = _surrogate(data)
    if bad is not None:
        raise BadRequest(f"request is not valid Unicode: lone surrogate in {bad}")
    rid = data.get("request_id")
    rid = rid if isinstance(rid, str) and len(rid) <= 128 else None
    try:
        return _REQUEST.validate_python(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(request)'}: {e['msg']}" for e in err.errors()[:5]
        )
        raise BadRequest(f"bad request: {problems}", rid) from err


def encode(model: BaseModel) -> bytes:
    """One message as a JSON line (always one line: JSON escapes every newline)."""
    return model.model_dump_json(exclude_none=False).encode() + b"\n"


def encode_response(resp: Response) -> bytes:
    """``encode`` that cannot fail: an answer the serializer refuses becomes ``internal``."""
    try:
        return encode(resp)
    except Exception as err:  # a bug (e.g. unencodable text in a reason): still answer
        return encode(Response.refuse("internal", f"response could not be encoded: "
                                                  f"{type(err).__name__}"))


def request_dict(req: BaseModel) -> dict:
    return req.model_dump(mode="json", exclude_none=True)
