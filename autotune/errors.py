"""One exception hierarchy. Messages tell the user what to do next."""

from __future__ import annotations


class AutotuneError(Exception):
    """Base of every error autotune raises on purpose."""


class ConfigError(AutotuneError):
    """A config file, rule file or policy file is invalid. The message names file and field."""


class HostError(AutotuneError):
    """Reading or writing the host failed (missing file, permission, odd contents)."""


class MissingFile(HostError):
    """A host file does not exist under the Host root (feature absent on this kernel)."""


class ParseError(HostError):
    """A host file exists but its contents could not be parsed. Names the file."""


class StateError(HostError):
    """The state database is missing, damaged, not autotune's or unusable. One line naming the
    file and what is wrong (raised by ``autotune.store.db``)."""


class NotSent(HostError):
    """A request that never left this process (the helper did not accept the connection):
    nothing was written, so a change it carried certainly did not land."""


class TargetGone(HostError):
    """A cgroup or process vanished; not an error for the loop, just nothing to do."""


class InvalidValue(AutotuneError):
    """A proposed knob value is outside what the knob or kernel accepts."""


class PolicyRefused(AutotuneError):
    """A write refused: by the helper's root-owned policy, or by a check before it. The one
    refusal type on both sides of the helper's socket (the helper raises it, sends ``code`` and
    ``reason``, the client raises it again), as psutil's errors carry their pid and name:
    ``code`` is the protocol's error code (``not_allowed``, ``out_of_range``, ``drift``,
    ``target_gone``, ``advisory``, ...), ``reason`` the one line that says why."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class WorkloadError(AutotuneError):
    """A reference workload could not be fetched, built, generated or started. One line saying
    what is missing and the command that provides it."""


def not_utf8(path: object, err: UnicodeDecodeError) -> str:
    """'FILE: not UTF-8 text: byte 0xe9 on line 3, column 7' for a file that failed to decode
    (config, rule, policy and trial files are UTF-8 text)."""
    data = err.object if isinstance(err.object, bytes | bytearray) else b""
    before = bytes(data[:err.start])
    line = before.count(b"\n") + 1
    col = err.start - (before.rfind(b"\n") + 1) + 1
    bad = bytes(data[err.start:err.start + 1]).hex() or "?"
    return f"{path}: not UTF-8 text: byte 0x{bad} on line {line}, column {col}; save the file as UTF-8"
