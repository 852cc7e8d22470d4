"""Shared plumbing of the cpufreq knobs (``governor``, ``governor.epp``).

Target "all" (every cpufreq policy) or "policyN". Values are checked against what each touched
policy lists as available; the raw record covers every policy touched, so one restore puts
each policy back to its own prior value.
"""

from __future__ import annotations

import re
from typing import ClassVar

from autotune.errors import InvalidValue, MissingFile
from autotune.host import Host
from autotune.knobs._util import invalid
from autotune.knobs.base import Knob, KnobState
from autotune.knobs.grammar import strip_ws

CPUFREQ_DIR = "/sys/devices/system/cpu/cpufreq"
MIXED = "mixed"


def policies(host: Host, target: str) -> list[str]:
    """Policy directory names for a target ("all" -> every policyN present)."""
    if target != "all" and not (target.startswith("policy") and target[6:].isdigit()):
        raise InvalidValue(f"cpufreq target {target!r} must be 'all' or 'policy<N>'")
    present = ([p for p in host.listdir(CPUFREQ_DIR) if p.startswith("policy")]
               if host.is_dir(CPUFREQ_DIR) else [])
    if not present:
        raise MissingFile(f"{CPUFREQ_DIR}: no cpufreq policies on this host (no cpufreq driver, "
                          "e.g. a VM); governor knobs are unavailable")
    if target == "all":
        return sorted(present, key=lambda p: int(p[6:]))
    if target not in present:
        raise MissingFile(f"{CPUFREQ_DIR}/{target}: no such cpufreq policy ({present})")
    return [target]


class CpufreqChoice(Knob):
    """One file per cpufreq policy holding one of the names its ``available_file`` lists."""

    target_kind = "choice"
    file: ClassVar[str]
    available_file: ClassVar[str]

    def check_target(self, target: str) -> None:
        if target != "all":  # rules act on the whole machine; policyN is for operators
            raise InvalidValue(f"{self.name} target must be 'all'")

    def host_files(self, host: Host, target: str) -> frozenset[str] | None:
        """The file in every policy the target covers that exists now (none: no cpufreq)."""
        if target == "all":
            try:
                pols = [p for p in host.listdir(CPUFREQ_DIR) if re.fullmatch(r"policy\d+", p)]
            except MissingFile:
                pols = []
        else:
            pols = [target]
        return frozenset(f"{CPUFREQ_DIR}/{p}/{self.file}" for p in pols)

    def read(self, host: Host, target: str) -> KnobState:
        raw: dict[str, str] = {}
        for pol in policies(host, target):
            path = f"{CPUFREQ_DIR}/{pol}/{self.file}"
            try:
                raw[path] = host.read_text(path)
            except MissingFile as err:
                raise MissingFile(f"{self.name}: {path} missing (driver lacks this file)") from err
        values = {v.strip() for v in raw.values()}
        value = values.pop() if len(values) == 1 else MIXED
        return KnobState(knob=self.name, target=target, value=value, raw=raw)

    def validate(self, host: Host, target: str, value: str) -> str:
        v = strip_ws(str(value))
        for pol in policies(host, target):
            path = f"{CPUFREQ_DIR}/{pol}/{self.available_file}"
            avail = (host.read_optional(path) or "").split()
            if v not in avail:
                raise invalid(self.name, target, value,
                              f"is not available on {pol} ({path}: {avail})")
        return v

    def write(self, host: Host, target: str, value: str) -> None:
        for pol in policies(host, target):
            host.write_text(f"{CPUFREQ_DIR}/{pol}/{self.file}", value)
