"""Turn a configured service into (cgroup path, pids) without side effects.

Matching, in the order the config offers it:
- ``cgroup``: an explicit cgroup path; pids from its cgroup.procs (cpu hierarchy, else v2).
- ``unit``: a systemd unit; its cgroup is found under the v2 tree (pure v2) or the
  name=systemd hierarchy (hybrid/v1), normally at /system.slice/<unit>.
- ``pid_file``, ``exe`` (basename or absolute path), ``cmdline`` (regex searched in the
  space-joined command line): process matchers.
All given matchers must agree (AND): with a cgroup, process matchers narrow its pids.
The agent's own pid is never returned, so a service can never resolve to the tuner itself.
Where the service is, per cgroup controller (``cgroups``): the declared cgroup, else found
from its processes (autotune/sensors/service_cgroups.py).

The privileged helper reuses this to turn service names into pids (clients never send raw
pids), so this module only reads.
"""

from __future__ import annotations

import os
import re

from pydantic import BaseModel, ConfigDict

from autotune.cgroupfs import controller_dir, norm_cgpath, v2_dir
from autotune.config import Service
from autotune.errors import HostError, ParseError
from autotune.host import CGROUP_MOUNT, Host
from autotune.sensors.cgroup import read_cgroup_procs
from autotune.sensors.service_cgroups import declared, from_processes, hierarchies, own_cgroup_fix
from autotune.types import ServiceCgroups

_UNIT_SEARCH_DEPTH = 4


