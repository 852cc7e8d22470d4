"""``affinity``: cpu mask of every thread of a set of processes ("pids:<pid>,<pid>").

Masks are per thread in Linux, and inference servers pin worker threads on purpose, so the
restore record keeps each thread's own mask ({"tid:<tid>": "<cpulist>"}) and puts exactly that
back. Reading goes through the Host (/proc/<pid>/task/<tid>/status, Cpus_allowed_list) so it
works on fixture trees; writing calls sched_setaffinity and therefore needs the live kernel.
Which pids may be touched is the helper's business (it resolves service names to pids).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from autotune.errors import HostError, InvalidValue, MissingFile, ParseError, TargetGone
from autotune.host import Host, format_cpulist, parse_cpulist
from autotune.knobs._util import invalid
from autotune.knobs.base import Knob, KnobState
from autotune.knobs.grammar import parse_cpulist_strict, strip_ws

if TYPE_CHECKING:
    from autotune.config import Config

MIXED = "mixed"


def parse_target(target: str) -> list[int]:
    """"pids:12,34" -> [12, 34]."""
    prefix, _, rest = target.partition(":")
    try:
        pids = [int(p) for p in rest.split(",") if p.strip()]
    except ValueError as err:
        raise InvalidValue(f"affinity target {target!r}: pids must be integers") from err
    if prefix != "pids" or not pids or any(p <= 0 for p in pids):
        raise InvalidValue(f"affinity target {target!r} must look like 'pids:<pid>,<pid>'")
    return sorted(set(pids))


def thread_ids(host: Host, pid: int) -> list[int]:
    """Live thread ids of ``pid`` ([] when the process is gone)."""
    try:
        return sorted(int(t) for t in host.listdir(f"/proc/{pid}/task") if t.isdigit())
    except MissingFile:
        return []


def thread_cpus(host: Host, pid: int, tid: int) -> str | None:
    """Normalized cpu list of one thread, None if it vanished."""
    path = f"/proc/{pid}/task/{tid}/status"
    text = host.read_optional(path)
    if text is None and tid == pid:  # the leader's status is also /proc/<pid>/status
        path = f"/proc/{pid}/status"
        text = host.read_optional(path)
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            try:
                return format_cpulist(parse_cpulist(line.split(":", 1)[1]))
            except ValueError as err:
                raise ParseError(f"{path}: bad Cpus_allowed_list {line!r}") from err
    raise ParseError(f"{path}: no Cpus_allowed_list line")


def online_cpus(host: Host) -> list[int]:
    text = host.read_optional("/sys/devices/system/cpu/online")
    return parse_cpulist(text) if text and text.strip() else list(range(host.ncpu))


class Affinity(Knob):
    name = "affinity"
    description = "cpu list for every thread of the service's processes"
    target_kind = "service"  # rules and the helper's policy name services, never raw pids

    def canonical(self, value: str) -> str:
        try:
            return format_cpulist(parse_cpulist_strict(strip_ws(value)))
        except ValueError:
            return strip_ws(value)  # "mixed"

    def cpu_share(self, value: str) -> dict[str, Any] | None:
        """The cpus the service's threads may run on (diagnose/pool.py: never fewer than a fixed
        thread pool). ``mixed`` is no cpu list: ValueError."""
        return {"cpus": frozenset(parse_cpulist_strict(strip_ws(value)))}

    def resolve_target(self, host: Host, cfg: Config, target: str) -> str:
        """A configured service -> "pids:<its pids>" (in production the helper does this from
        its own policy; the dry-run and local actuators do it here)."""
        if target.startswith("pids:"):
            return target
        from autotune.sensors.service import resolve_service

        try:
            svc = cfg.service(target)
        except KeyError as err:
            raise InvalidValue(f"affinity target {target!r} is not a configured [[service]]") from err
        pids = resolve_service(host, svc).pids
        if not pids:
            raise TargetGone(f"affinity: service {target!r} has no processes")
        return "pids:" + ",".join(str(p) for p in pids)

    def _masks(self, host: Host, target: str) -> dict[int, tuple[int, str]]:
        """tid -> (pid, cpulist) for every thread still alive."""
        out: dict[int, tuple[int, str]] = {}
        for pid in parse_target(target):
            for tid in thread_ids(host, pid):
                cpus = thread_cpus(host, pid, tid)
                if cpus is not None:
                    out[tid] = (pid, cpus)
        if not out:
            raise TargetGone(f"affinity {target!r}: none of these processes exist any more")
        return out

    def read(self, host: Host, target: str) -> KnobState:
        masks = self._masks(host, target)
        distinct = {c for _, c in masks.values()}
        value = distinct.pop() if len(distinct) == 1 else MIXED
        raw = {f"tid:{tid}": cpus for tid, (_, cpus) in sorted(masks.items())}
        return KnobState(knob=self.name, target=target, value=value, raw=raw)

    def validate(self, host: Host, target: str, value: str) -> str:
        parse_target(target)
        try:
            cpus = parse_cpulist_strict(strip_ws(str(value)))
        except ValueError as err:
            raise invalid(self.name, target, value, f"is not a cpu list like '0-1,3': {err}") from err
        if not cpus:
            raise invalid(self.name, target, value, "is empty")
        online = online_cpus(host)
        extra = sorted(set(cpus) - set(online))
        if extra:
            raise invalid(self.name, target, value,
                          f"names cpus {format_cpulist(extra)} that are not online "
                          f"({format_cpulist(online)})")
        return format_cpulist(cpus)

    def _require_live(self, host: Host) -> None:
        if not host.is_live:
            raise HostError(f"affinity acts on the live kernel (sched_setaffinity); refusing on "
                            f"{host!r}")
        if not host.writable:
            raise HostError("refusing to set affinity: this Host is read-only (dry run)")

    def _set(self, tid: int, cpus: list[int]) -> bool:
        """Set one thread's mask; False when the thread exited meanwhile (not an error)."""
        try:
            os.sched_setaffinity(tid, cpus)
            return True
        except ProcessLookupError:
            return False
        except OSError as err:
            raise HostError(f"sched_setaffinity(tid {tid}, {format_cpulist(cpus)}) failed: "
                            f"{err.strerror}") from err

    def write(self, host: Host, target: str, value: str) -> None:
        self._require_live(host)
        cpus = parse_cpulist(value)
        done = 0
        # re-list threads at write time: threads born since the read get the mask too
        for tid in self._masks(host, target):
            done += self._set(tid, cpus)
        if not done:
            raise TargetGone(f"affinity {target!r}: every thread exited before the write")

    def restore(self, host: Host, state: KnobState) -> None:
        """Each surviving thread gets its own recorded mask; vanished threads are skipped.
        Only threads still belonging to the target's pids are touched (tids get reused)."""
        self._require_live(host)
        alive = {tid for pid in parse_target(state.target) for tid in thread_ids(host, pid)}
        for key, cpulist in state.raw.items():
            kind, _, tid_s = key.partition(":")
            if kind != "tid" or not tid_s.isdigit():
                raise ParseError(f"affinity restore record: bad key {key!r} (want 'tid:<tid>')")
            if int(tid_s) in alive:
                self._set(int(tid_s), parse_cpulist(cpulist))
