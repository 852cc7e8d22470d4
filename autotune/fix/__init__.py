"""fix: the agent's side of changing the host. ``actuator`` is how it writes (through the
privileged helper, locally, or not at all in dry-run); ``apply`` journals an action's prior
value, writes it and records the outcome. What can be written and how lives on the knobs
(``autotune/knobs/``); the root side that enforces the allowlist is ``autotune/helper/``."""
