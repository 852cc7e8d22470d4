"""Real kernel, real helper subprocess, real CLI: a cpu quota change that acts, then an exact undo.

The test plays the agent for the write (HelperClient + the journal, as the loop does) and the
operator for the undo (``autotune rollback --all --helper-socket``). It checks the change really
acts (the burner gets throttled, its CPU use drops) and that rollback leaves the cgroup files
holding EXACTLY the bytes they held before.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from autotune.audit.trail import AuditTrail
from autotune.errors import PolicyRefused
from autotune.helper.client import HelperClient
from autotune.journal.journal import Journal
from autotune.knobs.affinity import thread_cpus, thread_ids
from autotune.host import Host
from autotune.store.db import open_db

pytestmark = [pytest.mark.realkernel, pytest.mark.root]

QUOTA_POLICY = """
[peers]
uids = [0]

[limits]
rate_per_s = 100.0
burst = 100

[knob."cgroup.cpu_quota"]
subtrees = ["{target}"]
min = 0.1
max = 2.0
values = ["max"]
"""


def agent_apply(journal: Journal, client: HelperClient, knob: str, target: str, value: str,
                rule: str = "e2e"):
    """What the agent loop does: read prior through the helper, journal it, apply, mark."""
    prior = client.read(knob, target)
    entry = journal.plan(knob=knob, target=target, prior=prior, proposed=value, rule=rule,
                         rationale="e2e test")
    res = client.apply(knob, target, value, expect_before=prior.value)
    assert res.changed
    return prior, journal.mark_applied(entry.id, res.after)


def test_quota_through_real_helper_acts_and_cli_rollback_restores_exact_bytes(
        e2e_cgroup, start_helper, run_cli, tmp_path):
    cg = e2e_cgroup
    raw0 = cg.quota_files()
    if cg.version == 1:
        assert raw0 == {"cpu.cfs_period_us": "100000\n", "cpu.cfs_quota_us": "-1\n"}
    cg.burner()
    helper = start_helper(QUOTA_POLICY.format(target=cg.target))
    db_path = tmp_path / "state.db"
    journal = Journal(open_db(db_path))

    free = cg.cores_used(1.0)
    with HelperClient(str(helper.sock)) as client:
        assert client.ping() >= 1
        prior, entry = agent_apply(journal, client, "cgroup.cpu_quota", cg.target, "0.5")
        # the helper reports the exact raw bytes it saw (keyed by host path)
        assert prior.value == "max"
        assert {os.path.basename(k): v for k, v in prior.raw.items()} == raw0
        assert client.read("cgroup.cpu_quota", cg.target).value == "0.5"
        # policy still bites on the real host: 3 cores is out of range, nothing written
        with pytest.raises(PolicyRefused) as info:
            client.apply("cgroup.cpu_quota", cg.target, "3")
        assert info.value.code == "out_of_range"
    assert cg.quota_files() != raw0
    thr0 = cg.nr_throttled()
    capped = cg.cores_used(1.0)
    thr1 = cg.nr_throttled()
    print(f"\nburner: {free:.3f} cores unthrottled, {capped:.3f} cores at quota 0.5; "
          f"nr_throttled +{thr1 - thr0} in 1 s")
    assert thr1 > thr0, "the quota did not throttle the burner"
    # the quota caps usage whatever else the (shared, 2-core) host is doing
    assert capped < 0.6, (free, capped)

    r = run_cli("rollback", "--all", "--helper-socket", str(helper.sock), "--state", str(db_path),
                "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    (outcome,) = json.loads(r.stdout)
    assert outcome["result"] == "restored" and outcome["exact"] is True
    assert cg.quota_files() == raw0  # EXACTLY the prior raw contents
    assert journal.get(entry.id).state == "rolled_back"
    (ev,) = AuditTrail(journal.db).query(kind="rollback")
    assert (ev.action_id, ev.before, ev.after, ev.detail["via"]) == (entry.id, "0.5", "max", "helper")
    thr2 = cg.nr_throttled()
    time.sleep(0.5)
    assert cg.nr_throttled() == thr2, "still throttled after rollback"
    # history shows the undone change
    r = run_cli("history", "--state", str(db_path))
    assert r.returncode == 0 and "rolled_back" in r.stdout and "max -> 0.5" in r.stdout


AFF_POLICY = """
[peers]
uids = [0]

