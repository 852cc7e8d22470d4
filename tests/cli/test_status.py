"""status: its flat readings (the human PSI table, load, memory) are the metric vocabulary's."""

from __future__ import annotations

from typer.testing import CliRunner

from autotune.cli.main import app
from autotune.cli.status import psi_rows
from autotune.detect.metrics import derive_metrics
from autotune.host import Host
from autotune.sensors.collect import collect
from tests.fixtures.hosts import writable_copy


def test_human_readings_equal_derive_metrics(tmp_path):
    root = writable_copy("v2-docs", tmp_path)
    snap = collect(Host(root), [])
    m = derive_metrics([snap])
    rows = psi_rows(snap)
    assert rows["cpu"] == [m.get(f"psi.cpu.{line}.{avg}") for line in ("some", "full")
                           for avg in ("avg10", "avg60", "avg300")]
    assert rows["irq"][:3] == [None] * 3 and rows["irq"][3] == m["psi.irq.full.avg10"]  # irq has only 'full'
    out = CliRunner().invoke(app, ["status", "--root", str(root)]).stdout
    assert f"load {m['load.1']:.2f} {m['load.5']:.2f} {m['load.15']:.2f}" in out
    assert f"memory available {m['mem.available_bytes'] / 2**30:.1f} / {m['mem.total_bytes'] / 2**30:.1f} GiB" in out
    assert f"{m['psi.cpu.some.avg10']:.2f}" in out


def _strict(text: str):
    """json.loads that refuses NaN/Infinity, as jq or Go would."""
    import json

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_status_json_is_strict_json_on_a_hostile_root(tmp_path):
    """Issue 24 #2: avg10=1e999 printed Infinity (invalid JSON); now the reading is missing
    with its reason and the document parses strictly."""
    root = writable_copy("v2-docs", tmp_path)
    (root / "proc/pressure/cpu").write_text("some avg10=1e999 avg60=0.00 avg300=0.00 total=5\n"
                                           "full avg10=nan avg60=0.00 avg300=0.00 total=5\n")
    (root / "proc/loadavg").write_text("-1.5 0.10 0.07 1/93 9815\n")
    r = CliRunner().invoke(app, ["status", "--root", str(root), "--json"])
    assert r.exit_code == 0, r.output
    doc = _strict(r.stdout)
    m = doc["metrics"]
    assert m["psi"]["cpu"] is None and m["loadavg"] is None
    assert any("avg10_pct = inf" in x for x in m["missing"])
    assert any("load1 = -1.5" in x for x in m["missing"])


def test_print_json_writes_non_finite_numbers_as_null(capsys):
    from autotune.cli.common import print_json

    print_json({"a": float("inf"), "b": [1.0, float("nan")], "c": {"d": -float("inf")}, "e": (2,)})
    assert _strict(capsys.readouterr().out) == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": [2]}
