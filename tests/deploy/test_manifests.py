"""deploy/: the Kubernetes manifests stay valid against the API schema and agree with each other,
with the agent config, the helper policy and the image.

Schema: kubernetes-validate (the `dev` extra) in strict mode, so an unknown or misspelt field
fails, at the oldest version the manifests support (1.33: recursiveReadOnly is GA there; its
schema has the field from 1.30, when it was alpha and off) and the newest one it ships. The prometheus-operator CRs have no schema there; their fields and cross-references
are checked by hand below.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from autotune.config import load_config
from autotune.diagnose.rules import load_rules
from autotune.helper.policy import load_policy

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
PROM = REPO / "deploy" / "prometheus"
MIN_VERSION = "1.33.0"  # docs/deploy.md states the same
AGENT_UID = 10001


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all() -> dict[tuple[str, str], dict]:
    out = {}
    for f in sorted(K8S.glob("*.yaml")) + sorted(PROM.glob("*.yaml")):
        for d in _docs(f):
            out[(d["kind"], d["metadata"]["name"])] = d
    return out


OBJ = _all()
DS = OBJ[("DaemonSet", "autotune")]
POD = DS["spec"]["template"]["spec"]
CONTAINERS = {c["name"]: c for c in POD["containers"]}
VOLUMES = {v["name"]: v for v in POD["volumes"]}
CONFIGMAPS = {name: d for (kind, name), d in OBJ.items() if kind == "ConfigMap"}


def _mounts(container: str) -> dict[str, dict]:
    return {m["mountPath"]: m for m in CONTAINERS[container]["volumeMounts"]}


# -- schema --------------------------------------------------------------------------------
BUILTIN = [key for key in OBJ if OBJ[key]["apiVersion"].split("/")[0] in ("v1", "apps")]


@pytest.mark.parametrize("key", BUILTIN, ids=[f"{k}/{n}" for k, n in BUILTIN])
def test_builtin_objects_match_the_api_schema(key):
    kv = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate (the dev extra)")
    for version in (MIN_VERSION, kv.latest_version()):
        try:
            kv.validate(OBJ[key], version, strict=True)
        except kv.ValidationError as err:
            pytest.fail(f"{key} against Kubernetes {version}: {err.message} at {list(err.path)}")


def test_the_validator_rejects_what_it_should():
    """Guard the guard: a misspelt field and a field newer than the version both fail."""
    kv = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate (the dev extra)")
    import copy

    bad = copy.deepcopy(DS)
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUsr"] = 1
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, MIN_VERSION, strict=True)
    with pytest.raises(kv.ValidationError):  # recursiveReadOnly is in the schema from 1.30
        kv.validate(DS, "1.29.0", strict=True)


def test_docs_state_the_minimum_version_validated_here():
    minor = ".".join(MIN_VERSION.split(".")[:2])
    assert f"Kubernetes **{minor} or newer**" in (REPO / "docs" / "deploy.md").read_text()


def test_it_runs_like_a_node_agent_on_every_linux_node():
    """node-exporter / node-problem-detector conventions: critical priority (not evicted first
    under the pressure it relieves), every taint tolerated, Linux nodes only."""
    assert POD["priorityClassName"] == "system-node-critical"
    assert POD["tolerations"] == [{"operator": "Exists"}]
    assert POD["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_every_object_is_in_the_autotune_namespace():
    for (kind, name), d in OBJ.items():
        if kind != "Namespace":
            assert d["metadata"].get("namespace") == "autotune", (kind, name)


# -- the pod -------------------------------------------------------------------------------
def test_mounts_name_defined_volumes_and_configmap_keys():
    for c in [*POD["containers"], *POD.get("initContainers", [])]:
        for m in c["volumeMounts"]:
            vol = VOLUMES.get(m["name"])
            assert vol is not None, (c["name"], m["name"])
            cm = vol.get("configMap")
            if cm:
                data = CONFIGMAPS[cm["name"]]["data"]
                for item in cm.get("items", []):
                    assert item["key"] in data, (cm["name"], item["key"])
                if "subPath" in m:
                    assert m["subPath"] in {i["path"] for i in cm.get("items", [])} or m["subPath"] in data


def test_agent_is_unprivileged_and_reads_the_host_read_only():
    sc = CONTAINERS["agent"]["securityContext"]
    assert sc["runAsUser"] == AGENT_UID and sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = _mounts("agent")
    for path in ("/host/proc", "/host/sys"):
        assert mounts[path]["readOnly"] is True
    env = {e["name"]: e["value"] for e in CONTAINERS["agent"]["env"]}
    assert env["AUTOTUNE_ROOT"] == "/host"
    assert POD["automountServiceAccountToken"] is False
    assert not POD.get("hostPID") and not POD.get("hostNetwork")


def test_helper_has_no_capability_and_writes_only_the_policy_subtree():
    sc = CONTAINERS["helper"]["securityContext"]
    assert sc["runAsUser"] == 0 and sc.get("privileged") is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["readOnlyRootFilesystem"] is True
    policy = load_policy(K8S / "policy.toml", require_root_owned=False)
    subtrees = {s for rule in policy.knob.values() for s in (rule.subtrees or [])}
    writable_host = []
    for path, m in _mounts("helper").items():
        host = VOLUMES[m["name"]].get("hostPath")
        if host and not m.get("readOnly"):
            writable_host.append((path, host["path"]))
    for path, host_path in writable_host:
        if host_path.startswith("/var/lib/"):
            continue  # its own state (origins.json), not a kernel interface
        assert path == "/host" + host_path, path
        cg = host_path.removeprefix("/sys/fs/cgroup")
        assert host_path.startswith("/sys/fs/cgroup/") and cg in subtrees, (host_path, subtrees)
    assert any(p.startswith("/host/sys/fs/cgroup/") for p, _ in writable_host)
    assert _mounts("helper")["/host/sys/fs/cgroup"]["readOnly"] is True


def test_agent_and_helper_meet_on_the_socket_with_the_peer_the_policy_admits():
    cfg = load_config(K8S / "autotune.toml")
    args = CONTAINERS["helper"]["args"]
    sock = args[args.index("--socket") + 1]
    assert sock == cfg.agent.helper_socket
    shared = {m["name"] for m in CONTAINERS["agent"]["volumeMounts"] if sock.startswith(m["mountPath"] + "/")}
    shared &= {m["name"] for m in CONTAINERS["helper"]["volumeMounts"] if sock.startswith(m["mountPath"] + "/")}
    assert shared and all("emptyDir" in VOLUMES[n] for n in shared)
    policy = load_policy(K8S / "policy.toml", require_root_owned=False)
    assert CONTAINERS["agent"]["securityContext"]["runAsUser"] in policy.peers.uids
    assert CONTAINERS["helper"]["securityContext"]["runAsGroup"] == CONTAINERS["agent"]["securityContext"]["runAsGroup"]
    assert args[args.index("--policy") + 1] in _mounts("helper")


def test_agent_paths_in_the_config_are_mounted():
    cfg = load_config(K8S / "autotune.toml")
    mounts = _mounts("agent")
    run_args = CONTAINERS["agent"]["args"]
    assert run_args[run_args.index("--config") + 1].startswith("/etc/autotune/config/")
    state_dir = str(cfg.state_path().parent)
    assert state_dir in mounts and "hostPath" in VOLUMES[mounts[state_dir]["name"]]
    assert [str(d) for d in cfg.rule_dirs()] == ["/etc/autotune/rules"]
    assert VOLUMES[mounts["/etc/autotune/rules"]["name"]]["configMap"]["name"] == "autotune-rules"
    init = {c["name"]: c for c in POD["initContainers"]}["state-dir"]
    assert state_dir in {m["mountPath"] for m in init["volumeMounts"]} and str(AGENT_UID) in " ".join(init["command"])


def test_liveness_runs_autotune_health_against_the_agents_config():
    probe = CONTAINERS["agent"]["livenessProbe"]["exec"]["command"]
    assert probe[:2] == ["autotune", "health"]
    assert probe[probe.index("--config") + 1] == CONTAINERS["agent"]["args"][-1]


def test_resources_are_set_on_every_container():
    for c in [*POD["containers"], *POD["initContainers"]]:
        assert {"requests", "limits"} <= set(c["resources"]), c["name"]


# -- config, policy, rules -----------------------------------------------------------------
def test_configmap_yaml_is_generated_from_the_sources():
    sys.path.insert(0, str(K8S))
    try:
        import configmap  # deploy/kubernetes/configmap.py
    finally:
        sys.path.remove(str(K8S))
    assert (K8S / "configmap.yaml").read_text() == configmap.render(), (
        "deploy/kubernetes/configmap.yaml is stale: python3 deploy/kubernetes/configmap.py > "
        "deploy/kubernetes/configmap.yaml")


def test_config_policy_and_rules_load(tmp_path):
    cfg = load_config(K8S / "autotune.toml")
    assert cfg.agent.mode == "apply"
    policy = load_policy(K8S / "policy.toml", require_root_owned=False)
    pack = tmp_path / "rules"  # what the pod mounts at /etc/autotune/rules
    pack.mkdir()
    for key, text in CONFIGMAPS["autotune-rules"]["data"].items():
        (pack / key).write_text(text)
    ruleset = load_rules([pack])
    granted = set(policy.knob) | {"advice", "admission"}
    for rule in ruleset.rules:
        assert {a.knob for a in rule.actions} <= granted, rule.name
    [cap] = [r for r in ruleset.rules if r.name == "cap-besteffort-cpu"]
    # kubelet ownership: the only knob the helper grants on a node is the quota of best-effort
    assert set(policy.knob) == {"cgroup.cpu_quota"}
    [besteffort] = [s for s in cfg.services if s.role == "neighbour"]
    assert besteffort.cgroup in policy.knob["cgroup.cpu_quota"].subtrees
    assert float(cap.actions[0].value) == besteffort.min_cpu_cores  # a lower cap is refused by the floor


def test_metrics_port_is_the_configured_listen_port():
    cfg = load_config(K8S / "autotune.toml")
    host, _, port = cfg.agent.metrics_listen.rpartition(":")
    assert host == "0.0.0.0"  # the pod IP, so the Service and Prometheus reach it
    [p] = CONTAINERS["agent"]["ports"]
    assert p["containerPort"] == int(port) and p["name"] == "metrics"


# -- Service and monitors ------------------------------------------------------------------
def test_service_and_monitors_select_the_agents():
    pod_labels = DS["spec"]["template"]["metadata"]["labels"]
    svc = OBJ[("Service", "autotune-metrics")]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    [port] = svc["spec"]["ports"]
    assert port["targetPort"] == "metrics"
    sm = OBJ[("ServiceMonitor", "autotune")]
    pm = OBJ[("PodMonitor", "autotune")]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert [e["port"] for e in sm["spec"]["endpoints"]] == [port["name"]]
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == ["metrics"]


# Fields of monitoring.coreos.com/v1 used here (prometheus-operator's API); anything else is a typo.
MONITOR_SPEC = {"selector", "namespaceSelector", "endpoints", "podMetricsEndpoints", "jobLabel"}
ENDPOINT = {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings", "scheme"}
RELABEL = {"sourceLabels", "targetLabel", "regex", "replacement", "action", "separator"}


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PodMonitor"])
def test_monitor_fields_are_prometheus_operator_fields(kind):
    d = OBJ[(kind, "autotune")]
    assert d["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(d["spec"]) <= MONITOR_SPEC
    for ep in d["spec"].get("endpoints", []) + d["spec"].get("podMetricsEndpoints", []):
        assert set(ep) <= ENDPOINT, set(ep) - ENDPOINT
        for r in ep.get("relabelings", []):
            assert set(r) <= RELABEL


def test_plain_prometheus_config_passes_promtool(tmp_path):
    """Debian's promtool is built without Kubernetes service discovery, so the kubernetes_sd
    block is swapped for a static target before the check; the rest is checked as written."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    for job in cfg["scrape_configs"]:
        sd = job.pop("kubernetes_sd_configs")
        assert [s["role"] for s in sd] == ["pod"] and set(sd[0]) <= {"role", "namespaces"}
        job["static_configs"] = [{"targets": ["127.0.0.1:9753"]}]
    out = tmp_path / "prometheus.yml"
    out.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([promtool, "check", "config", str(out)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# -- the image -----------------------------------------------------------------------------
def test_image_user_and_entrypoint_match_the_pod():
    text = (REPO / "deploy" / "container" / "Containerfile").read_text()
    assert f"USER {AGENT_UID}:{AGENT_UID}" in text
    assert 'ENTRYPOINT ["autotune"]' in text
    images = {c["image"] for c in [*POD["containers"], *POD["initContainers"]]}
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert images == {f"localhost/autotune:{version}"}
    for pin in (REPO / "deploy" / "container" / "constraints.txt").read_text().splitlines():
        if pin and not pin.startswith("#"):
            assert "==" in pin and pin.split("==")[0] not in ("torch", "transformers", "fastapi"), pin