[limits]
rate_per_s = 100.0
burst = 100

[knob.affinity]
services = ["e2eaff"]
cpus = "0-{last}"

[service.e2eaff]
cmdline = "{marker}"
"""

# Three sleeping worker threads; the first pins itself to the last cpu, so the masks differ
# per thread (like an inference server pinning its workers) and "prior" is 'mixed'.
THREADS = """
import os, sys, threading, time
last = max(os.sched_getaffinity(0))
def work(i):
    if i == 0:
        os.sched_setaffinity(threading.get_native_id(), {last})
    time.sleep(3600)
for i in range(3):
    threading.Thread(target=work, args=(i,), daemon=True).start()
print("ready", flush=True)
time.sleep(3600)
"""


def test_affinity_changed_and_restored_thread_by_thread_through_helper(
        start_helper, run_cli, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: runs the privileged helper")
    ncpu = len(os.sched_getaffinity(0))
    if ncpu < 2:
        pytest.skip("needs at least 2 cpus to tell masks apart")
    last = max(os.sched_getaffinity(0))
    marker = f"autotune-e2e-aff-{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-c", THREADS, marker], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        host = Host("/")

        def masks() -> dict[int, str | None]:
            return {t: thread_cpus(host, proc.pid, t) for t in thread_ids(host, proc.pid)}

        before = masks()
        assert len(before) == 4 and len(set(before.values())) == 2, before
        helper = start_helper(AFF_POLICY.format(last=last, marker=marker))
        db_path = tmp_path / "state.db"
        journal = Journal(open_db(db_path))
        with HelperClient(str(helper.sock)) as client:
            prior, entry = agent_apply(journal, client, "affinity", "e2eaff", "0")
            assert prior.value == "mixed"
            assert prior.raw == {f"tid:{t}": m for t, m in sorted(before.items())}
            with pytest.raises(PolicyRefused) as info:  # raw pids are never accepted
                client.apply("affinity", f"pids:{proc.pid}", "0")
            assert info.value.code == "target_refused"
        assert set(masks().values()) == {"0"}
        r = run_cli("rollback", str(entry.id), "--helper-socket", str(helper.sock),
                    "--state", str(db_path), "--json")
        assert r.returncode == 0, r.stderr + r.stdout
        assert json.loads(r.stdout)[0]["exact"] is True
        assert masks() == before  # every thread got its OWN mask back
    finally:
        proc.kill()
        proc.wait(10)


# -- the agent itself: `autotune run --mode apply` through the helper ----------------------------
AGENT_RULE = """
rules:
  - name: e2e-cap-unthrottled-burner
    scope: service
    role: latency-critical
    priority: 90
    cooldown_s: 3600
    description: e2e test - cap a service that burns CPU unthrottled
    rationale: >-
      The service uses {metric:svc.$service.cpu.usage_cores} cores with no quota; capping it at
      0.2 cores throttles it hard, which its own cgroup CPU pressure shows as a regression (large
      enough to stand out even when other work on this 2-core host already makes it wait).
    when:
      all:
        - metric: svc.$service.cpu.usage_cores
          op: ">"
          value: 0.7
    actions:
      - knob: cgroup.cpu_quota
        target: service
        value: "0.2"
"""

# PSI objective points are >= 2 s apart and verification needs 5 on each side: 12 s windows.
AGENT_CONFIG = """
[agent]
sample_period_s = 0.5
window_s = 4
evaluate_every_s = 1
mode = "apply"
state_path = "{state}"
rule_dirs = ["{rules}"]
helper_socket = "{sock}"

