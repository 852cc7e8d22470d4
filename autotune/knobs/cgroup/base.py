"""Shared plumbing of the ``cgroup.*`` knobs: one vocabulary written to v2 or v1 files.

The hierarchy that manages the controller decides the file (hybrid hosts: cpu/cpuset/memory on
v1). Raw restore records hold exactly what to write back, in order. Values compare with
tolerance where the kernel rounds (memory to pages).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, ClassVar

from autotune import cgroupfs
from autotune.errors import InvalidValue, MissingFile, ParseError, TargetGone
from autotune.host import Host
from autotune.knobs._util import invalid
from autotune.knobs.base import Knob, KnobState
from autotune.knobs.grammar import parse_decimal_strict, strip_ws

if TYPE_CHECKING:
    from autotune.config import Service
    from autotune.types import ServiceCgroups

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MEM_RE = re.compile(r"([0-9.]+)[ \t]*([KMGT]?)(?:I?B)?", re.IGNORECASE | re.ASCII)
_MEM_MULT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MAX_BYTES = (1 << 63) - 1  # larger limits mean nothing to the kernel (it clamps to "max")


def parse_int(text: str, source: str) -> int:
    try:
        return int(text.strip())
    except ValueError as err:
        raise ParseError(f"{source}: expected an integer, got {text.strip()!r}") from err


class CgroupKnob(Knob):
    """Find the file on v2 or v1, read raw, parse, encode, write."""

    target_kind = "cgroup"
    controller: ClassVar[str]
    v1_controller: ClassVar[str | None] = None  # v1 hierarchy name when it differs ("blkio")
    file_v2: ClassVar[str | None]
    file_v1: ClassVar[str | None]

    # -- targets ---------------------------------------------------------------------------
    def check_target(self, target: str) -> None:
        if not target.startswith("/"):
            raise InvalidValue(f"target for {self.name} is 'service', 'neighbours' or a cgroup "
                               "path starting with '/'")

    def service_target(self, service: Service, cgroups: ServiceCgroups | None = None) -> str | None:
        """The service's group for this knob's controller where it was resolved (None: it has
        none); without a resolution, the declared cgroup, or systemd's default place for a unit."""
        if cgroups is not None:
            return cgroups.of(self.controller)
        if service.cgroup:
            return service.cgroup
        if service.unit:
            return f"/system.slice/{service.unit}"
        return None

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
        return self.normalize(host, target, version, strip_ws(str(value)))

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


# -- memory limits (memory_high, memory_max, memory_low) -----------------------------------
def parse_bytes(value: str) -> int | None:
    """"max"/"-1" -> None; "512M" / "1.5G" / "1048576" -> bytes (K/M/G/T are powers of 1024,
    a fraction only with a unit; rounded down to whole bytes; at most 2**63-1)."""
    v = strip_ws(value)
    if v in ("max", "-1"):
        return None
    m = _MEM_RE.fullmatch(v)
    if not m:
        raise ValueError(f"{value!r} is not bytes, <n>K/M/G/T or 'max'")
    num, unit = m.group(1), m.group(2).upper()
    if "." in num and not unit:
        raise ValueError(f"{value!r}: a fraction of a byte; use whole bytes or a K/M/G/T unit")
    n = int(parse_decimal_strict(num) * _MEM_MULT[unit])
    if n > MAX_BYTES:
        raise ValueError(f"{value!r} is more than {MAX_BYTES} bytes; use 'max'")
    return n


class MemoryLimit(CgroupKnob):
    """Bytes (int) or "max"; the kernel rounds down to whole pages, so compare within a page."""

    controller = "memory"
    numeric = True
    tolerance = PAGE_BYTES - 1  # whole bytes: less than a page apart is the same limit

    def parse(self, version: int, raw: str, path: str) -> str:
        text = raw.strip()
        if text == "max":
            return "max"
        n = parse_int(text, path)
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
