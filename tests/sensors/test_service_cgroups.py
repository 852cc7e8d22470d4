"""A service found by its process gets its cgroup per controller: v1 split controllers, pure v2,
Kubernetes pod paths, paths seen from another cgroup namespace through a host root, several
processes, shared groups refused with the reason, a declared cgroup authoritative."""

from __future__ import annotations

import pytest

from autotune.config import Service
from autotune.host import Host
from autotune.knobs import get_knob
from autotune.sensors import service_cgroups
from autotune.sensors.cgroup import read_cgroup
from autotune.sensors.collect import read_service
from autotune.sensors.service import resolve_service
from tests.fixtures.hosts import fixture_path
from tests.fixtures.hosts.cgroup_trees import (CTR_API, CTR_PAUSE, CTR_WORKER, POD, POD_UID, Proc, hybrid,
                                               pure_v2, v1_lines)

LLM = Service(name="llm", cmdline="llama-server")


@pytest.fixture(autouse=True)
def _fresh_caches():
    """Resolution remembers namespaced paths per host root; tmp roots are unique anyway."""
    for cache in (service_cgroups._found, service_cgroups._not_found, service_cgroups._own,
                  service_cgroups._placed):
        cache.clear()


def split_host(tmp_path):
    """Hybrid, the server's cpu group differs from its memory group, its cpuset is the root."""
    paths = {"cpu": "/serve/llm", "cpuacct": "/serve/llm", "memory": "/mem/llm"}
    procs = [Proc(300, "llama-server", ["llama-server", "-m", "x.gguf"], v1_lines(paths, "/serve/llm"))]
    return Host(hybrid(tmp_path, {"cpu": {"/serve/llm": [300]}, "cpuacct": {"/serve/llm": [300]},
                                  "memory": {"/mem/llm": [300]}, "cpuset": {"/": [300]},
                                  "unified": {"/serve/llm": [300]}}, procs))


def test_v1_split_controllers_each_get_their_own_group(tmp_path):
    host = split_host(tmp_path)
    r = resolve_service(host, LLM)
    cg = r.cgroups
    assert (cg.cpu, cg.cpuacct, cg.memory, cg.unified, cg.cpuset) == (
        "/serve/llm", "/serve/llm", "/mem/llm", "/serve/llm", None)
    assert cg.how == "from processes (pid 300)"
    assert cg.why_not == {"cpuset": "its process is in the root cgroup (cpuset)"}
    assert r.cgroup == "/serve/llm" and r.pids == [300]
    # every consumer takes its controller's group from the same object
    assert get_knob("cgroup.cpu_quota").service_target(LLM, cg) == "/serve/llm"
    assert get_knob("cgroup.memory_max").service_target(LLM, cg) == "/mem/llm"
    assert get_knob("cgroup.cpuset").service_target(LLM, cg) is None
    # without a resolution a knob still takes the declared cgroup (callers that have none)
    assert get_knob("cgroup.cpu_quota").service_target(Service(name="d", cgroup="/d")) == "/d"


def test_reading_takes_each_controller_from_its_group(tmp_path):
    host = split_host(tmp_path)
    (tmp_path / "sys/fs/cgroup/memory/mem/llm/memory.usage_in_bytes").write_text("4096\n")
    (tmp_path / "sys/fs/cgroup/memory/serve").mkdir()  # a decoy where memory must NOT be read
    (tmp_path / "sys/fs/cgroup/cpu/serve/llm/cpu.cfs_quota_us").write_text("50000\n")
    reading = read_service(host, LLM)
    assert reading.cgroups.memory == "/mem/llm"
    assert reading.cgroup.memory_current_bytes == 4096
    assert reading.cgroup.cpu_quota_cores == pytest.approx(0.5)
    assert reading.cgroup.path == "/serve/llm"
    assert reading.cgroup.cpuset_cpus is None  # the root's cpuset is not the service's
    # the same path for every controller (a declared cgroup) reads as before
    assert read_cgroup(host, "/serve/llm").cpu_quota_cores == pytest.approx(0.5)


def test_pure_v2_one_line_names_every_controller():
    host = Host(fixture_path("v2-docs"))
    cg = resolve_service(host, Service(name="n", exe="stress-ng")).cgroups
    assert cg.paths == {f: "/system.slice/noisy.service" for f in ("cpu", "cpuset", "memory", "io", "unified")}
    assert cg.why_not == {} and cg.how == "from processes (pid 5151)"


def test_hybrid_fixture_captured_here():
    host = Host(fixture_path("hybrid-local"))
    pid = int((fixture_path("hybrid-local") / "PID").read_text())
    cg = resolve_service(host, Service(name="a", cmdline="autotune-fixture-llm")).cgroups
    assert cg.paths == {f: "/autotune-fixture/llm" for f in ("cpu", "cpuacct", "cpuset", "memory", "unified")}
    assert str(pid) in cg.how


