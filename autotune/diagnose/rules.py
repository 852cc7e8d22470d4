"""YAML rule files: schema (pydantic, extra="forbid") and a loader that refuses half-valid sets.

A file holds ``symptoms:`` (``SymptomSpec``s) and/or ``rules:``. Conditions are structured data
(``all``/``any`` of ``{symptom: name}`` or ``{metric, op, value}``); there is no eval and no code.
Any problem - bad YAML, a wrong field, an unknown metric or symptom, a duplicate name - raises
one ConfigError listing every problem as ``FILE: rule 'NAME': FIELD: message``.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from autotune.detect.metrics import CONTEXT_METRICS, is_known_metric
from autotune.detect.symptoms import SERVICE_PLACEHOLDER, SymptomSpec, expand_specs
from autotune.errors import ConfigError, InvalidValue, not_utf8
from autotune.knobs import KNOBS, get_knob

# Knob names a rule may use: the knob registry's (each knob checks its own targets and says
# whether it is numeric or advisory).
KnobName = Literal[tuple(KNOBS)]  # type: ignore[valid-type]
SPECIAL_TARGETS = {"service", "neighbours", "host"}
# Placeholders a value or rationale may use: {name} or {metric:NAME}
VARIABLES = {"service", "ncpu", "dedicated_cpus", "shared_cpus", "threads_hint", "start"}
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")

Op = Literal[">", ">=", "<", "<=", "==", "!="]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_metric(name: str) -> str:
    if not is_known_metric(name):
        raise ValueError(f"unknown metric {name!r} (every name is in docs/metric-names.md, declared in autotune/detect/registry.py)")
    return name


def _check_placeholders(text: str) -> None:
    for ph in _PLACEHOLDER.findall(text):
        if ph.startswith("metric:"):
            _check_metric(ph[len("metric:") :])
        elif ph not in VARIABLES:
            raise ValueError(f"unknown placeholder {{{ph}}}; use one of {sorted(VARIABLES)} or {{metric:NAME}}")


class MetricRef(_Strict):
    """Another metric as the right-hand side, optionally scaled: ``{metric: m, factor: 1.0}``."""

    metric: str
    factor: float = 1.0

    _known = field_validator("metric")(_check_metric)


class SymptomCond(_Strict):
    symptom: str = Field(pattern=r"^[a-z0-9_]+$")


class MetricCond(_Strict):
    metric: str
    op: Op
    value: float | MetricRef | str  # a number, a metric name, or {metric, factor}

    _known = field_validator("metric")(_check_metric)

    @field_validator("value")
    @classmethod
    def _known_value(cls, v: Any) -> Any:
        return _check_metric(v) if isinstance(v, str) else v


class AllCond(_Strict):
    all: list["Condition"] = Field(min_length=1)


class AnyCond(_Strict):
    any: list["Condition"] = Field(min_length=1)


def _cond_kind(v: Any) -> str | None:
    keys = v.keys() if isinstance(v, dict) else vars(v) if isinstance(v, BaseModel) else ()
    for k in ("symptom", "metric", "all", "any"):
        if k in keys:
            return k
    return None


Condition = Annotated[
    Union[
        Annotated[SymptomCond, Tag("symptom")],
        Annotated[MetricCond, Tag("metric")],
        Annotated[AllCond, Tag("all")],
        Annotated[AnyCond, Tag("any")],
    ],
    Discriminator(
        _cond_kind,
        custom_error_type="condition",
        custom_error_message="a condition is one of {symptom: ...}, {metric: ..., op: ..., value: ...}, {all: [...]}, {any: [...]}",
    ),
]
AllCond.model_rebuild()
AnyCond.model_rebuild()


class FactorFrom(_Strict):
    """A step factor read from a metric, clamped to [min, max]: a proportional step, e.g. the
    SLO's binding ratio (latency 1.6x its target -> 1.6x the quota)."""

    metric: str
    min: float = Field(gt=0)
    max: float = Field(gt=0)

    _known = field_validator("metric")(_check_metric)

    @model_validator(mode="after")
    def _order(self) -> "FactorFrom":
        if self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class Step(_Strict):
    """Change the current numeric value: multiply by ``factor`` or add ``delta``.

    ``of`` (a metric name) steps from that measurement instead of the current value: a cap
    set to 0.75 x what a neighbour uses bites even where its limit is unlimited ("max")
    today. Such a step only moves the value the way its factor/delta points (a cut never
    raises the current limit, a raise never lowers it)."""

    factor: float | FactorFrom | None = None
    delta: float | None = None
    of: str | None = None

    @field_validator("of")
    @classmethod
    def _of_known(cls, v: Any) -> Any:
        return _check_metric(v) if isinstance(v, str) else v

    @field_validator("factor")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and v <= 0:
            raise ValueError("Input should be greater than 0")
        return v

    @model_validator(mode="after")
    def _one(self) -> "Step":
        if (self.factor is None) == (self.delta is None):
            raise ValueError("give exactly one of factor or delta")
        return self


