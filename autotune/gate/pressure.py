"""The gate's pressure input: PSI ``some avg10`` of the host or of one cgroup, polled.

The file is parsed by the sensors' parser (``sensors.psi.parse_psi``), the same one that fills
Snapshots, so the gate and the agent read the same number.

PSI triggers (poll() on the pressure file) answer EINVAL on the target kernels, and avg10
only moves every 2 s anyway, so the file is read at most every ``min_interval_s`` (0.5 s) and
cached. A missing or unreadable file gives ``None`` (unknown): the gate then fails open rather
than stop serving because a sensor broke.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from autotune.cgroupfs import v2_dir
from autotune.errors import ConfigError, HostError
from autotune.host import Host
from autotune.sensors.psi import parse_psi, some_avg10_pct


def pressure_path(host: Host, spec: str) -> str:
    """Host path of the pressure file for ``system`` or ``cgroup:/path`` (cgroup v2 tree)."""
    if spec == "system":
        return "/proc/pressure/cpu"
    if spec.startswith("cgroup:"):
        cg = spec.split(":", 1)[1] or "/"
        base = v2_dir(host, cg)
        if base is None:
            raise ConfigError(f"--pressure {spec}: this host has no cgroup v2 tree, so no per-cgroup "
                              "cpu.pressure; use --pressure system")
        return f"{base}/cpu.pressure"
    raise ConfigError(f"--pressure {spec!r}: expected 'system', 'cgroup:/path' or 'none'")


class PressureSource:
    """Cached reader of one PSI cpu pressure file."""

    def __init__(self, host: Host, spec: str = "system", *, min_interval_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.spec = spec
        self.path = pressure_path(host, spec)
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._at: float | None = None
        self._value: float | None = None
        self.error: str | None = None

    def read(self) -> float | None:
        """some avg10 in percent, or None when unknown. Cached for ``min_interval_s``."""
        now = self._clock()
        if self._at is not None and now - self._at < self.min_interval_s:
            return self._value
        self._at = now
        try:
            self._value = some_avg10_pct(parse_psi(self.host.read_text(self.path), self.path))
            self.error = None if self._value is not None else f"{self.path}: no 'some' line"
        except HostError as err:
            self._value, self.error = None, str(err)
        return self._value
