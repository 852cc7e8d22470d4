"""Fixtures for helper tests: a writable hybrid-style host tree, small fake knobs, a live server.

The fake knobs follow the real registry's names and target formats (autotune/knobs) so the
helper's policy code is exercised exactly as in production; tests with the real knobs run too
when ``autotune.knobs`` is importable.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from autotune import cgroupfs
from autotune.errors import InvalidValue, MissingFile, TargetGone
from autotune.helper.handler import Helper
from autotune.helper.policy import load_policy
from autotune.helper.server import HelperServer, bind_socket
from autotune.host import Host, format_cpulist, parse_cpulist
from autotune.knobs.base import Knob, KnobState

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (policy ownership, SO_PEERCRED)")

CPU = "/sys/fs/cgroup/cpu"
THP = "/sys/kernel/mm/transparent_hugepage"


# -- fake knobs (same names and target formats as the real registry) ---------------------------
class FakeCpuQuota(Knob):
    name = "cgroup.cpu_quota"

    def _files(self, host: Host, target: str) -> tuple[str, str]:
        d = cgroupfs.controller_dir(host, "cpu", target)
        if not host.is_dir(d):
            raise TargetGone(f"cgroup {target} is gone")
        return f"{d}/cpu.cfs_quota_us", f"{d}/cpu.cfs_period_us"

    def read(self, host, target):
        qf, pf = self._files(host, target)
        q, p = host.read_text(qf).strip(), host.read_text(pf).strip()
        cores = cgroupfs.quota_to_cores(int(q), int(p))
        return KnobState(knob=self.name, target=target, value="max" if cores is None else f"{cores:g}",
                         raw={qf: q, pf: p})

    def validate(self, host, target, value):
        if value.strip() == "max":
            return "max"
        try:
            cores = float(value)
        except ValueError as err:
            raise InvalidValue(f"{self.name} on {target}: {value!r} is not cores or 'max'") from err
        if not (0 < cores <= 1024):
            raise InvalidValue(f"{self.name} on {target}: {value!r} out of kernel range")
        return f"{cores:g}"

    def write(self, host, target, value):
        qf, pf = self._files(host, target)
        period = int(host.read_text(pf))
        quota = -1 if value == "max" else cgroupfs.cores_to_quota(float(value), period)
        host.write_text(qf, str(quota))

    def same(self, a, b):
        try:
            return abs(float(a) - float(b)) < 0.01
        except (TypeError, ValueError):
            return a == b


class FakeSysctl(Knob):
    name = "sysctl"

    def _path(self, target):
        return "/proc/sys/" + target.replace(".", "/")

    def host_files(self, host, target):
        return frozenset({self._path(target)})

    def read(self, host, target):
        v = host.read_text(self._path(target))
        return KnobState(knob=self.name, target=target, value=" ".join(v.split()),
                         raw={self._path(target): v.strip()})

    def validate(self, host, target, value):
        if not value.strip() or len(value) > 256:
            raise InvalidValue(f"sysctl {target}: empty or too long value")
        return " ".join(value.split())

    def write(self, host, target, value):
        host.write_text(self._path(target), value)


class FakeThp(Knob):
    name = "thp"

    def host_files(self, host, target):
        return frozenset({f"{THP}/{target}"})

    def read(self, host, target):
        text = host.read_text(f"{THP}/{target}")
        cur = next((w[1:-1] for w in text.split() if w.startswith("[")), text.strip())
        return KnobState(knob=self.name, target=target, value=cur, raw={f"{THP}/{target}": cur})

    def validate(self, host, target, value):
        modes = [w.strip("[]") for w in host.read_text(f"{THP}/{target}").split()]
        if value.strip() not in modes:
            raise InvalidValue(f"thp {target}: {value!r} not one of {modes}")
        return value.strip()

    def write(self, host, target, value):
        modes = [w.strip("[]") for w in host.read_text(f"{THP}/{target}").split()]
        host.write_text(f"{THP}/{target}", " ".join(f"[{m}]" if m == value else m for m in modes))

    def restore(self, host, state):
        for _path, mode in state.raw.items():
            self.write(host, state.target, mode)


class FakeAffinity(Knob):
    """Fixture-only affinity: masks kept in /proc/<pid>/task/<tid>/mask files."""

    name = "affinity"

    def _tids(self, host, target):
        if not target.startswith("pids:"):
            raise InvalidValue(f"affinity target {target!r} must be 'pids:<pid>,...'")
        out = []
        for pid in target[5:].split(","):
            try:
                out += [(pid, t) for t in host.listdir(f"/proc/{pid}/task")]
            except MissingFile:
                continue
        return out

    def read(self, host, target):
        raw = {f"tid:{t}": host.read_text(f"/proc/{p}/task/{t}/mask").strip() for p, t in self._tids(host, target)}
        vals = set(raw.values())
        return KnobState(knob=self.name, target=target, value=vals.pop() if len(vals) == 1 else "mixed", raw=raw)

    def validate(self, host, target, value):
        try:
            return format_cpulist(parse_cpulist(value))
        except ValueError as err:
            raise InvalidValue(f"affinity: {value!r} is not a cpu list") from err

    def write(self, host, target, value):
        for p, t in self._tids(host, target):
            host.write_text(f"/proc/{p}/task/{t}/mask", value)

    def restore(self, host, state):
        where = {f"tid:{t}": (p, t) for p, t in self._tids(host, state.target)}
        for key, mask in state.raw.items():
            if key in where:
                p, t = where[key]
                host.write_text(f"/proc/{p}/task/{t}/mask", mask)


FAKE_KNOBS = {k.name: k for k in (FakeCpuQuota(), FakeSysctl(), FakeThp(), FakeAffinity())}


class FakeResolved:
    def __init__(self, pids):
        self.pids, self.errors = pids, []


def fake_resolver(host, svc):
    """Service -> pids from a fixture file /run/svc/<name> (one pid per line)."""
    text = host.read_optional(f"/run/svc/{svc.name}") or ""
    return FakeResolved([int(x) for x in text.split()])


# -- fixture host tree -----------------------------------------------------------------------------
def _w(root: Path, rel: str, text: str) -> None:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def build_host(root: Path) -> Path:
    """Hybrid layout: v1 cpu hierarchy + empty unified v2; plus sysctl, THP and fake processes."""
    _w(root, "/sys/fs/cgroup/unified/cgroup.procs", "")
    _w(root, "/sys/fs/cgroup/unified/cgroup.controllers", "")
    _w(root, f"{CPU}/cgroup.procs", "1\n")
    for cg in ("", "/autotune", "/autotune/llm", "/other"):
        _w(root, f"{CPU}{cg}/cgroup.procs", "")
        _w(root, f"{CPU}{cg}/cpu.cfs_quota_us", "-1\n")
        _w(root, f"{CPU}{cg}/cpu.cfs_period_us", "100000\n")
        _w(root, f"{CPU}{cg}/cpu.shares", "1024\n")
        _w(root, f"{CPU}{cg}/cpu.cfs_burst_us", "0\n")
    # escapes: a directory symlink and a file symlink inside the allowed subtree
    os.symlink("../other", root / f"{CPU}/autotune/evil".lstrip("/"))
    (root / f"{CPU}/autotune/trap".lstrip("/")).mkdir()
    _w(root, f"{CPU}/autotune/trap/cpu.cfs_period_us", "100000\n")
    os.symlink("../../other/cpu.cfs_quota_us", root / f"{CPU}/autotune/trap/cpu.cfs_quota_us".lstrip("/"))
    _w(root, "/proc/sys/vm/swappiness", "60\n")
    _w(root, "/proc/sys/vm/dirty_ratio", "20\n")
    _w(root, "/proc/sys/kernel/panic", "0\n")
    _w(root, "/proc/sys/net/ipv4/tcp_rmem", "4096\t131072\t6291456\n")
    _w(root, "/proc/sys/net/ipv4/tcp_congestion_control", "cubic\n")
    _w(root, f"{THP}/enabled", "always [madvise] never\n")
    _w(root, f"{THP}/defrag", "always defer defer+madvise [madvise] never\n")
    for pid, tids in ((100, (100, 101)), (200, (200,))):
        for tid in tids:
            _w(root, f"/proc/{pid}/task/{tid}/mask", "0-1\n")
            _w(root, f"/proc/{pid}/task/{tid}/status", "Name:\tllm\nCpus_allowed_list:\t0-1\n")
    _w(root, "/run/svc/llm", "100\n")
    _w(root, "/run/svc/noisy", "200\n")
    _w(root.parent, "outside.txt", "secret\n")
    return root


POLICY = """
[peers]
uids = [0]

