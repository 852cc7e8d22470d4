"""Minimal host trees for knob tests (builder used by conftest.py), written into tmp_path.

``v2``: pure cgroup v2 (cpu, cpuset, io, memory enabled). ``hybrid``: like the dev VM - v1
cpu, cpuacct, cpuset, memory, blkio hierarchies plus an empty v2 'unified' mount. Both hold
the target cgroup /autotune/llm whose parent /autotune may use cpus 0-2 of 0-3.
"""

from __future__ import annotations

import os
from pathlib import Path

from autotune.host import Host

CG = "/autotune/llm"
PID = 4242
TIDS = (4242, 4243, 4244)

COMMON = {
    "proc/sys/vm/swappiness": "60\n",
    "proc/sys/net/ipv4/tcp_rmem": "4096\t131072\t6291456\n",
    "proc/sys/fs/file-nr": "1024\t0\t9223372036854775807\n",
    "sys/kernel/mm/transparent_hugepage/enabled": "always [madvise] never\n",
    "sys/kernel/mm/transparent_hugepage/defrag": "always defer defer+madvise [madvise] never\n",
    "sys/kernel/mm/transparent_hugepage/khugepaged/defrag": "1\n",
    "sys/devices/system/cpu/online": "0-3\n",
    **{f"sys/devices/system/cpu/cpufreq/policy{i}/{f}": c for i in (0, 1) for f, c in {
        "scaling_governor": "powersave\n" if i == 0 else "performance\n",
        "scaling_available_governors": "performance powersave\n",
        "energy_performance_preference": "balance_performance\n",
        "energy_performance_available_preferences":
            "default performance balance_performance balance_power power\n",
    }.items()},
    **{f"proc/{PID}/task/{tid}/status": f"Name:\tllm\nPid:\t{tid}\nCpus_allowed:\tf\n"
       f"Cpus_allowed_list:\t{'0-3' if tid != 4244 else '1'}\n" for tid in TIDS},
}

V2 = {
    "sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n",
    "sys/fs/cgroup/cgroup.procs": "1\n",
    "sys/fs/cgroup/cpuset.cpus.effective": "0-3\n",
    "sys/fs/cgroup/autotune/cpuset.cpus.effective": "0-2\n",
    **{f"sys/fs/cgroup{CG}/{f}": c for f, c in {
        "cgroup.procs": f"{PID}\n",
        "cpu.max": "max 100000\n",
        "cpu.max.burst": "0\n",
        "cpu.weight": "100\n",
        "cpu.idle": "0\n",
        "memory.high": "max\n",
        "memory.max": "max\n",
        "memory.low": "0\n",
        "cpuset.cpus": "\n",
        "cpuset.cpus.effective": "0-2\n",
        "io.weight": "default 100\n8:0 200\n",
    }.items()},
}

UNLIMITED = "9223372036854771712\n"
HYBRID = {
    "sys/fs/cgroup/unified/cgroup.procs": "1\n",
    "sys/fs/cgroup/unified/cgroup.controllers": "",
    **{f"sys/fs/cgroup/{c}/cgroup.procs": "1\n" for c in ("cpu", "cpuacct", "cpuset", "memory", "blkio")},
    "sys/fs/cgroup/cpuset/cpuset.effective_cpus": "0-3\n",
    "sys/fs/cgroup/cpuset/autotune/cpuset.effective_cpus": "0-2\n",
    **{f"sys/fs/cgroup/cpu{CG}/{f}": c for f, c in {
        "cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n", "cpu.cfs_burst_us": "0\n",
        "cpu.shares": "1024\n", "cpu.idle": "0\n",
    }.items()},
    f"sys/fs/cgroup/memory{CG}/memory.limit_in_bytes": UNLIMITED,
    f"sys/fs/cgroup/memory{CG}/memory.soft_limit_in_bytes": UNLIMITED,
    f"sys/fs/cgroup/cpuset{CG}/cpuset.cpus": "\n",
    f"sys/fs/cgroup/cpuset{CG}/cpuset.effective_cpus": "0-2\n",
    f"sys/fs/cgroup/blkio{CG}/blkio.weight": "500\n",
}

LAYOUTS = {"v2": V2, "hybrid": HYBRID}


def build_host(root: Path, layout: str) -> Path:
    """Write a ``layout`` tree under ``root`` and return it."""
    for rel, content in {**COMMON, **LAYOUTS[layout]}.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    os.chmod(root / "proc/sys/fs/file-nr", 0o444)
    return root


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """Every file's (content, mtime_ns): detects any write, even of identical content."""
    return {
        str(p.relative_to(root)): (p.read_text(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*")) if p.is_file()
    }


