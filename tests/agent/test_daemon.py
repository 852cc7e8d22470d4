"""agent/daemon.recommend: the same Agent with the dry-run actuator for N seconds."""

from __future__ import annotations

from autotune.agent.daemon import recommend
from autotune.diagnose.rules import load_rules
from tests.agent.conftest import RULES, Psi, make_cfg


def _bytes(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_recommend_proposes_without_writing_host_or_state(tmp_path, host_root, rules_dir):
    # a breach that must last 30 s: a 1 s observation caps it to half its length
    (rules_dir / "test.yaml").write_text(RULES.replace("for_s: 0", "for_s: 30"))
    Psi(host_root).tick(1, 60.0)
    cfg = make_cfg(tmp_path, rules_dir)
    before = _bytes(host_root)
    rec = recommend(cfg, root=host_root, duration=1.0, period=0.2, ruleset=load_rules(cfg.rule_dirs()))
    assert rec.samples >= 4 and rec.duration_s == 1.0
    assert [s.name for s in rec.symptoms] == ["cpu_pressure"]
    assert [(a.knob, a.target, a.current, a.proposed) for a in rec.actions] == [
        ("sysctl", "vm.swappiness", "60", "10")]
    assert _bytes(host_root) == before
    assert not (tmp_path / "state.db").exists()  # a throwaway in-memory state DB
