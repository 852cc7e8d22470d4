"""Process readings: /proc parsing on fixtures and on the live host."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotune.errors import ParseError
from autotune.host import Host
from autotune.sensors.process import parse_pid_stat, read_processes
from tests.fixtures.hosts import fixture_path, writable_copy

HZ = os.sysconf("SC_CLK_TCK")


def test_v2docs_processes():
    llm, noisy = read_processes(Host(fixture_path("v2-docs")), [4242, 5151])
    assert llm.name == "llama-server" and llm.num_threads == 3 and llm.running_threads == 2
    assert llm.cpu_user_s == pytest.approx(36000 / HZ)
    assert (llm.minor_faults, llm.major_faults) == (50000, 12)
    assert (llm.ctx_voluntary, llm.ctx_involuntary) == (1500, 300)
    assert llm.affinity == [0, 1, 2, 3]
    assert noisy.name == "stress-ng (cpu)"  # parens and space in comm
    assert noisy.affinity == [2, 3] and noisy.running_threads == 1


def test_hybrid_local_captured_child():
    pid = int((fixture_path("hybrid-local") / "PID").read_text())
    [p] = read_processes(Host(fixture_path("hybrid-local")), [pid])
    assert p.cpu_user_s > 0 and p.num_threads == 1


def test_vanished_pid_skipped_and_garbage_reported(tmp_path):
    root = writable_copy("v2-docs", tmp_path)
    (root / "proc/5151/stat").write_text("5151 (stress")
    errors: list[str] = []
    got = read_processes(Host(root), [4242, 5151, 999], errors=errors)
    assert [p.pid for p in got] == [4242]
    assert len(errors) == 1 and "5151" in errors[0]


def test_parse_pid_stat_truncated():
    with pytest.raises(ParseError, match="truncated"):
        parse_pid_stat("1 (x) S 0 0", "/proc/1/stat")


@pytest.mark.realkernel
def test_live_busy_child_is_running():
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        [p] = read_processes(Host("/"), [child.pid, 2**22 + 7])
        assert p.pid == child.pid and p.cpu_user_s > 0 and p.rss_bytes > 0
        assert p.running_threads == 1 and p.affinity
    finally:
        child.kill()
        child.wait()


def test_each_threads_cpu_time_is_read_from_its_task_stat(tmp_path):
    """The compute-thread pool is observed from per-thread CPU time (/proc/<pid>/task/*/stat
    utime + stime, through the Host): the fixture's two workers get 12 s and 11 s, the leader 0.3 s."""
    from tests.fixtures.hosts.build_v2_docs import pid_stat

    root = writable_copy("v2-docs", tmp_path)
    for tid, name, ut, st in ((4242, "llama-server", 20, 10), (4243, "llama-worker", 1100, 100),
                              (4244, "llama-worker", 1000, 100)):
        (root / f"proc/4242/task/{tid}/stat").write_text(pid_stat(tid, name, "R", 0, 0, ut * HZ // 100,
                                                                     st * HZ // 100, 3, 0))
    [p] = read_processes(Host(root), [4242])
    assert p.thread_cpu_s == {4242: 0.3, 4243: 12.0, 4244: 11.0} and p.running_threads == 3


def test_only_the_busiest_threads_are_kept(tmp_path, monkeypatch):
    from autotune.sensors import process
    from tests.fixtures.hosts.build_v2_docs import pid_stat

    monkeypatch.setattr(process, "MAX_THREADS_KEPT", 2)
    root = writable_copy("v2-docs", tmp_path)
    for tid, ut in ((4242, 5), (4243, 700), (4244, 300)):
        (root / f"proc/4242/task/{tid}/stat").write_text(pid_stat(tid, "w", "S", 0, 0, ut, 0, 3, 0))
    [p] = read_processes(Host(root), [4242])
    assert sorted(p.thread_cpu_s) == [4243, 4244]


@pytest.mark.realkernel
def test_live_exited_child_not_yet_reaped_is_skipped_not_an_error():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        for _ in range(100):  # until it is a zombie (exited, not waited for)
            if Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.05)
        errors: list[str] = []
        assert read_processes(Host("/"), [child.pid], errors=errors) == [] and errors == []
    finally:
        child.wait()
