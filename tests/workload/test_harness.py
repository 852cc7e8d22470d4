"""Where the harness puts a role's cgroups: one path in every hierarchy (the one an agent's config
names), below the process's own cgroups; on a fixture host tree, no kernel."""

from __future__ import annotations

from pathlib import Path

from autotune.host import Host
from autotune.workload import harness


def hybrid(tmp_path: Path, own: dict[str, str]) -> Host:
    """A hybrid host tree (cpu, cpuacct, memory on v1, an empty 'unified') with this process in
    the cgroups ``own`` names (hierarchy -> path; "" for the v2 line)."""
    cg = tmp_path / "sys/fs/cgroup"
    for name in ("cpu", "cpuacct", "memory", "unified"):
        (cg / name).mkdir(parents=True)
        (cg / name / "cgroup.procs").write_text("")
    for name, path in own.items():
        if path != "/":
            (cg / (name or "unified") / path.strip("/")).mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc/self").mkdir(parents=True)
    lines = [f"{i}:{name}:{own.get(name, '/')}" for i, name in enumerate(("cpu", "cpuacct", "memory"), 1)]
    (tmp_path / "proc/self/cgroup").write_text("\n".join([*lines, f"0::{own.get('', '/')}"]) + "\n")
    return Host(tmp_path, writable=True)


def test_one_path_in_every_hierarchy_below_a_memory_sandbox(tmp_path):
    host = hybrid(tmp_path, {"memory": "/sandbox/x"})
    try:
        cgs = harness.role_cgroups(host, "autotune-bench-1", ("server", "neighbour"))
        for cg in cgs.values():
            assert set(cg.paths.values()) == {f"/sandbox/x/autotune-bench-1/{cg.name.rsplit('/', 1)[1]}"}
            assert all(host.is_dir(d) for d in cg.dirs.values())
        assert host.is_dir("/sys/fs/cgroup/cpu/sandbox/x/autotune-bench-1/server")
        assert set(harness.base_dirs(host, "autotune-bench-1")) == {
            f"{k} /sandbox/x/autotune-bench-1" for k in ("cpu v1", "cpuacct v1", "memory v1", "v2")}
    finally:
        harness.cleanup()
    # the levels it had to create above the roles go with them; the sandbox itself stays
    for name in ("cpu", "cpuacct", "unified"):
        assert not (tmp_path / "sys/fs/cgroup" / name / "sandbox").exists(), name
    assert (tmp_path / "sys/fs/cgroup/memory/sandbox/x").is_dir()
    assert not (tmp_path / "sys/fs/cgroup/memory/sandbox/x/autotune-bench-1").exists()
    assert harness._cgroups == [] and harness._ancestors == []


def test_cgroups_not_on_one_line_keep_a_parent_each(tmp_path):
    host = hybrid(tmp_path, {"cpu": "/a", "memory": "/b"})
    try:
        cg = harness.RoleCgroup(host, "autotune-bench-2/server")
        assert cg.paths["cpu"] == "/a/autotune-bench-2/server"
        assert cg.paths["memory"] == "/b/autotune-bench-2/server"
        assert cg.paths["v2"] == "/autotune-bench-2/server"
    finally:
        harness.cleanup()
    assert (tmp_path / "sys/fs/cgroup/cpu/a").is_dir() and not (tmp_path / "sys/fs/cgroup/cpu/a/autotune-bench-2").exists()


def test_the_demo_stays_at_the_root(tmp_path):
    host = hybrid(tmp_path, {"memory": "/sandbox/x"})
    try:
        cg = harness.RoleCgroup(host, "autotune-demo-3/llm", under_root=True)
        assert set(cg.paths.values()) == {"/autotune-demo-3/llm"}
    finally:
        harness.cleanup()
    assert not (tmp_path / "sys/fs/cgroup/memory/autotune-demo-3").exists()
