"""The helper's Host: no symbolic link below the root is ever followed when it opens a file.

``Host`` maps a host path under its root and lets the OS resolve it, so a directory symlink on
the way (``<root>/proc/sys/vm -> /elsewhere``) silently redirects a read or a write. The helper
writes as root, so every open here walks the path one component at a time with
``openat(O_NOFOLLOW)`` from a trusted anchor: the root itself, or a cgroup hierarchy's mount
(where systemd's v1 ``cpu -> cpu,cpuacct`` link is the one link followed, and only when it
resolves inside the root). A link anywhere below the anchor is refused with a ``HostError``
naming it; the file opened must be a regular file (a FIFO cannot hang a read), and reads are
bounded.
"""

from __future__ import annotations

import os
import stat
from functools import cached_property

from autotune.errors import HostError, MissingFile
from autotune.host import CgroupInfo, Host

MAX_READ_BYTES = 4 << 20  # knob files are tiny; a big cgroup.procs stays well below this
READ_CHUNK = 65536
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


class SymlinkRefused(HostError):
    """A symbolic link on a path the helper was asked to open (``path``: the path asked for)."""

    def __init__(self, path: str, link: str) -> None:
        super().__init__(f"{path}: {link} is a symbolic link; the helper follows no links (refused)")
        self.path = path


class ConfinedHost(Host):
    """``Host`` whose ``read_text``/``write_text``/``replace_file``/``listdir`` follow no links
    below an anchor."""

    @classmethod
    def of(cls, host: Host) -> "ConfinedHost":
        """``host`` itself when already confined, else a confined Host on the same root."""
        return host if isinstance(host, ConfinedHost) else cls(host.root, writable=host.writable)

    @cached_property
    def cgroup(self) -> CgroupInfo:
        """Layout detection reads the mount table through a plain Host: the mounts it finds are
        the anchors the confined opens start from."""
        return Host(self.root).cgroup

    @cached_property
    def anchors(self) -> list[tuple[str, str]]:
        """(host path, real local path) of trusted starting points, longest first."""
        root = str(self.root)
        out = []
        info = self.cgroup
        for base in {info.v2_mount, *info.v1_mounts.values()} - {None, "/"}:
            real = os.path.realpath(self.path(base))  # type: ignore[arg-type]
            if _under(real, root):  # a mount resolving outside the root is no anchor
                out.append((base, real))  # type: ignore[arg-type]
        out.sort(key=lambda a: -len(a[0]))
        return out + [("/", root)]

    def _split(self, host_path: str) -> tuple[str, str, list[str]]:
        """(anchor host path, anchor real path, components below it) for a host path."""
        local = self.path(host_path)  # lexical: refuses '..' escapes from the root
        norm = "/" + os.path.relpath(local, self.root) if local != self.root else "/"
        norm = "/" if norm == "/." else norm
        for base, real in self.anchors:
            if _under(norm, base):
                rest = norm[len(base):] if base != "/" else norm
                return base, real, [p for p in rest.split("/") if p]
        raise HostError(f"{host_path}: no anchor under {self.root}")  # pragma: no cover

    def symlink_on_path(self, host_path: str) -> str | None:
        """The first existing component below the anchor that is a symlink, as a host path
        (None when there is none; components that do not exist end the walk)."""
        base, real, parts = self._split(host_path)
        cur_real, cur_host = real, base.rstrip("/")
        for part in parts:
            cur_real, cur_host = f"{cur_real}/{part}", f"{cur_host}/{part}"
            try:
                st = os.lstat(cur_real)
            except OSError:
                return None
            if stat.S_ISLNK(st.st_mode):
                return cur_host
        return None

    def _open(self, host_path: str, flags: int) -> int:
        """fd of ``host_path`` opened with ``flags``; no link below its anchor followed."""
        base, real, parts = self._split(host_path)
        try:
            dirfd = os.open(real, _DIR_FLAGS & ~os.O_NOFOLLOW)
        except FileNotFoundError as err:
            raise MissingFile(f"{host_path}: {base} not present under {self.root}") from err
        except OSError as err:
            raise HostError(f"{host_path}: cannot open {base} ({err.strerror})") from err
        try:
            if not parts:
                raise HostError(f"{host_path}: is a directory, not a file")
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                try:
                    fd = os.open(part, (flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
                                 if last else _DIR_FLAGS, dir_fd=dirfd)
                except FileNotFoundError as err:
                    raise MissingFile(f"{host_path}: not present under {self.root}") from err
                except OSError as err:
                    link = self.symlink_on_path(host_path)
                    if link is not None:
                        raise SymlinkRefused(host_path, link) from err
                    raise HostError(f"{host_path}: cannot open ({err.strerror})") from err
                os.close(dirfd)
                dirfd = fd
            if not stat.S_ISREG(os.fstat(dirfd).st_mode):
                raise HostError(f"{host_path}: not a regular file; refused")
            fd, dirfd = dirfd, -1
            return fd
        finally:
            if dirfd >= 0:
                os.close(dirfd)

    # -- the Host interface ---------------------------------------------------------------
    def read_text(self, host_path: str) -> str:
        fd = self._open(host_path, os.O_RDONLY)
        chunks: list[bytes] = []
        size = 0
        try:
            # small reads: procfs sysctl handlers allocate the whole requested count (ENOMEM)
            while chunk := os.read(fd, READ_CHUNK):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_READ_BYTES:
                    raise HostError(f"{host_path}: larger than {MAX_READ_BYTES} bytes; refused")
        except OSError as err:
            raise HostError(f"{host_path}: cannot read ({err.strerror})") from err
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8", errors="replace")

    def _open_for_write(self, host_path: str) -> int:
        try:
            return self._open(host_path, os.O_WRONLY | (0 if self.is_live else os.O_TRUNC))
        except HostError as err:
            if isinstance(err, MissingFile | SymlinkRefused):
                raise
            raise HostError(f"{host_path}: cannot open for writing ({err})") from err

    def _dir_fd(self, host_dir: str, *, create: bool) -> int:
        """A directory fd reached one component at a time with O_NOFOLLOW (the last one made
        when missing and ``create``): a link on the way is refused, never followed."""
        base, real, parts = self._split(host_dir or "/")
        try:
            dirfd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise HostError(f"{host_dir}: cannot open {base} ({err.strerror})") from err
        try:
            for i, part in enumerate(parts):
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                try:
                    fd = os.open(part, flags, dir_fd=dirfd)
                except FileNotFoundError as err:
                    if not (create and i == len(parts) - 1):
                        raise MissingFile(f"{host_dir}: not present under {self.root}") from err
                    os.mkdir(part, 0o755, dir_fd=dirfd)
                    fd = os.open(part, flags, dir_fd=dirfd)
                except OSError as err:
                    link = self.symlink_on_path(host_dir)
                    if link is not None:
                        raise SymlinkRefused(host_dir, link) from err
                    raise HostError(f"{host_dir}: cannot open ({err.strerror})") from err
                os.close(dirfd)
                dirfd = fd
            fd, dirfd = dirfd, -1
            return fd
        finally:
            if dirfd >= 0:
                os.close(dirfd)

    def listdir(self, host_path: str) -> list[str]:
        link = self.symlink_on_path(host_path)
        if link is not None:
            raise SymlinkRefused(host_path, link)
        return super().listdir(host_path)
