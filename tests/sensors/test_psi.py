"""PSI parsing on all fixture trees, old-kernel shapes and garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autotune.errors import ParseError
from autotune.host import Host
from autotune.sensors.psi import parse_psi, read_cgroup_psi, read_psi, some_avg10_pct
from tests.fixtures.hosts import NAMES, fixture_path


@pytest.mark.parametrize("name", NAMES)
def test_read_psi_matches_files(name):
    host = Host(fixture_path(name))
    readings = read_psi(host)
    assert set(readings) == {"cpu", "memory", "io", "irq"}
    for res, reading in readings.items():
        path = fixture_path(name) / "proc/pressure" / res
        if not path.exists():
            assert reading is None
            continue
        for line in path.read_text().splitlines():
            kind, *kv = line.split()
            vals = dict(x.split("=") for x in kv)
            got = getattr(reading, kind)
            assert got.avg10_pct == float(vals["avg10"])
            assert got.avg300_pct == float(vals["avg300"])
            assert got.total_usec == int(vals["total"])


def test_prometheus_cpu_has_only_some():
    r = read_psi(Host(fixture_path("prometheus-procfs")))
    assert r["cpu"].full is None
    assert r["cpu"].some.avg60_pct == 2.0 and r["cpu"].some.total_usec == 15
    assert r["irq"] is None  # file absent: feature missing, not an error


def test_irq_full_only_v2docs():
    r = read_psi(Host(fixture_path("v2-docs")))
    assert r["irq"].some is None and r["irq"].full.total_usec == 4321
    assert some_avg10_pct(r["irq"]) is None  # no 'some' line: unknown, not 0


def test_some_avg10_pct_of_a_lone_reading():
    r = read_psi(Host(fixture_path("prometheus-procfs")))
    assert some_avg10_pct(r["cpu"]) == r["cpu"].some.avg10_pct
    assert some_avg10_pct(r["irq"]) is None  # file absent


def test_cgroup_psi_v2docs():
    host = Host(fixture_path("v2-docs"))
    psi = read_cgroup_psi(host, "/sys/fs/cgroup/system.slice/noisy.service")
    assert set(psi) == {"cpu", "memory", "io"}
    assert psi["cpu"].some.avg10_pct == 30.0


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "empty"),
        ("\n\n", "empty"),
        ("some avg10=0.00 avg60=0.00 avg300=0.00\n", "missing total"),
        ("some avg10=x avg60=0.00 avg300=0.00 total=1\n", "non-numeric"),
        ("hello world\n", "expected 'some' or 'full'"),
        ("some avg10 avg60=1 avg300=1 total=1\n", "key=value"),
        ("\x00\xff garbage", "expected 'some'"),
    ],
)
def test_parse_psi_rejects_garbage_naming_file(text, match):
    with pytest.raises(ParseError, match=match) as info:
        parse_psi(text, "/proc/pressure/cpu")
    assert "/proc/pressure/cpu" in str(info.value)


def test_truncated_second_line_is_an_error():
    with pytest.raises(ParseError, match="line 2"):
        parse_psi("some avg10=1.00 avg60=1.00 avg300=1.00 total=5\nfull avg10=1.", "cpu.pressure")


@given(st.text(max_size=200))
def test_parse_psi_only_raises_parse_error(text):
    try:
        parse_psi(text, "fuzz")
    except ParseError:
        pass


@pytest.mark.parametrize("line, field", [
    ("some avg10=1e999 avg60=0.00 avg300=0.00 total=5", "avg10_pct = inf"),  # issue 24 #2
    ("some avg10=nan avg60=0.00 avg300=0.00 total=5", "avg10_pct = nan"),
    ("some avg10=0.00 avg60=-3.5 avg300=0.00 total=5", "avg60_pct = -3.5"),
    ("some avg10=0.00 avg60=0.00 avg300=250.0 total=5", "avg300_pct = 250.0"),
    ("some avg10=0.00 avg60=0.00 avg300=0.00 total=-7", "total_usec = -7"),
])
def test_non_finite_or_impossible_values_are_refused_naming_file_line_and_field(line, field):
    with pytest.raises(ParseError) as err:
        parse_psi(line + "\n", "/proc/pressure/cpu")
    msg = str(err.value)
    assert msg.startswith("/proc/pressure/cpu: line 1: ") and field in msg and "\n" not in msg
