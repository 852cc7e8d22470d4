"""`autotune history / rollback / enable` on a journal in a tmp DB and a writable fixture host.

Changes are made with the real knobs (and, for the helper path, an in-process helper server
with the real knob registry on the same fixture tree), so rollbacks are checked against the
exact bytes the cgroup/sysctl files held before.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autotune.audit.trail import AuditTrail
from autotune.cli.main import app
from autotune.helper.client import HelperClient
from autotune.helper.handler import Helper, Origins
from autotune.helper.policy import load_policy
from autotune.helper.server import HelperServer, bind_socket
from autotune.host import Host
from autotune.journal.journal import Journal
from autotune.knobs import get_knob
from autotune.store.db import open_db
from tests.fixtures.hosts import writable_copy

runner = CliRunner()
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="--local and the helper policy need root")

CG = "/autotune-fixture/llm"
QUOTA = "sys/fs/cgroup/cpu/autotune-fixture/llm/cpu.cfs_quota_us"
PERIOD = "sys/fs/cgroup/cpu/autotune-fixture/llm/cpu.cfs_period_us"
SWAP = "proc/sys/vm/swappiness"

POLICY = """
[peers]
uids = [0]
[limits]
rate_per_s = 1000.0
burst = 1000
[knob."cgroup.cpu_quota"]
subtrees = ["/autotune-fixture"]
min = 0.1
max = 2.0
values = ["max"]
[knob.sysctl]
keys = { "vm.swappiness" = { min = 0, max = 100 } }
"""


@pytest.fixture
def env(tmp_path):
    root = writable_copy("hybrid-local", tmp_path)
    db_path = tmp_path / "state.db"
    db = open_db(db_path)
    return root, db_path, Journal(db), Host(root, writable=True)


def change(journal: Journal, host: Host, knob: str, target: str, value: str, *, rule: str = "r1",
           verdict: dict | None = None):
    """What the agent does: write-ahead plan, knob change, applied (+ kept with a verdict)."""
    wa = journal.write_ahead(rule=rule, rationale="test")
    res = get_knob(knob).change(host, target, value, before_write=wa)
    assert res.changed and wa.entry is not None
    e = journal.mark_applied(wa.entry.id, res.after)
    if verdict is not None:
        journal.mark_verifying(e.id)
        e = journal.mark_kept(e.id, result=verdict)
    return e


def cli(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "220"})


def test_history_table_json_and_filters(env):
    root, db_path, journal, host = env
    change(journal, host, "cgroup.cpu_quota", CG, "0.5", rule="cap-neighbour",
           verdict={"verdict": "improved", "effect": -0.231})
    e2 = change(journal, host, "sysctl", "vm.swappiness", "10", rule="swap-less")
    r = cli("history", "--state", str(db_path))
    assert r.exit_code == 0, r.output
    for text in ("cap-neighbour", "swap-less", "0.2 -> 0.5", "60 -> 10", "improved -23.1%", "kept",
                 "applied"):
        assert text in r.output
    r = cli("history", "--state", str(db_path), "--json", "--outcome", "applied")
    data = json.loads(r.stdout)
    assert [e["id"] for e in data["entries"]] == [e2.id]
    assert data["entries"][0]["prior"]["raw"] == {"/proc/sys/vm/swappiness": "60\n"}
    r = cli("history", "--state", str(db_path), "--json", "--limit", "1")
    assert [e["id"] for e in json.loads(r.stdout)["entries"]] == [e2.id]  # newest first


def test_history_without_db_is_a_clear_error(tmp_path):
    r = cli("history", "--state", str(tmp_path / "nope.db"))
    assert r.exit_code == 2
    assert "no state database" in r.output


@needs_root
def test_rollback_all_local_restores_exact_prior_bytes_of_stacked_changes(env):
    root, db_path, journal, host = env
    q0, p0, s0 = ((root / f).read_bytes() for f in (QUOTA, PERIOD, SWAP))
    change(journal, host, "cgroup.cpu_quota", CG, "0.5")
    change(journal, host, "cgroup.cpu_quota", CG, "1.5", verdict={"verdict": "inconclusive"})
    change(journal, host, "sysctl", "vm.swappiness", "10")
    assert (root / QUOTA).read_text().strip() == "150000"
    r = cli("rollback", "--all", "--local", "--root", str(root), "--state", str(db_path), "--json")
    assert r.exit_code == 0, r.output
    outcomes = json.loads(r.stdout)
    assert [o["result"] for o in outcomes] == ["restored"] * 3
    assert all(o["exact"] for o in outcomes)
    assert ((root / QUOTA).read_bytes(), (root / PERIOD).read_bytes(), (root / SWAP).read_bytes()) == (q0, p0, s0)
    assert {e.state for e in journal.entries()} == {"rolled_back"}
    trail = AuditTrail(journal.db)
    rb = trail.query(kind="rollback")
    assert [(e.action_id, e.outcome) for e in rb] == [(3, "rolled_back"), (2, "rolled_back"), (1, "rolled_back")]
    assert rb[0].detail["via"] == "local" and rb[0].before == "10" and rb[0].after == "60"
    assert trail.verify().ok
    # idempotent: nothing left to do
    r = cli("rollback", "--all", "--local", "--root", str(root), "--state", str(db_path))
    assert r.exit_code == 0 and "nothing to roll back" in r.output


@needs_root
def test_drift_is_skipped_without_force_and_restored_with_it(env):
    root, db_path, journal, host = env
    q0 = (root / QUOTA).read_bytes()
    e = change(journal, host, "cgroup.cpu_quota", CG, "0.5", verdict={"verdict": "improved", "effect": -0.1})
    (root / QUOTA).write_text("70000\n")  # someone else: 0.7 cores
    base = ("--local", "--root", str(root), "--state", str(db_path))
    r = cli("rollback", "--all", *base)
    assert r.exit_code == 1
    assert "skipped_drift" in r.output and "'0.7'" in r.output and "not clobbering" in r.output
    assert (root / QUOTA).read_text() == "70000\n"  # untouched
    assert journal.get(e.id).state == "drifted"
    assert journal.is_unmanaged("cgroup.cpu_quota", CG)
    assert [ev.outcome for ev in AuditTrail(journal.db).query(kind="drift")] == ["skipped"]
    r = cli("history", "--state", str(db_path))
    assert "unmanaged" in r.output and f"autotune enable cgroup.cpu_quota {CG}" in r.output

    r = cli("rollback", str(e.id), "--force", *base)
    assert r.exit_code == 0, r.output
    assert "forced over drift" in r.output
    assert (root / QUOTA).read_bytes() == q0
    assert journal.get(e.id).state == "rolled_back"
    assert journal.is_unmanaged("cgroup.cpu_quota", CG)  # forcing a restore is not re-enabling

    r = cli("enable", "cgroup.cpu_quota", CG, "--state", str(db_path))
    assert r.exit_code == 0 and "managed again" in r.output
    assert not journal.is_unmanaged("cgroup.cpu_quota", CG)
    assert AuditTrail(journal.db).query(kind="enable")[0].outcome == "enabled"
    r = cli("enable", "cgroup.cpu_quota", CG, "--state", str(db_path))
    assert r.exit_code == 1 and "is not unmanaged" in r.output


@needs_root
def test_single_rollback_refused_while_a_newer_change_is_in_place(env):
    root, db_path, journal, host = env
    old = change(journal, host, "cgroup.cpu_quota", CG, "0.5")
    change(journal, host, "cgroup.cpu_quota", CG, "1.0")
    r = cli("rollback", str(old.id), "--local", "--root", str(root), "--state", str(db_path))
    assert r.exit_code == 1
    assert "newer entry 2" in r.output and "--all --knob cgroup.cpu_quota" in r.output
    assert (root / QUOTA).read_text().strip() == "100000"
    assert journal.get(old.id).state == "applied"


def test_usage_errors(env):
    root, db_path, journal, host = env
    assert cli("rollback", "--state", str(db_path)).exit_code == 2
    r = cli("rollback", "7", "--state", str(db_path), "--local", "--root", str(root))
    assert r.exit_code == 2 and "does not exist" in r.output


def test_unreachable_helper_exits_2_with_a_clear_message(env, tmp_path):
    root, db_path, journal, host = env
    change(journal, host, "sysctl", "vm.swappiness", "10")
    r = cli("rollback", "--all", "--state", str(db_path), "--helper-socket", str(tmp_path / "none.sock"))
    assert r.exit_code == 2
    assert "helper unreachable" in r.output and "--helper-socket" in r.output
    assert journal.get(1).state == "applied"


# -- through the helper ----------------------------------------------------------------------
class _Server:
    def __init__(self, policy: Path, root: Path, sock: str, origins: Origins) -> None:
        helper = Helper(load_policy(policy), Host(root, writable=True), origins=origins)
        self.server = HelperServer(helper, bind_socket(sock, 0o600))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.sock = sock

    def stop(self) -> None:
        self.server.close()
        self.thread.join(5)


@pytest.fixture
def helper_env(env, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    os.chmod(policy, 0o644)
    servers: list[_Server] = []

    def start(origins: Origins | None = None) -> _Server:
        s = _Server(policy, env[0], str(tmp_path / f"h{len(servers)}.sock"), origins or Origins())
        servers.append(s)
        return s

    yield env, start
    for s in servers:
        s.stop()


def agent_change_via_helper(journal: Journal, sock: str, knob: str, target: str, value: str):
    """The agent's path: read prior through the helper, plan, apply, mark applied."""
    with HelperClient(sock) as c:
        prior = c.read(knob, target)
        e = journal.plan(knob=knob, target=target, prior=prior, proposed=value, rule="r")
        res = c.apply(knob, target, value, expect_before=prior.value)
        return journal.mark_applied(e.id, res.after)