def test_kubernetes_pod_seen_from_the_host(tmp_path):
    api, worker, pause = f"{POD}/{CTR_API}", f"{POD}/{CTR_WORKER}", f"{POD}/{CTR_PAUSE}"
    procs = [Proc(4000, "vllm", ["python3", "-m", "vllm.entrypoints.openai.api_server"], f"0::{api}\n"),
             Proc(4100, "VLLM::Worker", ["python3", "-m", "vllm.worker"], f"0::{worker}\n"),
             Proc(3999, "pause", ["/pause"], f"0::{pause}\n")]
    host = Host(pure_v2(tmp_path, {api: [4000], worker: [4100], pause: [3999]}, procs))
    one = resolve_service(host, Service(name="api", cmdline="api_server")).cgroups
    assert one.cpu == api and one.memory == api
    # two containers of one pod: their common group, the pod's, with the sandbox ignored
    both = resolve_service(host, Service(name="all", cmdline="vllm")).cgroups
    assert both.cpu == POD and both.why_not == {}
    assert both.how == "from processes (pids 4000, 4100)"


def test_kubernetes_cgroupfs_driver_on_v1(tmp_path):
    pod = f"/kubepods/besteffort/pod{POD_UID.replace('_', '-')}/cb1eadb7abe3a6545e9856411207073277838e1b"
    paths = {c: pod for c in ("cpu", "cpuacct", "cpuset", "memory")}
    procs = [Proc(4000, "llama-server", ["llama-server"], v1_lines(paths, "/"))]
    groups = {c: {pod: [4000]} for c in ("cpu", "cpuacct", "cpuset", "memory")}
    host = Host(hybrid(tmp_path, {**groups, "unified": {"/": [4000]}}, procs))
    cg = resolve_service(host, LLM).cgroups
    assert cg.cpu == cg.memory == cg.cpuset == pod
    assert cg.unified is None and "root cgroup" in cg.why_not["unified"]


def test_container_path_relative_to_the_readers_namespace(tmp_path):
    """The agent in a container (private cgroupns) reading the host's /proc at /host: the
    server's file shows '/..' up to the common ancestor; found by its tail."""
    api = f"{POD}/{CTR_API}"
    shown = f"0::/../../kubepods-burstable-pod{POD_UID}.slice/{CTR_API}\n"
    procs = [Proc(4000, "llama-server", ["llama-server"], shown)]
    host = Host(pure_v2(tmp_path, {api: [4000], "/kubepods.slice/kubepods-besteffort.slice/agent.scope": [7]},
                        procs))
    cg = resolve_service(host, LLM).cgroups
    assert cg.cpu == api and cg.why_not == {}
    # remembered: the same text from the same reader names the same group
    assert service_cgroups._found[(str(host.root), str("/sys/fs/cgroup"), shown.strip()[3:])] == api


def test_container_namespace_root_found_by_membership(tmp_path):
    """A file captured inside the container shows '/'; the host's root does not hold the pid,
    so the group that does is the one."""
    api = f"{POD}/{CTR_API}"
    procs = [Proc(4000, "llama-server", ["llama-server"], "0::/\n")]
    host = Host(pure_v2(tmp_path, {api: [4000], f"{POD}/{CTR_PAUSE}": [3999]}, procs))
    assert resolve_service(host, LLM).cgroups.cpu == api


def test_namespaced_path_not_found_says_so(tmp_path):
    procs = [Proc(4000, "llama-server", ["llama-server"], "0::/../../gone.slice/x.scope\n")]
    host = Host(pure_v2(tmp_path, {"/elsewhere": []}, procs))
    r = resolve_service(host, LLM)
    assert r.cgroups.cpu is None and r.cgroup is None
    assert "another cgroup namespace" in r.cgroups.why_not["cpu"] and "not found" in r.cgroups.why_not["cpu"]
    assert service_cgroups.problem_of(r.cgroups)[1] == service_cgroups.FIX_OWN_CGROUP


def test_several_processes_common_group_of_their_own(tmp_path):
    procs = [Proc(500, "llama-server", ["llama-server", "--api"], "0::/srv/llm/api\n", ppid=499),
             Proc(501, "llama-server", ["llama-server", "--worker"], "0::/srv/llm/worker\n", ppid=500),
             Proc(502, "python3", ["python3", "tokenizer.py"], "0::/srv/llm/worker\n", ppid=501),  # started by it
             Proc(499, "sh", ["sh", "-c", "llama-server --api"], "0::/srv/llm\n")]  # started it
    host = Host(pure_v2(tmp_path, {"/srv": [], "/srv/llm": [499], "/srv/llm/api": [500],
                                   "/srv/llm/worker": [501, 502]}, procs))
    cg = resolve_service(host, Service(name="llm", exe="llama-server")).cgroups
    assert cg.cpu == "/srv/llm" and cg.why_not == {}


