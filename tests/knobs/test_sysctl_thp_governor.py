"""sysctl key mapping and field-wise compare; THP mode parsing; cpufreq governor per policy."""

from __future__ import annotations

import pytest

from autotune.errors import InvalidValue, MissingFile
from autotune.knobs import get_knob
from autotune.knobs.sysctl import normalize, sysctl_path
from autotune.knobs.thp import parse_modes


def test_sysctl_key_forms():
    assert sysctl_path("vm.swappiness") == "/proc/sys/vm/swappiness"
    assert sysctl_path("vm/swappiness") == "/proc/sys/vm/swappiness"
    assert sysctl_path("net/ipv4/conf/eth0.100/rp_filter") == "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
    for bad in ("vm/../../etc/passwd", "vm..swappiness", "VM.swappiness", "vm swappiness", "vm",
                "vm.swap$", ""):
        with pytest.raises(InvalidValue, match="malformed"):
            sysctl_path(bad)


def test_sysctl_fieldwise_compare(host, tree):
    k = get_knob("sysctl")
    assert normalize("4096\t131072  6291456\n") == "4096 131072 6291456"
    assert normalize("060") == "060"  # not 60: the kernel reads "060" as octal 48 (issue 10)
    before = (tree / "proc/sys/net/ipv4/tcp_rmem").stat().st_mtime_ns
    assert not k.change(host, "net.ipv4.tcp_rmem", " 4096 131072\t6291456 ").changed
    assert (tree / "proc/sys/net/ipv4/tcp_rmem").stat().st_mtime_ns == before


def test_sysctl_read_only_and_missing(host):
    k = get_knob("sysctl")
    with pytest.raises(InvalidValue, match="read-only"):
        k.validate(host, "fs.file-nr", "1")
    with pytest.raises(MissingFile, match="vm.nonexistent"):
        k.read(host, "vm.nonexistent")


def test_thp_parse_modes():
    assert parse_modes("always [madvise] never\n", source="x") == ("madvise", ["always", "madvise", "never"])
    assert parse_modes("[always] defer defer+madvise madvise never", source="x")[0] == "always"


def test_thp_raw_is_writable_mode(host, tree):
    k = get_knob("thp")
    st = k.read(host, "enabled")
    assert st.value == "madvise"
    assert st.raw == {"/sys/kernel/mm/transparent_hugepage/enabled": "madvise"}
    with pytest.raises(InvalidValue):
        k.read(host, "shmem_enabled")


def test_governor_mixed_and_per_policy_restore(host, tree):
    k = get_knob("governor")
    st = k.read(host, "all")
    assert st.value == "mixed" and len(st.raw) == 2
    res = k.change(host, "all", "performance")
    assert res.after.value == "performance"
    k.restore(host, res.before)
    assert (tree / "sys/devices/system/cpu/cpufreq/policy0/scaling_governor").read_text() == "powersave\n"
    assert (tree / "sys/devices/system/cpu/cpufreq/policy1/scaling_governor").read_text() == "performance\n"
    assert k.read(host, "policy1").value == "performance"
    with pytest.raises(InvalidValue):
        k.read(host, "cpu0")
    with pytest.raises(MissingFile, match="policy7"):
        k.read(host, "policy7")


def test_governor_unavailable_without_cpufreq(tmp_path):
    from autotune.host import Host
    with pytest.raises(MissingFile, match="no cpufreq"):
        get_knob("governor").read(Host(tmp_path), "all")
