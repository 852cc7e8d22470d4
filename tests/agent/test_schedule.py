"""The daemon's jobs when a stage is slower than the periods: runs are skipped, not piled up,
and the skip is said once per job (plus a bounded summary), not once per dropped run."""

from __future__ import annotations

import logging
import threading
import time

from autotune.agent.schedule import Schedule


def _run_for(sched: Schedule, seconds: float) -> None:
    sched.start()
    time.sleep(seconds)
    sched.shutdown()


def test_a_slow_stage_gets_one_warning_per_job_and_no_apscheduler_flood(caplog):
    caplog.set_level(logging.DEBUG)
    runs: dict[str, int] = {"slow": 0, "fast": 0}
    running = threading.Lock()
    overlaps = []

    def stage(name: str, sleep_s: float) -> None:
        if not running.acquire(blocking=False):
            overlaps.append(name)  # two stages at once: the one worker thread was not respected
            return
        try:
            runs[name] += 1
            time.sleep(sleep_s)
        finally:
            running.release()

    sched = Schedule(report_every_s=3600)
    sched.add("slow", 0.05, stage, "slow", 0.3)
    sched.add("fast", 0.05, stage, "fast", 0.0)
    _run_for(sched, 1.5)

    assert not overlaps
    assert runs["slow"] >= 2 and runs["fast"] >= 1, runs
    assert sched.skipped["slow"] >= 3, sched.skipped
    text = [r.getMessage() for r in caplog.records]
    assert not [t for t in text if "maximum number of running instances" in t]
    firsts = [r for r in caplog.records if r.name == "autotune.run" and r.levelno == logging.WARNING]
    assert sorted(r.getMessage().split(" ")[0] for r in firsts) == sorted(sched.skipped), text
    assert all("running now: slow" in r.getMessage() or "slowest stage: slow" in r.getMessage() for r in firsts)
    # the skips after the first are counted and said once, at shutdown
    [summary] = [t for t in text if t.startswith("stages behind their periods")]
    assert "slow " in summary and "(every 0.05 s)" in summary


def test_later_skips_are_reported_at_most_every_report_period(caplog):
    caplog.set_level(logging.INFO, logger="autotune.run")
    sched = Schedule(report_every_s=0.5)
    sched.add("slow", 0.02, time.sleep, 0.2)
    _run_for(sched, 2.0)

    reports = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stages behind")]
    assert sched.skipped["slow"] >= 20, sched.skipped
    assert 1 <= len(reports) <= 2.0 / 0.5 + 1, reports  # never one line per skipped run
    total = sum(int(r.split("slow ")[1].split(" ")[0]) for r in reports)
    assert total == sched.skipped["slow"] - 1  # the first skip was the warning


def test_an_idle_schedule_says_nothing(caplog):
    caplog.set_level(logging.DEBUG, logger="autotune.run")
    sched = Schedule()
    sched.add("quick", 0.05, lambda: None)
    _run_for(sched, 0.5)
    assert not sched.skipped
    assert not [r for r in caplog.records if r.name == "autotune.run"]
