"""``cgroup.*`` knobs: one vocabulary (see autotune/cgroupfs.py) written to v2 or v1 files.

Target = cgroup path ("/autotune/llm"). The hierarchy that manages the controller decides the
file (hybrid hosts: cpu/cpuset/memory on v1). Raw restore records hold exactly what to write
back, in order. Values compare with tolerance where the kernel rounds (memory to pages).
"""

from __future__ import annotations

import math
import os
import re
from typing import ClassVar

from autotune import cgroupfs
from autotune.errors import InvalidValue, MissingFile, ParseError, TargetGone
from autotune.host import Host, format_cpulist, parse_cpulist
from autotune.knobs._util import fmt_float, invalid
from autotune.knobs.base import Knob, KnobState

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MAX_BW_USEC = (1 << 44) - 1  # kernel max_cfs_runtime, in usec
MIN_QUOTA_USEC = 1000
_MEM_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?$", re.IGNORECASE)
_MEM_MULT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _int(text: str, source: str) -> int:
    try:
        return int(text.strip())
    except ValueError as err:
        raise ParseError(f"{source}: expected an integer, got {text.strip()!r}") from err


class CgroupKnob(Knob):
    """Shared plumbing: find the file on v2 or v1, read raw, parse, encode, write."""

    controller: ClassVar[str]
    v1_controller: ClassVar[str | None] = None  # v1 hierarchy name when it differs ("blkio")
    file_v2: ClassVar[str | None]
    file_v1: ClassVar[str | None]

    # -- location ------------------------------------------------------------------------
    def version(self, host: Host) -> int:
        v = host.cgroup.controller_version(self.controller)
        if v is None and self.v1_controller and self.v1_controller in host.cgroup.v1_mounts:
            return 1
        if v is None:
            raise MissingFile(f"{self.name}: cgroup controller {self.controller!r} is not "
                              f"available on this host (layout {host.cgroup.layout})")
        return v

    def cgdir(self, host: Host, target: str) -> tuple[int, str]:
        """(version, host dir of the target cgroup); TargetGone when the cgroup is absent."""
        version = self.version(host)
        ctrl = self.controller if version == 2 or not self.v1_controller else self.v1_controller
        try:
            d = cgroupfs.controller_dir(host, ctrl, target)
        except ParseError as err:
            raise InvalidValue(f"{self.name}: bad cgroup target {target!r}: {err}") from err
        if not host.is_dir(d):
            raise TargetGone(f"{self.name}: cgroup {target!r} does not exist ({d})")
        return version, d

    def files(self, host: Host, target: str) -> tuple[int, str]:
        """(version, host path of this knob's file)."""
        version, d = self.cgdir(host, target)
        fname = self.file_v2 if version == 2 else self.file_v1
        if fname is None:
            raise MissingFile(f"{self.name} is not on cgroup v{version} "
                              f"(controller {self.controller!r} is v{version} on this host)")
        return version, f"{d}/{fname}"

    def _read_raw(self, host: Host, path: str) -> str:
        try:
            return host.read_text(path)
        except MissingFile as err:
            raise MissingFile(f"{self.name}: {path} missing (kernel lacks this cgroup file)") from err

    # -- contract ------------------------------------------------------------------------
    def read(self, host: Host, target: str) -> KnobState:
        version, path = self.files(host, target)
        raw = self._read_raw(host, path)
        return KnobState(knob=self.name, target=target, value=self.parse(version, raw, path),
                         raw={path: raw})

    def validate(self, host: Host, target: str, value: str) -> str:
        try:
            version, _ = self.files(host, target)
        except MissingFile as err:
            raise invalid(self.name, target, value, f"cannot be applied: {err}") from err
        return self.normalize(host, target, version, str(value).strip())

    def write(self, host: Host, target: str, value: str) -> None:
        version, path = self.files(host, target)
        host.write_text(path, self.encode(version, value))

    # -- per knob ------------------------------------------------------------------------
    def parse(self, version: int, raw: str, path: str) -> str:
        return raw.strip()

    def normalize(self, host: Host, target: str, version: int, value: str) -> str:
        return value

    def encode(self, version: int, value: str) -> str:
        return value


