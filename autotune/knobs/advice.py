"""``advice``: a recommendation for an operator (free text). Never read, never applied.

Rules use it for what autotune cannot or should not change itself ("declare [[service]]
entries", "prefault the model weights"). Target: a service name or "host". It is a registry
entry so that every knob fact, advisory included, is asked of a knob.
"""

from __future__ import annotations

from autotune.errors import PolicyRefused
from autotune.host import Host
from autotune.knobs.base import Knob, KnobState

REFUSAL = "advice is a recommendation for an operator and is never applied"


class Advice(Knob):
    name = "advice"
    description = "advisory text for an operator; never applied"
    target_kind = "service"
    advisory = True
    needs_helper = False

    def read(self, host: Host, target: str) -> KnobState:
        raise PolicyRefused("advisory", REFUSAL)

    def validate(self, host: Host, target: str, value: str) -> str:
        raise PolicyRefused("advisory", REFUSAL)

    def write(self, host: Host, target: str, value: str) -> None:
        raise PolicyRefused("advisory", REFUSAL)

    def restore(self, host: Host, state: KnobState) -> None:
        raise PolicyRefused("advisory", REFUSAL)
