"""``cgroup.cpu_quota``: cpu bandwidth limit in cores (float) or "max".

The period is kept; quota = cores * period usec (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` with
``cpu.cfs_period_us``). Rules and the cpu floor move it in 0.01-core steps.
"""

from __future__ import annotations

from typing import Any

from autotune import cgroupfs
from autotune.errors import MissingFile
from autotune.host import Host
from autotune.knobs._util import fmt_float, invalid
from autotune.knobs.base import KnobState
from autotune.knobs.cgroup.base import CgroupKnob, parse_int
from autotune.knobs.grammar import parse_decimal_strict, strip_ws

MAX_BW_USEC = (1 << 44) - 1  # kernel max_cfs_runtime, in usec
MIN_QUOTA_USEC = 1000
UNLIMITED = ("max", "-1")  # v2's word and v1's number; nothing looser ("inf" is no quota)


class CpuQuota(CgroupKnob):
    name = "cgroup.cpu_quota"
    description = "cpu bandwidth limit in cores, or max"
    controller = "cpu"
    file_v2, file_v1 = "cpu.max", "cpu.cfs_quota_us"
    numeric = True
    decimals = 2  # computed quotas are whole hundredths of a core
    # Half the step rules and the floor compute in: quotas that round to the same 0.01 core
    # are the same value (the read-back of 1/3 core, "0.33333", is 1/3 core).
    tolerance = 0.005

    def cpu_max(self, host: Host, target: str) -> cgroupfs.CpuMax:
        """The target's quota and period; TargetGone when the cgroup is gone."""
        self.cgdir(host, target)
        try:
            return cgroupfs.read_cpu_max(host, target)
        except MissingFile as err:
            raise MissingFile(f"{self.name}: {err} (kernel lacks this cgroup file)") from err

    def format(self, x: float) -> str:
        return super().format(max(0.01, x))  # the smallest quota a rule may compute

    def cpu_share(self, value: str) -> dict[str, Any] | None:
        v = value.strip().lower()
        return {"quota_cores": None if v in ("max", "-1") else float(v)}

    def read(self, host: Host, target: str) -> KnobState:
        cm = self.cpu_max(host, target)
        cores = cm.cores
        value = "max" if cores is None else fmt_float(cores)
        return KnobState(knob=self.name, target=target, value=value, raw=cm.raw)

    def validate(self, host: Host, target: str, value: str) -> str:
        v = strip_ws(str(value))
        if v in UNLIMITED:
            return "max"
        try:
            exact = parse_decimal_strict(v)
        except ValueError as err:
            raise invalid(self.name, target, value, f"must be cores (e.g. 1.5) or 'max': {err}") from err
        if exact <= 0:
            raise invalid(self.name, target, value, "must be a positive number of cores or 'max'")
        cores = float(exact)
        period = self.cpu_max(host, target).period_usec
        quota = round(exact * period)  # exact: a 20-digit core count is refused below, not inf
        if quota < MIN_QUOTA_USEC:
            raise invalid(self.name, target, value, f"gives quota {quota} us < kernel minimum "
                          f"{MIN_QUOTA_USEC} us at period {period} us")
        if quota > MAX_BW_USEC:
            raise invalid(self.name, target, value, "exceeds the kernel's maximum quota")
        return fmt_float(cores)

    def write(self, host: Host, target: str, value: str) -> None:
        cm = self.cpu_max(host, target)
        quota = None if value == "max" else cgroupfs.cores_to_quota(float(value), cm.period_usec)
        cgroupfs.write_cpu_max(host, target, quota)  # the period is kept

    def restore(self, host: Host, state: KnobState) -> None:
        """v1 needs an order: with a quota set, a period change can break the kernel's
        quota/period ratio checks (and burst <= quota), so unlimit, set period, then quota."""
        if len(state.raw) == 1:
            super().restore(host, state)
            return
        (ppath, praw), (qpath, qraw) = state.raw.items()
        cur_period = parse_int(self._read_raw(host, ppath), ppath)
        if cur_period != parse_int(praw, ppath):
            host.write_text(qpath, "-1")
            host.write_text(ppath, praw)
        host.write_text(qpath, qraw)