class Bounds(_Strict):
    """Clamp for proposed numeric values; a string is a metric name (e.g. host.ncpu), a
    ``{metric, factor}`` a scaled one (e.g. 1.25 x the cores the service uses)."""

    min: float | str | MetricRef | None = None
    max: float | str | MetricRef | None = None

    @field_validator("min", "max")
    @classmethod
    def _known(cls, v: Any) -> Any:
        return _check_metric(v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> "Bounds":
        if isinstance(self.min, (int, float)) and isinstance(self.max, (int, float)) and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class ActionSpec(_Strict):
    knob: KnobName
    target: str = Field(min_length=1)
    value: str | float | None = None
    step: Step | None = None
    bounds: Bounds | None = None
    advisory: bool = False

    @model_validator(mode="after")
    def _check(self) -> "ActionSpec":
        if (self.value is None) == (self.step is None):
            raise ValueError("give exactly one of value or step")
        if self.step is not None and not get_knob(self.knob).numeric:
            raise ValueError(f"step needs a numeric knob, not {self.knob!r}; give a value")
        if isinstance(self.value, str):
            _check_placeholders(self.value)
        if self.target not in SPECIAL_TARGETS:
            try:
                get_knob(self.knob).check_target(self.target)
            except InvalidValue as err:
                raise ValueError(str(err)) from None
        return self

    @property
    def is_advisory(self) -> bool:
        return self.advisory or get_knob(self.knob).advisory


class VerifySpec(_Strict):
    """How long a rule's change is measured (defaults: the config's [verification])."""

    window_s: float | None = Field(default=None, gt=0)
    settle_s: float | None = Field(default=None, ge=0)


class Rule(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    rationale: str = Field(min_length=10)  # why this helps, for a human reading the log
    priority: int = Field(default=50, ge=0, le=100)  # higher is preferred
    cooldown_s: float = Field(default=300.0, ge=0)
    scope: Literal["host", "service"] = "service"
    role: Literal["latency-critical", "neighbour"] | None = None  # service scope: which services
    enabled: bool = True
    when: Condition
    actions: list[ActionSpec] = Field(min_length=1)
    # One step back toward the value the agent found (``{start}``): never past it, nothing when
    # the agent never changed the target. Verified as a guard: kept while the SLO holds, undone
    # at once when it breaks, and then no give-back for the service for ``lockout_s``.
    give_back: bool = False
    lockout_s: float = Field(default=0.0, ge=0)
    verify: VerifySpec | None = None

    @model_validator(mode="after")
    def _give_back(self) -> "Rule":
        if self.lockout_s and not self.give_back:
            raise ValueError("lockout_s applies to give_back rules only")
        for a in self.actions:
            uses_start = isinstance(a.value, str) and "{start}" in a.value
            if uses_start and not self.give_back:
                raise ValueError("{start} is the value the agent found: only give_back rules use it")
            if self.give_back and a.value is not None and not uses_start:
                raise ValueError("a give_back action steps toward the start, or sets value '{start}'")
            if self.give_back and a.is_advisory:
                raise ValueError("a give_back rule changes something; advice is not given back")
        return self

    @model_validator(mode="after")
    def _cites_a_measurement(self) -> "Rule":
        """No move without evidence: a rule that changes something says, in its rationale, the
        measured figure that justified it (advice only informs, and is exempt)."""
        _check_placeholders(self.rationale)
        if all(a.is_advisory for a in self.actions):
            return self
        if not any(ph.startswith("metric:") for ph in _PLACEHOLDER.findall(self.rationale)):
            raise ValueError("rationale: a rule that changes something must cite the measured figure "
                             "that justified it: add a {metric:NAME} placeholder (advice is exempt)")
        return self

    @model_validator(mode="after")
    def _scope(self) -> "Rule":
        if self.scope == "host":
            if self.role is not None:
                raise ValueError("role applies to service-scoped rules only")
            if any(SERVICE_PLACEHOLDER in m for m in metric_refs(self.when)):
                raise ValueError("host-scoped rule cannot reference $service metrics")
            if any(a.target == "service" for a in self.actions):
                raise ValueError("host-scoped rule cannot target 'service'")
        return self

    def symptom_refs(self) -> set[str]:
        return symptom_refs(self.when)


def symptom_refs(c: Any) -> set[str]:
    if isinstance(c, SymptomCond):
        return {c.symptom}
    if isinstance(c, (AllCond, AnyCond)):
        return set().union(*(symptom_refs(x) for x in (c.all if isinstance(c, AllCond) else c.any)))
    return set()


def metric_refs(c: Any) -> set[str]:
    if isinstance(c, MetricCond):
        out = {c.metric}
        if isinstance(c.value, str):
            out.add(c.value)
        elif isinstance(c.value, MetricRef):
            out.add(c.value.metric)
        return out
    if isinstance(c, (AllCond, AnyCond)):
        return set().union(*(metric_refs(x) for x in (c.all if isinstance(c, AllCond) else c.any)))
    return set()


class RuleSet(BaseModel):
    """A validated set: symptom templates, rules, and the files they came from."""

    model_config = ConfigDict(frozen=True)

    symptoms: list[SymptomSpec] = []
    rules: list[Rule] = []
    files: list[str] = []

    def symptom_specs(self, cfg: Any) -> list[SymptomSpec]:
        """Concrete specs for ``cfg``: service templates expanded per matching service."""
        out = []
        for s in self.symptoms:
            names = [sv.name for sv in cfg.services if s.role is None or sv.role == s.role]
            out.extend(expand_specs([s], names))
        return out

    def rule(self, name: str) -> Rule:
        for r in self.rules:
            if r.name == name:
                return r
        raise KeyError(name)

    def context_metrics_used(self) -> set[str]:
        return set(self.context_metrics)

    @cached_property
    def context_metrics(self) -> frozenset[str]:
        """The context metrics the rules read (walked once: every evaluation asks)."""
        used = set()
        for r in self.rules:
            used |= metric_refs(r.when)
            for a in r.actions:
                if a.bounds:
                    used |= {b.metric if isinstance(b, MetricRef) else b
                             for b in (a.bounds.min, a.bounds.max) if isinstance(b, (str, MetricRef))}
                if a.step is not None and isinstance(a.step.factor, FactorFrom):
                    used.add(a.step.factor.metric)
        return frozenset(used & set(CONTEXT_METRICS))


_COND_TAGS = ("symptom", "metric", "all", "any")


def _fmt(source: str, what: str, err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        parts = list(e["loc"])
        # tagged unions put the tag after the position of a condition: drop it from the path
        keep = [p for i, p in enumerate(parts)
                if not (p in _COND_TAGS and i > 0 and (isinstance(parts[i - 1], int) or parts[i - 1] == "when"))]
        loc = ".".join(str(p) for p in keep)
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {what}: {loc or '(top level)'}: {msg}")
    return lines


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so ``on:``/``off:``/``no`` stay strings."""


_Yaml12Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_rule_file(path: Path) -> tuple[list[SymptomSpec], list[Rule], list[str], list[str]]:
    """(symptoms, rules, errors, broken) of one file; errors are formatted lines, empty when valid.

    ``broken``: names of symptoms that failed validation, so references to them are not
    reported a second time as unknown.
    """
    src = str(path)
    try:
        data = yaml.load(path.read_text(), Loader=_Yaml12Loader) or {}
    except yaml.YAMLError as err:
        return [], [], [f"{src}: not valid YAML: {err}"], []
    except UnicodeDecodeError as err:
        return [], [], [not_utf8(src, err)], []
    except OSError as err:
        return [], [], [f"{src}: cannot read ({err.strerror})"], []
    if not isinstance(data, dict):
        return [], [], [f"{src}: (top level): expected a mapping with 'symptoms:' and/or 'rules:'"], []
    errors = [f"{src}: (top level): unknown key {k!r}; allowed: symptoms, rules"
              for k in data if k not in ("symptoms", "rules")]
    symptoms: list[SymptomSpec] = []
    rules: list[Rule] = []
    broken: list[str] = []  # invalid symptom definitions (already reported)
    for key, model, out in (("symptoms", SymptomSpec, symptoms), ("rules", Rule, rules)):
        items = data.get(key) or []
        if not isinstance(items, list):
            errors.append(f"{src}: {key}: expected a list")
            continue
        for i, item in enumerate(items):
            label = "symptom" if key == "symptoms" else "rule"
            name = item.get("name") if isinstance(item, dict) else None
            what = f"{label} {name!r}" if isinstance(name, str) else f"{key}.{i}"
            try:
                out.append(model.model_validate(item))
            except ValidationError as err:
                errors.extend(_fmt(src, what, err))
                if isinstance(name, str) and key == "symptoms":
                    broken.append(name)
    return symptoms, rules, errors, broken


def load_rules(dirs: list[Path]) -> RuleSet:
    """Load every ``*.yaml``/``*.yml`` in ``dirs`` (sorted); ConfigError listing all problems."""
    errors: list[str] = []
    symptoms: list[SymptomSpec] = []
    rules: list[tuple[str, Rule]] = []
    files: list[str] = []
    sym_files: dict[str, str] = {}
    broken: set[str] = set()
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            errors.append(f"{d}: rule directory not found (set agent.rule_dirs or AUTOTUNE_RULES)")
            continue
        for f in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
            files.append(str(f))
            s, r, e, b = load_rule_file(f)
            errors.extend(e)
            broken.update(b)
            for spec in s:
                if spec.name in sym_files:
                    errors.append(f"{f}: symptom {spec.name!r}: name: duplicate (also in {sym_files[spec.name]})")
                sym_files.setdefault(spec.name, str(f))
                symptoms.append(spec)
            rules.extend((str(f), x) for x in r)
    seen: dict[str, str] = {}
    for src, rule in rules:
        if rule.name in seen:
            errors.append(f"{src}: rule {rule.name!r}: name: duplicate (also in {seen[rule.name]})")
        seen.setdefault(rule.name, src)
        for ref in sorted(rule.symptom_refs() - set(sym_files) - broken):
            errors.append(f"{src}: rule {rule.name!r}: when: unknown symptom {ref!r}; define it under 'symptoms:'")
    if errors:
        raise ConfigError("\n".join(errors))
    return RuleSet(symptoms=symptoms, rules=[r for _, r in rules], files=files)
