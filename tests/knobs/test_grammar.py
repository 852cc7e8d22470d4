"""The strict number grammar (issue 10, defect 4): knobs refuse what the kernel refuses and
never normalise loosely before a range check."""

from __future__ import annotations

from decimal import Decimal

import pytest

from autotune.errors import InvalidValue
from autotune.knobs import get_knob
from autotune.knobs.grammar import (
    fields, parse_cpulist_strict, parse_decimal_strict, parse_int_strict, strip_ws,
)
from tests.knobs.trees import CG, tree_state

# Python's int()/float() take all of these; the kernel takes none of them as a decimal number.
LOOSE = [
    "1_0", "0.2_5", "\u0661\u0660", "\uff11\uff10", "\u0967", "inf", "-inf", "nan", "NaN", "1e1",
    "1E1", "+10", " 10", "10 ", "\u00a010", "10\u3000", "0x10", "010", ".5", "5.", "", "-", "1e304",
    "9" * 5000, "١.٥", "1,5", "10\x00", "Infinity",
]


@pytest.mark.parametrize("text", LOOSE)
def test_int_grammar_refuses_loose_spellings(text):
    with pytest.raises(ValueError):
        parse_int_strict(text, signed=True)


@pytest.mark.parametrize("text", [t for t in LOOSE if t not in ("010",)] + ["60.5x", "1.", "00.5"])
def test_decimal_grammar_refuses_loose_spellings(text):
    with pytest.raises(ValueError):
        parse_decimal_strict(text, signed=True)


def test_grammar_accepts_the_plain_forms():
    assert parse_int_strict("0") == 0 and parse_int_strict("60") == 60
    assert parse_int_strict("-1", signed=True) == -1
    assert parse_int_strict("18446744073709551615") == 2**64 - 1
    with pytest.raises(ValueError, match="negative"):
        parse_int_strict("-1")
    with pytest.raises(ValueError, match="digits"):
        parse_int_strict("1" * 21)
    assert parse_decimal_strict("0.25") == Decimal("0.25") and parse_decimal_strict("2") == 2
    assert parse_decimal_strict("-0.5", signed=True) == Decimal("-0.5")
    with pytest.raises(ValueError, match="too many digits"):
        parse_decimal_strict("1" * 21)
    assert strip_ws(" \t5\n") == "5" and strip_ws("\u00a05") == "\u00a05"
    assert fields(" 4096\t87380  6291456\n") == ["4096", "87380", "6291456"]


def test_cpulist_grammar_is_bounded_before_expanding():
    assert parse_cpulist_strict("0-3,8") == [0, 1, 2, 3, 8]
    for bad in ("0-2147483647", "99999999999999", "3-1", "0,,1", " 0", "0-", "\uff10", "1_0", ""):
        with pytest.raises(ValueError):
            parse_cpulist_strict(bad)


@pytest.mark.parametrize("value", ["60.5", "60.0", "1e1", "0.2_5", "\u0661\u0660", "\uff11\uff10",
                                   "1_0", "inf", "nan", "+10", "010", "0x10", "10\x00", "\u00a010",
                                   "1 2", "1e304", "9" * 30])
def test_integer_sysctl_refuses_what_the_kernel_refuses(host, tree, value):
    k = get_knob("sysctl")
    snap = tree_state(tree)
    with pytest.raises(InvalidValue, match="vm.swappiness"):
        k.validate(host, "vm.swappiness", value)
    with pytest.raises(InvalidValue):  # the dry run is the same path
        k.change(host, "vm.swappiness", value, dry_run=True)
    assert tree_state(tree) == snap


def test_integer_sysctl_accepts_plain_integers(host):
    k = get_knob("sysctl")
    assert k.validate(host, "vm.swappiness", " 10\n") == "10"
    assert k.validate(host, "net.ipv4.tcp_rmem", "4096\t87380 6291456") == "4096 87380 6291456"
    with pytest.raises(InvalidValue, match="has 2 fields; net.ipv4.tcp_rmem takes 3"):
        k.validate(host, "net.ipv4.tcp_rmem", "4096 87380")


