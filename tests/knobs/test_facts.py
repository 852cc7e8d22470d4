"""The facts every knob owns (numeric, format, same, targets, helper routing, files, cpu
share), asked by the rule loader, engine, actuator, floor and helper instead of its name."""

from __future__ import annotations

import typing

import pytest

from autotune.config import Config, Service
from autotune.errors import InvalidValue, PolicyRefused, TargetGone
from autotune.host import Host
from autotune.knobs import KNOBS, get_knob
from autotune.knobs.base import Knob, TargetKind
from autotune.knobs.cgroup.base import PAGE_BYTES

NUMERIC = {"cgroup.cpu_quota", "cgroup.cpu_burst", "cgroup.cpu_weight", "cgroup.memory_high",
           "cgroup.memory_max", "cgroup.memory_low", "cgroup.io_weight", "sysctl", "threads"}
CPU_SHARE = {"cgroup.cpu_quota": "1.5", "cgroup.cpu_weight": "200", "cgroup.cpu_idle": "1",
             "cgroup.cpuset": "0-1", "affinity": "0-1"}


@pytest.mark.parametrize("name", sorted(KNOBS))
def test_every_registered_knob_declares_its_facts(name):
    k = KNOBS[name]
    assert k.target_kind in typing.get_args(TargetKind)
    for attr, kind in (("numeric", bool), ("decimals", int), ("tolerance", (int, float)),
                       ("needs_helper", bool), ("advisory", bool)):
        assert isinstance(getattr(k, attr), kind), attr
    assert k.numeric == (name in NUMERIC)
    assert k.same("x", "x") and not k.same("x", None) and k.same(None, None)
    if k.numeric:
        assert k.same(k.format(12.0), "12") and number_like(k.format(7.3))
    assert (k.cpu_share(CPU_SHARE.get(name, "1")) is not None) == (name in CPU_SHARE)


def number_like(text: str) -> bool:
    return float(text) > 0


def test_routing_facts():
    assert {n for n, k in KNOBS.items() if k.advisory} == {"advice"}
    assert {n for n, k in KNOBS.items() if not k.needs_helper} == {"admission", "advice"}
    assert {n for n, k in KNOBS.items() if k.target_kind == "service"} == {"admission", "advice", "affinity"}
    assert {n for n, k in KNOBS.items() if k.target_kind == "restart"} == {"threads"}
    assert {n for n, k in KNOBS.items() if k.target_kind == "cgroup"} == {n for n in KNOBS if n.startswith("cgroup.")}
    with pytest.raises(PolicyRefused, match="never applied"):
        get_knob("advice").read(Host("/"), "host")


def test_one_same_per_knob():
    quota = get_knob("cgroup.cpu_quota")
    assert quota.tolerance == 0.005  # half the 0.01-core step rules and the floor compute in
    assert quota.same("1.5", "1.501") and quota.same("0.333333", "0.33") and not quota.same("1.5", "1.51")
    assert quota.same("max", "max") and not quota.same("max", "1")
    mem = get_knob("cgroup.memory_max")
    assert mem.same("1000000", str(1000000 + PAGE_BYTES - 1)) and not mem.same("1000000", str(1000000 + PAGE_BYTES))
    weight = get_knob("cgroup.cpu_weight")
    assert weight.same("100", "100.0") and not weight.same("100", "101")
    assert get_knob("cgroup.cpuset").same("0-3", "0,1,2,3") and get_knob("affinity").same("0,1", "0-1")
    assert get_knob("affinity").same("mixed", "mixed") and not get_knob("affinity").same("mixed", "0")
    sysctl = get_knob("sysctl")
    assert sysctl.same("4096\t87380 6291456", "4096 87380 6291456")
    # the strict grammar (issue 10, defect 4): the kernel reads "060" as octal 48, and "1e1",
    # full-width or Arabic-Indic digits are no integers at all
    for loose in ("060", "6_0", "\uff16\uff10", "\u0666\u0660", "6e1", "+60"):
        assert not sysctl.same(loose, "60"), loose
    assert not sysctl.same("60", "10")
    assert get_knob("cgroup.io_weight").same("default 100", "100")
    assert get_knob("thp").same("madvise\n", "madvise") and not get_knob("thp").same("madvise", "never")


def test_format_rounds_to_the_knob_step():
    quota = get_knob("cgroup.cpu_quota")
    assert quota.decimals == 2
    assert quota.format(1.234) == "1.23" and quota.format(2.0) == "2" and quota.format(0.001) == "0.01"
    assert get_knob("cgroup.cpu_weight").format(149.6) == "150"
    assert get_knob("cgroup.memory_high").format(1.5 * 2**30) == str(int(1.5 * 2**30))


