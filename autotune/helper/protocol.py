"""Wire format between agent and helper: one JSON object per line over a Unix stream socket.

Requests are strict (no type coercion, no unknown fields, bounded string sizes) so that a
malformed message is refused with a reason instead of being guessed at. Every request gets
exactly one response line: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error":
{"code": ..., "reason": ...}}``.
"""

from __future__ import annotations

import json
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
    def refuse(cls, code: str, reason: str, request_id: str | None = None) -> "Response":
        return cls(ok=False, request_id=request_id, error=ErrorInfo(code=code, reason=reason))


class BadRequest(Exception):
    """A request line that cannot be parsed; ``reason`` is safe to send back."""

    def __init__(self, reason: str, request_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id


def parse_request(line: bytes) -> Request:
    """bytes (without the newline) -> a typed request, or BadRequest naming the problem."""
    try:
        text = line.decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError as err:
        raise BadRequest(f"request is not UTF-8 (byte {err.start})") from err
    except (json.JSONDecodeError, RecursionError) as err:
        raise BadRequest(f"request is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise BadRequest(f"request must be a JSON object, got {type(data).__name__}")
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
    """One message as a JSON line."""
    return model.model_dump_json(exclude_none=False).encode() + b"\n"


def request_dict(req: BaseModel) -> dict:
    return req.model_dump(mode="json", exclude_none=True)
