"""Symptoms: a metric beyond a threshold for long enough, with hysteresis so nothing flaps.

Pure (clock passed in). Like systemd-oomd: remember when a limit was first crossed, forget it
when the value comes back, and only call it a symptom after ``for_s``. Clearing needs the value
to stay on the other side of a separate ``off`` threshold for ``clear_for_s``, so a value
oscillating around ``on`` neither raises nor clears the symptom repeatedly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autotune.detect.metrics import is_known_metric
from autotune.types import Symptom

SERVICE_PLACEHOLDER = "$service"


class SymptomSpec(BaseModel):
    """One symptom definition. Service-scoped metrics read ``svc.$service.<...>``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    metric: str
    op: Literal[">", "<"] = ">"
    on: float
    off: float | None = None  # default: same as ``on`` (no hysteresis band)
    for_s: float = Field(default=10.0, ge=0)  # breach must last this long (s)
    clear_for_s: float = Field(default=10.0, ge=0)  # recovery must last this long (s)
    scope: Literal["host", "service"] = "host"
    role: Literal["latency-critical", "neighbour"] | None = None  # service scope: which services
    description: str = ""
    service: str | None = None  # set when a template is expanded for one service

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        if not is_known_metric(v):
            raise ValueError(f"unknown metric {v!r} (see autotune/detect/metrics.py)")
        return v

    @model_validator(mode="after")
    def _check(self) -> "SymptomSpec":
        templated = self.metric.startswith(f"svc.{SERVICE_PLACEHOLDER}.")
        if self.scope == "service" and self.service is None and not templated:
            raise ValueError(f"service-scoped metric must start with 'svc.{SERVICE_PLACEHOLDER}.'")
        if self.scope == "host" and SERVICE_PLACEHOLDER in self.metric:
            raise ValueError("host-scoped symptom cannot use $service; set scope: service")
        off = self.off_threshold
        if (self.op == ">" and off > self.on) or (self.op == "<" and off < self.on):
            raise ValueError(f"off={off} must be on the recovered side of on={self.on} for op {self.op!r}")
        return self

    @property
    def off_threshold(self) -> float:
        return self.on if self.off is None else self.off

    def key(self) -> str:
        return f"{self.name}@{self.service}" if self.service else self.name

    def for_service(self, service: str) -> "SymptomSpec":
        return self.model_copy(
            update={"service": service, "metric": self.metric.replace(SERVICE_PLACEHOLDER, service, 1)}
        )

    def breached(self, v: float) -> bool:
        return v > self.on if self.op == ">" else v < self.on

    def recovered(self, v: float) -> bool:
        off = self.off_threshold
        return v < off if self.op == ">" else v > off


class TrackState(BaseModel):
    """Per symptom (and service): where the detector is."""

    breach_since: float | None = None  # first sample beyond ``on`` in the current breach
    active: bool = False
    active_since: float | None = None  # start of the breach that activated it
    clear_since: float | None = None  # first recovered sample while active
    value: float | None = None


class DetectorState(BaseModel):
    """Persistable detector memory. ``last_ts``: newest sample already consumed."""

    last_ts: float | None = None
    tracks: dict[str, TrackState] = {}


def expand_specs(specs: list[SymptomSpec], services: list[str]) -> list[SymptomSpec]:
    """Concrete specs: host specs unchanged, service templates once per service name."""
    out = []
    for s in specs:
        if s.scope == "service" and s.service is None:
            out.extend(s.for_service(name) for name in services)
        else:
            out.append(s)
    return out


def _discover(spec: SymptomSpec, history: list[tuple[float, dict[str, float]]]) -> list[SymptomSpec]:
    """Services that have ``spec``'s metric in the history (when no config expanded it)."""
    suffix = spec.metric[len(f"svc.{SERVICE_PLACEHOLDER}") :]
    names = set()
    for _, m in history:
        for k in m:
            if k.startswith("svc.") and k.endswith(suffix) and len(k) > 4 + len(suffix):
                names.add(k[4 : -len(suffix)])
    return [spec.for_service(n) for n in sorted(names)]


def detect(
    specs: list[SymptomSpec],
    history: list[tuple[float, dict[str, float]]],
    state: DetectorState,
    now: float,
) -> tuple[list[Symptom], DetectorState]:
    """Active symptoms at ``now`` and the new state.

    ``history``: (ts, metrics) oldest first; samples at or before ``state.last_ts`` were already
    consumed and are skipped, so callers may pass overlapping windows. Samples after ``now`` are
    ignored. A sample lacking the metric leaves that symptom's state unchanged.
    Unexpanded service templates are expanded over the services present in ``history``.
    """
    concrete: list[SymptomSpec] = []
    for s in specs:
        if s.scope == "service" and s.service is None:
            concrete.extend(_discover(s, history))
        else:
            concrete.append(s)
    tracks = {k: v.model_copy() for k, v in state.tracks.items()}
    fresh = [(ts, m) for ts, m in history if ts <= now and (state.last_ts is None or ts > state.last_ts)]
    fresh.sort(key=lambda p: p[0])
    for spec in concrete:
        t = tracks.setdefault(spec.key(), TrackState())
        for ts, m in fresh:
            v = m.get(spec.metric)
            if v is None:
                continue
            t.value = v
            _step(spec, t, ts, v)
    # drop tracks for specs no longer defined (rule reload, service removed)
    keys = {s.key() for s in concrete}
    tracks = {k: v for k, v in tracks.items() if k in keys}
    last_ts = max([ts for ts, _ in fresh], default=state.last_ts)
    symptoms = []
    for spec in concrete:
        t = tracks[spec.key()]
        if t.active and t.value is not None:
            symptoms.append(
                Symptom(
                    name=spec.name,
                    service=spec.service,
                    metric=spec.metric,
                    value=t.value,
                    threshold=spec.on,
                    since_ts=t.active_since if t.active_since is not None else now,
                    detail=spec.description or f"{spec.metric} {spec.op} {spec.on:g} for {spec.for_s:g} s",
                )
            )
    return symptoms, DetectorState(last_ts=last_ts, tracks=tracks)


def _step(spec: SymptomSpec, t: TrackState, ts: float, v: float) -> None:
    if not t.active:
        if spec.breached(v):
            if t.breach_since is None:
                t.breach_since = ts
            if ts - t.breach_since >= spec.for_s:
                t.active, t.active_since, t.clear_since = True, t.breach_since, None
        else:
            t.breach_since = None
        return
    if spec.recovered(v):
        if t.clear_since is None:
            t.clear_since = ts
        if ts - t.clear_since >= spec.clear_for_s:
            t.active, t.active_since, t.clear_since, t.breach_since = False, None, None, None
    else:
        t.clear_since = None  # back inside the band or beyond on: recovery starts over
