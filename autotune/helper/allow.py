"""Policy decisions that need the host: confine targets, raw paths and values.

Every check answers with a ``PolicyRefused(code, reason)`` rather than a bool so the client (and the
audit trail) learns exactly why. Paths are compared on their REAL location under the Host root
(``os.path.realpath`` after mapping), so '..' cannot walk out of an allowed subtree, a symlink
anywhere below the root (or below a cgroup mount) is refused outright, and a raw restore record
can only name files the policy already allows. ``ConfinedHost`` enforces the same when the
file is finally opened, so a link swapped in after these checks still goes nowhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from autotune.config import Service
from autotune.errors import AutotuneError, HostError, PolicyRefused
from autotune.helper.confined import ConfinedHost
from autotune.helper.policy import (
    AffinityRule, CgroupRule, ChoiceRule, Policy, SysctlRule, ThreadsRule, sysctl_key,
)
from autotune.host import Host
from autotune.knobs.base import Knob
from autotune.knobs.grammar import parse_cpulist_strict

# resolve(host, service) -> object with .pids (autotune.sensors.service.ResolvedService)
Resolver = Callable[[Host, Service], object]


@dataclass(frozen=True)
class Target:
    """A client target after the policy accepted it: ``knob_target`` is what the knob gets."""

    knob: str
    client_target: str
    knob_target: str
    rule: object
    pids: tuple[int, ...] = ()

    @property
    def canonical(self) -> str:
        """The target's one spelling (origins are keyed by it): the cleaned cgroup path, the
        dotted sysctl key, the exact choice or service name (never a service's pids)."""
        return self.client_target if isinstance(self.rule, AffinityRule | ThreadsRule) else self.knob_target


def canonical_spelling(policy: Policy, knob: str, target: str) -> str | None:
    """``Target.canonical`` without the host (lexical only); None when the policy would
    refuse the target whatever the host holds."""
    rule = policy.rule(knob)
    if rule is None:
        return None
    if isinstance(rule, CgroupRule):
        try:
            return _clean_cgpath(target)
        except PolicyRefused:
            return None
    if isinstance(rule, SysctlRule):
        return sysctl_key(target)
    return target


def _link(host: Host, host_path: str) -> str | None:
    return ConfinedHost.of(host).symlink_on_path(host_path)


def _real(host: Host, host_path: str) -> str:
    return os.path.realpath(host.path(host_path))


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def _clean_cgpath(target: str) -> str:
    if not target.startswith("/"):
        raise PolicyRefused("target_refused", f"cgroup target {target!r} must be an absolute cgroup path")
    if "\x00" in target or "\\" in target:
        raise PolicyRefused("target_refused", f"cgroup target {target!r} contains forbidden characters")
    parts = [p for p in target.split("/") if p]
    if any(p in ("..", ".") for p in parts):
        raise PolicyRefused("target_refused", f"cgroup target {target!r}: path traversal ('..' or '.') refused")
    return "/" + "/".join(parts)


def _hierarchies(host: Host) -> list[str]:
    info = host.cgroup
    bases = [info.v2_mount] if info.v2_mount else []
    bases += [m for m in info.v1_mounts.values() if m not in bases]
    return bases


def _allowed_cgroup_dirs(host: Host, rule: CgroupRule) -> list[str]:
    """Real paths of every allowed subtree in every hierarchy (subtree itself never followed)."""
    out = []
    for base in _hierarchies(host):
        real_base = _real(host, base)
        for sub in rule.subtrees:
            out.append(real_base.rstrip("/") + "/" + sub.strip("/") if sub.strip("/") else real_base)
    return out


def check_target(policy: Policy, host: Host, knob: str, target: str,
                 resolver: Resolver | None = None) -> Target:
    """Accept (and canonicalize) a client's target for ``knob`` or raise PolicyRefused."""
    rule = policy.rule(knob)
    if rule is None:
        raise PolicyRefused("unknown_knob", f"knob {knob!r} is not allowed by policy {policy.source or ''}".rstrip())
    if isinstance(rule, CgroupRule):
        cg = _clean_cgpath(target)
        if not any(_under(cg, "/" + s.strip("/")) for s in rule.subtrees):
            raise PolicyRefused("target_refused", f"cgroup {cg} is outside the allowed subtrees {rule.subtrees}")
        allowed = _allowed_cgroup_dirs(host, rule)
        found = False
        for base in _hierarchies(host):
            local = host.path(base + cg)
            if not os.path.lexists(local):
                continue
            found = True
            real = os.path.realpath(local)
            if not any(_under(real, a) for a in allowed):
                raise PolicyRefused("target_refused", f"cgroup {cg} resolves to {real}, outside the allowed "
                                                f"subtrees {rule.subtrees} (symlink escape refused)")
            link = _link(host, base + cg)
            if link is not None:
                raise PolicyRefused("target_refused", f"cgroup {cg}: {link} is a symbolic link; the helper "
                                                "follows no links below a cgroup mount")
        if not found:
            raise PolicyRefused("target_gone", f"cgroup {cg} does not exist in any hierarchy")
        return Target(knob, target, cg, rule)
    if isinstance(rule, SysctlRule):
        key = sysctl_key(target)
        if key is None:
            raise PolicyRefused("target_refused", f"sysctl target {target!r} is not a well-formed key")
        if key not in rule.keys:
            raise PolicyRefused("target_refused", f"sysctl {key} is not allowed (allowed: {sorted(rule.keys)})")
        return Target(knob, target, key, rule)
    if isinstance(rule, ChoiceRule):
        if target not in rule.targets:
            raise PolicyRefused("target_refused", f"{knob} target {target!r} is not allowed (allowed: {rule.targets})")
        return Target(knob, target, target, rule)
    if isinstance(rule, AffinityRule):
        if target not in rule.services:
            hint = " (raw pids are never accepted; name a service)" if re.match(r"^(pids?:)?[\d, ]+$", target) else ""
            raise PolicyRefused("target_refused", f"affinity target {target!r} is not an allowed service "
                                            f"{rule.services}{hint}")
        pids = resolve_pids(policy, host, target, resolver)
        return Target(knob, target, "pids:" + ",".join(map(str, pids)), rule, tuple(pids))
    if isinstance(rule, ThreadsRule):
        if target not in rule.services:
            raise PolicyRefused("target_refused", f"{knob} target {target!r} is not an allowed service {rule.services}")
        from autotune.knobs.threads import target_for

        # the restart path comes from the policy's own [service.<name>.threads], never the request
        return Target(knob, target, target_for(policy.service[target].threads), rule)  # type: ignore[arg-type]
    raise PolicyRefused("unknown_knob", f"knob {knob!r} has no policy family")  # pragma: no cover


def resolve_pids(policy: Policy, host: Host, service: str, resolver: Resolver | None) -> list[int]:
    if resolver is None:
        try:
            from autotune.sensors.service import resolve_service as resolver  # type: ignore[no-redef]
        except ImportError as err:
            raise PolicyRefused("target_gone", f"service {service}: service resolution unavailable ({err})") from err
    try:
        resolved = resolver(host, policy.service[service])
    except AutotuneError as err:
        raise PolicyRefused("target_gone", f"service {service}: cannot resolve ({err})") from err
    pids = sorted({int(p) for p in getattr(resolved, "pids", [])})
    if not pids:
        errs = "; ".join(getattr(resolved, "errors", []) or [])
        raise PolicyRefused("target_gone", f"service {service}: no running processes" + (f" ({errs})" if errs else ""))
    return pids


def check_paths(policy: Policy, host: Host, t: Target, knob: Knob, paths: Iterable[str]) -> None:
    """Every raw key a knob would write (or a client asks to restore) must be allowed: exactly
    the files the knob declares for the target (``Knob.host_files``), or for a cgroup knob
    any file under the allowed subtrees."""
    rule = t.rule
    if isinstance(rule, AffinityRule):
        tids = _threads(host, t.pids)
        for key in paths:
            m = re.fullmatch(r"tid:(\d{1,10})", key)
            if not m:
                raise PolicyRefused("target_refused", f"affinity raw key {key!r} is not 'tid:<n>'")
            if int(m.group(1)) not in tids:
                raise PolicyRefused("target_refused", f"thread {m.group(1)} does not belong to service {t.client_target}")
        return
    expected = knob.host_files(host, t.knob_target)
    allowed_dirs = _allowed_cgroup_dirs(host, rule) if isinstance(rule, CgroupRule) else []
    for p in paths:
        if not isinstance(p, str) or not p.startswith("/") or "\x00" in p or ".." in p.split("/"):
            raise PolicyRefused("target_refused", f"raw path {p!r} must be absolute without '..'")
        try:
            real = _real(host, p)
            link = _link(host, p)
        except HostError as err:
            raise PolicyRefused("target_refused", f"raw path {p!r}: {err}") from err
        if expected is not None:
            if os.path.normpath(p) not in expected:
                raise PolicyRefused("target_refused", f"{t.knob} on {t.client_target} may not write {p}")
        elif not isinstance(rule, CgroupRule):
            raise PolicyRefused("target_refused", f"{t.knob} declares no host files; may not write {p}")
        elif not any(_under(real, a) and real != a for a in allowed_dirs):
            raise PolicyRefused("target_refused", f"raw path {p} resolves to {real}, outside the allowed "
                                            f"subtrees {rule.subtrees}")
        if link is not None:
            raise PolicyRefused("target_refused", f"raw path {p}: {link} is a symbolic link (to "
                                            f"{real}); the helper follows no links")


def _threads(host: Host, pids: Iterable[int]) -> set[int]:
    tids: set[int] = set()
    for pid in pids:
        try:
            tids.update(int(t) for t in host.listdir(f"/proc/{pid}/task") if t.isdigit())
        except HostError:
            continue
    return tids


def check_value(host: Host, t: Target, value: str, current: str | None = None) -> None:
    """``value`` is the knob-normalized value; refuse if policy does not allow it.

    With ``current``, the value must also have the same number of fields ("1 2" is not a
    swappiness even if both numbers are in range; tcp_rmem keeps its three).
    """
    rule = t.rule
    why: str | None = None
    if current is not None and len(value.split()) != len(current.split()):
        why = f"value {value!r} has {len(value.split())} fields, the current {current!r} has {len(current.split())}"
    elif isinstance(rule, SysctlRule):
        why = rule.keys[t.knob_target].refusal(value)
    elif isinstance(rule, AffinityRule) or (isinstance(rule, CgroupRule) and rule.cpus):
        why = _cpus_refusal(host, getattr(rule, "cpus", None), value)
    else:
        why = rule.refusal(value)  # type: ignore[union-attr]
    if why:
        raise PolicyRefused("out_of_range", f"{t.knob} on {t.client_target}: {why}")


def _cpus_refusal(host: Host, allowed: str | None, value: str) -> str | None:
    try:
        want = set(parse_cpulist_strict(value))
        ok = set(parse_cpulist_strict(allowed)) if allowed else set(range(host.ncpu))
    except ValueError:
        return f"value {value!r} is not a cpu list"
    if not want:
        return "empty cpu list"
    if not want <= ok:
        return f"cpus {sorted(want - ok)} are not allowed (allowed {allowed or 'online cpus'})"
    return None
