"""cgroup knob specifics: exact file contents per layout, v1 ordering, rounding tolerance."""

from __future__ import annotations

import pytest

from autotune.errors import InvalidValue, MissingFile, TargetGone
from autotune.host import Host
from autotune.knobs import get_knob
from autotune.knobs.cgroup.base import PAGE_BYTES, parse_bytes
from tests.knobs.trees import CG


def f(tree, rel):
    return (tree / rel).read_text()


@pytest.mark.parametrize("layout", ["v2"])
def test_v2_quota_keeps_period(tree, host):
    (tree / f"sys/fs/cgroup{CG}/cpu.max").write_text("max 50000\n")
    k = get_knob("cgroup.cpu_quota")
    k.change(host, CG, "1.5")
    assert f(tree, f"sys/fs/cgroup{CG}/cpu.max") == "75000 50000"
    assert k.read(host, CG).value == "1.5"
    k.change(host, CG, "max")
    assert f(tree, f"sys/fs/cgroup{CG}/cpu.max") == "max 50000"


@pytest.mark.parametrize("layout", ["hybrid"])
def test_v1_quota_files_and_raw_order(tree, host):
    k = get_knob("cgroup.cpu_quota")
    before = k.read(host, CG)
    d = f"/sys/fs/cgroup/cpu{CG}"
    assert list(before.raw) == [f"{d}/cpu.cfs_period_us", f"{d}/cpu.cfs_quota_us"]
    assert before.raw == {f"{d}/cpu.cfs_period_us": "100000\n", f"{d}/cpu.cfs_quota_us": "-1\n"}
    k.change(host, CG, "0.5")
    assert f(tree, f"sys/fs/cgroup/cpu{CG}/cpu.cfs_quota_us") == "50000"
    assert f(tree, f"sys/fs/cgroup/cpu{CG}/cpu.cfs_period_us") == "100000\n"  # untouched
    k.change(host, CG, "max")
    assert f(tree, f"sys/fs/cgroup/cpu{CG}/cpu.cfs_quota_us") == "-1"


class RecordingHost(Host):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.writes: list[tuple[str, str]] = []

    def write_text(self, host_path, value):
        self.writes.append((host_path.rsplit("/", 1)[1], value))
        super().write_text(host_path, value)


@pytest.mark.parametrize("layout", ["hybrid"])
def test_v1_restore_unlimits_before_changing_period(tree):
    """With a quota set, the kernel checks quota/period ratios, so a period change goes
    quota=-1 -> period -> quota; without a period change only the quota is written."""
    host = RecordingHost(tree, writable=True)
    k = get_knob("cgroup.cpu_quota")
    (tree / f"sys/fs/cgroup/cpu{CG}/cpu.cfs_quota_us").write_text("20000\n")
    (tree / f"sys/fs/cgroup/cpu{CG}/cpu.cfs_period_us").write_text("50000\n")
    saved = k.read(host, CG)
    assert saved.value == "0.4"
    (tree / f"sys/fs/cgroup/cpu{CG}/cpu.cfs_quota_us").write_text("300000\n")
    (tree / f"sys/fs/cgroup/cpu{CG}/cpu.cfs_period_us").write_text("100000\n")
    k.restore(host, saved)
    assert host.writes == [("cpu.cfs_quota_us", "-1"), ("cpu.cfs_period_us", "50000\n"),
                           ("cpu.cfs_quota_us", "20000\n")]
    host.writes.clear()
    k.restore(host, saved)
    assert host.writes == [("cpu.cfs_quota_us", "20000\n")]


def test_quota_same_tolerates_rounding():
    k = get_knob("cgroup.cpu_quota")
    assert k.same("0.333333", "0.33333") and not k.same("0.5", "0.6")
    assert k.same("max", "max") and not k.same("max", "1")


@pytest.mark.parametrize("layout", ["hybrid"])
def test_v1_weight_maps_to_shares(tree, host):
    k = get_knob("cgroup.cpu_weight")
    k.change(host, CG, "200")
    assert f(tree, f"sys/fs/cgroup/cpu{CG}/cpu.shares") == "2048"
    (tree / f"sys/fs/cgroup/cpu{CG}/cpu.shares").write_text("512\n")
    assert k.read(host, CG).value == "50"


