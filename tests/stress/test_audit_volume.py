"""The audit trail at volume: a state DB of N events (the agent's realistic mix), then the
operator's commands on it as real subprocesses: ``audit verify`` says OK over every event,
``audit list`` (table, filtered, JSON and CSV exports of all) returns what was stored, and a
tampered row is found. The 100,000-event run is a stress test (``-m stress`` or
AUTOTUNE_STRESS=1); a 2,000-event one runs in the default suite. Wall times (CLI start-up
included) are printed, never asserted (``-s`` shows them; docs/audit.md quotes them):

    python3 -m pytest -s -m stress tests/stress/test_audit_volume.py
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotune.audit.trail import AuditEvent, AuditTrail
from autotune.store.db import open_db

REPO = Path(__file__).resolve().parents[2]
KNOBS = ["cgroup.cpu_quota", "cgroup.cpu_weight", "cgroup.cpuset", "thp", "sysctl", "irq_affinity"]


def events(n: int, t0: float, rnd: random.Random):
    """Realistic mix: recommendation -> apply -> verify (-> rollback), plus drift/refusals."""
    i, action = 0, 0
    while i < n:
        action += 1
        knob = rnd.choice(KNOBS)
        ts = t0 + i * 30.0
        c = dict(action_id=action, knob=knob, target=f"/autotune/svc{action % 7}", service="llm",
                 rule=f"rule_{knob.replace('.', '_')}", before=str(rnd.randint(1, 100)),
                 after=str(rnd.randint(1, 100)))
        rolled = rnd.random() < 0.2
        batch = [
            AuditEvent(ts=ts, kind="recommendation", rationale="cpu pressure above 20 % for 30 s",
                       detail={"symptoms": [{"name": "cpu_pressure", "value": rnd.uniform(20, 80)}]}, **c),
            AuditEvent(ts=ts + 1, kind="apply", outcome="applied", objective_before=rnd.uniform(0.1, 0.5), **c),
            AuditEvent(ts=ts + 35, kind="verify", outcome="rolled_back" if rolled else "kept",
                       objective_before=0.3, objective_after=rnd.uniform(0.1, 0.5),
                       test={"name": "mann_whitney_u", "p_value": rnd.random(), "n_before": 30, "n_after": 30},
                       detail={"duration_s": 34.0}, **c),
        ]
        if rolled:
            batch.append(AuditEvent(ts=ts + 36, kind="rollback", outcome="rolled_back", **c))
        if rnd.random() < 0.05:
            batch.append(AuditEvent(ts=ts + 40, kind="refusal", knob="sysctl", target="vm.swappiness",
                                    outcome="refused", rationale="not allowed by policy"))
        for ev in batch[: n - i]:
            yield ev
            i += 1


def cli(db: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "autotune", "audit", "--state", str(db), *args],
                       capture_output=True, text=True, cwd=REPO, timeout=600,
                       env={**os.environ, "COLUMNS": "200"})
    return r, time.perf_counter() - t


@pytest.mark.parametrize("n", [pytest.param(2_000, id="2k"),
                               pytest.param(100_000, id="100k", marks=[pytest.mark.stress, pytest.mark.timeout(3600)])])
def test_audit_commands_on_a_large_trail(tmp_path, n):
    db_path = tmp_path / "audit.db"
    db = open_db(db_path)
    trail = AuditTrail(db)
    rnd = random.Random(42)
    t = time.perf_counter()
    buf: list[AuditEvent] = []
    for ev in events(n, time.time() - n * 30.0, rnd):
        buf.append(ev)
        if len(buf) == 5000:
            trail.append_many(buf)
            buf = []
    trail.append_many(buf)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(200):  # single appends: one fsync'd transaction each
        trail.append(AuditEvent(ts=time.time(), kind="drift", knob="thp", detail={"i": i}))
    single_ms = (time.perf_counter() - t) / 200 * 1000
    db.conn.close()
    total = n + 200
    thp = sum(1 for ev in events(n, 0, random.Random(42)) if ev.knob == "thp") + 200
    size_mb = sum(os.path.getsize(f"{db_path}{s}") for s in ("", "-wal")
                  if os.path.exists(f"{db_path}{s}")) / 1e6
    timings = {}

    r, timings["audit verify"] = cli(db_path, "verify", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True and json.loads(r.stdout)["checked"] == total
    r, timings["audit list (table, last 200)"] = cli(db_path, "list")
    assert r.returncode == 0 and "drift" in r.stdout, r.stderr
    r, timings["audit list --knob thp --since 7d"] = cli(db_path, "list", "--knob", "thp", "--since",
                                                         "7d", "--json", "--limit", "0")
    assert r.returncode == 0 and {e["knob"] for e in json.loads(r.stdout)} == {"thp"}
    r, timings["audit list --json --limit 0 (all)"] = cli(db_path, "list", "--json", "--limit", "0")
    rows = json.loads(r.stdout)
    assert len(rows) == total and sum(1 for e in rows if e["knob"] == "thp") == thp
    assert [e["id"] for e in rows] == list(range(1, total + 1))
    r, timings["audit list --csv --limit 0 (all)"] = cli(db_path, "list", "--csv", "--limit", "0")
    assert sum(1 for _ in csv.DictReader(io.StringIO(r.stdout))) == total

    # one edited row in the middle is found, by id
    bad = total // 2
    conn = sqlite3.connect(db_path)
    conn.execute("DROP TRIGGER audit_events_no_update")
    conn.execute("UPDATE audit_events SET after='tampered' WHERE id=?", [bad])
    conn.commit()
    conn.close()
    r, _ = cli(db_path, "verify", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["first_bad_id"] == bad

    print(f"\n{n} events generated in {gen_s:.1f} s (batched), db {size_mb:.1f} MB; single append "
          f"(own transaction, synchronous=FULL): {single_ms:.2f} ms")
    for what, secs in timings.items():
        print(f"{what}: {secs:.2f} s")
