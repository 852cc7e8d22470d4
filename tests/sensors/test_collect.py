"""collect(): every fixture tree, corrupted trees (never raises), and the live kernel."""

from __future__ import annotations

import shutil
import time

import pytest

from autotune.config import Service
from autotune.host import Host
from autotune.sensors.collect import collect
from autotune.types import Snapshot
from tests.fixtures.hosts import NAMES, fixture_path, writable_copy

V2_SERVICES = [Service(name="llm", unit="llm"), Service(name="noisy", cgroup="/system.slice/noisy.service")]


@pytest.mark.parametrize("name", NAMES)
def test_collect_each_fixture(name):
    snap = collect(Host(fixture_path(name)), [], now=123.0)
    assert snap.ts == 123.0
    assert snap.stat is not None and snap.loadavg is not None and snap.meminfo_bytes
    assert snap.psi["cpu"] is not None
    expected_missing = ["vmstat"] if name == "prometheus-procfs" else []
    assert [m.split(":")[0] for m in snap.missing] == expected_missing


def test_collect_services_v2():
    snap = collect(Host(fixture_path("v2-docs")), V2_SERVICES, now=1.0)
    llm, noisy = snap.services["llm"], snap.services["noisy"]
    assert llm.cgroup.path == "/system.slice/llm.service" and [p.pid for p in llm.processes] == [4242]
    assert noisy.cgroup.nr_throttled == 1200 and noisy.processes[0].name == "stress-ng (cpu)"
    assert llm.latency is None and llm.errors == [] and noisy.errors == []
    assert Snapshot.model_validate_json(snap.model_dump_json()) == snap  # storable


GARBAGE = ["", "\x00\x01\x02", "some nonsense here\n", "cpu 1 2\n", "12 13 14\n"]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_collect_never_raises_on_garbage(tmp_path, garbage):
    root = writable_copy("v2-docs", tmp_path)
    for rel in ("proc/pressure/cpu", "proc/pressure/memory", "proc/vmstat", "proc/stat", "proc/meminfo",
                "proc/4242/stat", "sys/fs/cgroup/system.slice/noisy.service/cpu.stat",
                "sys/fs/cgroup/system.slice/noisy.service/cpu.pressure"):
        (root / rel).write_text(garbage)
    (root / "proc/loadavg").unlink()
    (root / "proc/loadavg").mkdir()  # a directory where a file should be
    snap = collect(Host(root), V2_SERVICES)
    sources = {m.split(":")[0] for m in snap.missing}
    assert {"psi.cpu", "psi.memory", "vmstat", "stat", "meminfo", "loadavg"} <= sources
    assert all(": /proc/" in m or "/proc/" in m for m in snap.missing)  # each names its file
    assert snap.psi["io"] is not None  # untouched sources still read
    assert snap.services["llm"].errors and "4242" in snap.services["llm"].errors[0]
    noisy = snap.services["noisy"]
    assert noisy.cgroup is not None and noisy.cgroup.memory_max_bytes == 4 << 30
    assert noisy.cgroup.nr_throttled is None and any("cpu.stat" in e for e in noisy.errors)
    assert set(noisy.cgroup.psi) == {"memory", "io"}  # one bad pressure file loses only itself


def test_collect_target_gone(tmp_path):
    root = writable_copy("v2-docs", tmp_path)
    shutil.rmtree(root / "sys/fs/cgroup/system.slice/noisy.service")
    snap = collect(Host(root), V2_SERVICES)
    noisy = snap.services["noisy"]
    assert noisy.cgroup is None and noisy.processes == []
    assert len(noisy.errors) == 1 and "noisy.service" in noisy.errors[0]
    assert snap.services["llm"].cgroup is not None


def test_collect_empty_root(tmp_path):
    snap = collect(Host(tmp_path), [Service(name="x", exe="llama-server")])
    assert snap.stat is None and snap.vmstat == {} and snap.psi == {r: None for r in ("cpu", "memory", "io", "irq")}
    assert {m.split(":")[0] for m in snap.missing} == {"vmstat", "stat", "meminfo", "loadavg"}
    assert snap.services["x"].errors  # no /proc to scan


@pytest.mark.realkernel
def test_collect_live_kernel_is_cheap():
    host = Host("/")
    services = [Service(name="init", cmdline="."), Service(name="root", cgroup="/")]
    snap = collect(host, services)
    assert snap.missing == [] and snap.stat.total.total_s > 0 and snap.vmstat["pgfault"] > 0
    assert snap.services["root"].cgroup is not None
    start = time.perf_counter()
    for _ in range(10):
        collect(host, [])
    per_call = (time.perf_counter() - start) / 10
    assert per_call < 0.05, f"host-only collect() took {per_call * 1000:.1f} ms"


def test_non_finite_and_impossible_readings_become_missing_with_the_reason(tmp_path):
    """Issue 24 #2: a pressure file with avg10=1e999, a negative MemTotal and loadavg under
    --root: each source is missing (with file and field), the rest of the sample stands."""
    root = writable_copy("hybrid-local", tmp_path)
    (root / "proc/pressure/cpu").write_text("some avg10=1e999 avg60=0.00 avg300=0.00 total=5\n")
    mem = root / "proc/meminfo"
    mem.write_text("MemTotal: -24683656 kB\n" + mem.read_text().split("\n", 1)[1])
    (root / "proc/loadavg").write_text("-0.5 0.10 0.07 1/93 9815\n")
    snap = collect(Host(root), [])
    assert snap.psi["cpu"] is None and snap.meminfo_bytes == {} and snap.loadavg is None
    why = "; ".join(snap.missing)
    assert "psi.cpu: /proc/pressure/cpu: line 1: avg10_pct = inf" in why
    assert "meminfo: /proc/meminfo: line 1: MemTotal = -" in why
    assert "loadavg: /proc/loadavg: load1 = -0.5" in why
    assert snap.psi["memory"] is not None and snap.stat is not None
