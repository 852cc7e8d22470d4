"""One evaluation step of the Agent (``run`` and ``recommend`` alike): window -> metrics ->
symptoms -> actions.

Pure apart from ``read_current`` (knob reads), which the Agent supplies through its actuator
(the dry-run one in recommend mode, the helper in apply mode). Nothing here writes to the host.
"""

from __future__ import annotations


from autotune.config import Config
from autotune.types import Action, ReadCurrent, Snapshot, Symptom



def metric_history(
    window: list[Snapshot], lookback: int, *, services=(), ncpu: int | None = None
) -> list[tuple[float, dict[str, float]]]:
    """(ts, metrics) per tick, each derived over the ``lookback`` samples before it.

    ``services`` (config.Service list) lets SLO ratios be derived; ``ncpu`` the host's CPUs.
    """
    from autotune.detect.metrics import derive_metrics

    out = []
    for i in range(len(window)):
        metrics = derive_metrics(window[max(0, i - lookback) : i + 1], ncpu=ncpu, services=services)
        out.append((window[i].ts, metrics))
    return out


def evaluate(
    ruleset,
    cfg: Config,
    history: list[tuple[float, dict[str, float]]],
    detector_state,
    read_current: ReadCurrent,
    now: float,
    cooldowns: dict[str, float] | None = None,
    observed_s: float | None = None,
    origins: ReadCurrent | None = None,
    cgroups: dict | None = None,
) -> tuple[list[Symptom], list[Action], object]:
    """Detect symptoms over ``history`` and let the rules propose actions (``cgroups``: where
    each service is, ``Snapshot.service_cgroups``; see diagnose).

    ``observed_s`` caps each symptom's required duration for one-shot runs (recommend): a
    10 s sample cannot show a breach lasting 30 s, but PSI averages are already smoothed.
    """
    from autotune.detect.symptoms import detect
    from autotune.diagnose.engine import diagnose

    specs = ruleset.symptom_specs(cfg) if hasattr(ruleset, "symptom_specs") else ruleset.symptoms
    if observed_s is not None:
        specs = [cap_duration(s, observed_s) for s in specs]
    symptoms, state = detect(specs, history, detector_state, now)
    metrics = history[-1][1] if history else {}
    actions = diagnose(ruleset, metrics, symptoms, cfg, read_current, now, cooldowns or {},
                       origins=origins, cgroups=cgroups)
    return symptoms, actions, state


def cap_duration(spec, observed_s: float):
    """A copy of a symptom spec whose for_s fits in a one-shot observation window."""
    limit = max(0.0, observed_s * 0.5)
    if getattr(spec, "for_s", 0) > limit:
        return spec.model_copy(update={"for_s": limit})
    return spec
