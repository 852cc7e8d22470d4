"""One agent per state DB: an exclusive ``flock`` on ``<state>.lock`` held for the agent's life.

Two agents on one state would both act on one target, each taking the other's change for
drift or stacking changes the other then cannot undo. ``autotune run`` takes the lock before
it reconciles or acts (once the state's schemas are accepted: a refused DB gets no lock file
beside it); a second one exits 2 with one line naming the holder (pid and since
when, which the holder writes into the lock file). The kernel drops a flock when its holder
dies, kill -9 included, so a crashed agent never leaves a stale lock; the file itself stays
(removing it would let two agents each lock a different inode). Read-only commands (history,
audit, status) and ``rollback`` do not take it.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from autotune.errors import StateError


class StateLocked(StateError):
    """Another agent holds the state lock."""


def lock_path(state: str | os.PathLike[str]) -> Path:
    return Path(f"{state}.lock")


class StateLock:
    """The held lock; ``release()`` (or the process's end) gives it back."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self) -> None:  # a run that failed before its finally: give it back anyway
        self.release()

    def __enter__(self) -> "StateLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(path: Path) -> str:
    """What the lock file says about its holder ("pid 123 since 2026-...Z"), or why not."""
    try:
        text = path.read_text().strip()
    except OSError as err:
        return f"holder unknown: {err.strerror or err}"
    pid, _, since = text.partition(" ")
    try:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(since)))
    except ValueError:
        return "holder unknown (it has not written its pid yet)"
    return f"pid {pid} since {when}"


def acquire(state: str | os.PathLike[str], *, now: float | None = None) -> StateLock:
    """Take the state lock of the DB at ``state`` or raise StateLocked naming its holder."""
    path = lock_path(state)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise StateError(f"{path}: cannot create the state lock ({err.strerror or err}); "
                         "the agent keeps it beside its state database") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateLocked(f"{state}: another agent is running on this state ({holder(path)}; "
                          f"lock {path}): stop it first, or give this one its own --state") from None
    except OSError as err:
        os.close(fd)
        raise StateError(f"{path}: cannot lock the state ({err.strerror or err})") from err
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {time.time() if now is None else now:.3f}\n".encode())
    return StateLock(path, fd)
