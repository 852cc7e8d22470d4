"""``governor.epp``: energy_performance_preference (intel_pstate/amd-pstate active mode only)."""

from __future__ import annotations

from autotune.knobs.cpufreq import CpufreqChoice


class GovernorEpp(CpufreqChoice):
    name = "governor.epp"
    description = "energy_performance_preference (intel_pstate/amd-pstate active mode)"
    file = "energy_performance_preference"
    available_file = "energy_performance_available_preferences"