@needs_root
def test_rollback_through_helper_writes_the_exact_prior_raw(helper_env):
    (root, db_path, journal, host), start = helper_env
    srv = start()
    q0, p0, s0 = ((root / f).read_bytes() for f in (QUOTA, PERIOD, SWAP))
    e1 = agent_change_via_helper(journal, srv.sock, "cgroup.cpu_quota", CG, "0.5")
    agent_change_via_helper(journal, srv.sock, "sysctl", "vm.swappiness", "10")
    assert e1.prior.raw == {f"/{PERIOD}": p0.decode(), f"/{QUOTA}": q0.decode()}
    r = cli("rollback", str(e1.id), "--helper-socket", srv.sock, "--state", str(db_path), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["exact"] is True
    assert (root / QUOTA).read_bytes() == q0 and (root / PERIOD).read_bytes() == p0
    r = cli("rollback", "--all", "--helper-socket", srv.sock, "--state", str(db_path))
    assert r.exit_code == 0, r.output
    assert (root / SWAP).read_bytes() == s0
    rb = AuditTrail(journal.db).query(kind="rollback")
    assert [(e.action_id, e.detail["via"], e.detail["exact_raw"]) for e in rb] == [(1, "helper", True),
                                                                                  (2, "helper", True)]


@needs_root
def test_helper_restart_with_state_file_still_restores_raw(helper_env, tmp_path):
    """A restarted helper remembers the priors it saw via --state; without it, the value is
    re-applied range-checked (same bytes here, since the knob writes the same encoding)."""
    (root, db_path, journal, host), start = helper_env
    q0 = (root / QUOTA).read_bytes()
    first = start(Origins(tmp_path / "origins.json"))
    e = agent_change_via_helper(journal, first.sock, "cgroup.cpu_quota", CG, "1.5")
    first.stop()
    second = start(Origins(tmp_path / "origins.json"))
    r = cli("rollback", str(e.id), "--helper-socket", second.sock, "--state", str(db_path))
    assert r.exit_code == 0, r.output
    assert (root / QUOTA).read_bytes() == q0


@needs_root
def test_helper_refusal_is_reported_and_entry_kept(helper_env):
    """A prior the policy does not allow (and the helper never saw) is refused, not written."""
    (root, db_path, journal, host), start = helper_env
    srv = start()
    (root / QUOTA).write_text("5000\n")  # 0.05 cores: below the policy's min 0.1
    e = change(journal, host, "cgroup.cpu_quota", CG, "0.5")  # made locally: helper never saw the prior
    r = cli("rollback", str(e.id), "--helper-socket", srv.sock, "--state", str(db_path))
    assert r.exit_code == 1
    assert "failed" in r.output and "outside allowed range" in r.output
    assert (root / QUOTA).read_text().strip() == "50000"
    assert journal.get(e.id).state == "applied"
    assert AuditTrail(journal.db).query(kind="error")[0].detail["operation"] == "rollback"


@needs_root
def test_failed_entry_is_never_replayed_by_rollback_all(helper_env):
    """Issue 10 defect 2: A 1.8 -> 0.2 applied; B 0.2 -> 1.8 failed because the helper went away
    mid-apply (the agent's own path). `rollback --all` gives 1.8, and so does a second one."""
    from autotune.fix.actuator import HelperActuator
    from autotune.agent.loop import Agent
    from autotune.config import Config
    from autotune.types import Action

    (root, db_path, journal, host), start = helper_env
    (root / QUOTA).write_text("180000\n")  # 1.8 cores before the agent's first change
    srv = start()
    a = agent_change_via_helper(journal, srv.sock, "cgroup.cpu_quota", CG, "0.2")
    cfg = Config.model_validate({"agent": {"mode": "apply", "state_path": str(db_path),
                                           "metrics_listen": None}})
    act = HelperActuator(HelperClient(srv.sock), host=host, cfg=cfg)
    real_apply = act.apply

    def apply_after_the_helper_died(*args, **kw):
        srv.stop()
        act.client.close()  # its open connection would still be served; reconnecting fails
        return real_apply(*args, **kw)

    act.apply = apply_after_the_helper_died
    agent = Agent(cfg, host=host, db=journal.db, actuator=act, ruleset=None)
    b = agent.apply(Action(knob="cgroup.cpu_quota", target=CG, proposed="1.8", rule="r",
                           rationale="test"))
    act.client.close()
    # the helper never took the request (connect refused: NotSent), so B certainly never landed
    assert b.state == "failed" and b.landed is False and "not applied" in b.error
    assert (root / QUOTA).read_text().strip() == "20000"
    srv = start()
    base = ("--helper-socket", srv.sock, "--state", str(db_path))
    r = cli("rollback", "--all", *base, "--json")
    assert r.exit_code == 0, r.output
    assert {o["entry_id"]: o["result"] for o in json.loads(r.stdout)} == {a.id: "restored"}
    # (a restarted helper without --state re-applies the value: same number, maybe no newline)
    assert (root / QUOTA).read_text().strip() == "180000"
    for _ in range(2):
        r = cli("rollback", "--all", *base)
        assert r.exit_code == 0 and "nothing to roll back" in r.output, r.output
        assert (root / QUOTA).read_text().strip() == "180000"  # not B's stale prior 0.2
    assert AuditTrail(journal.db).query(kind="drift") == []
