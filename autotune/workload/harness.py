"""Plumbing the benchmark (bench/) and `autotune demo` share: cgroups made for a role (the server,
the neighbour), the processes started in them, and their cleanup.

Runs as root on a real kernel. A ``RoleCgroup`` is one path created in every hierarchy it uses:
the v1 hierarchies of ``controllers`` (hybrid and v1 hosts) and the v2 tree (on a hybrid host the
'unified' tree has no controllers, but the pids moved there give each role its own PSI,
``cpu.pressure``). The path is made under the process's own cgroup (the benchmark: on the dev
VM the memory hierarchy places us in a sandbox cgroup we must not escape), or under each
hierarchy's root (the demo). Either way it is ONE path in every hierarchy, the one the agent's
config and the helper's policy name: an agent reads a declared cgroup at the same path in each
hierarchy, so a role whose memory cgroup sat elsewhere would show no memory to it. Below the
process's own cgroups that path is the deepest of them (the memory sandbox on the dev VM), with
the levels a hierarchy lacks created (and removed again) there; only when the process's own
cgroups are not on one line (cpu in /a, memory in /b) does each hierarchy get its own parent.
Every level created is removed again, children first, once empty; a new v1 cpuset gets its
parent's cpus and mems (it takes no task without), a new v2 parent level gets the controllers
its children need enabled.

Limits are set through the knobs (the same code the agent's changes go through), processes are
moved in through ``cgroupfs``. The server is either engine of ``engines.py`` (our GPT-2 server or
llama.cpp's llama-server: ``start_server(engine=...)``), started the same way. Everything started or created is registered, and ``cleanup()``
(idempotent) stops the processes (SIGTERM to the group, then SIGKILL) and removes the cgroups.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from autotune import cgroupfs
from autotune.cgroupfs import controller_dir, norm_cgpath
from autotune.errors import HostError, InvalidValue, MissingFile
from autotune.host import Host
from autotune.knobs import get_knob
from autotune.workload.engines import get_engine

log = logging.getLogger(__name__)

V1_CONTROLLERS = ("cpu", "cpuacct", "memory")
GIB = 1024**3

_procs: list[subprocess.Popen] = []
_cgroups: list["RoleCgroup"] = []
_ancestors: list[str] = []  # host dirs above the roles' paths that a role had to create


# -- cgroups ------------------------------------------------------------------------------------
def _parents(host: Host, controllers: tuple[str, ...], under_root: bool) -> dict[str, str]:
    """Hierarchy key (a v1 controller, or "v2") -> the cgroup path roles are made under: the
    hierarchy's root, or this process's own cgroup: the deepest of its own cgroups in every
    hierarchy when the others are its ancestors (one path everywhere), else each its own."""
    info = host.cgroup
    keys = [c for c in controllers if info.controller_version(c) == 1] + (["v2"] if info.v2_mount else [])
    if under_root:
        return dict.fromkeys(keys, "/")
    own = {k: norm_cgpath(cgroupfs.pid_cgroup(host, None if k == "v2" else k) or "/") for k in keys}
    deepest = max(own.values(), key=lambda p: len(p.rstrip("/").split("/")), default="/")
    if all(_within(deepest, p) for p in own.values()):
        return dict.fromkeys(keys, deepest)
    log.warning("this process's cgroups are not on one path (%s): each hierarchy gets its own, and an "
                "agent that reads one declared path sees only part of each role", own)
    return own


def _within(path: str, ancestor: str) -> bool:
    return ancestor == "/" or path == ancestor or path.startswith(ancestor.rstrip("/") + "/")


def _host_dir(host: Host, key: str, cgpath: str) -> str:
    """The host directory of cgroup ``cgpath`` in hierarchy ``key``."""
    return host.cgroup.v2_mount + cgpath if key == "v2" else controller_dir(host, key, cgpath)


class RoleCgroup:
    """One role's cgroup in every hierarchy used (v1 ``controllers``, and v2 for PSI).

    ``under_root``: below each hierarchy's root instead of below this process's own cgroup.
    """

    def __init__(self, host: Host, name: str, *, controllers: tuple[str, ...] = V1_CONTROLLERS,
                 under_root: bool = False) -> None:
        self.host = host
        self.name = name
        self.dirs: dict[str, str] = {}  # hierarchy key ("cpu", "memory", "v2"...) -> host path
        self.paths: dict[str, str] = {}  # same keys -> cgroup path inside that hierarchy
        self.levels: dict[str, list[str]] = {}  # key -> host paths of every level of ``name``
        for key, parent in _parents(host, controllers, under_root).items():
            self.paths[key] = norm_cgpath(f"{parent}/{name}")
            self.dirs[key] = _host_dir(host, key, self.paths[key])
        if not self.dirs:
            raise HostError("no cgroup hierarchy found: cgroup v1 or v2 must be mounted")
        _cgroups.append(self)
        for key, d in self.dirs.items():
            self._make(key, d)

    def _make(self, key: str, d: str) -> None:
        """Create ``d`` level by level, preparing each new level for what goes below it. The
        levels of ``name`` are this role's to remove; a level above them that did not exist
        (the process's own cgroup path in a hierarchy that lacked it) goes to ``_ancestors``."""
        depth = len(norm_cgpath(self.name).strip("/").split("/"))
        parts = d.rstrip("/").split("/")
        root = len(parts) - len(norm_cgpath(self.paths[key]).strip("/").split("/"))  # the mount's parts
        every = ["/".join(parts[: i + 1]) for i in range(root, len(parts))]
        self.levels[key] = every[len(every) - depth:]
        for i, level in enumerate(every):
            local = self.host.path(level)
            if local.is_dir():
                continue
            local.mkdir()
            if i < len(every) - depth:
                _ancestors.append(level)
            if key == "cpuset":
                cgroupfs.init_cpuset(self.host, level)
            if key == "v2" and i < len(every) - 1:
                cgroupfs.enable_v2_controllers(self.host, level, ("cpu", "cpuset"))

    def _set(self, knob: str, controller: str, value: str, *, required: bool) -> None:
        """Set ``knob`` on this role's cgroup in the hierarchy that manages ``controller``.
        A host without that controller is fine unless a limit was asked for (``required``)."""
        k = get_knob(knob)
        target = self.paths.get(controller) or self.paths.get("v2")
        try:
            if target is None:
                raise MissingFile(f"no {controller} hierarchy")
            k.write(self.host, target, k.validate(self.host, target, value))
        except (MissingFile, InvalidValue) as err:
            if required:
                raise HostError(f"cannot set {knob} for {self.name}: {err}") from err

    def set_cpu_quota(self, cores: float | None) -> None:
        """Cores, or None for no limit (the period stays the kernel's default 100 ms)."""
        self._set("cgroup.cpu_quota", "cpu", "max" if cores is None else str(cores),
                  required=cores is not None)

    def reset_cpu_weight(self) -> None:
        """Back to the default share (v1 cpu.shares 1024 / v2 cpu.weight 100): the agent-managed
        run changes weights, and no other configuration may inherit them."""
        self._set("cgroup.cpu_weight", "cpu", "100", required=False)

    def cpu_cgroup_path(self) -> str:
        """The path the agent's config names (cpu hierarchy; v2 path on a pure v2 host)."""
        return self.paths.get("cpu") or self.paths["v2"]

    def set_memory_max(self, nbytes: int | None) -> None:
        self._set("cgroup.memory_max", "memory", "max" if nbytes is None else str(nbytes),
                  required=nbytes is not None)

    def reset_memory_high(self) -> None:
        """No memory throttle (v2 memory.high max; v1 the soft limit, unlimited): what an agent
        row may have capped a neighbour with."""
        self._set("cgroup.memory_high", "memory", "max", required=False)

    def reset_memory_low(self) -> None:
        """No memory protection (v2 memory.low 0; v1 has none)."""
        self._set("cgroup.memory_low", "memory", "0", required=False)

    def add_pid(self, pid: int) -> None:
        for d in self.dirs.values():
            cgroupfs.add_pid(self.host, d, pid)

    def enter(self) -> None:
        """Move the calling process in (used as preexec_fn: children inherit the cgroups)."""
        self.add_pid(os.getpid())

    def pids(self) -> set[int]:
        out: set[int] = set()
        for d in self.dirs.values():
            text = self.host.read_optional(f"{d}/cgroup.procs") or ""
            out.update(int(x) for x in text.split())
        return out

    def remove(self, drain_s: float = 30.0) -> None:
        """Wait up to ``drain_s`` for the processes inside to be gone (a 13 GiB hog takes a
        while to exit; moved to the parent while exiting, it would keep the parent from going),
        move any still left to the parent, then rmdir this and the levels above it that
        ``name`` made (a shared level, like the base of several roles, goes with the last)."""
        deadline = time.monotonic() + drain_s
        while any((self.host.read_optional(f"{d}/cgroup.procs") or "").split() for d in self.dirs.values()) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        for d in self.dirs.values():
            parent = d.rsplit("/", 1)[0]
            text = self.host.read_optional(f"{d}/cgroup.procs") or ""
            for pid in text.split():
                try:
                    cgroupfs.add_pid(self.host, parent, pid)
                except HostError:
                    pass  # already gone
        for levels in self.levels.values():
            for level in reversed(levels):
                _rmdir(self.host.path(level))
        if self in _cgroups:
            _cgroups.remove(self)
        for level in sorted(_ancestors, key=lambda p: -len(p)):  # gone with the last role below it
            _rmdir(self.host.path(level))
            if not self.host.path(level).exists():
                _ancestors.remove(level)


def _rmdir(local: Path) -> None:
    """rmdir; a cgroup may be EBUSY for a moment after its last task or child left (retried
    for 2 s); one that still has a child dir (another role's) is left for that role to remove."""
    for _ in range(40):
        try:
            local.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            try:
                if any(p.is_dir() for p in local.iterdir()):
                    return
            except OSError:
                return
            time.sleep(0.05)


def role_cgroups(host: Host, base: str, roles: tuple[str, ...], *, cls: type[RoleCgroup] | None = None,
                 **kw) -> dict[str, RoleCgroup]:
    """``base/<role>`` for each role, as ``cls`` (RoleCgroup; ``kw``: its options). A ``base`` named
    ``<prefix>-<pid>`` first sweeps away its kind's leftovers from runs that died (kill -9)."""
    prefix, _, pid = base.rpartition("-")
    if prefix and pid.isdigit():
        sweep_stale(host, prefix, controllers=kw.get("controllers", V1_CONTROLLERS),
                    under_root=kw.get("under_root", False))
    cls = cls or RoleCgroup
    return {role: cls(host, f"{base}/{role}", **kw) for role in roles}


def base_dirs(host: Host, base: str, *, controllers: tuple[str, ...] = V1_CONTROLLERS,
              under_root: bool = False) -> dict[str, str]:
    """Where ``role_cgroups(host, base, ...)`` puts ``base`` in each hierarchy: label ("cpu v1
    /process_api/x/autotune-bench-1") -> host directory; a run must leave none of them behind."""
    out = {}
    for key, parent in _parents(host, controllers, under_root).items():
        cgpath = norm_cgpath(f"{parent}/{base}")
        out[f"{'v2' if key == 'v2' else key + ' v1'} {cgpath}"] = _host_dir(host, key, cgpath)
    return out


def sweep_stale(host: Host, prefix: str, *, controllers: tuple[str, ...] = V1_CONTROLLERS,
                under_root: bool = False) -> list[str]:
    """Remove ``<prefix>-<pid>`` cgroup trees (beside where this process would make its own)
    whose pid is gone and that hold no process: what a run killed with -9 left behind. A tree
    with a live task, or of a live pid, is left alone. Returns the host paths removed."""
    import psutil

    parents = {_host_dir(host, key, norm_cgpath(p)) for key, p in _parents(host, controllers, under_root).items()}
    removed = []
    for parent in sorted(parents):
        local = host.path(parent)
        try:
            names = [p.name for p in local.iterdir() if p.is_dir()]
        except OSError:
            continue
        for name in names:
            head, _, pid = name.rpartition("-")
            if head != prefix or not pid.isdigit() or psutil.pid_exists(int(pid)):
                continue
            tree = sorted((p for p in (local / name).rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            tree.append(local / name)
            if any((d / "cgroup.procs").is_file() and (d / "cgroup.procs").read_text().strip() for d in tree):
                log.warning("leftover cgroup %s/%s still holds processes: left alone", parent, name)
                continue
            for d in tree:
                _rmdir(d)
            if not (local / name).exists():
                removed.append(f"{parent}/{name}")
                log.info("removed leftover cgroup %s/%s (pid %s is gone)", parent, name, pid)
    return removed


# -- processes ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv: list[str], cgroup: RoleCgroup | None, log_path: Path, **kw) -> subprocess.Popen:
    """Start a process already inside ``cgroup`` (moved before exec, so children inherit it),
    in its own session (``stop`` signals the whole group); output appended to ``log_path``."""
    fh = open(log_path, "ab")
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                            preexec_fn=cgroup.enter if cgroup else None, start_new_session=True, **kw)
    fh.close()
    _procs.append(proc)
    return proc


def stop(proc: subprocess.Popen, timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """``sig`` (SIGTERM) to the process group, then SIGKILL if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
    if proc in _procs:
        _procs.remove(proc)


def autotune_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "autotune", *args]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 180.0,
                 cancel: threading.Event | None = None, path: str = "/health") -> None:
    """Until ``url``+``path`` answers 200 (RuntimeError if the process dies, TimeoutError after
    ``timeout_s``); returns early, unhealthy, once ``cancel`` is set."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if cancel is not None and cancel.is_set():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}; see its log")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url}{path} not ready after {timeout_s:.0f} s")


def start_server(cg: RoleCgroup, *, model: str | None = None, max_concurrency: int, log_path: Path,
                 threads: str | None = None, cancel: threading.Event | None = None,
                 engine: str = "reference", weights_file: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`autotune workload serve --engine <engine>` in ``cg`` on a free port, once healthy (or
    ``cancel``led): (process, base URL). ``model`` / ``threads`` None: the engine's defaults
    (reference: gpt2, auto; llamacpp: llama60m, every CPU). See ``workload/engines.py``.
    ``weights_file`` (reference only): its weights mapped from there (page cache)."""
    eng = get_engine(engine)
    port = free_port()
    argv = autotune_argv(*eng.serve_args(port=port, model=model, threads=threads,
                                         max_concurrency=max_concurrency))
    if weights_file is not None:
        argv += ["--weights-file", str(weights_file)]
    proc = spawn(argv, cg, log_path)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, cancel=cancel, path=eng.health_path)
    return proc, url


def start_neighbour(cg: RoleCgroup, *, cpu: int, mem_mib: int, json_path: Path, log_path: Path,
                    mem_rewrite: bool = False, stream_mib: int = 0,
                    stream_dir: Path | None = None) -> subprocess.Popen:
    """`autotune workload noise` in ``cg``: ``cpu`` burners, a ``mem_mib`` MiB hog (``mem_rewrite``:
    its pages written again and again), a page-cache streamer over a ``stream_mib`` MiB file in
    ``stream_dir`` (removed when the neighbour stops)."""
    argv = autotune_argv("workload", "noise", "--cpu", str(cpu), "--mem-mib", str(mem_mib),
                         "--interval", "0.5", "--json-file", str(json_path))
    if mem_rewrite:
        argv.append("--mem-rewrite")
    if stream_mib:
        argv += ["--stream-mib", str(stream_mib)]
        if stream_dir is not None:
            argv += ["--stream-dir", str(stream_dir)]
    return spawn(argv, cg, log_path)


# -- cleanup --------------------------------------------------------------------------------------
def cleanup(warn: Callable[[str], None] | None = None) -> None:
    """Stop every process started here and remove every cgroup created here (idempotent)."""
    warn = warn or log.warning
    for proc in list(_procs):
        try:
            stop(proc, timeout_s=5)
        except Exception as err:  # noqa: BLE001 - keep cleaning
            warn(f"cleanup: could not stop pid {proc.pid}: {err}")
    for cg in reversed(list(_cgroups)):
        try:
            cg.remove()
        except Exception as err:  # noqa: BLE001
            warn(f"cleanup: could not remove cgroup {cg.name}: {err}")
        if cg in _cgroups:
            _cgroups.remove(cg)
