"""The helper's Unix socket server: peer credentials, bounded reads, rate limits, timeouts.

One thread per connection (bounded by policy.limits.max_connections). Each connection may send
many newline-terminated requests. Nothing here runs a shell or opens a path by itself: every
write goes through ``Helper`` and the Knob implementations on a writable Host.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from autotune.errors import HostError
from autotune.helper.handler import Helper
from autotune.helper.protocol import Response, encode

log = logging.getLogger("autotune.helper")

SD_LISTEN_FDS_START = 3


class TokenBucket:
    """Per-key token bucket: ``rate`` tokens/s up to ``burst``. Clock is injectable."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._state: dict[object, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: object) -> bool:
        with self._lock:
            now = self.clock()
            tokens, last = self._state.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            ok = tokens >= 1.0
            self._state[key] = (tokens - 1.0 if ok else tokens, now)
            return ok


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the connected peer, from the kernel (SO_PEERCRED)."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def systemd_listen_socket() -> socket.socket | None:
    """The socket systemd passed us (LISTEN_PID/LISTEN_FDS), or None when not activated."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        nfds = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    if nfds < 1:
        return None
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)  # not inherited by anything we might start
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise HostError("systemd passed fd 3 but it is not a Unix stream socket; "
                        "check autotune-helper.socket (ListenStream=)")
    return sock


def bind_socket(path: str | os.PathLike[str], mode: int = 0o660) -> socket.socket:
    """Create the listening socket at ``path`` (a stale socket file is replaced, nothing else)."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        st = p.lstat()
        if not stat.S_ISSOCK(st.st_mode):
            raise HostError(f"{p} exists and is not a socket; refusing to replace it")
        p.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(p))
    finally:
        os.umask(old)
    os.chmod(p, mode)
    return sock


class HelperServer:
    """Accept loop + per-connection threads around a ``Helper``."""

    def __init__(self, helper: Helper, sock: socket.socket, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.helper = helper
        self.sock = sock
        lim = helper.policy.limits
        self.limits = lim
        self.bucket = TokenBucket(lim.rate_per_s, lim.burst, clock)
        self._slots = threading.BoundedSemaphore(lim.max_connections)
        self._stop = threading.Event()
        self._threads: set[threading.Thread] = set()
        self.sock.listen(64)  # before any thread starts, so early clients are not refused

    # -- lifecycle --------------------------------------------------------------------------
    def serve_forever(self) -> None:
        self.sock.settimeout(1.0)  # belt and braces; shutdown() also wakes accept() directly
        log.info("helper listening on %s", self.sock.getsockname() or "inherited socket")
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError as err:
                if self._stop.is_set():
                    break
                log.warning("accept failed: %s", err)
                continue
            if not self._slots.acquire(blocking=False):
                self._send(conn, Response.refuse("rate_limited", "too many concurrent connections"))
                conn.close()
                continue
            th = threading.Thread(target=self._serve_conn, args=(conn,), daemon=True)
            self._threads.add(th)
            th.start()

    def shutdown(self) -> None:
        self._stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # Linux: wakes a blocked accept() at once
        except OSError:
            pass

    def close(self) -> None:
        self.shutdown()
        try:
            self.sock.close()
        except OSError:
            pass

    # -- one connection ---------------------------------------------------------------------
    def _serve_conn(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(self.limits.conn_timeout_s)
                try:
                    pid, uid, gid = peer_credentials(conn)
                except OSError as err:
                    log.warning("no peer credentials: %s", err)
                    return
                peer = {"pid": pid, "uid": uid, "gid": gid}
                peers = self.helper.policy.peers
                if uid not in peers.uids and gid not in peers.gids:
                    resp = Response.refuse("peer_refused", f"uid {uid} / gid {gid} is not allowed by "
                                                           "the helper policy [peers]")
                    self.helper.decide(peer, None, resp)
                    self._send(conn, resp)
                    return
                for line, oversize in self._lines(conn):
                    if oversize:
                        resp = Response.refuse("too_large", f"request exceeds "
                                                            f"{self.limits.max_request_bytes} bytes")
                        self.helper.decide(peer, None, resp)
                    elif not self.bucket.allow(uid):
                        resp = Response.refuse("rate_limited", f"more than {self.limits.rate_per_s}/s "
                                                               f"(burst {self.limits.burst}) from uid {uid}")
                        self.helper.decide(peer, None, resp)
                    else:
                        resp = self.helper.handle_line(line, peer)
                    if not self._send(conn, resp):
                        return
        except Exception:  # the accept loop must survive anything one connection does
            log.exception("connection handler failed")
        finally:
            self._slots.release()
            self._threads.discard(threading.current_thread())

    def _lines(self, conn: socket.socket):
        """Yield (line, oversize) without ever buffering more than max_request_bytes."""
        limit = self.limits.max_request_bytes
        buf = bytearray()
        discarding = False
        while not self._stop.is_set():
            try:
                chunk = conn.recv(min(65536, limit + 1))
            except (TimeoutError, OSError):
                return
            if not chunk:
                return
            while chunk:
                nl = chunk.find(b"\n")
                part, chunk = (chunk, b"") if nl < 0 else (chunk[:nl], chunk[nl + 1:])
                if discarding:
                    if nl >= 0:
                        discarding = False
                    continue
                if len(buf) + len(part) > limit:
                    buf.clear()
                    yield b"", True
                    discarding = nl < 0
                    continue
                buf += part
                if nl >= 0:
                    line = bytes(buf).rstrip(b"\r")
                    buf.clear()
                    if line.strip():
                        yield line, False

    @staticmethod
    def _send(conn: socket.socket, resp: Response) -> bool:
        try:
            conn.sendall(encode(resp))
            return True
        except OSError:
            return False


def serve(helper: Helper, *, socket_path: str | None, socket_mode: int = 0o660) -> None:
    """Run until SIGTERM/SIGINT: systemd's socket if passed, else bind ``socket_path``."""
    import signal

    sock = systemd_listen_socket()
    if sock is None:
        if not socket_path:
            raise HostError("no socket: pass --socket PATH or start via autotune-helper.socket")
        sock = bind_socket(socket_path, socket_mode)
    server = HelperServer(helper, sock)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.shutdown())
    try:
        server.serve_forever()
    finally:
        server.close()
        if socket_path and sock is not None and Path(socket_path).is_socket():
            try:
                Path(socket_path).unlink()
            except OSError:
                pass
