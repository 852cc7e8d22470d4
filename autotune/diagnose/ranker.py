"""Learned ranking of candidate actions: predict each one's effect from this node's own history.

Rules say *what may help*; the journal says *what did*. Every verified change leaves an outcome:
the relative change of its objective (PSI or p95 latency) between the before and after windows.
A regressor (scikit-learn random forest over a DictVectorizer) learns outcome from

- the knob and the rule that proposed it (``knob=...``, ``rule=...``),
- the size of the step (``step_log`` = ln(proposed / prior) for numeric values),
- the symptoms active for the action's service or the host, as value / threshold
  (``sym=<name>``), named without the service so lessons carry across services,

and ``Ranker.rank`` sets ``Action.score`` to the predicted improvement (+0.3 = the objective is
expected to get 30 % better), which gating orders by before rule priority.

Honesty gates: no model until ``min_outcomes`` verified changes exist, and a model is used only
if its cross-validated error beats always predicting the mean outcome; otherwise actions keep
their rule priority order and ``Ranker.status`` says why. scikit-learn is imported only then,
so an agent without history stays light.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from autotune.types import Action, Symptom

CLIP = 1.0  # outcomes are clipped to +-100 %: a 39x regression teaches the same as a 2x one


class Outcome(BaseModel):
    """One verified change reduced to what the ranker learns from."""

    model_config = ConfigDict(frozen=True)

    entry_id: int
    knob: str
    rule: str
    features: dict[str, float]
    improvement: float  # + = the objective got better, relative, clipped to +-CLIP


class RankerStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    active: bool
    outcomes: int
    reason: str
    cv_mae: float | None = None  # model, leave-one-out / k-fold mean absolute error
    baseline_mae: float | None = None  # always predicting the training mean


def _num(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def features(knob: str, rule: str, prior: str | None, proposed: str | None, service: str | None,
             symptoms: Iterable[Mapping[str, Any] | Symptom]) -> dict[str, float]:
    """The feature dict, computed the same way for a candidate and for a journaled change."""
    f: dict[str, float] = {f"knob={knob}": 1.0, f"rule={rule}": 1.0}
    a, b = _num(prior), _num(proposed)
    if a is not None and b is not None and a > 0 and b > 0:
        f["step_log"] = math.log(b / a)
    elif proposed is not None and str(proposed).strip().lower() == "max":
        f["step_log"] = 3.0  # unlimiting: a large step up
    for s in symptoms:
        d = s.model_dump() if isinstance(s, Symptom) else dict(s)
        if d.get("service") not in (None, service):
            continue
        value, threshold = _num(d.get("value")), _num(d.get("threshold"))
        if value is None:
            continue
        ratio = value / threshold if threshold else value
        key = f"sym={d.get('name')}"
        f[key] = max(f.get(key, 0.0), ratio)
    return f


def outcome_of(entry: Any) -> Outcome | None:
    """A journal entry's verified effect as an Outcome (None if it was never verified)."""
    vr = entry.verify_result  # a VerifyResult (autotune/types.py) or None
    effect = _num(vr.effect) if vr is not None else None
    if vr is None or effect is None:
        return None
    gain = -effect if vr.direction == "lower_is_better" else effect
    return Outcome(entry_id=entry.id, knob=entry.knob, rule=entry.rule, improvement=max(-CLIP, min(CLIP, gain)),
                   features=features(entry.knob, entry.rule, entry.prior_value, entry.proposed,
                                     entry.service, entry.symptoms))


class Ranker:
    """Fit on outcomes; score candidate actions. Refit by building a new one (fitting is ms)."""

    def __init__(self, outcomes: list[Outcome], *, min_outcomes: int = 10, seed: int = 0) -> None:
        self.outcomes = outcomes
        self.model: Any = None
        n = len(outcomes)
        if n < min_outcomes:
            self.status = RankerStatus(active=False, outcomes=n,
                                       reason=f"{n} verified changes, need {min_outcomes} to learn from")
            return
        ys = [o.improvement for o in outcomes]
        if max(ys) - min(ys) < 1e-9:
            self.status = RankerStatus(active=False, outcomes=n, reason="every outcome was the same")
            return
        cv, base = self._cross_validate(seed)
        if cv >= base:
            self.status = RankerStatus(active=False, outcomes=n, cv_mae=cv, baseline_mae=base,
                                       reason=f"cross-validated error {cv:.3f} does not beat the mean's {base:.3f}")
            return
        self.model = self._make(seed).fit([o.features for o in outcomes], ys)
        self.status = RankerStatus(active=True, outcomes=n, cv_mae=cv, baseline_mae=base,
                                   reason=f"cross-validated error {cv:.3f} vs the mean's {base:.3f}")

    @staticmethod
    def _make(seed: int) -> Any:
        from sklearn.ensemble import RandomForestRegressor
        from sklearn.feature_extraction import DictVectorizer
        from sklearn.pipeline import make_pipeline

        return make_pipeline(DictVectorizer(sparse=False),
                             RandomForestRegressor(n_estimators=100, min_samples_leaf=2, random_state=seed))

    def _cross_validate(self, seed: int) -> tuple[float, float]:
        """(model MAE, mean-baseline MAE) over up to 5 folds (leave-one-out when fewer outcomes)."""
        import numpy as np
        from sklearn.model_selection import KFold

        X = [o.features for o in self.outcomes]
        y = np.array([o.improvement for o in self.outcomes])
        folds = KFold(n_splits=min(5, len(y)), shuffle=True, random_state=seed)
        err_model, err_base = [], []
        for train, test in folds.split(y):
            m = self._make(seed).fit([X[i] for i in train], y[train])
            pred = m.predict([X[i] for i in test])
            err_model.extend(np.abs(pred - y[test]))
            err_base.extend(np.abs(y[train].mean() - y[test]))
        return float(np.mean(err_model)), float(np.mean(err_base))

    def predict(self, action: Action, symptoms: Iterable[Symptom]) -> float | None:
        if self.model is None:
            return None
        f = features(action.knob, action.rule, action.current, action.proposed, action.service, symptoms)
        return float(self.model.predict([f])[0])

    def rank(self, actions: list[Action], symptoms: list[Symptom]) -> list[Action]:
        """Actions with ``score`` = predicted improvement (unchanged when inactive), best first."""
        if self.model is None:
            return actions
        scored = [a if a.advisory else a.model_copy(update={"score": round(self.predict(a, symptoms) or 0.0, 4)})
                  for a in actions]
        return sorted(scored, key=lambda a: (-(a.score if a.score is not None else -math.inf), -a.priority))


def from_journal(entries: Iterable[Any], *, min_outcomes: int = 10) -> Ranker:
    outcomes = [o for e in entries if (o := outcome_of(e)) is not None]
    return Ranker(outcomes, min_outcomes=min_outcomes)
