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
