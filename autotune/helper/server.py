"""The helper's Unix socket server: peer credentials, bounded reads, rate limits, timeouts.

One thread per connection (bounded by policy.limits.max_connections; see ``HelperServer`` for
what happens when full). Each connection may send many newline-terminated requests, and every
line read gets exactly one answer. Nothing here runs a shell or opens a path by itself: every
write goes through ``Helper`` and the Knob implementations on a confined, writable Host.
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
from dataclasses import dataclass
from pathlib import Path

from autotune.errors import HostError
from autotune.helper.handler import Helper
from autotune.helper.protocol import Response, encode_response

log = logging.getLogger("autotune.helper")

SD_LISTEN_FDS_START = 3
LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn; 64 overflowed at 100 clients


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


def bind_socket(path: str | os.PathLike[str], mode: int = 0o660, group: str | None = None) -> socket.socket:
    """Create the listening socket at ``path`` (a stale socket file is replaced, nothing else),
    owned by ``group`` when given (so its members may connect with mode 0660)."""
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
    except OSError as err:
        sock.close()
        hint = (f"; create its directory first (install -d -m 0755 {p.parent})"
                if not p.parent.is_dir() else "")
        raise HostError(f"cannot listen on {p}: {err.strerror or err}{hint}") from None
    finally:
        os.umask(old)
    if group is not None:
        import grp

        try:
            os.chown(p, -1, grp.getgrnam(group).gr_gid)
        except KeyError:
            sock.close()
            p.unlink()
            raise HostError(f"--socket-group {group}: no such group on this host") from None
    os.chmod(p, mode)
    return sock


@dataclass(eq=False)
class _Conn:
    """One accepted connection as the accept loop sees it (guarded by the server's lock)."""

    sock: socket.socket
    state: str = "new"  # new (nothing read yet) | idle (answered, waiting) | active (a line)
    since: float = 0.0  # when it entered ``state``


class HelperServer:
    """Accept loop + one thread per connection around a ``Helper``.

    At most ``limits.max_connections`` connections are served. When full, a newcomer takes
    the slot of the connection that has been silent longest (fresh or between requests):
    that one is shut for reading, so whatever it already sent is still answered and its next
    send fails (EPIPE: not delivered, safe to retry). Only when every slot is mid-request is
    the newcomer answered ``busy`` with ``retry_after_s``. A fresh connection must send its
    first byte within ``first_byte_timeout_s``, a started line must end within
    ``request_timeout_s``, and an idle one is closed after ``conn_timeout_s``: a silent or
    trickling client holds a slot briefly and never blocks the others.
    """

    RETRY_AFTER_S = 0.05

    def __init__(self, helper: Helper, sock: socket.socket, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.helper = helper
        self.sock = sock
        lim = helper.policy.limits
        self.limits = lim
        self.bucket = TokenBucket(lim.rate_per_s, lim.burst, clock)
        self._lock = threading.Lock()
        self._conns: dict[int, _Conn] = {}  # id(thread's _Conn) -> _Conn, oldest first
        self._stop = threading.Event()
        self._busy_count, self._busy_logged = 0, 0.0
        self.sock.listen(LISTEN_BACKLOG)  # before any thread starts, so early clients queue

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
            c = self._admit(conn)
            if c is None:
                self._refuse_busy(conn)
                continue
            try:
                threading.Thread(target=self._serve_conn, args=(c,), daemon=True).start()
            except RuntimeError as err:  # cannot start a thread: answer busy rather than hang
                log.warning("cannot start a connection thread: %s", err)
                self._forget(c)
                self._refuse_busy(conn)

    def shutdown(self) -> None:
        self._stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # Linux: wakes a blocked accept() at once
        except OSError:
            pass
        with self._lock:
            for c in self._conns.values():
                _shut(c.sock, socket.SHUT_RDWR)

    def close(self) -> None:
        self.shutdown()
        try:
            self.sock.close()
        except OSError:
            pass

    # -- admission --------------------------------------------------------------------------
    def _admit(self, sock: socket.socket) -> _Conn | None:
        """A slot for ``sock`` (taking the longest-silent one when full), or None: busy."""
        now = time.monotonic()
        with self._lock:
            if len(self._conns) >= self.limits.max_connections:
                silent = [c for c in self._conns.values() if c.state != "active"]
                if not silent:
                    return None
                victim = min(silent, key=lambda c: c.since)
                del self._conns[id(victim)]
                _shut(victim.sock, socket.SHUT_RD)  # its thread answers what it read, then ends
                log.debug("full: closed a connection silent for %.2fs", now - victim.since)
            c = _Conn(sock, "new", now)
            self._conns[id(c)] = c
            return c

    def _forget(self, c: _Conn) -> None:
        with self._lock:
            self._conns.pop(id(c), None)

    def _set_state(self, c: _Conn, state: str) -> None:
        with self._lock:
            c.state, c.since = state, time.monotonic()

    def _refuse_busy(self, sock: socket.socket) -> None:
        """Answer ``busy`` without reading anything (so a retry can never double a request)."""
        resp = Response.refuse("busy", f"{self.limits.max_connections} connections are mid-request; "
                                       f"retry in {self.RETRY_AFTER_S}s",
                               retry_after_s=self.RETRY_AFTER_S)
        try:
            sock.setblocking(False)
            sock.send(encode_response(resp))
        except OSError:
            pass
        finally:
            sock.close()
        self._busy_count += 1
        now = time.monotonic()
        if now - self._busy_logged >= 1.0:  # one line a second, not one per refused client
            log.warning("busy: refused %d connection(s): all %d slots mid-request",
                        self._busy_count, self.limits.max_connections)
            self._busy_count, self._busy_logged = 0, now

    # -- one connection ---------------------------------------------------------------------
    def _serve_conn(self, c: _Conn) -> None:
        conn = c.sock
        try:
            with conn:
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
                for line, problem in self._lines(c):
                    if problem == "too_large":
                        resp = Response.refuse("too_large", f"request exceeds "
                                                            f"{self.limits.max_request_bytes} bytes")
                        self.helper.decide(peer, None, resp)
                    elif problem == "too_slow":
                        resp = Response.refuse("bad_request", f"request line not finished within "
                                                              f"{self.limits.request_timeout_s}s")
                        self.helper.decide(peer, None, resp)
                    elif not self.bucket.allow(uid):
                        resp = Response.refuse("rate_limited", f"more than {self.limits.rate_per_s}/s "
                                                               f"(burst {self.limits.burst}) from uid {uid}")
                        self.helper.decide(peer, None, resp)
                    else:
                        resp = self.helper.handle_line(line, peer)
                    if not self._send(conn, resp) or problem == "too_slow":
                        return
                    self._set_state(c, "idle")
        except Exception:  # the accept loop must survive anything one connection does
            log.exception("connection handler failed")
        finally:
            self._forget(c)

    def _deadline(self, c: _Conn, reading: bool) -> float:
        lim = self.limits
        if reading:
            return c.since + lim.request_timeout_s
        return c.since + (lim.first_byte_timeout_s if c.state == "new" else lim.conn_timeout_s)

    def _lines(self, c: _Conn):
        """Yield (line, problem) without ever buffering more than max_request_bytes; problem is
        None, "too_large" (the line was discarded) or "too_slow" (the last, unfinished line)."""
        conn, limit = c.sock, self.limits.max_request_bytes
        buf = bytearray()
        discarding = reading = False
        while not self._stop.is_set():
            left = self._deadline(c, reading) - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                conn.settimeout(left)
                chunk = conn.recv(min(65536, limit + 1))
            except TimeoutError:
                if reading:
                    yield b"", "too_slow"
                return
            except OSError:
                return
            if not chunk:
                return  # a line without its newline at EOF is no message: nothing to answer
            if not reading:
                self._set_state(c, "active")
            while chunk:
                nl = chunk.find(b"\n")
                part, chunk = (chunk, b"") if nl < 0 else (chunk[:nl], chunk[nl + 1:])
                if discarding:
                    if nl >= 0:
                        discarding = False
                    continue
                if len(buf) + len(part) > limit:
                    buf.clear()
                    yield b"", "too_large"
                    discarding = nl < 0
                    continue
                buf += part
                if nl >= 0:
                    line = bytes(buf).rstrip(b"\r")
                    buf.clear()
                    yield line, None  # a blank line too: every line gets exactly one answer
            reading = bool(buf) or discarding  # a line is under way: not silent, not evictable
            if reading != (c.state == "active"):
                self._set_state(c, "active" if reading else "idle")

    def _send(self, conn: socket.socket, resp: Response) -> bool:
        try:
            conn.settimeout(self.limits.request_timeout_s)  # a client that never reads
            conn.sendall(encode_response(resp))
            return True
        except OSError:
            return False


def _shut(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass


def serve(helper: Helper, *, socket_path: str | None, socket_mode: int = 0o660,
          socket_group: str | None = None) -> None:
    """Run until SIGTERM/SIGINT: systemd's socket if passed, else bind ``socket_path``."""
    import signal

    sock = systemd_listen_socket()
    if sock is None:
        if not socket_path:
            raise HostError("no socket: pass --socket PATH or start via autotune-helper.socket")
        sock = bind_socket(socket_path, socket_mode, socket_group)
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
