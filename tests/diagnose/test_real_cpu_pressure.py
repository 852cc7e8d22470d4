"""Real kernel: 4 CPU burners on this host make the default pack report CPU pressure.

Only reads /proc (via the sensors) and starts/kills its own burner processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotune.config import Config
from autotune.detect.symptoms import DetectorState
from autotune.diagnose.rules import load_rules

pytestmark = [pytest.mark.realkernel, pytest.mark.slow]


@pytest.mark.skipif(not Path("/proc/pressure/cpu").exists(), reason="kernel without PSI (/proc/pressure/cpu)")
def test_burners_raise_cpu_pressure_symptom_and_advice():
    psi = pytest.importorskip("autotune.sensors.psi")
    stat = pytest.importorskip("autotune.sensors.stat")
    from autotune.agent.pipeline import evaluate, metric_history
    from autotune.host import Host
    from autotune.types import Snapshot

    host = Host("/")
    n = max(4, 2 * (os.cpu_count() or 1))  # twice the CPUs: half the runnable time is waiting
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        window = []
        for _ in range(16):
            window.append(Snapshot(ts=time.time(), psi=psi.read_psi(host), stat=stat.read_stat(host)))
            time.sleep(1.0)
    finally:
        for p in burners:
            p.kill()
        for p in burners:
            p.wait()
    cfg = Config()
    rules = load_rules(cfg.rule_dirs())
    symptoms, actions, _ = evaluate(rules, cfg, metric_history(window, 10), DetectorState(),
                                    lambda k, t: None, window[-1].ts, observed_s=16.0)
    last = window[-1].psi["cpu"].some.avg10_pct
    assert last > 20, f"cpu some avg10 only {last} % with {n} burners"
    assert "cpu_pressure" in {s.name for s in symptoms}
    assert any(a.rule == "host-cpu-contention-advice" for a in actions)
