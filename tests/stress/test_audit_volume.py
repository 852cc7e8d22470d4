"""Bench: build a state DB with 100,000 audit events, then time `autotune audit list/verify`.

Usage: python bench/audit_100k.py [--events 100000] [--db /tmp/audit_100k.db]
Prints one line per measurement (wall seconds, including CLI start-up).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from autotune.audit.trail import AuditEvent, AuditTrail
from autotune.store.db import open_db

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


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {r.stderr}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--db", default="/tmp/audit_100k.db")
    args = ap.parse_args()
    for suffix in ("", "-wal", "-shm"):
        Path(args.db + suffix).unlink(missing_ok=True)
    trail = AuditTrail(open_db(args.db))
    t = time.perf_counter()
    buf: list[AuditEvent] = []
    for ev in events(args.events, time.time() - args.events * 30.0, random.Random(42)):
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
    size_mb = sum(os.path.getsize(args.db + s) for s in ("", "-wal") if os.path.exists(args.db + s)) / 1e6
    print(f"generated {args.events} events in {gen_s:.1f} s (batched), db {size_mb:.1f} MB")
    print(f"single append (own transaction, synchronous=FULL): {single_ms:.2f} ms")
    base = [sys.executable, "-m", "autotune.cli.main", "audit", "--state", args.db]
    print(f"audit verify: {timed(base + ['verify']):.2f} s")
    print(f"audit list (table, last 200): {timed(base + ['list']):.2f} s")
    print(f"audit list --knob thp --since 7d (table, last 200): {timed(base + ['list', '--knob', 'thp', '--since', '7d']):.2f} s")
    print(f"audit list --json --limit 0 (all): {timed(base + ['list', '--json', '--limit', '0']):.2f} s")
    print(f"audit list --csv --limit 0 (all): {timed(base + ['list', '--csv', '--limit', '0']):.2f} s")
    print(f"autotune --help: {timed([sys.executable, '-m', 'autotune.cli.main', '--help']):.2f} s")


if __name__ == "__main__":
    main()
