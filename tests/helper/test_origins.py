"""The helper's origins file (issue 10, defect 5): keyed by the target's one spelling and
bounded, so thousands of spellings of one cgroup neither grow it nor slow an apply."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from autotune.helper.handler import MAX_ORIGINS_PER_TARGET, Helper, Origins
from autotune.helper.policy import load_policy
from autotune.host import Host
from autotune.knobs import KNOBS

from .conftest import CPU, needs_root, write_policy

pytestmark = needs_root


def _spellings(n: int) -> list[str]:
    """n distinct spellings of /autotune/llm (extra and trailing slashes)."""
    out = []
    for i in range(n):
        a, b, c = i % 9 + 1, i // 9 % 9 + 1, i // 81
        out.append("/" * a + "autotune" + "/" * b + "llm" + "/" * c)
    assert len(set(out)) == n
    return out


def _helper(tmp_path, host_root, origins: Origins) -> Helper:
    pol = load_policy(write_policy(tmp_path / "p.toml", rate=1e9, burst=10**9))
    return Helper(pol, Host(host_root, writable=True), knobs=KNOBS, origins=origins)


def _apply(h: Helper, target: str, value: str, knob: str = "cgroup.cpu_quota") -> None:
    line = json.dumps({"op": "apply", "knob": knob, "target": target, "value": value}).encode()
    resp = h.handle_line(line)
    assert resp.ok, resp.error


def test_many_spellings_share_one_entry(tmp_path, host_root):
    """The adversarial run used 3,000 spellings (4.97 MB, apply 7.6 -> 104 ms); 400 show it."""
    path = tmp_path / "origins.json"
    h = _helper(tmp_path, host_root, Origins(path))
    for i, target in enumerate(_spellings(400)):
        _apply(h, target, "0.5" if i % 2 else "0.6")
    data = json.loads(path.read_text())
    assert list(data) == ["cgroup.cpu_quota\x1f/autotune/llm"]
    assert path.stat().st_size < 2000
    # every spelling restores through the same, canonical record
    first = data["cgroup.cpu_quota\x1f/autotune/llm"][0]
    assert first[f"{CPU}/autotune/llm/cpu.cfs_quota_us"] == "-1\n"
    restore = {"op": "restore", "knob": "cgroup.cpu_quota", "target": "//autotune///llm//",
               "state": {"value": "max", "raw": first}}
    resp = h.handle_line(json.dumps(restore).encode())
    assert resp.ok and resp.result.changed
    assert (host_root / CPU.lstrip("/") / "autotune/llm/cpu.cfs_quota_us").read_text() == "-1\n"


def test_old_spelled_keys_are_merged_and_dead_targets_pruned_on_start(tmp_path, host_root):
    path = tmp_path / "origins.json"
    quota = f"{CPU}/autotune/llm/cpu.cfs_quota_us"
    gone = f"{CPU}/autotune/gone/cpu.cfs_quota_us"
    old = {  # as an older helper wrote it: one key per spelling
        "cgroup.cpu_quota\x1f/autotune/llm": [{quota: "-1\n"}],
        "cgroup.cpu_quota\x1f//autotune//llm/": [{quota: "50000"}, {quota: "-1\n"}],
        "cgroup.cpu_quota\x1f/autotune/gone": [{gone: "-1\n"}],  # cgroup deleted since
        "cgroup.cpu_quota\x1f/autotune/../other": [{quota: "1000"}],  # never a valid target
        "cgroup.memory_max\x1f/autotune/llm": [{"/x": "1"}],  # knob no longer in policy
        "sysctl\x1fvm/swappiness": [{"/proc/sys/vm/swappiness": "60\n"}],
    }
    path.write_text(json.dumps(old))
    _helper(tmp_path, host_root, Origins(path))
    assert json.loads(path.read_text()) == {
        "cgroup.cpu_quota\x1f/autotune/llm": [{quota: "-1\n"}, {quota: "50000"}],
        "sysctl\x1fvm.swappiness": [{"/proc/sys/vm/swappiness": "60\n"}],
    }


def test_cgroup_deleted_later_is_pruned_when_the_file_is_full(tmp_path, host_root):
    cpu = host_root / CPU.lstrip("/") / "autotune"
    for i in range(5):
        shutil.copytree(cpu / "llm", cpu / f"c{i}")
    path = tmp_path / "origins.json"
    h = _helper(tmp_path, host_root, Origins(path, max_targets=3))
    for i in range(3):
        _apply(h, f"/autotune/c{i}", "0.5")
    shutil.rmtree(cpu / "c0")
    _apply(h, "/autotune/c3", "0.5")  # over the cap: c0 (gone) goes, not the live ones
    assert sorted(json.loads(path.read_text())) == [f"cgroup.cpu_quota\x1f/autotune/c{i}" for i in (1, 2, 3)]
    _apply(h, "/autotune/c4", "0.5")  # over again, all alive: the least recently recorded goes
    assert sorted(json.loads(path.read_text())) == [f"cgroup.cpu_quota\x1f/autotune/c{i}" for i in (2, 3, 4)]


def test_records_per_target_are_bounded_and_keep_the_first(tmp_path, host_root):
    path = tmp_path / "origins.json"
    h = _helper(tmp_path, host_root, Origins(path))
    values = [f"0.{i:02d}" for i in range(10, 10 + 3 * MAX_ORIGINS_PER_TARGET)]
    for v in values:
        _apply(h, "/autotune/llm", v)
    (recs,) = json.loads(path.read_text()).values()
    assert len(recs) == MAX_ORIGINS_PER_TARGET
    assert recs[0] == {f"{CPU}/autotune/llm/cpu.cfs_quota_us": "-1\n",
                       f"{CPU}/autotune/llm/cpu.cfs_period_us": "100000\n"}  # the true original


@pytest.mark.parametrize("content", ["[1, 2]", "{\"x\": 1}", "not json", "{\"a\x1fb\": [[1]]}"])
def test_garbled_origins_file_starts_empty(tmp_path, host_root, content):
    path = tmp_path / "origins.json"
    path.write_text(content)
    h = _helper(tmp_path, host_root, Origins(path))
    _apply(h, "/autotune/llm", "0.5")
    assert list(json.loads(path.read_text())) == ["cgroup.cpu_quota\x1f/autotune/llm"]
    assert os.stat(path).st_size < 1000
