"""No directory symlink is followed on the helper's read and write paths (issue 10, defect 7):
a ``--root`` tree whose sysctl, THP or cgroup path holds a link is refused, and nothing lands
outside; the systemd-style v1 mount link (cpu -> cpu,cpuacct) still works."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from autotune.errors import HostError, MissingFile
from autotune.helper.confined import ConfinedHost, SymlinkRefused
from autotune.helper.handler import Helper
from autotune.helper.policy import load_policy
from autotune.host import Host
from autotune.knobs import KNOBS

from .conftest import CPU, THP, needs_root, write_policy

pytestmark = needs_root


@pytest.fixture
def outside(tmp_path) -> Path:
    """A directory outside the host root holding look-alike files."""
    d = tmp_path / "outside"
    (d / "vm").mkdir(parents=True)
    (d / "vm/swappiness").write_text("60\n")
    (d / "thp").mkdir()
    (d / "thp/enabled").write_text("always [madvise] never\n")
    (d / "cg/llm").mkdir(parents=True)
    (d / "cg/llm/cpu.cfs_quota_us").write_text("-1\n")
    (d / "cg/llm/cpu.cfs_period_us").write_text("100000\n")
    return d


def _helper(tmp_path, host_root) -> Helper:
    pol = load_policy(write_policy(tmp_path / "p.toml"))
    return Helper(pol, Host(host_root, writable=True), knobs=KNOBS)


def _ask(h: Helper, **msg) -> tuple[bool, str | None, str]:
    resp = h.handle_line(json.dumps(msg).encode())
    return resp.ok, (resp.error.code if resp.error else None), (resp.error.reason if resp.error else "")


def _swap_dir_for_link(path: Path, target: Path) -> None:
    shutil.rmtree(path)
    os.symlink(target, path)


@pytest.mark.parametrize("op", ["apply", "read", "dry_run"])
def test_sysctl_directory_symlink_is_refused(tmp_path, host_root, outside, op):
    _swap_dir_for_link(host_root / "proc/sys/vm", outside / "vm")
    h = _helper(tmp_path, host_root)
    msg = {"op": "read" if op == "read" else "apply", "knob": "sysctl", "target": "vm.swappiness"}
    if op != "read":
        msg |= {"value": "10", "dry_run": op == "dry_run"}
    ok, code, reason = _ask(h, **msg)
    assert not ok and code == "target_refused", reason
    assert "/proc/sys/vm" in reason and "symbolic link" in reason
    assert (outside / "vm/swappiness").read_text() == "60\n"


def test_sysctl_link_inside_the_root_is_refused_too(tmp_path, host_root):
    real = host_root / "proc/sys/vm_real"
    shutil.move(host_root / "proc/sys/vm", real)
    os.symlink("vm_real", host_root / "proc/sys/vm")
    h = _helper(tmp_path, host_root)
    ok, code, _ = _ask(h, op="apply", knob="sysctl", target="vm.swappiness", value="10")
    assert not ok and code == "target_refused"
    assert (real / "swappiness").read_text() == "60\n"


def test_thp_directory_symlink_is_refused(tmp_path, host_root, outside):
    _swap_dir_for_link(host_root / THP.lstrip("/"), outside / "thp")
    h = _helper(tmp_path, host_root)
    ok, code, reason = _ask(h, op="apply", knob="thp", target="enabled", value="never")
    assert not ok and code == "target_refused", reason
    assert (outside / "thp/enabled").read_text() == "always [madvise] never\n"


def test_cgroup_directory_symlink_inside_the_subtree_is_refused(tmp_path, host_root):
    os.symlink("llm", host_root / CPU.lstrip("/") / "autotune/alias")
    h = _helper(tmp_path, host_root)
    ok, code, reason = _ask(h, op="apply", knob="cgroup.cpu_quota", target="/autotune/alias", value="0.5")
    assert not ok and code == "target_refused" and "symbolic link" in reason, reason
    assert (host_root / CPU.lstrip("/") / "autotune/llm/cpu.cfs_quota_us").read_text() == "-1\n"


def test_cgroup_mount_link_is_followed_only_inside_the_root(tmp_path, host_root, outside):
    cg = host_root / "sys/fs/cgroup"
    shutil.move(cg / "cpu", cg / "cpu,cpuacct")
    os.symlink("cpu,cpuacct", cg / "cpu")  # how systemd mounts v1 cpu: a trusted anchor
    h = _helper(tmp_path, host_root)
    ok, code, reason = _ask(h, op="apply", knob="cgroup.cpu_quota", target="/autotune/llm", value="0.5")
    assert ok, reason
    assert (cg / "cpu,cpuacct/autotune/llm/cpu.cfs_quota_us").read_text() == "50000"
    # the same mount link leading out of the root is no anchor: refused, nothing written outside
    (outside / "cg/autotune").mkdir()
    shutil.move(outside / "cg/llm", outside / "cg/autotune/llm")
    (cg / "cpu").unlink()
    os.symlink(outside / "cg", cg / "cpu")
    (outside / "cg/cgroup.procs").write_text("")
    h = _helper(tmp_path, host_root)
    ok, code, reason = _ask(h, op="apply", knob="cgroup.cpu_quota", target="/autotune/llm", value="0.5")
    assert not ok and code == "target_refused", reason
    assert (outside / "cg/autotune/llm/cpu.cfs_quota_us").read_text() == "-1\n"


def test_restore_through_a_linked_directory_is_refused(tmp_path, host_root, outside):
    h = _helper(tmp_path, host_root)
    ok, _, reason = _ask(h, op="apply", knob="sysctl", target="vm.swappiness", value="10")
    assert ok, reason  # the helper now knows the prior {"/proc/sys/vm/swappiness": "60\n"}
    _swap_dir_for_link(host_root / "proc/sys/vm", outside / "vm")
    ok, code, _ = _ask(h, op="restore", knob="sysctl", target="vm.swappiness",
                       state={"value": "60", "raw": {"/proc/sys/vm/swappiness": "60\n"}})
    assert not ok and code == "target_refused"
    assert (outside / "vm/swappiness").read_text() == "60\n"


def test_confined_host_unit(tmp_path):
    root = tmp_path / "r"
    (root / "a/b").mkdir(parents=True)
    (root / "a/b/f").write_text("x")
    (root / "elsewhere").mkdir()
    os.symlink("b", root / "a/l")
    os.symlink("f", root / "a/b/fl")
    os.mkfifo(root / "a/b/fifo")
    h = ConfinedHost(root, writable=True)
    assert h.read_text("/a/b/f") == "x"
    h.write_text("/a/b/f", "y")
    assert (root / "a/b/f").read_text() == "y"
    assert h.symlink_on_path("/a/l/f") == "/a/l" and h.symlink_on_path("/a/b/f") is None
    for path in ("/a/l/f", "/a/b/fl"):
        with pytest.raises(SymlinkRefused, match="symbolic link"):
            h.read_text(path)
        with pytest.raises(SymlinkRefused):
            h.write_text(path, "z")
    with pytest.raises(SymlinkRefused):
        h.listdir("/a/l")
    with pytest.raises(MissingFile):
        h.read_text("/a/b/nope")
    with pytest.raises(HostError):
        h.read_text("/../x")  # '..' out of the root
    done = threading.Event()
    threading.Thread(target=lambda: (pytest.raises(HostError, h.read_text, "/a/b/fifo"), done.set()),
                     daemon=True).start()
    assert done.wait(5), "reading a FIFO hung"
    with pytest.raises(HostError, match="read-only"):
        ConfinedHost(root).write_text("/a/b/f", "z")
    assert ConfinedHost.of(h) is h and isinstance(ConfinedHost.of(Host(root)), ConfinedHost)


def test_replace_file_follows_no_link(tmp_path):
    """The threads knob's drop-in and env files: a link on the way (a unit's .d directory
    pointing elsewhere) is refused and nothing lands outside the root; a link AS the file is
    replaced, never written through."""
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    (root / "etc/systemd/system").mkdir(parents=True)
    outside.mkdir()
    (root / "etc/systemd/system/llm.service.d").symlink_to(outside)
    h = ConfinedHost(root, writable=True)
    with pytest.raises(SymlinkRefused, match="llm.service.d is a symbolic link"):
        h.replace_file("/etc/systemd/system/llm.service.d/50-autotune-threads.conf", "[Service]\n")
    assert os.listdir(outside) == []
    (root / "etc/env").mkdir()
    (outside / "victim").write_text("keep\n")
    (root / "etc/env/threads.env").symlink_to(outside / "victim")
    h.replace_file("/etc/env/threads.env", "A=1\n")
    assert (outside / "victim").read_text() == "keep\n"
    assert not (root / "etc/env/threads.env").is_symlink() and (root / "etc/env/threads.env").read_text() == "A=1\n"
