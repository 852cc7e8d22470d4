"""/proc/vmstat, /proc/meminfo, /proc/loadavg and /proc/stat on all fixture trees and garbage."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autotune.errors import MissingFile, ParseError
from autotune.host import Host
from autotune.sensors.loadavg import parse_loadavg, read_loadavg
from autotune.sensors.meminfo import parse_meminfo, read_meminfo
from autotune.sensors.stat import parse_stat, read_stat
from autotune.sensors.vmstat import parse_vmstat, read_vmstat
from tests.fixtures.hosts import NAMES, fixture_path

HZ = os.sysconf("SC_CLK_TCK")


def _lines(name, rel):
    return (fixture_path(name) / rel).read_text().splitlines()


# -- vmstat ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["hybrid-local", "v2-docs"])
def test_vmstat_matches_file(name):
    got = read_vmstat(Host(fixture_path(name)))
    expected = {k: int(v) for k, v in (line.split() for line in _lines(name, "proc/vmstat"))}
    assert got == expected
    for key in ("pgfault", "pgmajfault", "pswpin", "pswpout", "compact_stall", "thp_fault_alloc"):
        assert key in got


def test_vmstat_absent_is_missing_file():
    with pytest.raises(MissingFile, match="/proc/vmstat"):
        read_vmstat(Host(fixture_path("prometheus-procfs")))


@pytest.mark.parametrize("text", ["", "pgfault\n", "pgfault 12 13\n", "pgfault twelve\n"])
def test_vmstat_garbage(text):
    with pytest.raises(ParseError, match="/proc/vmstat"):
        parse_vmstat(text)


# -- meminfo ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_meminfo_in_bytes(name):
    got = read_meminfo(Host(fixture_path(name)))
    for line in _lines(name, "proc/meminfo"):
        key, rest = line.split(":")
        fields = rest.split()
        want = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
        assert got[key] == want


def test_meminfo_hugepage_counts_stay_counts():
    got = read_meminfo(Host(fixture_path("v2-docs")))
    assert got["HugePages_Total"] == 8
    assert got["Hugepagesize"] == 2048 * 1024
    assert got["MemTotal"] == 32768000 * 1024


@pytest.mark.parametrize("text", ["", "MemTotal 12 kB\n", "MemTotal: lots kB\n", "MemTotal: 12 MB\n"])
def test_meminfo_garbage(text):
    with pytest.raises(ParseError, match="/proc/meminfo"):
        parse_meminfo(text)


# -- loadavg ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_loadavg_matches_file(name):
    fields = _lines(name, "proc/loadavg")[0].split()
    got = read_loadavg(Host(fixture_path(name)))
    assert (got.load1, got.load5, got.load15) == tuple(float(x) for x in fields[:3])
    assert f"{got.runnable}/{got.threads}" == fields[3]


@pytest.mark.parametrize("text", ["", "0.1 0.2", "a b c 1/2 3", "0.1 0.2 0.3 12 5"])
def test_loadavg_garbage(text):
    with pytest.raises(ParseError, match="/proc/loadavg"):
        parse_loadavg(text)


# -- stat ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_stat_matches_file_in_seconds(name):
    got = read_stat(Host(fixture_path(name)))
    lines = {l.split()[0]: l.split()[1:] for l in _lines(name, "proc/stat") if l.strip()}
    cpu = [int(x) for x in lines["cpu"]]
    assert got.total.user_s == pytest.approx(cpu[0] / HZ)
    assert got.total.idle_s == pytest.approx(cpu[3] / HZ)
    assert got.total.steal_s == pytest.approx(cpu[7] / HZ)
    assert got.ncpu == sum(1 for k in lines if k.startswith("cpu") and k != "cpu") and not got.per_cpu
    assert got.ctxt == int(lines["ctxt"][0])
    assert got.procs_running == int(lines["procs_running"][0])


def test_stat_old_kernel_short_cpu_lines():
    got = parse_stat("cpu 100 0 50 1000\ncpu0 100 0 50 1000\n", hz=100)
    assert got.total.user_s == 1.0 and got.total.iowait_s == 0.0 and got.ctxt is None


@pytest.mark.parametrize("text", ["", "intr 1 2 3\n", "cpu 1 2\n", "cpu a b c d\n", "cpu 1 2 3 4\nctxt\n"])
def test_stat_garbage(text):
    with pytest.raises(ParseError, match="/proc/stat"):
        parse_stat(text)


@given(st.text(max_size=300))
def test_parsers_only_raise_parse_error(text):
    for parse in (parse_vmstat, parse_meminfo, parse_loadavg, parse_stat):
        try:
            parse(text)
        except ParseError:
            pass


@pytest.mark.parametrize("parse, text, what", [
    (parse_meminfo, "MemTotal: -16000 kB\nMemAvailable: 1000 kB\n", "MemTotal = -16000"),
    (parse_loadavg, "-1.00 0.10 0.07 1/93 9815\n", "load1 = -1.0"),
    (parse_loadavg, "inf 0.10 0.07 1/93 9815\n", "load1 = inf"),
    (parse_loadavg, "nan 0.10 0.07 1/93 9815\n", "load1 = nan"),
    (parse_stat, "cpu -5 0 0 100\n", "user_s"),
    (parse_stat, "cpu 5 0 0 100\nprocs_running -2\n", "procs_running = -2"),
])
def test_impossible_values_are_refused_naming_the_field(parse, text, what):
    """Issue 24 #2: a negative size, load or CPU time, or a non-finite load, is not a reading."""
    with pytest.raises(ParseError) as err:
        parse(text, "/proc/x")
    assert str(err.value).startswith("/proc/x") and what in str(err.value)
