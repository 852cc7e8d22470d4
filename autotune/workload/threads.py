"""How many torch intra-op threads the server should use, followed while it runs.

Measured on the 2-core dev VM: GPT-2 under a 0.5-core CFS quota took 4.49 s for 20 tokens with
2 torch threads but 2.49 s with 1 thread (unconstrained ~1.1 s either way). Intra-op threads
that outnumber the quota's cores burn the quota in parallel and then all sit throttled. So
"auto" = min(cpus in our affinity mask, floor(effective cgroup cpu quota in cores) or 1).

The quota and the affinity change while the server runs (the agent moves them), so
``ThreadFollower`` re-reads them at most every ``interval_s`` and each inference worker applies
the choice before its next request. It must be the worker: torch's thread count is per calling
thread (OpenMP's nthreads and MKL's local thread count are thread-local; a worker initialises
its own from the global value once, on its first parallel op), so ``torch.set_num_threads``
from the main thread leaves running workers at their old count. Verified on torch 2.13 (CPU,
OpenMP + MKL): after the main thread set 1, a worker that had run with 2 kept 2 busy OpenMP
threads; calling it in the worker moved it to 1.

Quota reads go through the cgroup sensor (``read_cgroup``), one level at a time up to the root.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable

from pydantic import BaseModel

from autotune.cgroupfs import norm_cgpath
from autotune.errors import HostError
from autotune.host import Host
from autotune.sensors.cgroup import read_cgroup

log = logging.getLogger(__name__)


class ThreadChoice(BaseModel):
    threads: int
    affinity_cpus: int
    quota_cores: float | None  # effective (smallest along the path); None = unlimited / unknown
    cgroup: str | None  # our cpu cgroup path
    reason: str


def own_cgroup(host: Host, controller: str = "cpu", pid: int | str = "self") -> str | None:
    """The cgroup of ``pid`` in the hierarchy managing ``controller`` (/proc/<pid>/cgroup).

    (The cgroup door in autotune/cgroupfs.py is gaining ``pid_cgroup`` for this; switch to it
    once it lands.)
    """
    version = host.cgroup.controller_version(controller)
    for line in (host.read_optional(f"/proc/{pid}/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if (version == 2 and ctrls == "") or (version == 1 and controller in ctrls.split(",")):
            return norm_cgpath(path)
    return None


def effective_quota_cores(host: Host, cgpath: str) -> float | None:
    """Smallest cpu quota (cores) on the path from ``cgpath`` up to the root; None = none.

    A level that cannot be read (gone, garbled) limits nothing.
    """
    best: float | None = None
    path = norm_cgpath(cgpath)
    while True:
        try:
            cores = read_cgroup(host, path).cpu_quota_cores
        except HostError:
            cores = None
        if cores is not None:
            best = cores if best is None else min(best, cores)
        if path == "/":
            return best
        path = norm_cgpath(path.rsplit("/", 1)[0] or "/")


def auto_threads(host: Host | None = None) -> ThreadChoice:
    """Choose intra-op threads for this process; never raises (falls back to affinity)."""
    host = host or Host()
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    cgpath: str | None = None
    quota: float | None = None
    try:
        cgpath = own_cgroup(host, "cpu")
        if cgpath is not None:
            quota = effective_quota_cores(host, cgpath)
    except HostError:
        pass
    if quota is None:
        n, why = affinity, f"{affinity} cpus in affinity, no cpu quota"
    else:
        n = max(1, min(affinity, math.floor(quota)))
        why = f"min({affinity} cpus in affinity, floor({quota:g} quota cores) or 1)"
    return ThreadChoice(threads=n, affinity_cpus=affinity, quota_cores=quota, cgroup=cgpath,
                        reason=why)


class ThreadFollower:
    """The intra-op thread count, re-chosen at most every ``interval_s``, applied per worker.

    ``fixed`` pins the count (``--threads N``); workers still apply it themselves so each one
    really runs with N. ``on_change(choice)`` is called (under a lock) whenever the count moves.
    """

    def __init__(self, *, fixed: int | None = None, host: Host | None = None, interval_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 choose: Callable[[], ThreadChoice] | None = None,
                 on_change: Callable[[ThreadChoice], None] | None = None) -> None:
        if fixed is not None and fixed < 1:
            raise ValueError(f"threads must be >= 1, got {fixed}")
        self.fixed = fixed
        self.interval_s = interval_s
        self.clock = clock
        self._host = host
        self._choose = choose or (lambda: auto_threads(self._host))
        self.on_change = on_change
        self._lock = threading.Lock()
        self._local = threading.local()
        self._checked_at: float | None = None
        self.current = self._pick()
        self.changes = 0

    def _pick(self) -> ThreadChoice:
        if self.fixed is not None:
            return ThreadChoice(threads=self.fixed, affinity_cpus=0, quota_cores=None, cgroup=None,
                                reason="fixed by --threads")
        return self._choose()

    def choice(self) -> ThreadChoice:
        """The current choice, re-read when older than ``interval_s`` (cheap: a few files)."""
        if self.fixed is not None:
            return self.current
        now = self.clock()
        with self._lock:
            if self._checked_at is None or now - self._checked_at >= self.interval_s:
                self._checked_at = now
                new = self._pick()
                if new.threads != self.current.threads:
                    log.info("torch threads %d -> %d (%s)", self.current.threads, new.threads, new.reason)
                    self.changes += 1
                    self.current = new
                    if self.on_change:
                        self.on_change(new)
                else:
                    self.current = new
            return self.current

    def apply(self) -> int:
        """Call in the worker thread before each request: set its torch threads if they moved."""
        n = self.choice().threads
        if getattr(self._local, "threads", None) != n:
            import torch

            torch.set_num_threads(n)
            self._local.threads = n
        return n
