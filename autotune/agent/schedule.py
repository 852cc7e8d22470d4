"""The daemon's clock: the agent's stages as APScheduler interval jobs on ONE worker thread (so
they never overlap on the shared SQLite connection), and what happens when they fall behind.

A job whose previous run is still queued or running when it fires again is skipped
(``max_instances=1``, ``coalesce``): the stages share one thread, so a slow stage delays the
others and some of their runs are dropped. APScheduler logs a warning for every dropped run
(hundreds a minute with 1 s jobs on a starved host); here each job's first skip is said once,
with the slowest stage, and later ones are counted and reported at most every
``report_every_s`` and at shutdown. A late run still runs (``misfire_grace_time=None``): with
``coalesce`` at most one run per job ever waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

log = logging.getLogger("autotune.run")


class _DropSkipWarnings(logging.Filter):
    """Drops APScheduler's per-run "maximum number of running instances reached" warning;
    ``Schedule`` reports those skips itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in str(record.msg)


class Schedule:
    """Interval jobs on one worker thread; skipped runs counted and reported, not logged each."""

    def __init__(self, *, report_every_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self.sched = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None})
        self.sched.add_listener(self._on_skip, EVENT_JOB_MAX_INSTANCES)
        self.report_every_s = report_every_s
        self.clock = clock
        self.periods_s: dict[str, float] = {}
        self.skipped: Counter[str] = Counter()  # over the whole run
        self._unreported: Counter[str] = Counter()
        self._slowest: dict[str, float] = {}  # stage -> longest run (s)
        self._last_report = 0.0
        self._running: tuple[str, float] | None = None  # the stage on the worker, since when
        self._lock = threading.Lock()
        self._filter = _DropSkipWarnings()

    def add(self, name: str, period_s: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` every ``period_s`` seconds as the job ``name``."""
        def timed() -> None:
            t0 = self.clock()
            self._running = (name, t0)
            try:
                fn(*args)
            finally:
                took = self.clock() - t0
                with self._lock:
                    self._running = None
                    self._slowest[name] = max(took, self._slowest.get(name, 0.0))

        self.periods_s[name] = period_s
        self.sched.add_job(timed, "interval", seconds=period_s, id=name)

    def start(self) -> None:
        logging.getLogger("apscheduler.scheduler").addFilter(self._filter)
        self.sched.start()

    def shutdown(self) -> None:
        try:
            self.sched.shutdown(wait=True)
        finally:
            logging.getLogger("apscheduler.scheduler").removeFilter(self._filter)
        with self._lock:
            if self._unreported:
                log.info("stages behind their periods: %s", self._summary(self._unreported))
                self._unreported.clear()

    def _slowest_text(self) -> str:
        parts = []
        running = self._running
        if running is not None:
            parts.append(f"running now: {running[0]} for {self.clock() - running[1]:.2f} s")
        if self._slowest:
            name, took = max(self._slowest.items(), key=lambda kv: kv[1])
            parts.append(f"slowest stage: {name} {took:.2f} s")
        return "; ".join(parts) or "no stage has run yet"

    def _summary(self, counts: Counter[str]) -> str:
        runs = ", ".join(f"{name} {n} (every {self.periods_s.get(name, 0):g} s)"
                         for name, n in sorted(counts.items()))
        return f"runs skipped: {runs}; {self._slowest_text()}"

    def _on_skip(self, event: Any) -> None:
        name = event.job_id
        now = self.clock()
        with self._lock:
            first = name not in self.skipped
            self.skipped[name] += 1
            if first:
                self._last_report = now
                log.warning("%s (every %g s): a run skipped, the previous one is still queued or running; "
                            "the stages share one thread and take longer than their periods (%s). "
                            "Further skips are counted and reported every %g s",
                            name, self.periods_s.get(name, 0), self._slowest_text(), self.report_every_s)
                return
            self._unreported[name] += 1
            if now - self._last_report >= self.report_every_s:
                self._last_report = now
                log.info("stages behind their periods in the last %g s: %s", self.report_every_s,
                         self._summary(self._unreported))
                self._unreported.clear()
                self._slowest.clear()
