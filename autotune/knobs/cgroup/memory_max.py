"""``cgroup.memory_max``: hard memory limit in bytes or "max" (OOM beyond it)."""

from __future__ import annotations

from autotune.knobs.cgroup.base import MemoryLimit


class MemoryMax(MemoryLimit):
    name = "cgroup.memory_max"
    description = "hard memory limit in bytes (OOM beyond it)"
    file_v2, file_v1 = "memory.max", "memory.limit_in_bytes"
