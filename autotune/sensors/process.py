"""Per-process CPU, memory, scheduling and fault counters for a service's pids.

Everything comes from /proc/<pid>/stat, /proc/<pid>/status and /proc/<pid>/task/*/stat read
through the Host, on the live host as on a fixture tree (host /proc mounted at /host): the same
counters psutil reads (cpu times in clock ticks, rss, threads, context switches, the allowed
CPUs), without psutil's per-process objects, which were most of a sample's process reading.

A pid that vanished between resolving and reading (or is a zombie) is skipped, not an error.
"""

from __future__ import annotations

import errno
import os

from autotune.errors import HostError, MissingFile, ParseError
from autotune.host import Host, parse_cpulist
from autotune.types import ProcessReading

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def parse_pid_stat(text: str, source: str) -> tuple[str, list[str]]:
    """/proc/<pid>/stat -> (comm, fields after comm starting at 'state').

    comm may contain spaces and ')' so split at the LAST ')'. Index 0 is state, 7 minflt,
    9 majflt, 11 utime, 12 stime, 17 num_threads, 21 rss (pages) — proc(5) numbering minus 3.
    """
    open_, close = text.find("("), text.rfind(")")
    if open_ < 0 or close < open_:
        raise ParseError(f"{source}: no '(comm)' field")
    rest = text[close + 1 :].split()
    if len(rest) < 22:
        raise ParseError(f"{source}: truncated ({len(rest)} fields after comm, need >= 22)")
    return text[open_ + 1 : close], rest


MAX_THREADS_KEPT = 32  # per process: the compute pool is among the threads that used most CPU


def read_threads(host: Host, pid: int, *, hz: int) -> tuple[int, dict[int, float]]:
    """(threads of ``pid`` in state R now, tid -> its CPU seconds (utime + stime)), one read of
    each /proc/<pid>/task/<tid>/stat. Only the ``MAX_THREADS_KEPT`` busiest threads are kept: a
    server with hundreds of idle helper threads must not bloat every stored sample."""
    base = f"/proc/{pid}/task"
    running = 0
    cpu: dict[int, float] = {}
    for tid in host.listdir(base):
        try:
            _, rest = parse_pid_stat(host.read_text(f"{base}/{tid}/stat"), f"{base}/{tid}/stat")
            secs = (int(rest[11]) + int(rest[12])) / hz
        except (MissingFile, ParseError, ValueError):
            continue  # thread exited while we looked (or an odd line: no figure for it)
        running += rest[0] == "R"
        if tid.isdigit() and secs > 0:  # a thread that never ran tells nothing about the pool
            cpu[int(tid)] = round(secs, 2)
    if len(cpu) > MAX_THREADS_KEPT:
        cpu = dict(sorted(cpu.items(), key=lambda kv: -kv[1])[:MAX_THREADS_KEPT])
    return running, cpu


def _status_fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, val = line.partition(":")
        if sep:
            out[key.strip()] = val.strip()
    return out


def _read(host: Host, pid: int, hz: int) -> ProcessReading | None:
    stat_path = f"/proc/{pid}/stat"
    name, rest = parse_pid_stat(host.read_text(stat_path), stat_path)
    if rest[0] == "Z":
        return None  # exited, not yet reaped: no longer the service's
    status = _status_fields(host.read_optional(f"/proc/{pid}/status") or "")
    running, thread_cpu = read_threads(host, pid, hz=hz)
    try:
        affinity = parse_cpulist(status.get("Cpus_allowed_list", ""))
        return ProcessReading(
            pid=pid,
            name=name,
            cpu_user_s=int(rest[11]) / hz,
            cpu_system_s=int(rest[12]) / hz,
            rss_bytes=int(rest[21]) * _PAGE_SIZE,
            num_threads=int(rest[17]),
            running_threads=running,
            thread_cpu_s=thread_cpu,
            ctx_voluntary=int(status.get("voluntary_ctxt_switches", 0)),
            ctx_involuntary=int(status.get("nonvoluntary_ctxt_switches", 0)),
            minor_faults=int(rest[7]),
            major_faults=int(rest[9]),
            affinity=affinity,
        )
    except ValueError as err:
        raise ParseError(f"/proc/{pid}: unexpected contents in stat/status ({err})") from err


def read_process(host: Host, pid: int) -> ProcessReading | None:
    """One process, or None when it no longer exists. ParseError/HostError on odd files."""
    from autotune.sensors.stat import clock_ticks

    try:
        return _read(host, pid, clock_ticks())
    except MissingFile:
        return None
    except HostError as err:  # a /proc file read after its process exited answers ESRCH
        if getattr(err.__cause__, "errno", None) == errno.ESRCH:
            return None
        raise


def read_processes(host: Host, pids: list[int], *, errors: list[str] | None = None) -> list[ProcessReading]:
    """Readings for the pids that still exist; per-pid failures go to ``errors`` (if given)."""
    out = []
    for pid in pids:
        try:
            reading = read_process(host, pid)
        except HostError as err:
            if errors is not None:
                errors.append(f"pid {pid}: {err}")
            continue
        if reading is not None:
            out.append(reading)
    return out
