"""The one object through which all host access goes.

Every path the agent reads or writes is an absolute host path ("/proc/stat") resolved under
``Host.root``. The same code therefore reads a live kernel (root "/"), a fixture tree in
tests, or a host's /proc and /sys mounted into a container at "/host". Writing is off unless
the Host was built ``writable=True`` (only the privileged helper and tests do that).

Reads are bounded, because a rooted tree (or a broken kernel interface) can hold anything
where a procfs file is expected:
- only regular files are read: procfs, sysfs and cgroupfs files are regular; a FIFO, socket or
  device is refused before any read (opened O_NONBLOCK, so even the open cannot hang);
- at most ``MAX_READ_BYTES`` = 1 MiB per file: the largest files we parse, /proc/stat and
  cgroup.procs, stay far below (about 80 bytes per CPU, 8 per pid); a larger file is a
  ParseError after reading 1 MiB, not a 100 MB string;
- a read still going after ``READ_TIMEOUT_S`` is abandoned (checked between 8 KiB chunks).
  One read() that blocks inside the kernel (a hung FUSE or NFS mount) cannot be interrupted
  without a thread per read; procfs/sysfs reads do not block that way, so we do not pay that.
Every failure is a HostError naming the file; sensors turn it into a missing reading.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_mod
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel

from autotune.errors import HostError, MissingFile, ParseError

log = logging.getLogger(__name__)
T = TypeVar("T")

CgroupLayout = Literal["v2", "hybrid", "v1", "none"]

ENV_ROOT = "AUTOTUNE_ROOT"
CGROUP_MOUNT = "/sys/fs/cgroup"
PSI_RESOURCES = ("cpu", "memory", "io", "irq")
CPU_ONLINE = "/sys/devices/system/cpu/online"

MAX_READ_BYTES = 1 << 20  # per host file; see the module docstring
READ_TIMEOUT_S = 2.0  # per host file, checked between chunks
_CHUNK = 8 * 1024  # measured: larger buffers make seq_file regenerate more per read()
MAX_CPUS = 65536  # cpu ids in a cpu list are < MAX_CPUS (the kernel's NR_CPUS tops out at 8192)


class CgroupInfo(BaseModel):
    """Where the cgroup hierarchies live, as host paths."""

    layout: CgroupLayout
    v2_mount: str | None = None  # "/sys/fs/cgroup" (pure v2) or "/sys/fs/cgroup/unified" (hybrid)
    v2_controllers: list[str] = []  # controllers enabled at the v2 root
    v1_mounts: dict[str, str] = {}  # controller -> host path of its v1 hierarchy

    def controller_version(self, controller: str) -> Literal[1, 2] | None:
        """Which hierarchy manages ``controller`` ("cpu", "memory", "cpuset", "io"...)."""
        if controller in self.v2_controllers:
            return 2
        if controller in self.v1_mounts:
            return 1
        return None


class Capabilities(BaseModel):
    """What this host supports; detected once, reported by ``autotune status``."""

    root: str
    kernel: str | None
    ncpu: int
    cgroup: CgroupInfo
    psi: dict[str, bool]  # resource -> /proc/pressure/<resource> present
    psi_full_cpu: bool  # kernel >= 5.13 reports a "full" line for cpu
    psi_triggers: bool | None  # None: not probed (fixture root / not procfs)
    psi_triggers_detail: str
    cpufreq: bool
    cpufreq_policies: list[str]
    governors_available: list[str]
    thp: bool
    thp_files: list[str]
    problems: list[str] = []  # files that exist but could not be read: detected without them


def check_root(root: str | os.PathLike[str]) -> Path:
    """The root of a host tree, or HostError saying why it is none. '/' always passes; any other
    root must be a directory holding proc/ or sys/ (a fixture, or a host's /proc and /sys
    mounted at /host): an empty or missing one would read as an idle host with no symptoms."""
    p = Path(root)
    hint = "give '/' or a tree holding the host's proc/ and sys/ (e.g. /host)"
    if not p.exists():
        raise HostError(f"{root}: no such directory; {hint}")
    if not p.is_dir():
        raise HostError(f"{root}: not a directory; {hint}")
    if p.resolve() != Path("/") and not ((p / "proc").is_dir() or (p / "sys").is_dir()):
        raise HostError(f"{root}: holds neither proc/ nor sys/: not a host tree; {hint}")
    return p


class Host:
    """Rooted access to /proc, /sys and the cgroup mounts."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, writable: bool = False) -> None:
        root = root if root is not None else os.environ.get(ENV_ROOT, "/")
        self.root = Path(root).resolve()
        self.writable = writable
        self._root_s = str(self.root)
        self._locals: dict[str, str] = {}  # host path -> local path: the same files every sample

    def __repr__(self) -> str:
        return f"Host(root={str(self.root)!r}, writable={self.writable})"

    @property
    def is_live(self) -> bool:
        """True when the root is this machine's own filesystem."""
        return self.root == Path("/")

    # -- paths -------------------------------------------------------------------------
    def path(self, host_path: str | os.PathLike[str]) -> Path:
        """Map an absolute host path to a local path under root, refusing escapes via '..'."""
        return Path(self._local(host_path))

    def _local(self, host_path: str | os.PathLike[str]) -> str:
        """``path`` as a string, remembered: the agent reads the same few dozen files every
        sample, and pathlib's parsing was a tenth of its sampled stacks."""
        key = os.fspath(host_path)
        local = self._locals.get(key)
        if local is not None:
            return local
        if not key.startswith("/"):
            raise HostError(f"host path must be absolute, got {key!r}")
        local = os.path.normpath(os.path.join(self._root_s, key.lstrip("/")))
        if local != self._root_s and not local.startswith(self._root_s.rstrip("/") + "/"):
            raise HostError(f"host path {key!r} escapes root {self.root}")
        if len(self._locals) >= 4096:  # pids and threads come and go
            self._locals.clear()
        self._locals[key] = local
        return local

    def exists(self, host_path: str) -> bool:
        return os.path.exists(self._local(host_path))

    def is_dir(self, host_path: str) -> bool:
        return os.path.isdir(self._local(host_path))

    def listdir(self, host_path: str) -> list[str]:
        try:
            return sorted(os.listdir(self._local(host_path)))
        except FileNotFoundError as err:
            raise MissingFile(f"{host_path}: no such directory under {self.root}") from err
        except OSError as err:
            raise HostError(f"{host_path}: cannot list ({err.strerror})") from err

    def subdirs(self, host_path: str) -> list[str]:
        """Names of the directories directly in ``host_path`` (symlinks not followed), sorted;
        one scandir, so walking a cgroup tree does not stat each of its many files."""
        try:
            with os.scandir(self.path(host_path)) as it:
                return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except FileNotFoundError as err:
            raise MissingFile(f"{host_path}: no such directory under {self.root}") from err
        except OSError as err:
            raise HostError(f"{host_path}: cannot list ({err.strerror})") from err

    # -- reading -----------------------------------------------------------------------
    def read_text(self, host_path: str, *, max_bytes: int = MAX_READ_BYTES) -> str:
        """Read a whole regular file of at most ``max_bytes`` (bounded; see the module doc).

        MissingFile if absent; ParseError if larger than ``max_bytes``; HostError on anything
        else (not a regular file, permission, EIO, too slow). Every message names the file.
        """
        local = self._local(host_path)
        try:
            # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever
            fd = os.open(local, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except FileNotFoundError as err:
            raise MissingFile(f"{host_path}: not present under {self.root}") from err
        except OSError as err:
            raise HostError(f"{host_path}: cannot read ({err.strerror})") from err
        try:
            mode = os.fstat(fd).st_mode
            if not stat_mod.S_ISREG(mode):
                raise HostError(f"{host_path}: not a regular file ({_file_kind(mode)}); refusing to read it")
            chunks: list[bytes] = []
            total, deadline = 0, time.monotonic() + READ_TIMEOUT_S
            while True:
                chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > max_bytes:
                    raise ParseError(f"{host_path}: larger than the {_size(max_bytes)} read limit; "
                                     "not a kernel file this agent understands")
                if time.monotonic() > deadline:
                    raise HostError(f"{host_path}: read not finished after {READ_TIMEOUT_S:g} s; abandoned")
        except OSError as err:
            raise HostError(f"{host_path}: cannot read ({err.strerror})") from err
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8", errors="replace")

    def read_optional(self, host_path: str) -> str | None:
        """Read a file, or None when it does not exist (feature absent on this kernel)."""
        try:
            return self.read_text(host_path)
        except MissingFile:
            return None

    # -- writing -----------------------------------------------------------------------
    def write_text(self, host_path: str, value: str) -> None:
        """Write one value the way the kernel expects (single write, no truncation games)."""
        if not self.writable:
            raise HostError(f"refusing to write {host_path}: this Host is read-only (dry run)")
        fd = self._open_for_write(host_path)
        try:
            os.write(fd, value.encode())
        except OSError as err:
            raise HostError(f"{host_path}: kernel refused {value!r} ({err.strerror})") from err
        finally:
            os.close(fd)

    def _open_for_write(self, host_path: str) -> int:
        """An fd for ``write_text`` (a fixture tree is truncated first, the kernel's files are
        not); MissingFile / HostError say why not. The helper's confined Host overrides only
        this: how the file is reached."""
        try:
            return os.open(self.path(host_path), os.O_WRONLY | (0 if self.is_live else os.O_TRUNC))
        except FileNotFoundError as err:
            raise MissingFile(f"{host_path}: not present under {self.root}") from err
        except OSError as err:
            raise HostError(f"{host_path}: cannot open for writing ({err.strerror})") from err

    def replace_file(self, host_path: str, content: str | None, *, mode: int = 0o644) -> None:
        """Replace a whole file autotune owns (a systemd drop-in, an env file; never a kernel
        file) in one step: a temporary file beside it, fsync, rename over it, so a crash leaves
        the old or the new content, never half. ``None`` removes it. A missing directory is
        created, one level only (a unit's ``<unit>.d``)."""
        if not self.writable:
            raise HostError(f"refusing to write {host_path}: this Host is read-only (dry run)")
        parent, name = os.path.split(host_path)
        if not name or name in (".", ".."):
            raise HostError(f"{host_path}: not a file path")
        dfd = self._dir_fd(parent, create=content is not None)
        try:
            if content is None:
                try:
                    os.unlink(name, dir_fd=dfd)
                except FileNotFoundError:
                    return
            else:
                tmp = f".{name}.autotune-{os.getpid()}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                             mode, dir_fd=dfd)
                try:
                    os.write(fd, content.encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)
        except OSError as err:
            raise HostError(f"{host_path}: cannot {'remove' if content is None else 'replace'} "
                            f"({err.strerror})") from err
        finally:
            os.close(dfd)

    def _dir_fd(self, host_dir: str, *, create: bool) -> int:
        """An fd of a directory (``replace_file``), made when missing and ``create``. The
        helper's confined Host overrides it: no link followed on the way."""
        local = self.path(host_dir or "/")
        try:
            if create and not local.exists():
                os.mkdir(local, 0o755)
            return os.open(local, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError as err:
            raise MissingFile(f"{host_dir}: no such directory under {self.root}") from err
        except OSError as err:
            raise HostError(f"{host_dir}: cannot open directory ({err.strerror})") from err

    # -- capabilities --------------------------------------------------------------------
    @cached_property
    def cgroup(self) -> CgroupInfo:
        return detect_cgroups(self)

    @cached_property
    def ncpu(self) -> int:
        return self._ncpu[0]

    @cached_property
    def _ncpu(self) -> tuple[int, list[str]]:
        """(CPU count, problems): cpu/online, else per-CPU lines of /proc/stat, else this
        machine's count. An unreadable or absurd file is skipped with a problem, never fatal."""
        problems: list[str] = []
        online = _soft(problems, lambda: self.read_optional(CPU_ONLINE))
        if online and online.strip():
            try:
                return len(parse_cpulist(online)), problems
            except ValueError as err:
                problems.append(f"{CPU_ONLINE}: {err}")
        stat = _soft(problems, lambda: self.read_optional("/proc/stat")) or ""
        n = sum(1 for line in stat.splitlines() if line.startswith("cpu") and line[3:4].isdigit())
        if not n and problems:
            problems.append(f"CPU count: using this machine's ({os.cpu_count() or 1})")
        for p in problems:
            log.warning("%s", p)
        return n or (os.cpu_count() or 1), problems

    def capabilities(self) -> Capabilities:
        """Detect what the host supports. Never raises for an unreadable file: the feature is
        reported absent and the file named in ``problems``."""
        problems = list(self._ncpu[1])

        def soft(fn: Callable[[], T], default: T) -> T:
            got = _soft(problems, fn)
            return default if got is None else got

        psi = {r: self.exists(f"/proc/pressure/{r}") for r in PSI_RESOURCES}
        cpu_psi = soft(lambda: self.read_optional("/proc/pressure/cpu"), "")
        triggers, detail = probe_psi_triggers(self)
        policies = soft(lambda: _cpufreq_policies(self), [])
        governors: set[str] = set()
        for pol in policies:
            text = soft(lambda p=pol: self.read_optional(
                f"/sys/devices/system/cpu/cpufreq/{p}/scaling_available_governors"), "")
            governors.update(text.split())
        thp_dir = "/sys/kernel/mm/transparent_hugepage"
        thp_files = [
            f for f in ("enabled", "defrag", "khugepaged/defrag") if self.exists(f"{thp_dir}/{f}")
        ]
        release = soft(lambda: self.read_optional("/proc/sys/kernel/osrelease"), "")
        cgroup = soft(lambda: self.cgroup, CgroupInfo(layout="none"))
        return Capabilities(
            root=str(self.root),
            kernel=release.strip() or None,
            ncpu=self.ncpu,
            cgroup=cgroup,
            psi=psi,
            psi_full_cpu="full" in cpu_psi,
            psi_triggers=triggers,
            psi_triggers_detail=detail,
            cpufreq=bool(policies),
            cpufreq_policies=policies,
            governors_available=sorted(governors),
            thp=bool(thp_files),
            thp_files=thp_files,
            problems=problems,
        )


def _soft(problems: list[str], fn: Callable[[], T]) -> T | None:
    """fn(), or None with its HostError's message added to ``problems``."""
    try:
        return fn()
    except HostError as err:
        problems.append(str(err))
        return None


def _file_kind(mode: int) -> str:
    for test, name in ((stat_mod.S_ISDIR, "a directory"), (stat_mod.S_ISFIFO, "a FIFO"),
                       (stat_mod.S_ISSOCK, "a socket"), (stat_mod.S_ISCHR, "a character device"),
                       (stat_mod.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return f"mode {stat_mod.filemode(mode)}"


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and not n % (1 << 20) else f"{n} bytes"


def parse_cpulist(text: str) -> list[int]:
    """Parse the kernel's cpu list format ("0-3,8,10-11") into sorted ints.

    ValueError on anything malformed, and on cpu ids >= MAX_CPUS: "0-2147483647" must be an
    error in microseconds, not a 2-billion-element set after 12 s.
    """
    cpus: set[int] = set()
    text = text.strip()
    if not text:
        return []
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        a = _cpu_id(lo, part)
        b = _cpu_id(hi, part) if dash else a
        if b < a:
            raise ValueError(f"bad cpu range {part!r}")
        cpus.update(range(a, b + 1))
    return sorted(cpus)


def _cpu_id(text: str, part: str) -> int:
    text = text.strip()
    # ASCII digits only: int() would also take "1_0", "+7" or Arabic-Indic digits
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"bad cpu list element {part[:40]!r}")
    if len(text) > 6 or int(text) >= MAX_CPUS:
        raise ValueError(f"cpu id {text[:20]} out of range (ids must be < {MAX_CPUS})")
    return int(text)


def format_cpulist(cpus: list[int] | set[int]) -> str:
    """Inverse of parse_cpulist, compact ranges: [0,1,2,5] -> "0-2,5"."""
    out: list[str] = []
    s = sorted(set(cpus))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(out)


def detect_cgroups(host: Host) -> CgroupInfo:
    """Classify the cgroup layout from the files present under the root."""
    if host.exists(f"{CGROUP_MOUNT}/cgroup.controllers"):
        ctrls = (host.read_optional(f"{CGROUP_MOUNT}/cgroup.controllers") or "").split()
        return CgroupInfo(layout="v2", v2_mount=CGROUP_MOUNT, v2_controllers=ctrls)
    v1: dict[str, str] = {}
    v2_mount = None
    v2_ctrls: list[str] = []
    if host.is_dir(CGROUP_MOUNT):
        for name in host.listdir(CGROUP_MOUNT):
            sub = f"{CGROUP_MOUNT}/{name}"
            if name == "unified":
                if host.exists(f"{sub}/cgroup.procs"):
                    v2_mount = sub
                    v2_ctrls = (host.read_optional(f"{sub}/cgroup.controllers") or "").split()
                continue
            if not host.exists(f"{sub}/cgroup.procs"):
                continue
            # "cpu,cpuacct" mounts serve both controllers; "name=systemd" is no controller.
            for ctrl in name.split(","):
                if ctrl and not ctrl.startswith("name=") and ctrl != "systemd":
                    v1.setdefault(ctrl, sub)
    if v2_mount:
        return CgroupInfo(layout="hybrid", v2_mount=v2_mount, v2_controllers=v2_ctrls, v1_mounts=v1)
    if v1:
        return CgroupInfo(layout="v1", v1_mounts=v1)
    return CgroupInfo(layout="none")


def _cpufreq_policies(host: Host) -> list[str]:
    base = "/sys/devices/system/cpu/cpufreq"
    if not host.is_dir(base):
        return []
    return [p for p in host.listdir(base) if p.startswith("policy")]


def _fs_type(local: Path) -> str | None:
    """Filesystem type of a local path, from this process's mountinfo (longest prefix)."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    target = str(local.resolve())
    best, fstype = "", None
    for line in text.splitlines():
        pre, _, post = line.partition(" - ")
        fields = pre.split()
        if len(fields) < 5 or not post:
            continue
        mnt = fields[4]
        if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, post.split()[0]
    return fstype


def probe_psi_triggers(host: Host) -> tuple[bool | None, str]:
    """Try to register a PSI trigger (kernel >= 5.2). Only on a real procfs, never a fixture."""
    local = host.path("/proc/pressure/cpu")
    if not local.exists():
        return False, "no /proc/pressure/cpu"
    if _fs_type(local) != "proc":
        return None, "not probed: root is not a live procfs"
    try:
        fd = os.open(local, os.O_RDWR | os.O_NONBLOCK)
    except OSError as err:
        return False, f"open failed: {err.strerror}"
    try:
        os.write(fd, b"some 150000 1000000\0")
        return True, "trigger registered"
    except OSError as err:
        name = errno.errorcode.get(err.errno or 0, str(err.errno))
        return False, f"kernel refused trigger ({name}); falling back to polling"
    finally:
        os.close(fd)
