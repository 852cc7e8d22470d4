"""The metric registry: one declaration per metric drives the rule validator, the derivation of
registry-declared sensors and docs/metric-names.md. Adding a host reading is two files: its
sensor module and its registry entry (the test below does it with a module of its own)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from autotune.detect import registry
from autotune.detect.metrics import derive_metrics, is_known_metric
from autotune.host import Host
from autotune.sensors.collect import collect
from autotune.sensors.file_nr import parse_file_nr
from tests.fixtures.hosts import writable_copy

DOC = Path(__file__).resolve().parents[2] / "docs" / "metric-names.md"


def test_the_names_doc_is_the_registry():
    """docs/metric-names.md is made from the registry: `python3 -m autotune.detect.registry > docs/metric-names.md`."""
    assert DOC.read_text() == registry.markdown()


def test_every_metric_the_agent_derives_is_declared(tmp_path):
    root = writable_copy("v2-docs", tmp_path)
    (root / "proc/sys/fs").mkdir(parents=True, exist_ok=True)
    (root / "proc/sys/fs/file-nr").write_text("1000\t0\t4000\n")
    a = collect(Host(root), [], now=1.0)
    (root / "proc/sys/fs/file-nr").write_text("1200\t0\t4000\n")
    b = collect(Host(root), [], now=3.0)
    m = derive_metrics([a, b])
    assert m["fs.file_handles"] == 1200 and m["fs.file_handles_pct"] == pytest.approx(30.0)
    assert all(is_known_metric(k) for k in m), [k for k in m if not is_known_metric(k)]


def test_a_kernel_without_the_file_has_no_reading_and_no_missing_entry(tmp_path):
    snap = collect(Host(writable_copy("v2-docs", tmp_path)), [], now=1.0)
    assert snap.readings == {} and not any(m.startswith("file_nr") for m in snap.missing)
    assert "fs.file_handles" not in derive_metrics([snap])


@pytest.mark.parametrize("text", ["", "x y z", "12 0", "-1 0 10", "5 0 0"])
def test_an_odd_file_nr_is_a_one_line_error(text):
    from autotune.errors import ParseError

    with pytest.raises(ParseError, match="file-nr: expected"):
        parse_file_nr(text)


def test_a_new_sensor_is_its_module_and_one_registry_entry(tmp_path, monkeypatch):
    """The walk a contributor does, in full: file 1 is the sensor module, file 2's change is
    one ``Metric`` in REGISTRY. Nothing else: collect runs it, derive_metrics derives its
    rate, the rule loader accepts a rule citing it, the docs table lists it."""
    # file 1: the sensor module (here written for the test, importable as `entropy_sensor`)
    (tmp_path / "entropy_sensor.py").write_text(textwrap.dedent('''
        def read(host):
            return {"avail": float(host.read_text("/proc/sys/kernel/random/entropy_avail"))}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    # file 2: its registry entry
    entry = registry.Metric("host", "random.entropy_avail.rate", r"random\.entropy_avail\.rate", "bits/s",
                            "d /proc/sys/kernel/random/entropy_avail / elapsed",
                            sensor="entropy_sensor:read", field="avail", kind="rate")
    monkeypatch.setattr(registry, "REGISTRY", [*registry.REGISTRY, entry])
    registry.known_pattern.cache_clear()
    try:
        root = writable_copy("v2-docs", tmp_path / "host")
        (root / "proc/sys/kernel/random").mkdir(parents=True, exist_ok=True)
        (root / "proc/sys/kernel/random/entropy_avail").write_text("256\n")
        a = collect(Host(root), [], now=10.0)
        (root / "proc/sys/kernel/random/entropy_avail").write_text("356\n")
        b = collect(Host(root), [], now=12.0)
        assert derive_metrics([a, b])["random.entropy_avail.rate"] == pytest.approx(50.0)
        assert "random.entropy_avail.rate" not in derive_metrics([a])  # a rate needs two ends

        from autotune.diagnose.rules import load_rule_file

        rules = tmp_path / "r.yaml"
        rules.write_text(textwrap.dedent('''
            rules:
              - name: entropy-note
                description: the kernel's entropy pool refills slowly
                rationale: "entropy refills at {metric:random.entropy_avail.rate} bits/s"
                when:
                  all:
                    - metric: random.entropy_avail.rate
                      op: "<"
                      value: 1
                actions:
                  - knob: advice
                    target: host
                    value: entropy starved
        '''))
        load_rule_file(rules)  # accepted: the name is declared
        assert "`random.entropy_avail.rate` | bits/s" in registry.markdown()
    finally:
        monkeypatch.undo()
        registry.known_pattern.cache_clear()
        sys.modules.pop("entropy_sensor", None)
    assert not is_known_metric("random.entropy_avail.rate")  # gone with its entry
