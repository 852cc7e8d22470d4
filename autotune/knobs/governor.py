"""``governor``: the cpufreq scaling governor (performance, schedutil, ...) of every policy."""

from __future__ import annotations

from autotune.knobs.cpufreq import CpufreqChoice


class Governor(CpufreqChoice):
    name = "governor"
    description = "cpufreq scaling governor (performance, schedutil, ...)"
    file = "scaling_governor"
    available_file = "scaling_available_governors"
