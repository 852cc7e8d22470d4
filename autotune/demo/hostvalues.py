"""The host-wide values `autotune demo` reads before it starts and again after it cleaned up.

The demo's helper may change nothing outside the demo's own cgroups (its policy names only
them), so these must read the same afterwards: the sysctls, THP modes and cpufreq governor the
default rule pack knows, the files of each cgroup hierarchy's root the demo creates its cgroups
under, and whether any demo cgroup is still there. A file the host lacks reads as ``absent``.
"""

from __future__ import annotations

from autotune.errors import HostError
from autotune.host import Host

SYSCTLS = ("vm.swappiness", "vm.dirty_ratio", "vm.dirty_background_ratio")
THP = "/sys/kernel/mm/transparent_hugepage"
GOVERNOR = "/sys/devices/system/cpu/cpufreq/policy0/scaling_governor"
# per hierarchy key (a v1 controller, or "v2"): the root files the demo's cgroups sit below
ROOT_FILES = {
    "cpu": ("cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us"),
    "cpuset": ("cpuset.cpus", "cpuset.mems"),
    "cpuacct": (),
    "v2": ("cgroup.subtree_control",),
}


def _read(host: Host, path: str) -> str:
    try:
        text = host.read_optional(path)
    except HostError as err:
        return f"unreadable ({err})"
    if text is None:
        return "absent"
    text = " ".join(text.split())
    if "[" in text:  # THP / choice files: the selected value
        return text[text.index("[") + 1: text.index("]")] if "]" in text else text
    return text or "(empty)"


def host_values(host: Host, base: str) -> dict[str, str]:
    """label -> value. ``base``: the demo's cgroup directory name (``autotune-demo-<pid>``)."""
    out: dict[str, str] = {}
    for key in SYSCTLS:
        out[key] = _read(host, "/proc/sys/" + key.replace(".", "/"))
    for name in ("enabled", "defrag"):
        out[f"THP {name}"] = _read(host, f"{THP}/{name}")
    out["cpufreq governor (policy0)"] = _read(host, GOVERNOR)
    info = host.cgroup
    mounts = {c: m for c, m in info.v1_mounts.items() if c in ROOT_FILES}
    if info.v2_mount:
        mounts["v2"] = info.v2_mount
    for key, mount in sorted(mounts.items()):
        label = "v2" if key == "v2" else f"{key} v1"
        for name in ROOT_FILES[key]:
            out[f"{label} /{name}"] = _read(host, f"{mount}/{name}")
        out[f"{label} /{base}"] = "present" if host.exists(f"{mount}/{base}") else "absent"
    return out


def compare(before: dict[str, str], after: dict[str, str]) -> list[tuple[str, str, str, bool]]:
    """(label, before, after, same) for every label in either."""
    return [(k, before.get(k, "absent"), after.get(k, "absent"), before.get(k) == after.get(k))
            for k in dict.fromkeys([*before, *after])]