def test_string_sysctl_takes_printable_ascii_fields(host, tree):
    (tree / "proc/sys/net/ipv4/tcp_congestion_control").write_text("cubic\n")
    k = get_knob("sysctl")
    assert k.validate(host, "net.ipv4.tcp_congestion_control", " bbr\n") == "bbr"
    for bad in ("b\u0432r", "bbr\nreno", "bbr\x1c"):
        with pytest.raises(InvalidValue, match="printable ASCII"):
            k.validate(host, "net.ipv4.tcp_congestion_control", bad)


@pytest.mark.parametrize(("knob", "good", "bad"), [
    ("cgroup.cpu_quota", {"0.5": "0.5", " 2 ": "2", "max": "max", "-1": "max", "1.25": "1.25"},
     ["1e0", "1e304", "inf", "nan", "unlimited", "MAX", "0.2_5", "\u0660.5", "+1", ".5", "0", "-0.5",
      "1" * 25, "0." + "1" * 20]),
    ("cgroup.cpu_weight", {"100": "100", "1": "1"},
     ["100.0", "1e2", "1_00", "\uff11\uff10\uff10", "+100", "0100", "0", "10001"]),
    ("cgroup.cpu_burst", {"0": "0", "1000": "1000"}, ["-1", "1.5", "1e3", "1_000", "\u0661"]),
    ("cgroup.cpu_idle", {"1": "1", " 0\n": "0"}, ["01", "1.0", "+1", "\u0661", "true"]),
    ("cgroup.memory_max", {"1048576": "1048576", "1M": "1048576", "1.5K": "1536", "max": "max",
                           "-1": "max", "2MiB": "2097152"},
     ["1e9", "1_000", "\u0661M", "1.5", "inf", "-3", "MAX", "9" * 25, "+1M", "1.5.5M"]),
    ("cgroup.cpuset", {"0-1": "0-1", "0,1": "0-1"},
     ["0-2147483647", "\uff10", "1_0", "0 - 1", "0-1,", "01"]),
])
def test_cgroup_knobs_use_the_strict_grammar(host, knob, good, bad):
    k = get_knob(knob)
    for value, norm in good.items():
        assert k.validate(host, CG, value) == norm, value
    for value in bad:
        with pytest.raises(InvalidValue):
            k.validate(host, CG, value)
            pytest.fail(f"{knob} accepted {value!r}")


@pytest.mark.parametrize("layout", ["v2"])
def test_io_weight_grammar(host):
    k = get_knob("cgroup.io_weight")
    assert k.validate(host, CG, "default 200") == "200" and k.validate(host, CG, "50") == "50"
    for bad in ("1e2", "2_00", "\u0662\u0660\u0660", "default 200.0", "+200"):
        with pytest.raises(InvalidValue):
            k.validate(host, CG, bad)


def test_same_uses_the_strict_grammar():
    quota = get_knob("cgroup.cpu_quota")
    assert quota.same("0.5", "0.50") and not quota.same("0.5", "5e-1")
    assert not get_knob("cgroup.cpu_weight").same("100", "1_00")
    assert not get_knob("cgroup.cpuset").same("0-2147483647", "0-1")  # bounded, no MemoryError


def test_admission_values_use_the_strict_grammar():
    from autotune.knobs.admission import parse_value

    assert parse_value("threshold=40.5,limit=4") == {"threshold": "40.5", "limit": "4"}
    for bad in ("threshold=4e1", "limit=1_0", "limit=\u0664", "threshold=nan", "threshold=inf"):
        with pytest.raises(InvalidValue):
            parse_value(bad)


def test_computed_quotas_never_use_an_exponent():
    from autotune.knobs._util import fmt_float

    assert fmt_float(2e6) == "2000000" and fmt_float(1 / 3) == "0.333333" and fmt_float(2.0) == "2"
    assert parse_decimal_strict(fmt_float(1.75922e10)) == Decimal("17592200000")
