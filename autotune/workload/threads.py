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

Quota reads go through the one cgroup door (``cgroupfs.pid_cgroup``,
``cgroupfs.effective_cpu_quota_cores``), one level at a time up to the root.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable

from pydantic import BaseModel

from autotune import cgroupfs
from autotune.errors import HostError
from autotune.host import Host

log = logging.getLogger(__name__)


class ThreadChoice(BaseModel):
    threads: int
    affinity_cpus: int
    quota_cores: float | None  # effective (smallest along the path); None = unlimited / unknown
    cgroup: str | None  # our cpu cgroup path
    reason: str


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
        cgpath = cgroupfs.pid_cgroup(host, "cpu")
        if cgpath is not None:
            quota = cgroupfs.effective_cpu_quota_cores(host, cgpath)
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
