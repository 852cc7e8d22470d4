"""read_cgroup on v2, hybrid (v1 controllers + unified PSI) and degraded trees."""

from __future__ import annotations

import pytest

from autotune.errors import TargetGone
from autotune.host import Host
from autotune.sensors.cgroup import parse_flat_keyed, read_cgroup
from tests.fixtures.hosts import fixture_path, writable_copy

LOCAL = fixture_path("hybrid-local")
CHILD = "/autotune-fixture/llm"


def _kv(path):
    return dict((k, int(v)) for k, v in (l.split() for l in path.read_text().splitlines()))


def test_v2_noisy_service():
    cg = read_cgroup(Host(fixture_path("v2-docs")), "/system.slice/noisy.service")
    assert cg.version == 2
    assert cg.cpu_quota_cores == 2.0 and cg.cpu_period_usec == 100000
    assert (cg.nr_periods, cg.nr_throttled, cg.throttled_usec) == (5000, 1200, 98765432)
    assert cg.cpu_usage_usec == 901000000
    assert cg.cpu_weight == 100 and cg.cpuset_cpus == [2, 3]
    assert cg.memory_max_bytes == 4 << 30 and cg.memory_high_bytes == 3 << 30
    assert cg.memory_events["high"] == 17 and cg.memory_events["max"] == 3
    assert cg.nr_tasks == 1
    assert cg.psi["cpu"].some.avg10_pct == 30.0


def test_v2_unlimited_and_cpuset_fallback_to_effective():
    cg = read_cgroup(Host(fixture_path("v2-docs")), "system.slice/llm.service/")
    assert cg.path == "/system.slice/llm.service"
    assert cg.cpu_quota_cores is None and cg.memory_max_bytes is None and cg.memory_high_bytes is None
    assert cg.cpu_weight == 200
    assert cg.cpuset_cpus == [0, 1, 2, 3]  # cpuset.cpus empty -> effective


def test_hybrid_child_matches_captured_files():
    cg = read_cgroup(Host(LOCAL), CHILD)
    base = LOCAL / "sys/fs/cgroup"
    stat = _kv(base / "cpu" / CHILD.lstrip("/") / "cpu.stat")
    assert cg.version == 1
    assert cg.nr_periods == stat["nr_periods"] and cg.nr_throttled == stat["nr_throttled"] > 0
    assert cg.throttled_usec == stat["throttled_time"] // 1000  # ns -> usec
    assert cg.cpu_quota_cores == pytest.approx(0.2)
    assert cg.cpu_weight == 50  # shares 512
    usage_ns = int((base / "cpuacct" / CHILD.lstrip("/") / "cpuacct.usage").read_text())
    assert cg.cpu_usage_usec == usage_ns // 1000
    assert cg.memory_max_bytes == 512 << 20
    assert cg.memory_high_bytes is None  # soft limit unlimited
    assert "failcnt" in cg.memory_events
    assert cg.nr_tasks == 1
    assert len(cg.cpuset_cpus) == 1
    assert set(cg.psi) == {"cpu", "memory", "io"}  # from the unified tree


def test_hybrid_root_unlimited():
    cg = read_cgroup(Host(LOCAL), "/")
    assert cg.cpu_quota_cores is None and cg.memory_max_bytes is None


def test_gone_cgroup_raises_target_gone():
    with pytest.raises(TargetGone, match="/nope"):
        read_cgroup(Host(fixture_path("v2-docs")), "/nope")
    with pytest.raises(TargetGone, match="no cgroup hierarchy"):
        read_cgroup(Host(fixture_path("prometheus-procfs")), "/x")


def test_missing_file_is_none_and_garbage_is_reported(tmp_path):
    root = writable_copy("v2-docs", tmp_path)
    d = root / "sys/fs/cgroup/system.slice/noisy.service"
    (d / "memory.high").unlink()
    (d / "cpu.max").write_text("lots of cpu\n")
    (d / "memory.events").write_text("high\n")
    (d / "cpu.pressure").write_text("")
    errors: list[str] = []
    cg = read_cgroup(Host(root), "/system.slice/noisy.service", errors=errors)
    assert cg.memory_high_bytes is None and cg.cpu_quota_cores is None
    assert cg.memory_max_bytes == 4 << 30  # the rest still read
    assert any("cpu.max" in e for e in errors)
    assert any("memory.events" in e for e in errors)
    assert not any("memory.high" in e for e in errors)  # absent is not an error
    assert cg.memory_events == {}


def test_flat_keyed():
    assert parse_flat_keyed("a 1\n\nb 2\n", "x") == {"a": 1, "b": 2}


def test_memory_stat_in_one_vocabulary_v2_and_v1():
    """memory.stat: anon, page cache, refaults and major faults under v2 names; v1's
    hierarchical total_* lines map onto them; v2 adds memory.low."""
    v2 = read_cgroup(Host(fixture_path("v2-docs")), "/system.slice/llm.service")
    assert v2.memory_stat == {"anon": 5 << 30, "file": 1 << 30, "workingset_refault_file": 4321, "pgmajfault": 87}
    assert v2.memory_low_bytes == 4 << 30 and v2.memory_controller_version == 2
    v1 = read_cgroup(Host(LOCAL), CHILD)
    stat = _kv(LOCAL / "sys/fs/cgroup/memory" / CHILD.lstrip("/") / "memory.stat")
    assert v1.memory_stat == {"anon": stat["total_rss"], "file": stat["total_cache"],
                              "workingset_refault_file": stat["total_workingset_refault_file"],
                              "pgmajfault": stat["total_pgmajfault"]}
    assert v1.memory_low_bytes is None and v1.memory_controller_version == 1


def test_garbled_memory_stat_is_a_missing_field_with_a_message(tmp_path):
    root = writable_copy("v2-docs", tmp_path)
    (root / "sys/fs/cgroup/system.slice/llm.service/memory.stat").write_text("anon lots\n")
    errors: list[str] = []
    cg = read_cgroup(Host(root), "/system.slice/llm.service", errors=errors)
    assert cg.memory_stat == {} and cg.memory_current_bytes == 6 << 30
    assert any("memory.stat" in e and "anon" in e for e in errors)
