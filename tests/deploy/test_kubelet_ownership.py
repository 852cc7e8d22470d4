"""The Kubernetes example end to end on a fixture node: the agent with deploy/kubernetes's config
and rule pack, the helper with its policy, and a kubelet that rewrites what the agent wrote.

Shows what docs/deploy.md promises: the helper grants only the best-effort slice's CPU quota
(cpu weight and cpuset proposals are refused and audited, nothing else on the node is written),
the cap keeps the neighbour's floor, and when someone else (the kubelet) rewrites the value the
agent records drift, leaves the value alone and never writes that target again.

The agent gets the rule pack the ConfigMap ships, cut to the knobs the policy grants (with the
full pack, a rule whose knob the helper refuses fails the read before the change, and
Agent.apply lets that refusal escape: a traceback per tick and no refusal in the audit trail).
"""

from __future__ import annotations

import os
import shutil
import threading
import tomllib
from pathlib import Path

import pytest
import yaml

from autotune.fix.actuator import HelperActuator
from autotune.agent.loop import Agent
from autotune.config import Config
from autotune.diagnose.rules import load_rules
from autotune.errors import PolicyRefused
from autotune.helper.client import HelperClient
from autotune.helper.handler import Helper
from autotune.helper.policy import load_policy
from autotune.helper.server import HelperServer, bind_socket
from autotune.host import Host
from autotune.store.db import open_db
from tests.agent.conftest import Clock, Psi
from tests.fixtures.hosts import writable_copy

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
BESTEFFORT = "/kubepods.slice/kubepods-besteffort.slice"
GUARANTEED = "/kubepods.slice/kubepods-pod0c0ffee.slice"
CG = "sys/fs/cgroup"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the helper's policy must be root-owned (run as root)")


def _node(tmp_path: Path) -> Path:
    """hybrid-local with a kubelet's cgroups: best-effort slice (shares 2) and a Guaranteed pod."""
    root = writable_copy("hybrid-local", tmp_path)
    for ctrl in ("cpu", "cpuacct", "cpuset", "memory"):
        src = root / CG / ctrl / "autotune-fixture" / "llm"
        for cg in (BESTEFFORT, GUARANTEED):
            shutil.copytree(src, root / CG / ctrl / cg.lstrip("/"))
            (root / CG / ctrl / cg.lstrip("/") / "cgroup.procs").write_text("")
    for cg, shares, quota in ((BESTEFFORT, "2\n", "-1\n"), (GUARANTEED, "2048\n", "200000\n")):
        (root / CG / "cpuset" / cg.lstrip("/") / "cpuset.cpus").write_text("0-1\n")
        d = root / CG / "cpu" / cg.lstrip("/")
        (d / "cpu.shares").write_text(shares)
        (d / "cpu.cfs_quota_us").write_text(quota)
        (d / "cpu.cfs_period_us").write_text("100000\n")
    return root


def _quota(root: Path, cg: str) -> str:
    return (root / CG / "cpu" / cg.lstrip("/") / "cpu.cfs_quota_us").read_text()


def _configmap_rules(dest: Path) -> Path:
    """The autotune-rules ConfigMap's files, as the pod sees them at /etc/autotune/rules."""
    dest.mkdir()
    docs = yaml.safe_load_all((K8S / "configmap.yaml").read_text())
    [cm] = [d for d in docs if d and d["metadata"]["name"] == "autotune-rules"]
    for key, text in cm["data"].items():
        (dest / key).write_text(text)
    return dest


@pytest.fixture
def node(tmp_path):
    root = _node(tmp_path)
    # the test's peer is this process; its fake clock runs ~100x real time, so the rate is lifted
    policy_text = ((K8S / "policy.toml").read_text().replace("uids = [10001]", f"uids = [{os.geteuid()}]")
                   .replace("rate_per_s = 5.0", "rate_per_s = 100000.0").replace("burst = 20", "burst = 100000"))
    assert f"uids = [{os.geteuid()}]" in policy_text and "rate_per_s = 100000.0" in policy_text
    (tmp_path / "etc").mkdir(mode=0o755)
    policy_path = tmp_path / "etc" / "policy.toml"
    policy_path.write_text(policy_text)
    os.chmod(policy_path, 0o644)
    helper = Helper(load_policy(policy_path), Host(root, writable=True))
    decisions: list[dict] = []
    helper.on_decision = decisions.append
    sock = str(tmp_path / "helper.sock")
    server = HelperServer(helper, bind_socket(sock, 0o600))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    data = tomllib.loads((K8S / "autotune.toml").read_text())
    data["agent"].update(state_path=str(tmp_path / "state.db"), rule_dirs=[str(_configmap_rules(tmp_path / "rules"))],
                         helper_socket=sock, metrics_listen=None, window_s=10, evaluate_every_s=1)
    data["verification"] = {"window_s": 10, "settle_s": 1, "knob_cooldown_s": 0}
    cfg = Config.model_validate(data)
    yield root, cfg, decisions
    server.close()
    thread.join(5)


