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


def test_status_names_each_controllers_group_and_how_it_was_found(tmp_path):
    import json

    from tests.fixtures.hosts.cgroup_trees import Proc, hybrid, v1_lines

    paths = {"cpu": "/serve/llm", "cpuacct": "/serve/llm", "memory": "/mem/llm"}
    root = hybrid(tmp_path / "host", {"cpu": {"/serve/llm": [300]}, "cpuacct": {"/serve/llm": [300]},
                                     "memory": {"/mem/llm": [300]}, "cpuset": {"/": [300]},
                                     "unified": {"/serve/llm": [300]}},
                  [Proc(300, "llama-server", ["llama-server"], v1_lines(paths, "/serve/llm"))])
    (root / "proc/stat").write_text("cpu  1 0 1 100 0 0 0 0 0 0\ncpu0 1 0 1 100 0 0 0 0 0 0\n")
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[[service]]\nname = "llm"\ncmdline = "llama-server"\n')
    out = CliRunner().invoke(app, ["status", "--root", str(root), "-c", str(cfg)], env={"COLUMNS": "200"}).stdout
    assert "  cgroup /serve/llm  (cpu, cpuacct, unified)\n         /mem/llm  (memory)\n" in out
    assert "  found: from processes (pid 300)\n" in out
    assert "  no cpuset cgroup: its process is in the root cgroup (cpuset)\n" in out
    data = json.loads(CliRunner().invoke(app, ["status", "--root", str(root), "-c", str(cfg), "--json"]).stdout)
    cg = data["metrics"]["services"]["llm"]["cgroups"]
    assert (cg["cpu"], cg["memory"], cg["cpuset"], cg["how"]) == ("/serve/llm", "/mem/llm", None,
                                                                 "from processes (pid 300)")
