"""Agent configuration: one TOML file validated by pydantic, with embedded defaults.

With no file at all the agent still runs: host-wide sensing, the default rule pack, SQLite
state at ``./state/autotune.db`` in a checkout or ``/var/lib/autotune/autotune.db`` under
systemd (``$STATE_DIRECTORY`` set) or when installed.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autotune.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SLO(_Strict):
    """Latency targets of a latency-critical service; slack is computed against whichever are
    set (``slo.slack`` in autotune/detect/metrics.py). Per-token ones are dense (every token is
    a sample), so the agent can decide and verify within seconds."""

    p95_latency_s: float | None = Field(default=None, gt=0)  # end-to-end request latency
    p99_latency_s: float | None = Field(default=None, gt=0)
    ttft_p95_s: float | None = Field(default=None, gt=0)  # time to first token
    itl_p95_s: float | None = Field(default=None, gt=0)  # inter-token latency (per output token)


class LatencySource(_Strict):
    """Where the service's inference latency comes from."""

    metrics_url: str | None = None  # Prometheus page (vLLM / llama.cpp / TGI / ours)
    flavor: Literal["auto", "vllm", "llamacpp", "tgi", "autotune"] = "auto"
    probe_url: str | None = None  # OpenAI-compatible base URL for an active probe
    probe_interval_s: float = Field(default=10.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)  # metrics scrape; a probe waits up to 30 s
    # the page's own period (at most once per sample): its histograms are cumulative, so a
    # scrape loses nothing that happened since the last one; 1 s is the verifier's interval
    scrape_every_s: float = Field(default=1.0, gt=0)