[verification]
window_s = 16
settle_s = 1
min_effect = 0.05
rule_cooldown_s = 3600
knob_cooldown_s = 3600

[[service]]
name = "burner"
cgroup = "{target}"
"""


def _unified_dir(target: str):
    """The v2 'unified' twin of our cgroup on a hybrid host: it carries the cgroup's PSI."""
    from pathlib import Path

    info = Host("/").cgroup
    if info.layout != "hybrid" or not info.v2_mount:
        return None
    base = Path(info.v2_mount)
    return base / target.lstrip("/") if (base / "cgroup.procs").exists() else None


@pytest.mark.slow
def test_agent_applies_verifies_regression_and_rolls_back_exactly(
        e2e_cgroup, start_helper, run_cli, tmp_path):
    """A rule caps the unthrottled burner; its own cgroup CPU pressure (the objective without a
    latency source) jumps, verification says 'regressed', the agent restores the exact bytes."""
    cg = e2e_cgroup
    unified = _unified_dir(cg.target)
    if cg.version == 1:
        if unified is None:
            pytest.skip("v1 cpu without a unified v2 tree: the burner's cgroup has no PSI objective")
        unified.mkdir()
        cg.dirs.append(unified)  # joined by add(), removed by the fixture
    raw0 = cg.quota_files()
    burner = cg.burner()
    helper = start_helper(QUOTA_POLICY.format(target=cg.target))
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "e2e.yaml").write_text(AGENT_RULE)
    state = tmp_path / "agent.db"
    cfg = tmp_path / "autotune.toml"
    cfg.write_text(AGENT_CONFIG.format(state=state, rules=rules, sock=helper.sock, target=cg.target))
    log = open(tmp_path / "agent.log", "wb")
    agent = subprocess.Popen([sys.executable, "-m", "autotune", "run", "--config", str(cfg),
                              "--metrics-listen", "off", "--duration", "90"],
                             stdout=log, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    entry = None
    seen_capped = False
    try:
        while time.monotonic() - t0 < 80 and agent.poll() is None:
            time.sleep(0.5)
            if not state.exists():
                continue
            entries = Journal(open_db(state)).entries()
            if entries:
                entry = entries[0]
                seen_capped |= cg.quota_files() != raw0
                if entry.state in ("kept", "rolled_back", "failed", "drifted"):
                    break
        elapsed = time.monotonic() - t0
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
        log.close()
    out = (tmp_path / "agent.log").read_text()[-3000:]
    assert burner.poll() is None
    assert entry is not None, f"the agent never acted:\n{out}"
    e = Journal(open_db(state)).get(entry.id)
    assert seen_capped, "the quota was never observed changed"
    assert e.state == "rolled_back", (e.state, e.error, e.verify_result, out)
    assert e.knob == "cgroup.cpu_quota" and e.target == cg.target and e.prior_value == "max"
    vr = e.verify_result
    assert vr.verdict == "regressed" and vr.objective == "svc.burner.psi.cpu.some.stall_pct"
    print(f"\nagent: applied after {e.applied_ts - e.planned_ts:.2f} s of planning, verdict "
          f"{vr.verdict} (cgroup cpu PSI some median {vr.before_median:.2f}% -> "
          f"{vr.after_median:.2f}%, p={vr.p_value:.3g}), rolled back {elapsed:.1f} s after start")
    assert cg.quota_files() == raw0  # EXACTLY the prior bytes, written by the helper
    trail = AuditTrail(open_db(state))
    kinds = [(ev.kind, ev.outcome) for ev in trail.query(action_id=e.id)]
    assert ("apply", "applied") in kinds and ("rollback", "rolled_back") in kinds, kinds
    assert trail.verify().ok
    # the operator's view agrees, and a second rollback has nothing left to do
    r = run_cli("rollback", "--all", "--helper-socket", str(helper.sock), "--state", str(state))
    assert r.returncode == 0 and "nothing to roll back" in r.stdout, r.stdout + r.stderr
