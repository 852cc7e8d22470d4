"""Host: rooted paths, read-only by default, capability detection on fixture-like trees."""

from __future__ import annotations

import os
import pytest

from autotune.errors import HostError, MissingFile
from autotune.host import Host, detect_cgroups, format_cpulist, parse_cpulist


def write(root, rel, text=""):
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_path_maps_under_root_and_refuses_escape(tmp_path):
    h = Host(tmp_path)
    assert h.path("/proc/stat") == tmp_path / "proc" / "stat"
    with pytest.raises(HostError, match="escapes root"):
        h.path("/proc/../../etc/passwd")
    with pytest.raises(HostError, match="absolute"):
        h.path("proc/stat")


def test_read_missing_and_optional(tmp_path):
    h = Host(tmp_path)
    with pytest.raises(MissingFile, match="/proc/vmstat"):
        h.read_text("/proc/vmstat")
    assert h.read_optional("/proc/vmstat") is None


def test_read_only_host_refuses_writes(tmp_path):
    write(tmp_path, "/proc/sys/vm/swappiness", "60\n")
    with pytest.raises(HostError, match="read-only"):
        Host(tmp_path).write_text("/proc/sys/vm/swappiness", "10")
    Host(tmp_path, writable=True).write_text("/proc/sys/vm/swappiness", "10")
    assert (tmp_path / "proc/sys/vm/swappiness").read_text() == "10"


def test_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_ROOT", str(tmp_path))
    assert Host().root == tmp_path.resolve()


@pytest.mark.parametrize(
    "files,layout,v2,ctrls",
    [
        ({"/sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n",
          "/sys/fs/cgroup/cgroup.procs": ""}, "v2", "/sys/fs/cgroup", ["cpu", "cpuset", "io", "memory", "pids"]),
        ({"/sys/fs/cgroup/unified/cgroup.controllers": "hugetlb\n", "/sys/fs/cgroup/unified/cgroup.procs": "",
          "/sys/fs/cgroup/cpu/cgroup.procs": "", "/sys/fs/cgroup/memory/cgroup.procs": "",
          "/sys/fs/cgroup/systemd/cgroup.procs": ""}, "hybrid", "/sys/fs/cgroup/unified", ["hugetlb"]),
        ({"/sys/fs/cgroup/cpu,cpuacct/cgroup.procs": "", "/sys/fs/cgroup/memory/cgroup.procs": ""},
         "v1", None, []),
        ({}, "none", None, []),
    ],
)
def test_detect_cgroup_layouts(tmp_path, files, layout, v2, ctrls):
    for rel, text in files.items():
        write(tmp_path, rel, text)
    info = detect_cgroups(Host(tmp_path))
    assert info.layout == layout
    assert info.v2_mount == v2
    assert sorted(info.v2_controllers) == sorted(ctrls)
    if layout == "v1":
        assert info.v1_mounts["cpu"] == info.v1_mounts["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
        assert info.controller_version("memory") == 1
    if layout == "hybrid":
        assert info.controller_version("cpu") == 1 and "systemd" not in info.v1_mounts


def test_capabilities_on_fixture_never_probes_triggers(tmp_path):
    write(tmp_path, "/proc/pressure/cpu", "some avg10=1.00 avg60=0.50 avg300=0.10 total=100\n")
    write(tmp_path, "/sys/devices/system/cpu/online", "0-3\n")
    write(tmp_path, "/sys/devices/system/cpu/cpufreq/policy0/scaling_available_governors", "performance powersave\n")
    write(tmp_path, "/sys/kernel/mm/transparent_hugepage/enabled", "always [madvise] never\n")
    before = (tmp_path / "proc/pressure/cpu").read_text()
    caps = Host(tmp_path).capabilities()
    assert caps.psi == {"cpu": True, "memory": False, "io": False, "irq": False}
    assert caps.psi_full_cpu is False
    assert caps.psi_triggers is None  # a fixture file is not procfs: never written to
    assert (tmp_path / "proc/pressure/cpu").read_text() == before
    assert caps.ncpu == 4
    assert caps.governors_available == ["performance", "powersave"]
    assert caps.thp_files == ["enabled"]


@pytest.mark.realkernel
def test_live_capabilities_probe_triggers():
    h = Host("/")
    if not h.exists("/proc/pressure/cpu"):
        pytest.skip("kernel without PSI")
    caps = h.capabilities()
    assert caps.psi_triggers in (True, False)
    assert caps.psi_triggers_detail


@pytest.mark.parametrize("text,cpus", [("0-3", [0, 1, 2, 3]), ("0,2-3\n", [0, 2, 3]), ("", []), ("7", [7])])
def test_cpulist_roundtrip(text, cpus):
    assert parse_cpulist(text) == cpus
    assert parse_cpulist(format_cpulist(cpus)) == cpus


def test_cpulist_rejects_garbage():
    with pytest.raises(ValueError):
        parse_cpulist("3-1")
    with pytest.raises(ValueError):
        parse_cpulist("a-b")


def test_replace_file_makes_one_directory_level_and_removes(tmp_path):
    """For files autotune owns (a unit's drop-in, an env file): whole-file replace, one
    directory level made when missing, None removes it, a read-only Host refuses."""
    from autotune.errors import HostError, MissingFile

    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    h = Host(tmp_path, writable=True)
    h.replace_file("/etc/systemd/system/a.service.d/50-x.conf", "[Service]\n")
    assert (tmp_path / "etc/systemd/system/a.service.d/50-x.conf").read_text() == "[Service]\n"
    h.replace_file("/etc/systemd/system/a.service.d/50-x.conf", "two\n")
    assert h.read_text("/etc/systemd/system/a.service.d/50-x.conf") == "two\n"
    assert os.listdir(tmp_path / "etc/systemd/system/a.service.d") == ["50-x.conf"]  # no temporary left
    h.replace_file("/etc/systemd/system/a.service.d/50-x.conf", None)
    h.replace_file("/etc/systemd/system/a.service.d/50-x.conf", None)  # already gone: fine
    assert not (tmp_path / "etc/systemd/system/a.service.d/50-x.conf").exists()
    with pytest.raises(MissingFile):
        h.replace_file("/nowhere/deep/x.env", "A=1\n")  # only one level is made
    with pytest.raises(HostError, match="read-only"):
        Host(tmp_path).replace_file("/etc/x.env", "A=1\n")