def test_several_processes_sharing_with_others_are_refused_with_the_reason(tmp_path):
    procs = [Proc(500, "llama-server", ["llama-server"], "0::/srv/a\n"),
             Proc(501, "llama-server", ["llama-server"], "0::/srv/b\n"),
             Proc(600, "postgres", ["postgres"], "0::/srv/c\n")]
    host = Host(pure_v2(tmp_path, {"/srv": [], "/srv/a": [500], "/srv/b": [501], "/srv/c": [600]}, procs))
    cg = resolve_service(host, Service(name="llm", exe="llama-server")).cgroups
    assert cg.cpu is None
    assert cg.why_not["cpu"] == ("its processes are in /srv/a, /srv/b (cpu): /srv also holds pid 600 "
                                 "(postgres), not one of its processes")
    # no common group below the root at all
    procs = [Proc(500, "llama-server", ["llama-server"], "0::/a\n"),
             Proc(501, "llama-server", ["llama-server"], "0::/b\n")]
    host = Host(pure_v2(tmp_path / "2", {"/a": [500], "/b": [501]}, procs))
    why = resolve_service(host, Service(name="llm", exe="llama-server")).cgroups.why_not["cpu"]
    assert why == "its processes are in /a, /b (cpu): no common cgroup below the root"


def test_a_shared_session_or_slice_is_not_the_servers_own(tmp_path):
    scope = "/user.slice/user-1000.slice/session-3.scope"
    procs = [Proc(700, "llama-server", ["llama-server"], f"0::{scope}\n", ppid=650),
             Proc(650, "bash", ["-bash"], f"0::{scope}\n"),  # the shell that started it: fine
             Proc(651, "tmux", ["tmux"], f"0::{scope}\n")]  # not the server's
    host = Host(pure_v2(tmp_path, {scope: [650, 651, 700]}, procs))
    why = resolve_service(host, LLM).cgroups.why_not["cpu"]
    assert why == f"its process is in {scope} (cpu): {scope} also holds pid 651 (tmux), not one of its processes"
    assert resolve_service(host, LLM).cgroups.fix == "declare `cgroup =` or run the server in its own cgroup"
    batch = resolve_service(host, Service(name="batch", role="neighbour", cmdline="llama-server")).cgroups
    assert batch.fix == "declare `cgroup =` or run batch in its own cgroup"  # a neighbour is no server
    procs = [Proc(800, "llama-server", ["llama-server"], "0::/system.slice\n")]
    host = Host(pure_v2(tmp_path / "2", {"/system.slice": [800]}, procs))
    assert "shared by design" in resolve_service(host, LLM).cgroups.why_not["cpu"]


def test_declared_cgroup_is_authoritative_and_a_mismatch_is_noted(tmp_path):
    procs = [Proc(300, "llama-server", ["llama-server"], "0::/elsewhere\n")]
    host = Host(pure_v2(tmp_path, {"/declared": [], "/elsewhere": [300]}, procs))
    r = resolve_service(host, Service(name="llm", cgroup="/declared", cmdline="llama-server"))
    assert r.cgroups.cpu == r.cgroups.memory == "/declared" and r.cgroups.how == "declared (cgroup =)"
    assert r.cgroups.notes == ["its processes (pid 300) are in /elsewhere (cpu), not in the declared "
                               "/declared: acting on the declared one",
                               "its processes (pid 300) are in /elsewhere (memory), not in the declared "
                               "/declared: acting on the declared one"]
    assert r.pids == []  # the matchers still AND
    # a declared cgroup that does not exist, and a unit that is not running, say what to do
    gone = resolve_service(host, Service(name="llm", cgroup="/nope")).cgroups
    assert (gone.problem, gone.fix) == ("cgroup /nope does not exist",
                                        "create it and start the server in it, or fix `cgroup =`")
    unit = resolve_service(host, Service(name="llm", unit="ghost")).cgroups
    assert unit.problem == "systemd unit 'ghost' is not running (no cgroup found)"
    nobody = resolve_service(host, Service(name="llm", cmdline="vllm")).cgroups
    assert nobody.problem == "no process matches cmdline 'vllm'"


def test_unit_takes_its_processes_groups(tmp_path):
    host = Host(fixture_path("v2-docs"))
    cg = resolve_service(host, Service(name="llm", unit="llm")).cgroups
    assert cg.cpu == "/system.slice/llm.service" and cg.how == "systemd unit llm (pid 4242)"