# -- cpu -----------------------------------------------------------------------------------
class CpuQuota(CgroupKnob):
    """Cores (float) or "max". The period is kept; quota = cores * period usec."""

    name = "cgroup.cpu_quota"
    description = "cpu bandwidth limit in cores, or max"
    controller = "cpu"
    file_v2, file_v1 = "cpu.max", "cpu.cfs_quota_us"

    def _quota_period(self, host: Host, target: str) -> tuple[int, int | None, int, dict[str, str]]:
        """(version, quota usec or None, period usec, raw files in restore order)."""
        version, d = self.cgdir(host, target)
        if version == 2:
            path = f"{d}/cpu.max"
            raw = self._read_raw(host, path)
            quota, period = cgroupfs.parse_cpu_max(raw, source=path)
            return version, quota, period, {path: raw}
        qpath, ppath = f"{d}/cpu.cfs_quota_us", f"{d}/cpu.cfs_period_us"
        qraw, praw = self._read_raw(host, qpath), self._read_raw(host, ppath)
        quota, period = _int(qraw, qpath), _int(praw, ppath)
        # period first: restore() unlimits the quota before touching the period (see there)
        return version, (None if quota < 0 else quota), period, {ppath: praw, qpath: qraw}

    def read(self, host: Host, target: str) -> KnobState:
        _, quota, period, raw = self._quota_period(host, target)
        cores = cgroupfs.quota_to_cores(quota, period)
        value = "max" if cores is None else fmt_float(cores)
        return KnobState(knob=self.name, target=target, value=value, raw=raw)

    def validate(self, host: Host, target: str, value: str) -> str:
        v = str(value).strip().lower()
        if v in ("max", "-1", "inf", "unlimited"):
            return "max"
        try:
            cores = float(v)
        except ValueError as err:
            raise invalid(self.name, target, value, "must be cores (e.g. 1.5) or 'max'") from err
        if not math.isfinite(cores) or cores <= 0:
            raise invalid(self.name, target, value, "must be a positive number of cores or 'max'")
        _, _, period, _ = self._quota_period(host, target)
        quota = round(cores * period)
        if quota < MIN_QUOTA_USEC:
            raise invalid(self.name, target, value, f"gives quota {quota} us < kernel minimum "
                          f"{MIN_QUOTA_USEC} us at period {period} us")
        if quota > MAX_BW_USEC:
            raise invalid(self.name, target, value, "exceeds the kernel's maximum quota")
        return fmt_float(cores)

    def write(self, host: Host, target: str, value: str) -> None:
        version, _, period, raw = self._quota_period(host, target)
        quota = None if value == "max" else cgroupfs.cores_to_quota(float(value), period)
        path = list(raw)[-1]  # v2: cpu.max; v1: cpu.cfs_quota_us (after the period)
        if version == 2:
            host.write_text(path, f"{'max' if quota is None else quota} {period}")
        else:
            host.write_text(path, str(-1 if quota is None else quota))

    def restore(self, host: Host, state: KnobState) -> None:
        """v1 needs an order: with a quota set, a period change can break the kernel's
        quota/period ratio checks (and burst <= quota), so unlimit, set period, then quota."""
        if len(state.raw) == 1:
            super().restore(host, state)
            return
        (ppath, praw), (qpath, qraw) = state.raw.items()
        cur_period = _int(self._read_raw(host, ppath), ppath)
        if cur_period != _int(praw, ppath):
            host.write_text(qpath, "-1")
            host.write_text(ppath, praw)
        host.write_text(qpath, qraw)

    def same(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None or "max" in (a, b):
            return a == b
        return math.isclose(float(a), float(b), rel_tol=1e-4, abs_tol=1e-4)


class CpuBurst(CgroupKnob):
    """Burst usec above quota a cgroup may bank (kernel requires burst <= quota)."""

    name = "cgroup.cpu_burst"
    description = "cpu burst allowance in usec"
    controller = "cpu"
    file_v2, file_v1 = "cpu.max.burst", "cpu.cfs_burst_us"

    def parse(self, version: int, raw: str, path: str) -> str:
        return str(_int(raw, path))

    def normalize(self, host: Host, target: str, version: int, value: str) -> str:
        try:
            usec = int(value)
        except ValueError as err:
            raise invalid(self.name, target, value, "must be an integer usec >= 0") from err
        if usec < 0:
            raise invalid(self.name, target, value, "must be >= 0 usec")
        _, quota, _, _ = CpuQuota()._quota_period(host, target)
        if quota is not None and usec > quota:
            raise invalid(self.name, target, value, f"exceeds the quota ({quota} us); the "
                          "kernel requires burst <= quota")
        return str(usec)


class CpuWeight(CgroupKnob):
    """Weight 1..10000 (v2 cpu.weight); v1 cpu.shares mapped like systemd (x10.24)."""

    name = "cgroup.cpu_weight"
    description = "relative cpu weight 1..10000 (default 100)"
    controller = "cpu"
    file_v2, file_v1 = "cpu.weight", "cpu.shares"

    def parse(self, version: int, raw: str, path: str) -> str:
        n = _int(raw, path)
        return str(n if version == 2 else cgroupfs.shares_to_weight(n))

    def normalize(self, host: Host, target: str, version: int, value: str) -> str:
        try:
            w = int(value)
        except ValueError as err:
            raise invalid(self.name, target, value, "must be an integer 1..10000") from err
        if not cgroupfs.CPU_WEIGHT_MIN <= w <= cgroupfs.CPU_WEIGHT_MAX:
            raise invalid(self.name, target, value, "must be within 1..10000")
        return str(w)

    def encode(self, version: int, value: str) -> str:
        return value if version == 2 else str(cgroupfs.weight_to_shares(int(value)))


class CpuIdle(CgroupKnob):
    """SCHED_IDLE for the whole group: 1 = only run when nothing else wants the cpu."""

    name = "cgroup.cpu_idle"
    description = "0/1: treat the cgroup as SCHED_IDLE"
    controller = "cpu"
    file_v2, file_v1 = "cpu.idle", "cpu.idle"

    def normalize(self, host: Host, target: str, version: int, value: str) -> str:
        if value not in ("0", "1"):
            raise invalid(self.name, target, value, "must be 0 or 1")
        return value


# -- memory --------------------------------------------------------------------------------
def parse_bytes(value: str) -> int | None:
    """"max" -> None; "512M" / "1.5G" / "1048576" -> bytes (K/M/G/T are powers of 1024)."""
    v = value.strip()
    if v.lower() in ("max", "-1"):
        return None
    m = _MEM_RE.match(v)
    if not m:
        raise ValueError(f"{value!r} is not bytes, <n>K/M/G/T or 'max'")
    return int(float(m.group(1)) * _MEM_MULT[m.group(2).upper()])


class _Memory(CgroupKnob):
    """Bytes (int) or "max"; the kernel rounds down to whole pages, so compare within a page."""

    controller = "memory"

    def parse(self, version: int, raw: str, path: str) -> str:
        text = raw.strip()
        if text == "max":
            return "max"
        n = _int(text, path)
        # v1 reports unlimited as PAGE_COUNTER_MAX; "-1" is what was written (plain-file trees)
        return "max" if version == 1 and (n < 0 or n >= cgroupfs.V1_UNLIMITED) else str(n)

    def normalize(self, host: Host, target: str, version: int, value: str) -> str:
        try:
            n = parse_bytes(value)
        except ValueError as err:
            raise invalid(self.name, target, value, f"is not a memory size: {err}") from err
        return "max" if n is None else str(n)

    def encode(self, version: int, value: str) -> str:
        return "-1" if version == 1 and value == "max" else value

    def same(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None or "max" in (a, b):
            return a == b
        return abs(int(a) - int(b)) < PAGE_BYTES


class MemoryHigh(_Memory):
    name = "cgroup.memory_high"
    description = "memory throttle limit in bytes (v1: soft limit, reclaimed first)"
    file_v2, file_v1 = "memory.high", "memory.soft_limit_in_bytes"


class MemoryMax(_Memory):
    name = "cgroup.memory_max"
    description = "hard memory limit in bytes (OOM beyond it)"
    file_v2, file_v1 = "memory.max", "memory.limit_in_bytes"


class MemoryLow(_Memory):
    name = "cgroup.memory_low"
    description = "best-effort memory protection in bytes (cgroup v2 only)"
    file_v2, file_v1 = "memory.low", None


# -- cpuset --------------------------------------------------------------------------------
class Cpuset(CgroupKnob):
    """Cpu list; normalized so "0,1" == "0-1"; must fit the parent's effective cpus."""

    name = "cgroup.cpuset"
    description = "cpus the cgroup may run on (cpu list)"
    controller = "cpuset"
    file_v2, file_v1 = "cpuset.cpus", "cpuset.cpus"

    def parse(self, version: int, raw: str, path: str) -> str:
        try:
            return format_cpulist(parse_cpulist(raw))
        except ValueError as err:
            raise ParseError(f"{path}: bad cpu list {raw.strip()!r}") from err

    def allowed(self, host: Host, target: str, version: int) -> tuple[list[int], str]:
        """Cpus the target may use: the parent's effective set, else the online cpus."""
        cg = cgroupfs.norm_cgpath(target)
        parent = cg.rsplit("/", 1)[0] or "/"
        if cg != "/":
            pdir = cgroupfs.controller_dir(host, "cpuset", parent)
            fname = "cpuset.cpus.effective" if version == 2 else "cpuset.effective_cpus"
            text = host.read_optional(f"{pdir}/{fname}")
            if text is not None and text.strip():
                return parse_cpulist(text), f"{pdir}/{fname}"
        online = host.read_optional("/sys/devices/system/cpu/online")
        if online and online.strip():
            return parse_cpulist(online), "/sys/devices/system/cpu/online"
        return list(range(host.ncpu)), "online cpu count"

    def normalize(self, host: Host, target: str, version: int, value: str) -> str:
        try:
            cpus = parse_cpulist(value)
        except ValueError as err:
            raise invalid(self.name, target, value, "is not a cpu list like '0-1,3'") from err
        if not cpus:
            raise invalid(self.name, target, value, "is empty")
        allowed, source = self.allowed(host, target, version)
        extra = sorted(set(cpus) - set(allowed))
        if extra:
            raise invalid(self.name, target, value, f"uses cpus {format_cpulist(extra)} outside "
                          f"{format_cpulist(allowed)} ({source})")
        return format_cpulist(cpus)


# -- io ------------------------------------------------------------------------------------
BLKIO_MIN, BLKIO_MAX, BLKIO_DEFAULT = 10, 1000, 500


class IoWeight(CgroupKnob):
    """Weight 1..10000 (v2 io.weight "default N"); v1 blkio.weight 10..1000 mapped like
    systemd (x5, default 500 == 100). Only the default line is touched, never per-device ones."""

    name = "cgroup.io_weight"
    description = "relative io weight 1..10000 (default 100)"
    controller = "io"
    v1_controller = "blkio"
    file_v2, file_v1 = "io.weight", "blkio.weight"

    def read(self, host: Host, target: str) -> KnobState:
        version, path = self.files(host, target)
        raw = self._read_raw(host, path)
        value = self.parse(version, raw, path)
        # io.weight lists per-device overrides too; only "default N" can be written back whole
        restore = f"default {value}" if version == 2 else raw
        return KnobState(knob=self.name, target=target, value=value, raw={path: restore})

    def parse(self, version: int, raw: str, path: str) -> str:
        if version == 1:
            n = _int(raw, path)
            return str(max(1, min(10000, round(n * 100 / BLKIO_DEFAULT))))
        for line in raw.splitlines():
            f = line.split()
            if len(f) == 2 and f[0] == "default":
                return str(_int(f[1], path))
        raise ParseError(f"{path}: no 'default N' line in {raw.strip()!r}")

    def normalize(self, host: Host, target: str, version: int, value: str) -> str:
        v = value.removeprefix("default").strip()
        try:
            w = int(v)
        except ValueError as err:
            raise invalid(self.name, target, value, "must be an integer 1..10000") from err
        if not 1 <= w <= 10000:
            raise invalid(self.name, target, value, "must be within 1..10000")
        if version == 1:  # what blkio.weight can represent: 10..1000 is weight 2..200
            return self.parse(1, self.encode(1, str(w)), "blkio.weight")
        return str(w)

    def encode(self, version: int, value: str) -> str:
        if version == 2:
            return f"default {value}"
        return str(max(BLKIO_MIN, min(BLKIO_MAX, int(value) * BLKIO_DEFAULT // 100)))


CGROUP_KNOBS: tuple[type[CgroupKnob], ...] = (
    CpuQuota, CpuBurst, CpuWeight, CpuIdle, MemoryHigh, MemoryMax, MemoryLow, Cpuset, IoWeight,
)