class Service(_Strict):
    """A workload the agent watches: by cgroup and/or by process match."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    role: Literal["latency-critical", "neighbour"] = "latency-critical"
    cgroup: str | None = None  # path relative to the hierarchy root, e.g. "/autotune/llm"
    unit: str | None = None  # systemd unit -> its cgroup
    pid_file: str | None = None
    exe: str | None = None  # basename or absolute path of the executable
    cmdline: str | None = None  # regex searched in the joined command line
    slo: SLO = SLO()
    latency: LatencySource | None = None
    min_cpu_cores: float | None = Field(default=None, ge=0)  # floor a neighbour keeps
    # Control URL of the autotune gate in front of this service (`autotune gate`); the
    # `admission` knob sets its threshold/limit. Without it admission is advice only.
    admission_url: str | None = None

    @model_validator(mode="after")
    def _has_match(self) -> "Service":
        if not any((self.cgroup, self.unit, self.pid_file, self.exe, self.cmdline)):
            raise ValueError("a service needs at least one of cgroup, unit, pid_file, exe, cmdline")
        if self.cgroup is not None and not self.cgroup.startswith("/"):
            raise ValueError("cgroup must be an absolute cgroup path like '/autotune/llm'")
        return self


class AgentSettings(_Strict):
    sample_period_s: float = Field(default=1.0, gt=0, le=60)
    window_s: float = Field(default=15.0, gt=0)  # rates, latency quantiles and slack (Heracles: 15 s)
    evaluate_every_s: float = Field(default=2.0, gt=0)
    mode: Literal["recommend", "apply"] = "recommend"
    state_path: str | None = None
    rule_dirs: list[str] = []
    raw_retention_h: float = Field(default=6.0, gt=0)
    aggregate_every_s: int = Field(default=60, ge=10)
    aggregate_retention_d: float = Field(default=30.0, gt=0)
    helper_socket: str = "/run/autotune/helper.sock"
    restore_on_stop: bool = False
    metrics_listen: str | None = "127.0.0.1:9753"


class Verification(_Strict):
    window_s: float = Field(default=30.0, gt=0)
    settle_s: float = Field(default=4.0, ge=0)  # PSI avg10 lags; wait before measuring
    alpha: float = Field(default=0.05, gt=0, lt=1)
    min_effect: float = Field(default=0.05, ge=0)  # relative change that counts (5 %)
    on_inconclusive: Literal["keep", "rollback"] = "keep"
    # floors under every rule's own cooldown_s (rules/*.yaml set their pace: the SLO controller
    # steps every few seconds, host advice every few minutes)
    rule_cooldown_s: float = Field(default=0.0, ge=0)
    knob_cooldown_s: float = Field(default=0.0, ge=0)
    max_changes_per_hour: int = Field(default=240, ge=0)
    # a change whose after-window already tells (at alpha / early_alpha_divisor) is decided after
    # early_after_s instead of the full window; a give-back that breaks the SLO is undone then
    early_after_s: float = Field(default=4.0, ge=0)
    early_alpha_divisor: float = Field(default=5.0, ge=1)


class RankerSettings(_Strict):
    """The learned allocation search (autotune/diagnose/learner.py, autotune/agent/learning.py):
    for a latency-critical service with an SLO next to neighbours, trials of the allocation the
    rules allow, a Gaussian-process model of their score, and the next allocation by expected
    improvement among those predicted to keep the SLO. ``autotune ranker`` shows what it knows."""

    enabled: bool = True
    trial_s: float = Field(default=10.0, gt=0)  # an allocation in place this long is one trial
    safe_prob: float = Field(default=0.8, gt=0, lt=1)  # P(SLO kept) a candidate needs to be tried
    stop_ei: float = Field(default=0.01, gt=0)  # stop exploring under this share of the best score
    max_trials: int = Field(default=30, ge=1)  # per load phase
    phase_change: float = Field(default=0.35, gt=0)  # relative load change that starts a new phase


class Config(_Strict):
    agent: AgentSettings = AgentSettings()
    verification: Verification = Verification()
    ranker: RankerSettings = RankerSettings()
    services: list[Service] = Field(default=[], alias="service")
    source: str | None = Field(default=None, exclude=True)  # file it came from

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _unique_names(self) -> "Config":
        names = [s.name for s in self.services]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate service names: {sorted(dup)}")
        return self

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    def state_path(self) -> Path:
        if self.agent.state_path:
            return Path(self.agent.state_path)
        return default_state_path()

    def rule_dirs(self) -> list[Path]:
        if self.agent.rule_dirs:
            base = Path(self.source).parent if self.source else Path.cwd()
            return [(base / d) if not Path(d).is_absolute() else Path(d) for d in self.agent.rule_dirs]
        return [default_rule_dir()]


def default_state_path() -> Path:
    """./state/autotune.db in a checkout; /var/lib/autotune/autotune.db under systemd."""
    if os.environ.get("STATE_DIRECTORY"):  # set by systemd's StateDirectory=
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0]) / "autotune.db"
    if (REPO_ROOT / "pyproject.toml").exists() and (REPO_ROOT / "state").is_dir():
        return REPO_ROOT / "state" / "autotune.db"
    return Path("/var/lib/autotune/autotune.db")


PACKAGED_RULES = Path(__file__).resolve().parent / "rules"  # wheel: rules/ copied in (setup.py)
SYSTEM_RULES = Path("/usr/share/autotune/rules")


def default_rule_dir() -> Path:
    """The shipped rule pack: $AUTOTUNE_RULES, else the checkout's rules/, else the copy inside
    the installed package, else /usr/share/autotune/rules (a distribution's package)."""
    env = os.environ.get("AUTOTUNE_RULES")
    if env:
        return Path(env)
    if (REPO_ROOT / "pyproject.toml").exists() and (REPO_ROOT / "rules").is_dir():
        return REPO_ROOT / "rules"
    if any(PACKAGED_RULES.glob("*.yaml")):
        return PACKAGED_RULES
    return SYSTEM_RULES


def format_validation_error(source: str, err: ValidationError) -> str:
    """'file: field.path: message' lines, one per problem."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"{source}: {loc}: {e['msg']}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Load and validate; ConfigError naming the file and field on any problem."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"{p}: config file not found") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: not valid TOML: {err}") from err
    except OSError as err:
        raise ConfigError(f"{p}: cannot read ({err.strerror})") from err
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(str(p), err)) from err
    return cfg.model_copy(update={"source": str(p)})
