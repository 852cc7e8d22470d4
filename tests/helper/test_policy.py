"""Policy file: refused unless root-owned and not group/world-writable; contents validated."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.errors import ConfigError, PolicyRefused
from autotune.helper.policy import Policy, ValueRule, load_policy, sysctl_key

from .conftest import needs_root, write_policy

REPO = Path(__file__).resolve().parents[2]


@needs_root
def test_root_owned_0644_policy_loads(tmp_path):
    pol = load_policy(write_policy(tmp_path / "p.toml"))
    assert pol.rule("cgroup.cpu_quota").subtrees == ["/autotune"]
    assert pol.service["llm"].name == "llm"
    assert pol.source == str(tmp_path / "p.toml")


@needs_root
@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646])
def test_group_or_world_writable_policy_refused(tmp_path, mode):
    p = write_policy(tmp_path / "p.toml")
    os.chmod(p, mode)
    with pytest.raises(ConfigError, match=r"refusing to start: policy file .*p\.toml is group/world-writable"):
        load_policy(p)


@needs_root
def test_policy_not_owned_by_root_refused(tmp_path):
    p = write_policy(tmp_path / "p.toml")
    os.chown(p, 65534, 65534)
    with pytest.raises(ConfigError, match=r"p\.toml is owned by uid 65534, not root"):
        load_policy(p)
    assert load_policy(p, require_root_owned=False).peers.uids == [0]


@needs_root
def test_policy_in_writable_directory_refused(tmp_path):
    d = tmp_path / "etc"
    d.mkdir()
    os.chmod(d, 0o777)
    p = write_policy(d / "p.toml")
    with pytest.raises(ConfigError, match="group/world-writable"):
        load_policy(p)


@needs_root
def test_symlinked_policy_refused(tmp_path):
    real = write_policy(tmp_path / "real.toml")
    (tmp_path / "link.toml").symlink_to(real)
    with pytest.raises(ConfigError, match="symlinks are refused"):
        load_policy(tmp_path / "link.toml")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[knob.frobnicate]\nx=1\n", "does not know this knob"),
        ('[knob."cgroup.cpu_quota"]\nsubtrees=["/a"]\n', "allows nothing"),
        ('[knob."cgroup.cpu_quota"]\nsubtrees=["/a/../b"]\nmin=0\n', "without '..'"),
        ('[knob."cgroup.cpu_quota"]\nsubtrees=["/a"]\nmin=3\nmax=1\n', "min 3.0 > max 1.0"),
        ("[knob.sysctl]\nkeys={\"../etc\"={min=0}}\n", "not a well-formed key"),
        ('[knob.affinity]\nservices=["ghost"]\n', "without a [service.<name>] table"),
        ("[limits]\nmax_request_bytes=-1\n", "max_request_bytes"),
        ("[peers]\nuids=[0]\nbogus=1\n", "bogus"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_policy_contents_name_the_problem(tmp_path, text, match):
    p = tmp_path / "p.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(match)):
        load_policy(p, require_root_owned=False)


def test_value_rule_ranges_and_literals():
    r = ValueRule(min=0.1, max=2.0, values=["max"])
    assert r.refusal("0.5") is None and r.refusal("max") is None and r.refusal("2") is None
    assert "outside" in r.refusal("2.5") and "outside" in r.refusal("-1")
    assert "not a number" in r.refusal("inf") and "not a number" in r.refusal("")
    multi = ValueRule(min=0, max=10)
    assert multi.refusal("1 2 3") is None and multi.refusal("1 20") is not None
    assert "not one of" in ValueRule(values=["a"]).refusal("b")


def test_sysctl_key_normalisation():
    assert sysctl_key("vm/swappiness") == "vm.swappiness"
    assert sysctl_key("net.ipv4.tcp_rmem") == "net.ipv4.tcp_rmem"
    for bad in ("swappiness", "vm..x", "vm/../x", "vm.swap piness", "vm.\x00", "/vm/x", "vm.é"):
        assert sysctl_key(bad) is None, bad


def test_example_policy_validates():
    pol = load_policy(REPO / "systemd/policy.example.toml", require_root_owned=False)
    assert isinstance(pol, Policy) and "cgroup.cpu_quota" in pol.knob and "llm" in pol.service


def test_cli_check_policy(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[knob.frobnicate]\n")
    out = subprocess.run([sys.executable, "-m", "autotune", "helper", "check-policy", str(bad),
                          "--no-owner-check"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "frobnicate" in out.stderr
    good = write_policy(tmp_path / "good.toml")
    out = subprocess.run([sys.executable, "-m", "autotune", "helper", "check-policy", str(good),
                          "--no-owner-check"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "knob cgroup.cpu_quota" in out.stdout


def test_policy_tables_follow_the_knobs_target_kind():
    """The table model comes from ``Knob.target_kind``; knobs the agent applies itself
    (admission) or never applies (advice) have no place in the helper's policy."""
    from autotune.knobs import KNOBS

    pol = Policy.model_validate({
        "knob": {"cgroup.cpu_idle": {"subtrees": ["/a"], "values": ["0", "1"]},
                 "governor.epp": {"targets": ["all"], "values": ["performance"]},
                 "sysctl": {"keys": {"vm.swappiness": {"min": 0, "max": 100}}}},
    })
    assert {n: type(r).__name__ for n, r in pol.knob.items()} == {
        "cgroup.cpu_idle": "CgroupRule", "governor.epp": "ChoiceRule", "sysctl": "SysctlRule"}
    for name in ("admission", "advice", "cgroup.nope"):
        with pytest.raises(ValueError, match=f"knob '{re.escape(name)}': the helper does not know"):
            Policy.model_validate({"knob": {name: {"subtrees": ["/a"], "min": 0}}})
    assert all(KNOBS[n].needs_helper for n in ("cgroup.cpu_idle", "governor.epp", "sysctl"))


def test_allowed_raw_paths_come_from_the_knob(tmp_path):
    """check_paths allows exactly what ``Knob.host_files`` names: no path constants of its own."""
    from autotune.helper import allow
    from autotune.host import Host
    from autotune.knobs import get_knob
    from autotune.knobs.sysctl import Sysctl

    root = tmp_path / "root"
    for rel in ("proc/sys/vm/swappiness", "proc/sys/vm/dirty_ratio", "elsewhere/swappiness"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("60\n")
    host = Host(root)
    pol = Policy.model_validate({"knob": {"sysctl": {"keys": {"vm.swappiness": {"min": 0, "max": 100}}}}})
    t = allow.check_target(pol, host, "sysctl", "vm.swappiness")
    allow.check_paths(pol, host, t, get_knob("sysctl"), ["/proc/sys/vm/swappiness"])
    with pytest.raises(PolicyRefused, match="may not write /proc/sys/vm/dirty_ratio"):
        allow.check_paths(pol, host, t, get_knob("sysctl"), ["/proc/sys/vm/dirty_ratio"])

    class Relocated(Sysctl):
        def host_files(self, host, target):
            return frozenset({"/elsewhere/swappiness"})

    allow.check_paths(pol, host, t, Relocated(), ["/elsewhere/swappiness"])
    with pytest.raises(PolicyRefused, match="may not write /proc/sys/vm/swappiness"):
        allow.check_paths(pol, host, t, Relocated(), ["/proc/sys/vm/swappiness"])
