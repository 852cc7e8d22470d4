"""The agent's side of the helper socket: typed calls, refusals as PolicyRefused.

A refusal (policy said no) raises ``PolicyRefused`` with the helper's reason and ``code``;
not reaching the helper at all, or a garbled answer, raises ``HostError``. One connection is
kept open and re-opened if the helper closed it (its idle timeout, or a full helper reusing a
silent slot). A ``busy`` helper, a full listen queue, or a connection closed before the request
was read are retried until ``timeout``: none of them can have executed the request.
"""

from __future__ import annotations

import json
import random
import select
import socket
import threading
import time
import uuid

from pydantic import ValidationError

from autotune.errors import HostError, NotSent, PolicyRefused
from autotune.helper.protocol import Response, Result
from autotune.knobs.base import ChangeResult, KnobState

MAX_RESPONSE_BYTES = 1 << 22
RETRY_S = 0.02  # first pause before re-sending a request the helper never read


class _NotDelivered(OSError):
    """The connection failed before the helper read the request: re-sending is safe."""


class HelperClient:
    def __init__(self, socket_path: str, timeout: float = 5.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._lock = threading.Lock()

    # -- public API -------------------------------------------------------------------------
    def ping(self) -> int:
        """Protocol version of the helper."""
        return self._call({"op": "ping"}).version or 0

    def read(self, knob: str, target: str) -> KnobState:
        res = self._call({"op": "read", "knob": knob, "target": target})
        assert res.before is not None
        return res.before

    def apply(self, knob: str, target: str, value: str, *, dry_run: bool = False,
              request_id: str | None = None, expect_before: str | None = None) -> ChangeResult:
        msg = {"op": "apply", "knob": knob, "target": target, "value": str(value), "dry_run": dry_run,
               "request_id": request_id or uuid.uuid4().hex}
        if expect_before is not None:
            msg["expect_before"] = str(expect_before)
        return self._change_result(knob, target, self._call(msg))

    def restore(self, knob: str, target: str, state: KnobState) -> ChangeResult:
        msg = {"op": "restore", "knob": knob, "target": target, "request_id": uuid.uuid4().hex,
               "state": {"value": state.value, "raw": dict(state.raw)}}
        return self._change_result(knob, target, self._call(msg))

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock, self._buf = None, b""

    def __enter__(self) -> "HelperClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------------
    @staticmethod
    def _change_result(knob: str, target: str, res: Result) -> ChangeResult:
        if res.before is None:
            raise HostError(f"helper answered {knob} on {target} without a 'before' state")
        return ChangeResult(knob=knob, target=target, before=res.before,
                            proposed=res.proposed or res.before.value, after=res.after,
                            changed=res.changed, dry_run=res.dry_run)

    def _call(self, msg: dict) -> Result:
        """Send one request and return its result. A request the helper provably never read
        (``busy``, or the send itself failed) is sent again until ``timeout``; a request that
        was delivered is re-sent only if it writes nothing (never an ``apply``)."""
        line = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        deadline = time.monotonic() + self.timeout
        delivered_retries = 0
        with self._lock:
            while True:
                raw = b""
                try:
                    raw = self._exchange(line, deadline)
                    resp = Response.model_validate_json(raw)
                except _NotDelivered as err:
                    self.close()
                    if not self._pause(deadline, RETRY_S):
                        raise HostError(f"helper at {self.socket_path}: {err}") from err
                    continue
                except (BrokenPipeError, ConnectionResetError, EOFError) as err:
                    self.close()
                    delivered_retries += 1
                    if delivered_retries > 1 or msg.get("op") == "apply":  # never resend a write
                        raise HostError(f"helper at {self.socket_path} closed the connection: {err}") from err
                    continue
                except ValidationError as err:
                    self.close()
                    raise HostError(f"helper at {self.socket_path} sent a malformed response: "
                                    f"{raw[:200]!r}") from err
                except OSError as err:
                    self.close()
                    raise HostError(f"helper at {self.socket_path}: {err.strerror or err}") from err
                if not resp.ok and resp.error is not None and resp.error.code == "busy":
                    self.close()  # busy is answered before reading anything: safe to retry
                    if self._pause(deadline, resp.error.retry_after_s or RETRY_S):
                        continue
                break
        if not resp.ok:
            code = resp.error.code if resp.error else "internal"
            reason = resp.error.reason if resp.error else "refused without a reason"
            raise PolicyRefused(code, reason)
        return resp.result or Result()

    def _exchange(self, line: bytes, deadline: float) -> bytes:
        """One request line out, one answer line back (on the kept connection)."""
        self._connect(deadline)
        assert self._sock is not None
        try:
            self._sock.sendall(line)
        except (BrokenPipeError, ConnectionResetError) as err:
            # The helper refused us (peer check, busy) or closed this connection before reading:
            # its answer may be waiting; if not, the request was not delivered.
            if not self._pending_answer():
                raise _NotDelivered(f"connection closed before the request was read ({err})") from err
        return self._readline()

    @staticmethod
    def _pause(deadline: float, wait_s: float) -> bool:
        """Sleep ``wait_s`` (jittered) if that ends before ``deadline``; False when out of time."""
        wait_s = min(max(wait_s, 0.001), 1.0) * random.uniform(1.0, 2.0)
        if time.monotonic() + wait_s > deadline:
            return False
        time.sleep(wait_s)
        return True

    def _connect(self, deadline: float) -> None:
        if self._sock is not None and self._stale():
            self.close()  # helper closed an idle connection: reconnect before sending anything
        if self._sock is not None:
            return
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                s.connect(self.socket_path)
            except BlockingIOError as err:  # the listen backlog is full (EAGAIN): not delivered
                s.close()
                if not self._pause(deadline, RETRY_S):
                    raise NotSent(f"helper at {self.socket_path}: listen queue full") from err
                continue
            except OSError as err:
                s.close()  # nothing was sent: a write this call carried did not happen
                raise NotSent(f"helper at {self.socket_path}: {err.strerror or err}") from err
            self._sock, self._buf = s, b""
            return

    def _pending_answer(self) -> bool:
        assert self._sock is not None
        try:
            ready, _, _ = select.select([self._sock], [], [], 0.5)
            return bool(ready) and self._sock.recv(1, socket.MSG_PEEK) != b""
        except OSError:
            return False

    def _stale(self) -> bool:
        assert self._sock is not None
        ready, _, _ = select.select([self._sock], [], [], 0)
        if not ready:
            return False
        try:
            return self._sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _readline(self) -> bytes:
        assert self._sock is not None
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise EOFError("helper closed the connection")
            self._buf += chunk
            if len(self._buf) > MAX_RESPONSE_BYTES:
                raise HostError(f"helper at {self.socket_path}: response too large")
        line, _, self._buf = self._buf.partition(b"\n")
        return line
