"""resolve_service: cgroup, systemd unit, pid file, exe, cmdline; AND semantics; no raising."""

from __future__ import annotations

import os

import pytest

from autotune.config import Service
from autotune.host import Host
from autotune.sensors.service import find_unit_cgroup, resolve_service
from tests.fixtures.hosts import fixture_path, writable_copy

V2 = Host(fixture_path("v2-docs"))


@pytest.mark.parametrize(
    "kwargs,cgroup,pids",
    [
        ({"unit": "llm"}, "/system.slice/llm.service", [4242]),
        ({"unit": "noisy.service"}, "/system.slice/noisy.service", [5151]),
        ({"cgroup": "/system.slice/noisy.service"}, "/system.slice/noisy.service", [5151]),
        # found by process: the cgroup comes from /proc/<pid>/cgroup
        ({"exe": "stress-ng"}, "/system.slice/noisy.service", [5151]),
        ({"exe": "/usr/bin/llama-server"}, "/system.slice/llm.service", [4242]),
        ({"exe": "llama"}, None, []),  # basename must match exactly
        ({"cmdline": r"--model \S+\.gguf"}, "/system.slice/llm.service", [4242]),
        ({"unit": "llm", "exe": "llama-server"}, "/system.slice/llm.service", [4242]),
        ({"cgroup": "/system.slice/noisy.service", "exe": "llama-server"}, "/system.slice/noisy.service", []),
        ({"exe": "stress-ng", "cmdline": "--cpu"}, "/system.slice/noisy.service", [5151]),
    ],
)
def test_resolve_on_v2_docs(kwargs, cgroup, pids):
    r = resolve_service(V2, Service(name="svc", **kwargs))
    assert (r.cgroup, r.pids, r.errors) == (cgroup, pids, [])


def test_unknown_unit_and_cgroup_are_errors_not_exceptions():
    r = resolve_service(V2, Service(name="x", unit="ghost"))
    assert r.cgroup is None and r.pids == [] and "ghost" in r.errors[0]
    r = resolve_service(V2, Service(name="x", unit="ghost", exe="stress-ng"))
    assert r.pids == []  # all matchers must agree
    r = resolve_service(V2, Service(name="x", cgroup="/nope"))
    assert r.pids == [] and "not found" in r.errors[0]


def test_bad_regex_is_reported():
    r = resolve_service(V2, Service(name="x", cmdline="(unclosed"))
    assert r.pids == [] and "regex" in r.errors[0]


def test_unit_found_in_other_slice(tmp_path):
    root = writable_copy("v2-docs", tmp_path)
    d = root / "sys/fs/cgroup/user.slice/user-1000.slice/llm-dev.service"
    d.mkdir(parents=True)
    (d / "cgroup.procs").write_text("4242\n")
    host = Host(root)
    assert find_unit_cgroup(host, "llm-dev") == "/user.slice/user-1000.slice/llm-dev.service"
    assert resolve_service(host, Service(name="d", unit="llm-dev")).pids == [4242]


def test_pid_file(tmp_path):
    root = writable_copy("v2-docs", tmp_path)
    (root / "run").mkdir()
    (root / "run/llm.pid").write_text("4242\n")
    (root / "run/stale.pid").write_text("31337\n")
    (root / "run/bad.pid").write_text("pid?\n")
    host = Host(root)
    assert resolve_service(host, Service(name="a", pid_file="/run/llm.pid")).pids == [4242]
    stale = resolve_service(host, Service(name="b", pid_file="/run/stale.pid"))
    assert stale.pids == [] and "not running" in stale.errors[0]
    bad = resolve_service(host, Service(name="c", pid_file="/run/bad.pid"))
    assert bad.pids == [] and "/run/bad.pid" in bad.errors[0]
    missing = resolve_service(host, Service(name="d", pid_file="/run/none.pid"))
    assert missing.pids == [] and "/run/none.pid" in missing.errors[0]


def test_hybrid_local_cgroup_and_cmdline():
    host = Host(fixture_path("hybrid-local"))
    pid = int((fixture_path("hybrid-local") / "PID").read_text())
    assert resolve_service(host, Service(name="a", cgroup="/autotune-fixture/llm")).pids == [pid]
    assert resolve_service(host, Service(name="b", cmdline="autotune-fixture-llm")).pids == [pid]


def test_hybrid_unit_from_named_systemd_hierarchy(tmp_path):
    root = writable_copy("hybrid-local", tmp_path)
    pid = (root / "PID").read_text().strip()
    d = root / "sys/fs/cgroup/systemd/system.slice/llm.service"
    d.mkdir(parents=True)
    (d / "cgroup.procs").write_text(pid + "\n")
    r = resolve_service(Host(root), Service(name="u", unit="llm.service"))
    assert r.cgroup == "/system.slice/llm.service" and r.pids == [int(pid)]


@pytest.mark.realkernel
def test_live_never_resolves_to_self():
    r = resolve_service(Host("/"), Service(name="me", cmdline="pytest|python"))
    assert os.getpid() not in r.pids