class ResolvedService(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    cgroup: str | None = None  # cgroup path relative to the hierarchy root (cpu's, when found)
    pids: list[int] = []
    errors: list[str] = []
    cgroups: ServiceCgroups | None = None  # per controller, and how it was found


def _procs_dirs(host: Host, cgpath: str) -> list[str]:
    """Candidate host dirs holding cgroup.procs for cgpath, best first."""
    dirs = []
    for ctrl in ("cpu", "memory"):
        if host.cgroup.controller_version(ctrl) is not None:
            dirs.append(controller_dir(host, ctrl, cgpath))
    unified = v2_dir(host, cgpath)
    if unified:
        dirs.append(unified)
    return list(dict.fromkeys(dirs))


def cgroup_pids(host: Host, cgpath: str) -> list[int] | None:
    """PIDs of a cgroup from the first hierarchy where it exists; None if it exists nowhere."""
    for d in _procs_dirs(host, cgpath):
        if host.is_dir(d):
            return read_cgroup_procs(host, d)
    return None


def _systemd_base(host: Host) -> str | None:
    """Hierarchy where systemd keeps its unit cgroups."""
    info = host.cgroup
    if info.layout == "v2":
        return info.v2_mount
    named = f"{CGROUP_MOUNT}/systemd"
    if host.exists(f"{named}/cgroup.procs"):
        return named
    return info.v2_mount


def find_unit_cgroup(host: Host, unit: str) -> str | None:
    """Cgroup path of a systemd unit ("llm" -> "llm.service"), or None if not running."""
    found = _find_unit(host, unit)
    return found[1] if found else None


def _find_unit(host: Host, unit: str) -> tuple[str, str] | None:
    """(hierarchy mount, cgroup path) of a unit's cgroup."""
    if "." not in unit:
        unit += ".service"
    base = _systemd_base(host)
    if base is None:
        return None
    for guess in (f"/system.slice/{unit}", f"/{unit}"):
        if host.is_dir(base + guess):
            return base, guess
    # units in other slices (user.slice/..., custom .slice): bounded breadth-first walk
    frontier = [""]
    for _ in range(_UNIT_SEARCH_DEPTH):
        nxt = []
        for rel in frontier:
            try:
                names = host.listdir(base + rel or "/")
            except HostError:
                continue
            for name in names:
                child = f"{rel}/{name}"
                if not host.is_dir(base + child):
                    continue
                if name == unit:
                    return base, child
                nxt.append(child)
        frontier = nxt
    return None


def _read_pid_file(host: Host, path: str) -> int:
    text = host.read_text(path)
    try:
        return int(text.split()[0])
    except (IndexError, ValueError) as err:
        raise ParseError(f"{path}: expected a pid, got {text.strip()[:40]!r}") from err


def _process_table(host: Host) -> list[tuple[int, str, str | None, list[str]]]:
    """(pid, name, exe, cmdline) for every process; rooted when the Host is not live."""
    rows = []
    if host.is_live:
        import psutil  # only a service declared by exe/cmdline scans the process table

        for p in psutil.process_iter(["pid", "name", "exe", "cmdline"]):
            info = p.info
            rows.append((info["pid"], info["name"] or "", info["exe"], info["cmdline"] or []))
        return rows
    for entry in host.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        comm = (host.read_optional(f"/proc/{pid}/comm") or "").strip()
        cmdline = [a for a in (host.read_optional(f"/proc/{pid}/cmdline") or "").split("\0") if a]
        try:
            exe: str | None = os.readlink(host.path(f"/proc/{pid}/exe"))
        except OSError:
            exe = None
        rows.append((pid, comm, exe, cmdline))
    return rows


def _exe_matches(want: str, name: str, exe: str | None, cmdline: list[str]) -> bool:
    exe = exe.removesuffix(" (deleted)") if exe else exe
    if "/" in want:
        return exe == want or (bool(cmdline) and cmdline[0] == want)
    candidates = {name, os.path.basename(exe or "")}
    if cmdline:
        candidates.add(os.path.basename(cmdline[0]))
    # comm is truncated to 15 characters by the kernel
    return want in candidates or (len(want) > 15 and name == want[:15])


def resolve_service(host: Host, svc: Service) -> ResolvedService:
    """Resolve without raising: problems go to ``errors``, pids may be empty."""
    errors: list[str] = []
    cgroup: str | None = None
    pid_sets: list[set[int]] = []
    proc_sets: list[set[int]] = []  # what the process matchers alone found

    try:
        pids: list[int] | None = None
        if svc.cgroup:
            cgroup = norm_cgpath(svc.cgroup)
            pids = cgroup_pids(host, cgroup)
        elif svc.unit:
            found = _find_unit(host, svc.unit)
            if found is None:
                errors.append(f"systemd unit {svc.unit!r}: no cgroup found (not running?)")
                pid_sets.append(set())
            else:
                # pids from the hierarchy systemd tracks the unit in (name=systemd on hybrid)
                base, cgroup = found
                pids = read_cgroup_procs(host, base + cgroup)
        if cgroup is not None:
            if pids is None:
                errors.append(f"cgroup {cgroup}: not found")
                pid_sets.append(set())
            else:
                pid_sets.append(set(pids))
    except HostError as err:
        errors.append(str(err))
        pid_sets.append(set())

    if svc.pid_file:
        try:
            pid = _read_pid_file(host, svc.pid_file)
            pid_sets.append({pid} if host.exists(f"/proc/{pid}") else set())
            proc_sets.append(pid_sets[-1])
            if not host.exists(f"/proc/{pid}"):
                errors.append(f"{svc.pid_file}: pid {pid} is not running")
        except HostError as err:
            errors.append(str(err))
            pid_sets.append(set())

    if svc.exe or svc.cmdline:
        import psutil  # here, not at import: a service found by cgroup or pid file never needs it

        try:
            pattern = re.compile(svc.cmdline) if svc.cmdline else None
        except re.error as err:
            errors.append(f"service {svc.name}: cmdline regex {svc.cmdline!r} is invalid ({err})")
            pattern = None
            pid_sets.append(set())
        try:
            matched = set()
            for pid, name, exe, argv in _process_table(host):
                if svc.exe and not _exe_matches(svc.exe, name, exe, argv):
                    continue
                if svc.cmdline and (pattern is None or not pattern.search(" ".join(argv))):
                    continue
                matched.add(pid)
            pid_sets.append(matched)
            proc_sets.append(matched)
        except (HostError, psutil.Error) as err:
            errors.append(f"process scan failed: {err}")
            pid_sets.append(set())

    pids = set.intersection(*pid_sets) if pid_sets else set()
    proc_pids = set.intersection(*proc_sets) if proc_sets else set()
    if host.is_live:
        pids.discard(os.getpid())
        proc_pids.discard(os.getpid())
    try:
        cgroups = _placement(host, svc, cgroup, sorted(pids), sorted(proc_pids))
    except HostError as err:
        errors.append(f"cgroup of its processes: {err}")
        cgroups = None
    if cgroup is None and cgroups is not None:
        cgroup = cgroups.cpu or cgroups.unified or cgroups.memory
    return ResolvedService(name=svc.name, cgroup=cgroup, pids=sorted(pids), errors=errors, cgroups=cgroups)


def _placement(host: Host, svc: Service, cgroup: str | None, pids: list[int], proc_pids: list[int]
               ) -> ServiceCgroups:
    """Where the service is: ``cgroup =`` as declared; a unit's or matched processes' groups."""
    who = "the server" if svc.role == "latency-critical" else svc.name
    if svc.cgroup:
        return declared(host, svc.cgroup, processes=proc_pids, who=who)
    if svc.unit:
        how = f"systemd unit {svc.unit}"
        if cgroup is None:
            return ServiceCgroups(how=how, problem=f"systemd unit {svc.unit!r} is not running (no cgroup "
                                  "found)", fix="start it, or fix `unit =`")
        if not pids:
            return ServiceCgroups(how=f"{how} (no process)", **{h.field: cgroup for h in hierarchies(host)})
        return _fixed(from_processes(host, pids, how=how, default=cgroup), who)
    if not pids:
        wanted = ", ".join(f"{k} {v!r}" for k, v in (("pid_file", svc.pid_file), ("exe", svc.exe),
                                                      ("cmdline", svc.cmdline)) if v)
        return ServiceCgroups(how="from processes (none)", problem=f"no process matches {wanted}",
                              fix=f"start {who}, or fix the service's cmdline / exe / pid_file")
    return _fixed(from_processes(host, pids), who)


def _fixed(cg: ServiceCgroups, who: str) -> ServiceCgroups:
    """Say what would give it a cgroup to act on, when it has no cpu one."""
    return cg.model_copy(update={"fix": own_cgroup_fix(who)}) if cg.cpu is None and not cg.fix else cg
