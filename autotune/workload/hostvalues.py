"""The host-wide values a benchmark or `autotune demo` must leave as it found them.

Read once before a run and again after its cleanup: the sysctls the rule pack can change (and
the memory ones a tuner is likely to touch), the transparent-hugepage modes, the cpufreq
governor of every policy, the files of each cgroup hierarchy's root the run creates its
cgroups below, and whether the run's own cgroup directories are still there. A file the host
lacks reads as ``absent``. What a knob can write back (sysctls, THP, governor) is also kept as
that knob's record, so ``put_back`` can restore it by force through the same knob the agent
used, after the agent's own ``autotune rollback --all`` (issue 23: a benchmark once left
vm.swappiness at 10 on the host).

One module for the demo (autotune/demo/session.py) and every benchmark (bench/common.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from autotune.errors import AutotuneError, HostError
from autotune.host import Host
from autotune.knobs import get_knob
from autotune.knobs.base import KnobState

log = logging.getLogger(__name__)

# Memory and scheduler sysctls a tuner may touch; the rule pack's own sysctl targets are added
# (``sysctls()``). A *_ratio comes before its *_bytes twin: writing one zeroes the other, so
# putting the ratio back puts the bytes back too, and the bytes (which refuse 0) are skipped.
SYSCTLS = (
    "vm.swappiness", "vm.dirty_ratio", "vm.dirty_bytes", "vm.dirty_background_ratio",
    "vm.dirty_background_bytes", "vm.dirty_expire_centisecs", "vm.dirty_writeback_centisecs",
    "vm.min_free_kbytes", "vm.watermark_scale_factor", "vm.watermark_boost_factor",
    "vm.vfs_cache_pressure", "vm.zone_reclaim_mode", "vm.compaction_proactiveness",
    "vm.overcommit_memory", "vm.page-cluster", "kernel.numa_balancing", "kernel.sched_autogroup_enabled",
)
THP_TARGETS = ("enabled", "defrag", "khugepaged/defrag")
CPUFREQ = "/sys/devices/system/cpu/cpufreq"
# per hierarchy key (a v1 controller, or "v2"): the root files a run's cgroups sit below
ROOT_FILES = {
    "cpu": ("cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us"),
    "cpuset": ("cpuset.cpus", "cpuset.mems"),
    "cpuacct": (),
    "memory": ("memory.limit_in_bytes", "memory.use_hierarchy"),
    "v2": ("cgroup.subtree_control",),
}


@dataclass(frozen=True)
class HostValues:
    """label -> value as read; and, for the labels a knob can write back, that knob's record."""

    values: dict[str, str]
    states: dict[str, KnobState] = field(default_factory=dict)


@dataclass(frozen=True)
class Forced:
    """A value the run's own restore left different, put back by force (``error``: it could not)."""

    label: str
    was: str  # before the run
    found: str  # after the rollback
    error: str | None = None


def sysctls(rule_dirs: list[Path] | None = None) -> list[str]:
    """``SYSCTLS`` plus every sysctl the rule pack (default: the shipped one) names as a target."""
    keys = list(SYSCTLS)
    try:
        from autotune.config import default_rule_dir
        from autotune.diagnose.rules import load_rules

        for rule in load_rules(rule_dirs or [default_rule_dir()]).rules:
            keys += [a.target for a in rule.actions if a.knob == "sysctl" and a.target]
    except (AutotuneError, OSError) as err:  # a broken pack is the agent's to report
        log.warning("host values: the rule pack's sysctls not read (%s); the fixed list only", err)
    return list(dict.fromkeys(keys))


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


def _state(host: Host, knob: str, target: str) -> KnobState | None:
    try:
        return get_knob(knob).read(host, target)
    except AutotuneError:
        return None


def read(host: Host, *, cgroup_dirs: dict[str, str] | None = None,
         rule_dirs: list[Path] | None = None) -> HostValues:
    """The host's values now. ``cgroup_dirs``: label -> host directory the run creates and must
    remove (read as ``present`` / ``absent``)."""
    values: dict[str, str] = {}
    states: dict[str, KnobState] = {}
    for key in sysctls(rule_dirs):
        values[key] = _read(host, "/proc/sys/" + key.replace(".", "/"))
        if values[key] != "absent" and (s := _state(host, "sysctl", key)) is not None:
            states[key] = s
    for target in THP_TARGETS:
        label = f"THP {target}"
        values[label] = _read(host, f"/sys/kernel/mm/transparent_hugepage/{target}")
        if values[label] != "absent" and (s := _state(host, "thp", target)) is not None:
            states[label] = s
    try:
        pols = sorted((p for p in host.listdir(CPUFREQ) if p.startswith("policy")), key=lambda p: int(p[6:]))
    except (HostError, ValueError):
        pols = []
    for pol in pols:
        values[f"cpufreq governor ({pol})"] = _read(host, f"{CPUFREQ}/{pol}/scaling_governor")
    if not pols:
        values["cpufreq governor"] = "absent (no cpufreq)"
    elif (s := _state(host, "governor", "all")) is not None:
        states["cpufreq governor"] = s
    info = host.cgroup
    mounts = {c: m for c, m in info.v1_mounts.items() if c in ROOT_FILES}
    if info.v2_mount:
        mounts["v2"] = info.v2_mount
    for key, mount in sorted(mounts.items()):
        label = "v2" if key == "v2" else f"{key} v1"
        for name in ROOT_FILES[key]:
            values[f"{label} /{name}"] = _read(host, f"{mount}/{name}")
    for label, d in (cgroup_dirs or {}).items():
        values[label] = "present" if host.exists(d) else "absent"
    return HostValues(values=values, states=states)


def compare(before: dict[str, str], after: dict[str, str]) -> list[tuple[str, str, str, bool]]:
    """(label, before, after, same) for every label in either."""
    return [(k, before.get(k, "absent"), after.get(k, "absent"), before.get(k) == after.get(k))
            for k in dict.fromkeys([*before, *after])]


def summary_line(rows: list[tuple[str, str, str, bool]]) -> str:
    """The one line a run prints at its end."""
    differ = [r for r in rows if not r[3]]
    if not differ:
        return f"host values: {len(rows)} read the same before and after"
    return (f"host values: {len(differ)} of {len(rows)} DIFFER before/after: "
            + "; ".join(f"{k} {b} -> {a}" for k, b, a, _ in differ))


def put_back(host: Host, before: HostValues) -> list[Forced]:
    """Write back, through its knob, every value a knob keeps a record of that reads
    differently now than in ``before``; one entry per value it had to force (or could not).
    Each is read again right before its write: putting a *_ratio back may already have put its
    *_bytes twin back."""
    forced: list[Forced] = []
    for label, state in before.states.items():
        knob = get_knob(state.knob)
        try:
            now = knob.read(host, state.target)
        except AutotuneError as err:
            forced.append(Forced(label, state.value, "unreadable", f"cannot read it: {err}"))
            continue
        if dict(now.raw) == dict(state.raw) or knob.canonical(now.value) == knob.canonical(state.value):
            continue
        try:
            knob.restore(host, state)
            forced.append(Forced(label, state.value, now.value))
        except AutotuneError as err:
            forced.append(Forced(label, state.value, now.value, str(err)))
    return forced