@pytest.mark.parametrize("name,good,bad,message", [
    ("cgroup.cpu_quota", "/a/b", "a/b", "target for cgroup.cpu_quota is 'service', 'neighbours' or a cgroup path"),
    ("cgroup.memory_low", "/", "llm", "target for cgroup.memory_low is"),
    ("sysctl", "vm.swappiness", "vm/swappiness", "sysctl target must be a key like 'vm.swappiness'"),
    ("thp", "khugepaged/defrag", "defragment", "thp target must be one of"),
    ("governor", "all", "policy0", "governor target must be 'all'"),
    ("governor.epp", "all", "cpu0", "governor.epp target must be 'all'"),
])
def test_literal_rule_targets(name, good, bad, message):
    k = get_knob(name)
    k.check_target(good)
    with pytest.raises(InvalidValue, match=message):
        k.check_target(bad)


def test_service_targets_and_resolution(tmp_path):
    cfg = Config(service=[Service(name="llm", cgroup="/a", admission_url="http://127.0.0.1:8100"),
                          Service(name="b", unit="b.service"), Service(name="c", cmdline="c")])
    host = Host(tmp_path)
    quota = get_knob("cgroup.cpu_quota")
    assert quota.service_target(cfg.service("llm")) == "/a"
    assert quota.service_target(cfg.service("b")) == "/system.slice/b.service"
    assert quota.service_target(cfg.service("c")) is None
    assert get_knob("affinity").service_target(cfg.service("c")) == "c"
    adm = get_knob("admission")
    assert adm.resolve_target(host, cfg, "llm") == "http://127.0.0.1:8100"
    assert adm.resolve_target(host, cfg, "http://x:1") == "http://x:1"
    assert quota.resolve_target(host, cfg, "/a") == "/a"
    with pytest.raises(TargetGone, match="admission_url"):
        adm.resolve_target(host, cfg, "b")
    aff = get_knob("affinity")
    assert aff.resolve_target(host, cfg, "pids:1,2") == "pids:1,2"
    with pytest.raises(InvalidValue, match="not a configured"):
        aff.resolve_target(host, cfg, "ghost")


def test_host_files_name_the_knobs_own_paths(tmp_path):
    host = Host(tmp_path)
    assert get_knob("sysctl").host_files(host, "vm.swappiness") == {"/proc/sys/vm/swappiness"}
    assert get_knob("thp").host_files(host, "enabled") == {"/sys/kernel/mm/transparent_hugepage/enabled"}
    base = "/sys/devices/system/cpu/cpufreq"
    assert get_knob("governor").host_files(host, "all") == frozenset()  # no cpufreq here
    for pol in ("policy0", "policy2", "policyX"):
        (tmp_path / base.lstrip("/") / pol).mkdir(parents=True)
    assert get_knob("governor").host_files(host, "all") == {f"{base}/policy0/scaling_governor",
                                                            f"{base}/policy2/scaling_governor"}
    assert get_knob("governor.epp").host_files(host, "policy2") == {
        f"{base}/policy2/energy_performance_preference"}
    assert get_knob("cgroup.cpu_quota").host_files(host, "/a") is None  # the policy confines the cgroup


def test_cpu_share_updates():
    assert get_knob("cgroup.cpu_quota").cpu_share("max") == {"quota_cores": None}
    assert get_knob("cgroup.cpu_quota").cpu_share("0.5") == {"quota_cores": 0.5}
    assert get_knob("cgroup.cpu_weight").cpu_share("300") == {"weight": 300}
    assert get_knob("cgroup.cpu_idle").cpu_share("0") == {"idle": False}
    assert get_knob("cgroup.cpuset").cpu_share("0,2") == {"cpus": frozenset({0, 2})}
    assert get_knob("affinity").cpu_share("1-2") == {"cpus": frozenset({1, 2})}
    with pytest.raises(ValueError):
        get_knob("affinity").cpu_share("mixed")
    with pytest.raises(ValueError):
        get_knob("cgroup.cpu_quota").cpu_share("lots")


def test_base_defaults_are_conservative():
    class Bare(Knob):
        name = "bare"

        def read(self, host, target): ...
        def validate(self, host, target, value): ...
        def write(self, host, target, value): ...

    b = Bare()
    assert not b.numeric and b.needs_helper and not b.advisory and b.host_files(Host("/"), "x") is None
    assert b.same(" a", "a ") and not b.same("1", "1.0")
    assert b.cpu_share("1") is None
