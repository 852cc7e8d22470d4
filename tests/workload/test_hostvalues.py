"""The host-wide values a benchmark or the demo must leave as found: read, compare, put back by
force through the knobs; on fixture hosts (writes) and on this host (reads only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.host import Host
from autotune.workload import harness, hostvalues
from autotune.workload.hostvalues import compare, put_back, summary_line


def test_the_rule_packs_sysctls_and_the_memory_ones_are_covered(tmp_path):
    keys = hostvalues.sysctls()
    for k in ("vm.swappiness", "vm.dirty_ratio", "vm.dirty_background_ratio", "vm.min_free_kbytes",
              "vm.watermark_scale_factor"):
        assert k in keys
    pack = tmp_path / "rules"
    pack.mkdir()
    (pack / "x.yaml").write_text(
        "rules:\n  - name: odd\n    description: a test rule\n    rationale: a rule that names a sysctl ({metric:host.ncpu} CPUs)\n    when: {metric: host.ncpu, op: '>', value: 0}\n"
        "    actions:\n      - {knob: sysctl, target: vm.stat_interval, value: 2}\n")
    assert "vm.stat_interval" in hostvalues.sysctls([pack])


def test_read_a_fixture_host(host_tree):
    host = Host(host_tree("hybrid-local"))
    hv = hostvalues.read(host, cgroup_dirs=harness.base_dirs(host, "autotune-bench-1"))
    v = hv.values
    assert v["vm.swappiness"] == (host.read_text("/proc/sys/vm/swappiness")).strip()
    assert v["vm.dirty_bytes"] == "absent"  # the fixture lacks it
    assert v["THP enabled"] in ("always", "madvise", "never")
    assert any(k.startswith("cpu v1 /") and k.endswith("/autotune-bench-1") and x == "absent" for k, x in v.items())
    assert {"vm.swappiness", "THP enabled", "THP defrag"} <= set(hv.states)
    assert all(isinstance(x, str) and x for x in v.values())


def test_put_back_restores_what_still_differs_and_names_it(writable_tree):
    root = writable_tree("hybrid-local")
    host = Host(root, writable=True)
    before = hostvalues.read(host)
    (root / "proc/sys/vm/swappiness").write_text("10\n")  # what the landed benchmark once left
    (root / "proc/sys/vm/dirty_ratio").write_text("5\n")
    after = hostvalues.read(host).values
    rows = compare(before.values, after)
    assert {r[0] for r in rows if not r[3]} == {"vm.swappiness", "vm.dirty_ratio"}
    assert summary_line(rows).startswith("host values: 2 of ") and "vm.swappiness " in summary_line(rows)
    forced = put_back(host, before)
    assert {(f.label, f.found, f.was, f.error) for f in forced} == {
        ("vm.swappiness", "10", before.values["vm.swappiness"], None),
        ("vm.dirty_ratio", "5", before.values["vm.dirty_ratio"], None)}
    rows = compare(before.values, hostvalues.read(host).values)
    assert all(r[3] for r in rows)
    assert summary_line(rows) == f"host values: {len(rows)} read the same before and after"
    assert put_back(host, before) == []  # nothing left to force


def test_a_value_that_cannot_be_put_back_is_reported(writable_tree):
    root = writable_tree("hybrid-local")
    host = Host(root, writable=True)
    before = hostvalues.read(host)
    (root / "proc/sys/vm/swappiness").write_text("10\n")
    (root / "proc/sys/vm/swappiness").chmod(0o444)
    try:
        forced = put_back(Host(root, writable=True), before)
    finally:
        (root / "proc/sys/vm/swappiness").chmod(0o644)
    import os

    if os.geteuid() == 0:  # root writes through a read-only mode bit
        assert [f.error for f in forced] == [None]
    else:
        assert len(forced) == 1 and forced[0].label == "vm.swappiness" and forced[0].error


def test_this_host_reads_the_same_twice_and_nothing_is_written():
    """On the real host: two reads agree and put_back has nothing to do. The Host is read-only,
    so even a value another job changed between the reads could not be written here (the
    put_back would name it with an error instead)."""
    host = Host("/")
    assert not host.writable
    a = hostvalues.read(host)
    b = hostvalues.read(host)
    assert all(same for *_, same in compare(a.values, b.values)), compare(a.values, b.values)
    assert put_back(host, a) == []
    if Path("/proc/sys/vm/swappiness").exists():
        assert a.values["vm.swappiness"] == Path("/proc/sys/vm/swappiness").read_text().strip()


@pytest.mark.parametrize("label", ["THP enabled", "THP defrag"])
def test_thp_reads_the_selected_mode(host_tree, label):
    host = Host(host_tree("hybrid-local"))
    v = hostvalues.read(host).values[label]
    assert "[" not in v and " " not in v
