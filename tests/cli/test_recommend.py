"""recommend: dry run on fixture trees; output keeps literal brackets; bad config exits non-zero."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from autotune.cli.main import app
from autotune.cli.recommend import print_recommendation
from autotune.types import Action, Recommendation
from tests.fixtures.hosts import writable_copy


def _tree_bytes(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_recommend_writes_nothing_and_reports_json(tmp_path):
    root = writable_copy("v2-docs", tmp_path)
    before = _tree_bytes(root)
    res = CliRunner().invoke(app, ["recommend", "--root", str(root), "--duration", "0.3", "--period", "0.1", "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["samples"] >= 2 and "actions" in rec and "symptoms" in rec
    assert _tree_bytes(root) == before


def test_recommend_bad_config_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\nsample_period_s = 'fast'\n")
    out = subprocess.run([sys.executable, "-m", "autotune", "recommend", "--config", str(bad), "--duration", "0.1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "bad.toml" in out.stderr and "agent.sample_period_s" in out.stderr


def test_table_keeps_square_brackets(capsys):
    rec = Recommendation(ts=0, duration_s=1, samples=2, symptoms=[], actions=[
        Action(knob="advice", target="host", proposed="declare [[service]] entries", rule="r",
               rationale="see [agent] section", advisory=True)])
    print_recommendation(rec)
    out = capsys.readouterr().out
    assert "[[service]]" in out and "[agent]" in out


def test_status_json_shape(tmp_path):
    res = CliRunner().invoke(app, ["status", "--root", str(writable_copy("prometheus-procfs", tmp_path)), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    psi = data["metrics"]["psi"]
    assert psi["cpu"]["full"] is None  # old-kernel fixture: cpu has only "some"
    assert set(psi["cpu"]["some"]) == {"avg10", "avg60", "avg300", "total"}
    assert psi["memory"]["full"]["total"] >= 0
    assert data["metrics"]["meminfo"]["MemTotal"] % 1024 == 0
    assert data["host"]["cgroup"]["layout"] in ("v2", "hybrid", "v1", "none")


def test_status_reports_targets_left_unmanaged_after_drift(tmp_path):
    from autotune.journal.journal import Journal
    from autotune.store.db import open_db

    db_path = tmp_path / "state.db"
    Journal(open_db(db_path)).disable_target("sysctl", "vm.swappiness", reason="drift: operator set 30")
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[agent]\nstate_path = "{db_path}"\n')
    root = writable_copy("v2-docs", tmp_path)
    res = CliRunner().invoke(app, ["status", "--root", str(root), "--config", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    agent = json.loads(res.stdout)["agent"]
    assert "error" not in agent, agent
    [u] = agent["unmanaged"]
    assert u["knob"] == "sysctl" and u["target"] == "vm.swappiness" and "drift" in u["reason"]
    human = CliRunner().invoke(app, ["status", "--root", str(root), "--config", str(cfg)])
    assert "unmanaged after drift" in human.stdout
