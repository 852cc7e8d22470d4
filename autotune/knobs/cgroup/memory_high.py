"""``cgroup.memory_high``: memory throttle limit in bytes or "max" (v1: the soft limit, the
nearest notion: reclaimed first under global pressure)."""

from __future__ import annotations

from autotune.knobs.cgroup.base import MemoryLimit


class MemoryHigh(MemoryLimit):
    name = "cgroup.memory_high"
    description = "memory throttle limit in bytes (v1: soft limit, reclaimed first)"
    file_v2, file_v1 = "memory.high", "memory.soft_limit_in_bytes"