@pytest.mark.parametrize(("rewrite", "state"), [("200000\n", "drifted"), ("-1\n", "rolled_back")],
                         ids=["other-value", "back-to-prior"])
def test_kubelet_rewrite_is_left_alone(node, rewrite, state):
    """Another value: drift, the target is unmanaged for good. The prior value: the change counts
    as reverted by someone else (rolled back, not retried within the rule's cooldown)."""
    root, cfg, decisions = node
    clock = Clock()
    host = Host(root, writable=False)
    client = HelperClient(cfg.agent.helper_socket)
    agent = Agent(cfg, host=host, db=open_db(cfg.state_path()), ruleset=load_rules(cfg.rule_dirs()),
                  actuator=HelperActuator(client, host=host, cfg=cfg), clock=clock)
    agent.start()
    psi = Psi(root)
    usage = root / CG / "cpuacct" / BESTEFFORT.lstrip("/") / "cpuacct.usage"
    used_ns = 0
    rewritten_at = None
    for tick in range(150):
        clock.t += 1
        psi.tick(1, 60.0)  # the service keeps waiting for CPU ...
        used_ns += 1_500_000_000  # ... while best-effort pods burn 1.5 cores
        usage.write_text(f"{used_ns}\n")
        quota_entries = [e for e in agent.journal.entries() if e.knob == "cgroup.cpu_quota"]
        if rewritten_at is None and quota_entries and quota_entries[0].state == "verifying":
            (root / CG / "cpu" / BESTEFFORT.lstrip("/") / "cpu.cfs_quota_us").write_text(rewrite)  # "the kubelet"
            rewritten_at = tick
        for stage in (agent.sample, agent.evaluate, agent.verify):
            agent.guarded(stage.__name__, stage)
    client.close()

    assert rewritten_at is not None, "the agent never capped the best-effort slice"
    quota_entries = [e for e in agent.journal.entries() if e.knob == "cgroup.cpu_quota"]
    [entry] = quota_entries  # one write, none after, although the pressure went on
    assert entry.target == BESTEFFORT and entry.state == state
    assert float(entry.proposed) >= 1.0  # the best-effort service's min_cpu_cores
    assert _quota(root, BESTEFFORT) == rewrite  # the other writer's value stays
    kinds = [e.kind for e in agent.trail.query()]
    if state == "drifted":
        assert agent.journal.is_unmanaged("cgroup.cpu_quota", BESTEFFORT) and "drift" in kinds
    else:
        [v] = [e for e in agent.trail.query() if e.kind == "verify"]
        assert v.outcome == "rolled_back" and "someone else" in v.detail["reason"]

    # Only the best-effort slice's quota was ever written; nothing else on the node.
    written = [d for d in decisions if d.get("op") == "apply" and d.get("ok") and d.get("changed")]
    assert {(d["knob"], d["target"]) for d in written} == {("cgroup.cpu_quota", BESTEFFORT)}
    assert (root / CG / "cpu" / BESTEFFORT.lstrip("/") / "cpu.shares").read_text() == "2\n"
    assert _quota(root, GUARANTEED) == "200000\n"
    assert (root / CG / "cpu" / GUARANTEED.lstrip("/") / "cpu.shares").read_text() == "2048\n"
    assert agent.trail.verify().ok


def test_the_helper_refuses_what_the_kubelet_owns(node):
    """cpu weight (kubelet: QoS slices every minute), cpuset (CPU manager), a Guaranteed pod."""
    root, cfg, decisions = node
    with HelperClient(cfg.agent.helper_socket) as client:
        for knob, target, value in (("cgroup.cpu_weight", BESTEFFORT, "100"), ("cgroup.cpuset", BESTEFFORT, "0"),
                                    ("cgroup.cpu_quota", GUARANTEED, "0.5"), ("cgroup.memory_high", BESTEFFORT, "max")):
            with pytest.raises(PolicyRefused) as err:
                client.apply(knob, target, value)
            assert err.value.code in ("unknown_knob", "target_refused"), (knob, target, err.value)
        assert client.apply("cgroup.cpu_quota", BESTEFFORT, "1").changed
        assert _quota(root, BESTEFFORT).strip() == "100000"
    assert _quota(root, GUARANTEED) == "200000\n"
