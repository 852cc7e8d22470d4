"""Which cgroup a service is in, per controller: declared (``cgroup =``), or from its processes.

Most real servers are found by their process (``cmdline``, ``exe``, ``pid_file``, a systemd
unit): vLLM in a container, llama.cpp from a shell, ollama as a desktop service. Their cgroup
comes from ``/proc/<pid>/cgroup``, per controller, because on cgroup v1 each controller is its
own hierarchy and a process can sit in a different group in each (a hybrid host: cpu, cpuset,
memory on v1, PSI in the v2 tree); on pure v2 one line names the group for all.

A path in that file is relative to the READER's cgroup namespace. Read through a host root from
inside a container (``--root /host``, the DaemonSet), a process outside our namespace shows as
``/../../kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope``, and one inside it as a
path below our namespace root (``/`` for the root itself). Such a path is found in the host's
hierarchy by its tail, checked against ``cgroup.procs`` when several groups match, and
remembered (the same text from the same reader always names the same group).

Several cgroups (a server with workers, a pod with two containers): their deepest common one is
used when it is a group of their own. Never the root, never a slice systemd or the kubelet
shares between services, and nothing in it but the service's processes, those that started
them (a container's init, a wrapper shell) and those they started; Kubernetes' pod sandbox
(``pause``) does not count. Otherwise that controller has no cgroup to act on, and ``why_not``
says which groups and why. A declared ``cgroup =`` stays authoritative; when its processes sit
elsewhere, ``notes`` says so.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from autotune.cgroupfs import norm_cgpath, parse_proc_cgroup
from autotune.errors import HostError, ParseError
from autotune.host import Host
from autotune.types import CGROUP_FIELDS, ServiceCgroups

MAX_WALK_DIRS = 5000  # a search or an own-group check reads at most this many cgroups
MAX_WALK_DEPTH = 16
MAX_GROUP_DIRS = 200  # a subtree larger than this is no group of one service's own
NEGATIVE_TTL_S = 60.0  # a namespaced path not found is searched for again after this
RECHECK_S = 30.0  # the same processes in the same groups: the answer is reused this long
_ANCESTRY_DEPTH = 64
# groups systemd and the kubelet share between services, whatever they hold right now
_SHARED = re.compile(r"^/(?:[^/]+\.slice|init\.scope|kubepods|kubepods/(?:besteffort|burstable)"
                     r"|kubepods\.slice/kubepods-(?:besteffort|burstable)\.slice"
                     r"|user\.slice/user-\d+\.slice(?:/user@\d+\.service)?)$")
SANDBOX_COMMS = frozenset({"pause"})  # Kubernetes' pod sandbox: in every pod, belongs to none
FIX_OWN_CGROUP = "declare `cgroup =` or run the server in its own cgroup"


def own_cgroup_fix(who: str = "the server") -> str:
    """What gives a service a cgroup to act on (``who``: "the server", or a neighbour's name)."""
    return FIX_OWN_CGROUP.replace("the server", who)

_found: dict[tuple[str, str, str], str] = {}
_not_found: dict[tuple[str, str, str], float] = {}
_own: dict[tuple, str | None] = {}
_placed: dict[tuple, tuple[ServiceCgroups, float]] = {}


@dataclass(frozen=True)
class Hierarchy:
    """One ServiceCgroups field: where its hierarchy is mounted and which /proc line names it."""

    field: str
    line: str  # key in parse_proc_cgroup: "" for the v2 line, else the v1 controller name
    mount: str  # host path

    def dir(self, path: str) -> str:
        return self.mount if path == "/" else f"{self.mount}{path}"


def hierarchies(host: Host) -> list[Hierarchy]:
    """The hierarchies of this host's controllers, one per ServiceCgroups field it has."""
    info = host.cgroup
    out = []
    for field, v1name in (("cpu", "cpu"), ("cpuacct", "cpuacct"), ("cpuset", "cpuset"),
                          ("memory", "memory"), ("io", "blkio")):
        if field in info.v2_controllers and info.v2_mount:
            out.append(Hierarchy(field, "", info.v2_mount))
        elif v1name in info.v1_mounts:
            out.append(Hierarchy(field, v1name, info.v1_mounts[v1name]))
    if info.v2_mount:
        out.append(Hierarchy("unified", "", info.v2_mount))
    return out


def declared(host: Host, cgpath: str, *, processes: list[int] | None = None,
             who: str = "the server") -> ServiceCgroups:
    """A ``cgroup =`` path for every controller; ``processes`` (what the process matchers
    found) are checked against it and a mismatch is noted, never acted on."""
    cgpath = norm_cgpath(cgpath)
    hiers = hierarchies(host)
    fields = {h.field: cgpath for h in hiers}
    notes: list[str] = []
    if not any(host.is_dir(h.dir(cgpath)) for h in hiers):
        return ServiceCgroups(**fields, how="declared (cgroup =)",
                              problem=f"cgroup {cgpath} does not exist",
                              fix=f"create it and start {who} in it, or fix `cgroup =`")
    if processes:
        found = from_processes(host, processes)
        for field in ("cpu", "memory"):
            at = found.of(field)
            if at is not None and not _within(at, cgpath):
                notes.append(f"its processes ({_pids_text(processes)}) are in {at} ({field}), not in "
                             f"the declared {cgpath}: acting on the declared one")
    return ServiceCgroups(**fields, how="declared (cgroup =)", notes=notes)


def from_processes(host: Host, pids: list[int], *, how: str = "from processes",
                   default: str | None = None) -> ServiceCgroups:
    """Where ``pids`` live, per controller (see the module docstring). ``default``: the group
    of a controller no /proc/<pid>/cgroup line names (a unit's own cgroup)."""
    how = f"{how} ({_pids_text(pids)})"
    if not pids:
        return ServiceCgroups(how=how, why_not={f: "no process" for f in CGROUP_FIELDS})
    texts = {}
    for pid in pids:
        try:
            text = host.read_optional(f"/proc/{pid}/cgroup")
        except HostError:
            text = None
        if text:
            texts[pid] = text
    # every sample asks; the same processes in the same groups get the same answer for a while
    # (a process of someone else's joining a group is noticed within RECHECK_S)
    key = (str(host.root), how, default, tuple(sorted(texts.items())), tuple(sorted(pids)))
    hit = _placed.get(key)
    if hit is not None and time.monotonic() - hit[1] < RECHECK_S:
        return hit[0]
    placed = _place(host, pids, {pid: parse_proc_cgroup(t) for pid, t in texts.items()}, how, default)
    _remember(_placed, key, (placed, time.monotonic()))
    return placed


def _place(host: Host, pids: list[int], lines: dict[int, dict[str, str]], how: str,
           default: str | None) -> ServiceCgroups:
    fields: dict[str, str | None] = {}
    why_not: dict[str, str] = {}
    for h in hierarchies(host):
        places: dict[str, list[int]] = {}
        lost: list[str] = []
        for pid, groups in lines.items():
            raw = groups.get(h.line)
            if raw is None:
                continue
            path, why = locate(host, h, raw, pid)
            if path is None:
                lost.append(f"pid {pid}: {why}")
            else:
                places.setdefault(path, []).append(pid)
        if not places:
            fields[h.field] = None if lost else default
            if fields[h.field] is None:
                why_not[h.field] = "; ".join(lost) or f"no /proc/<pid>/cgroup line for {h.field}"
            continue
        fields[h.field], why = _choose(host, h, places, set(pids))
        if why:
            why_not[h.field] = why
    return ServiceCgroups(**fields, how=how, why_not=why_not)


def problem_of(cg: ServiceCgroups) -> tuple[str, str] | None:
    """(what is wrong, what would fix it) when the service has no cpu cgroup to act on."""
    if cg.problem:
        return cg.problem, cg.fix or FIX_OWN_CGROUP
    if cg.cpu is None:
        return cg.why_not.get("cpu", "no cpu cgroup found"), cg.fix or FIX_OWN_CGROUP
    return None


# -- one process, one hierarchy ------------------------------------------------------------------
def locate(host: Host, h: Hierarchy, raw: str, pid: int) -> tuple[str | None, str]:
    """(the group ``raw`` names in ``h``, "") or (None, why). A path from another cgroup
    namespace ('/..', or one that is not there, or '/' not holding ``pid``) is searched for."""
    parts = [p for p in raw.split("/") if p]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    tail = parts[ups:]
    if ".." in tail:
        return None, f"cgroup path {raw!r} not understood"
    path = "/" + "/".join(tail)
    if not ups and host.is_dir(h.dir(path)):
        if path != "/":
            return path, ""
        members = _procs(host, h.dir("/"))
        if members is None or pid in members:
            return "/", ""
    key = (str(host.root), h.mount, raw)
    hit = _found.get(key)
    if hit is not None and host.is_dir(h.dir(hit)):
        return hit, ""
    missed = _not_found.get(key)
    where = f"shown as {raw} (another cgroup namespace's view)"
    if missed is not None and time.monotonic() - missed < NEGATIVE_TTL_S:
        return None, f"{where}, not found under {h.mount}"
    found = _search(host, h, tail, pid)
    if len(found) == 1:
        _remember(_found, key, found[0])
        return found[0], ""
    _remember(_not_found, key, time.monotonic())
    if not found:
        return None, f"{where}, not found under {h.mount}"
    return None, f"{where}: {len(found)} cgroups match ({', '.join(found[:3])})"


def _search(host: Host, h: Hierarchy, tail: list[str], pid: int) -> list[str]:
    """Groups whose path ends with ``tail``; when not exactly one, those listing ``pid``."""
    n = len(tail)
    ends = [d for d in _walk(host, h.mount, "/") if d != "/" and d.split("/")[1:][-n:] == tail] if n else []
    if len(ends) == 1:
        return ends
    pool = ends if n else [d for d in _walk(host, h.mount, "/") if d != "/"]
    return [d for d in pool if pid in (_procs(host, h.dir(d)) or ())]


def _walk(host: Host, mount: str, top: str, limit: int = MAX_WALK_DIRS) -> list[str]:
    """Cgroup paths from ``top`` down (breadth first, bounded)."""
    out, frontier = [top], [top]
    for _ in range(MAX_WALK_DEPTH):
        nxt = []
        for rel in frontier:
            try:
                names = host.subdirs(mount if rel == "/" else mount + rel)
            except HostError:
                continue
            for name in names:
                child = f"{'' if rel == '/' else rel}/{name}"
                out.append(child)
                nxt.append(child)
                if len(out) >= limit:
                    return out
        if not nxt:
            break
        frontier = nxt
    return out


def _procs(host: Host, cgdir: str) -> set[int] | None:
    """Pids in ``cgdir``'s cgroup.procs (as this reader's pid namespace shows them); None when
    unreadable."""
    try:
        text = host.read_text(f"{cgdir}/cgroup.procs")
    except HostError:
        return None
    try:
        return {int(x) for x in text.split()}
    except ValueError:
        return None


# -- several processes, one hierarchy ------------------------------------------------------------
def _choose(host: Host, h: Hierarchy, places: dict[str, list[int]], pids: set[int]
            ) -> tuple[str | None, str]:
    """The group to act on for this hierarchy, or (None, why not)."""
    paths = sorted(places)
    where = ", ".join(paths[:4]) + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")
    group = paths[0] if len(paths) == 1 else _common(paths)
    what = f"its processes are in {where}" if len(paths) > 1 else f"its process{'es are' if len(places[group]) > 1 else ' is'} in {group}"
    if group == "/":
        return None, (f"{what.removesuffix(' in /')} in the root cgroup ({h.field})" if len(paths) == 1 else
                      f"{what} ({h.field}): no common cgroup below the root")
    if _SHARED.match(group):
        return None, f"{what} ({h.field}): {group} is shared by design (a systemd or kubelet slice)"
    foreign = _foreign(host, h, group, pids)
    if foreign:
        return None, f"{what} ({h.field}): {group} also holds {foreign}"
    return group, ""


def _common(paths: list[str]) -> str:
    split = [p.strip("/").split("/") for p in paths]
    common = []
    for parts in zip(*split):
        if len(set(parts)) != 1 or not parts[0]:
            break
        common.append(parts[0])
    return "/" + "/".join(common)


def _within(path: str, top: str) -> bool:
    return top == "/" or path == top or path.startswith(top + "/")


def _foreign(host: Host, h: Hierarchy, group: str, pids: set[int]) -> str | None:
    """A process in ``group``'s subtree that is none of the service's (see the module doc),
    described; None when the group is the service's own."""
    dirs = _walk(host, h.mount, group, limit=MAX_GROUP_DIRS + 1)
    if len(dirs) > MAX_GROUP_DIRS:
        return f"more than {MAX_GROUP_DIRS} cgroups"
    members: set[int] = set()
    for d in dirs:
        members |= _procs(host, h.dir(d)) or set()
    members.discard(0)  # a process outside this reader's pid namespace
    key = (str(host.root), h.mount, group, frozenset(members), frozenset(pids))
    if key not in _own:
        _remember(_own, key, _first_foreign(host, members - pids, pids))
    return _own[key]


def _first_foreign(host: Host, others: set[int], pids: set[int]) -> str | None:
    if not others:
        return None
    ancestors: set[int] = set()
    for pid in pids:
        ancestors.update(_ancestry(host, pid))
    for pid in sorted(others):
        comm = _comm(host, pid)
        if pid in ancestors or comm in SANDBOX_COMMS or pids & set(_ancestry(host, pid)):
            continue
        return f"pid {pid} ({comm or '?'}), not one of its processes"
    return None


def _ancestry(host: Host, pid: int) -> list[int]:
    """``pid``'s parents, nearest first (up to pid 1)."""
    out = []
    for _ in range(_ANCESTRY_DEPTH):
        ppid = _ppid(host, pid)
        if ppid is None or ppid <= 0 or ppid in out:
            break
        out.append(ppid)
        pid = ppid
    return out


def _ppid(host: Host, pid: int) -> int | None:
    from autotune.sensors.process import parse_pid_stat

    try:
        text = host.read_text(f"/proc/{pid}/stat")
        return int(parse_pid_stat(text, f"/proc/{pid}/stat")[1][1])
    except (HostError, ParseError, ValueError, IndexError):
        return None


def _comm(host: Host, pid: int) -> str:
    try:
        return (host.read_optional(f"/proc/{pid}/comm") or "").strip()
    except HostError:
        return ""


def _pids_text(pids: list[int]) -> str:
    if not pids:
        return "no process"
    shown = ", ".join(str(p) for p in sorted(pids)[:3])
    more = f" and {len(pids) - 3} more" if len(pids) > 3 else ""
    return f"pid{'s' if len(pids) > 1 else ''} {shown}{more}"


def _remember(cache: dict, key, value) -> None:
    if len(cache) >= 1024:  # bounded: a long-lived agent sees many pids come and go
        cache.clear()
    cache[key] = value