def test_burst_must_not_exceed_quota(tree, host):
    get_knob("cgroup.cpu_quota").change(host, CG, "0.1")  # 10000 us
    with pytest.raises(InvalidValue, match="burst <= quota"):
        get_knob("cgroup.cpu_burst").validate(host, CG, "20000")
    assert get_knob("cgroup.cpu_burst").validate(host, CG, "10000") == "10000"


@pytest.mark.parametrize("layout", ["hybrid"])
def test_v1_memory_unlimited_is_max_and_written_as_minus_one(tree, host):
    k = get_knob("cgroup.memory_max")
    assert k.read(host, CG).value == "max"
    k.change(host, CG, "1G")
    assert f(tree, f"sys/fs/cgroup/memory{CG}/memory.limit_in_bytes") == "1073741824"
    k.change(host, CG, "max")
    assert f(tree, f"sys/fs/cgroup/memory{CG}/memory.limit_in_bytes") == "-1"
    get_knob("cgroup.memory_high").change(host, CG, "512M")
    assert f(tree, f"sys/fs/cgroup/memory{CG}/memory.soft_limit_in_bytes") == "536870912"


def test_memory_page_rounding_is_same_and_skips_write(tree, host, layout):
    k = get_knob("cgroup.memory_max")
    k.change(host, CG, "1000000")
    rel = f"sys/fs/cgroup{'' if layout == 'v2' else '/memory'}{CG}/memory" + (
        ".max" if layout == "v2" else ".limit_in_bytes")
    rounded = 1000000 // PAGE_BYTES * PAGE_BYTES  # what the kernel would store
    (tree / rel).write_text(f"{rounded}\n")
    res = k.change(host, CG, "1000000")
    assert not res.changed
    assert not k.same("1000000", str(rounded - PAGE_BYTES))


def test_parse_bytes():
    assert parse_bytes("4096") == 4096
    assert parse_bytes("1K") == 1024 and parse_bytes("1.5G") == 3 << 29
    assert parse_bytes("2MiB") == 2 << 20 and parse_bytes("max") is None
    for bad in ("-3", "1X", "", "1e9"):
        with pytest.raises(ValueError):
            parse_bytes(bad)


@pytest.mark.parametrize("layout", ["hybrid"])
def test_memory_low_not_on_v1(host):
    k = get_knob("cgroup.memory_low")
    with pytest.raises(MissingFile, match="not on cgroup v1"):
        k.read(host, CG)
    with pytest.raises(InvalidValue, match="not on cgroup v1"):
        k.validate(host, CG, "1G")


def test_cpuset_subset_of_parent_effective(host):
    k = get_knob("cgroup.cpuset")
    assert k.validate(host, CG, "0-2") == "0-2"
    with pytest.raises(InvalidValue, match=r"cpus 3 outside 0-2"):
        k.validate(host, CG, "2-3")
    res = k.change(host, CG, "2,0,1")
    assert res.after.value == "0-2"
    assert not k.change(host, CG, "0,1,2").changed


@pytest.mark.parametrize("layout", ["v2"])
def test_v2_io_weight_default_line(tree, host):
    k = get_knob("cgroup.io_weight")
    before = k.read(host, CG)
    assert before.value == "100"
    assert list(before.raw.values()) == ["default 100"]  # per-device lines are not restored
    k.change(host, CG, "default 300")
    assert f(tree, f"sys/fs/cgroup{CG}/io.weight") == "default 300"


@pytest.mark.parametrize("layout", ["hybrid"])
def test_v1_io_weight_maps_to_blkio_range(tree, host):
    k = get_knob("cgroup.io_weight")
    assert k.read(host, CG).value == "100"
    assert k.validate(host, CG, "300") == "200"  # blkio.weight tops out at 1000
    k.change(host, CG, "150")
    assert f(tree, f"sys/fs/cgroup/blkio{CG}/blkio.weight") == "750"


def test_missing_cgroup_is_target_gone(host):
    for name in ("cgroup.cpu_quota", "cgroup.cpu_weight", "cgroup.memory_max", "cgroup.cpuset"):
        with pytest.raises(TargetGone, match="/autotune/gone"):
            get_knob(name).read(host, "/autotune/gone")


def test_dotdot_target_refused(host):
    with pytest.raises(InvalidValue, match=r"\.\."):
        get_knob("cgroup.cpu_weight").read(host, "/autotune/../../etc")