[limits]
max_request_bytes = {max_bytes}
rate_per_s = {rate}
burst = {burst}
conn_timeout_s = 5

[knob."cgroup.cpu_quota"]
subtrees = ["/autotune"]
min = 0.1
max = 2.0
values = ["max"]

[knob.sysctl]
keys = {{ "vm.swappiness" = {{ min = 0, max = 100 }} }}

[knob.thp]
targets = ["defrag", "enabled"]
values = ["madvise", "defer+madvise", "never"]

[knob.affinity]
services = ["llm"]
cpus = "0-1"

[service.llm]
cmdline = "llm"

[service.noisy]
cmdline = "noisy"
"""


def write_policy(path: Path, *, max_bytes=4096, rate=1000.0, burst=1000, text: str | None = None,
                 limits: str = "") -> Path:
    """The test policy; ``limits`` adds lines to its [limits] table ("max_connections = 2")."""
    if text is None:
        text = POLICY.format(max_bytes=max_bytes, rate=rate, burst=burst)
        text = text.replace("conn_timeout_s = 5\n", f"conn_timeout_s = 5\n{limits}\n")
    path.write_text(text)
    os.chmod(path, 0o644)
    return path


@pytest.fixture
def host_root(tmp_path) -> Path:
    return build_host(tmp_path / "host")


@pytest.fixture
def policy_file(tmp_path) -> Path:
    return write_policy(tmp_path / "policy.toml")


class Running:
    def __init__(self, server: HelperServer, thread: threading.Thread, sock_path: str, helper: Helper):
        self.server, self.thread, self.socket_path, self.helper = server, thread, sock_path, helper
        self.decisions: list[dict] = []

    def stop(self) -> None:
        self.server.close()
        self.thread.join(5)


def start_server(policy_path: Path, host_root: Path, sock_path: str, *, knobs=None,
                 clock=None) -> Running:
    pol = load_policy(policy_path)
    helper = Helper(pol, Host(host_root, writable=True), knobs=knobs or FAKE_KNOBS, resolver=fake_resolver)
    sock = bind_socket(sock_path, 0o666)
    kwargs = {"clock": clock} if clock else {}
    server = HelperServer(helper, sock, **kwargs)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    run = Running(server, th, sock_path, helper)
    helper.on_decision = run.decisions.append
    return run


@pytest.fixture
def serve(tmp_path, host_root, policy_file):
    """Factory: start a server (optionally with another policy); all are stopped at teardown."""
    running: list[Running] = []

    def _start(policy: Path = policy_file, **kw) -> Running:
        run = start_server(policy, host_root, str(tmp_path / f"h{len(running)}.sock"), **kw)
        running.append(run)
        return run

    yield _start
    for r in running:
        r.stop()


def raw_send(sock_path: str, payload: bytes, timeout: float = 5.0) -> list[bytes]:
    """Send bytes on a fresh connection, half-close, return every response line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return [ln for ln in data.split(b"\n") if ln]
