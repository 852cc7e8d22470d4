"""``cgroup.memory_low``: best-effort memory protection in bytes (cgroup v2 only)."""

from __future__ import annotations

from autotune.knobs.cgroup.base import MemoryLimit


class MemoryLow(MemoryLimit):
    name = "cgroup.memory_low"
    description = "best-effort memory protection in bytes (cgroup v2 only)"
    file_v2, file_v1 = "memory.low", None
