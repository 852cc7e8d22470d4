"""Agent configuration: one TOML file validated by pydantic, with embedded defaults.

With no file at all the agent still runs: host-wide sensing, the default rule pack, SQLite
state at ``./state/autotune.db`` in a checkout or ``/var/lib/autotune/autotune.db`` under
systemd (``$STATE_DIRECTORY`` set) or when installed.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autotune.errors import ConfigError, not_utf8

REPO_ROOT = Path(__file__).resolve().parents[1]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def http_url(v: str | None) -> str | None:
    """``v`` when it is an http(s) URL with a host (what the scraper, the probe and the gate's
    control client can reach), else ValueError saying what was given."""
    if v is None:
        return v
    from urllib.parse import urlsplit

    try:
        u = urlsplit(v)
        port_ok = u.port is None or 0 < u.port < 65536
    except ValueError:
        port_ok = False
        u = None
    if u is None or u.scheme not in ("http", "https") or not u.hostname or not port_ok:
        raise ValueError(f"{v!r} is not an http(s) URL with a host, like 'http://127.0.0.1:8000/metrics'")
    return v


class SLO(_Strict):
    """Latency targets of a latency-critical service; slack is computed against whichever are
    set and the declared latency source can measure (autotune/slo.py says which; ``slo.slack``
    in autotune/detect/metrics.py). Per-token ones are dense (every token is a sample), so the
    agent can decide and verify within seconds."""

    p95_latency_s: float | None = Field(default=None, gt=0)  # end-to-end request latency
    p99_latency_s: float | None = Field(default=None, gt=0)
    ttft_p95_s: float | None = Field(default=None, gt=0)  # time to first token
    itl_p95_s: float | None = Field(default=None, gt=0)  # inter-token latency (per output token)
    itl_mean_s: float | None = Field(default=None, gt=0)  # mean time per token (llama.cpp's counters)


class LatencySource(_Strict):
    """Where the service's inference latency comes from: a metrics page, an active probe, or
    both (llama.cpp: counters from the page, TTFT and percentiles from the probe)."""

    metrics_url: str | None = None  # Prometheus page (vLLM / llama.cpp / TGI / ours)
    flavor: Literal["auto", "vllm", "llamacpp", "tgi", "autotune"] = "auto"
    probe_url: str | None = None  # OpenAI-compatible base URL for an active probe
    # the probe's cost is bounded: one streamed completion of at most probe_max_tokens tokens
    # every probe_interval_s, never two at once
    probe_interval_s: float = Field(default=10.0, ge=1.0)
    probe_max_tokens: int = Field(default=4, ge=1, le=16)
    timeout_s: float = Field(default=2.0, gt=0)  # metrics scrape; a probe waits up to 30 s
    # the page's own period (at most once per sample): its histograms are cumulative, so a
    # scrape loses nothing that happened since the last one; 1 s is the verifier's interval
    scrape_every_s: float = Field(default=1.0, gt=0)

    @field_validator("metrics_url", "probe_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        return http_url(v)


_UNIT = re.compile(r"^[A-Za-z0-9@:_.\\-]{1,200}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _one_line(what: str, v: str) -> str:
    if any(c in v for c in "\n\r\x00"):
        raise ValueError(f"{what} must be one line without NUL")
    return v


class Threads(_Strict):
    """A service's compute-thread pool and, optionally, the restart path that sets it.

    A fixed pool of N threads on fewer than N CPUs collapses (llama.cpp ``--threads 2`` on one
    CPU: 22-26x slower here), so the agent treats it as a constraint (autotune/diagnose/pool.py).
    ``count``: compute threads it runs with its own setting; the pool observed from its tasks
    (detect/metrics ``threads.pool``) wins while there is one, the count fills idle windows.
    ``pool``: ``fixed`` (llama.cpp, ollama, vLLM CPU: N whatever CPUs they get; the default,
    also for an undeclared pool) or ``follows-quota`` (sizes itself from the CPUs it gets, like
    the reference GPT-2 server).

    The restart path (the ``threads`` knob, autotune/knobs/threads.py): a systemd ``unit`` and
    either ``env`` (a drop-in ``Environment=VAR=N``) or ``exec_start`` (an ``ExecStart=``
    override with ``{threads}``); or an ``env_file`` (``VAR=N``, a file autotune owns that the
    start script reads) with ``env`` and a ``restart_command`` (argv, no shell). The helper uses
    only its own policy's copy of this table (docs/policy.md); the agent's says the lever exists."""

    count: int | None = Field(default=None, ge=1, le=4096)
    pool: Literal["fixed", "follows-quota"] = "fixed"
    unit: str | None = None
    env: str | None = None
    exec_start: str | None = None
    env_file: str | None = None
    restart_command: list[str] | None = None
    restart_timeout_s: float = Field(default=120.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _path(self) -> "Threads":
        if self.unit is not None:
            if not _UNIT.match(self.unit) or self.unit.startswith((".", "-")):
                raise ValueError(f"unit {self.unit!r} is not a systemd unit name like 'llama.service'")
            if "." not in self.unit:
                self.unit += ".service"
        if self.env is not None and not _ENV.match(self.env):
            raise ValueError(f"env {self.env!r} is not an environment variable name")
        if self.exec_start is not None:
            _one_line("exec_start", self.exec_start)
            if not self.exec_start.startswith("/") or "{threads}" not in self.exec_start:
                raise ValueError("exec_start must be an absolute command line containing {threads}")
        if self.env_file is not None:
            _one_line("env_file", self.env_file)
            if not self.env_file.startswith("/") or ".." in self.env_file.split("/"):
                raise ValueError("env_file must be an absolute path without '..'")
        if self.restart_command is not None:
            for arg in self.restart_command:
                _one_line("restart_command", arg)
            if not self.restart_command or not self.restart_command[0].startswith("/"):
                raise ValueError("restart_command must be an argv list whose first item is an absolute path")
        if self.unit is not None:
            if (self.env is None) == (self.exec_start is None):
                raise ValueError("with unit, give exactly one of env or exec_start")
            if self.env_file is not None or self.restart_command is not None:
                raise ValueError("give either unit (systemd) or env_file + restart_command, not both")
        elif self.env_file is not None or self.restart_command is not None:
            if self.env_file is None or self.restart_command is None or self.env is None:
                raise ValueError("without a unit, the restart path needs env_file, env and restart_command")
            if self.exec_start is not None:
                raise ValueError("exec_start needs a unit")
        elif self.env is not None or self.exec_start is not None:
            raise ValueError("env / exec_start need a unit or an env_file + restart_command")
        return self

    @property
    def has_lever(self) -> bool:
        """A restart path is declared: the agent may set the pool (where the policy allows)."""
        return self.unit is not None or self.env_file is not None


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
    # its compute-thread pool: count, fixed or follows-quota, and the restart path that sets it
    threads: Threads | None = None

    @field_validator("admission_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        return http_url(v)

    @field_validator("cgroup")
    @classmethod
    def _no_dotdot(cls, v: str | None) -> str | None:
        if v is not None and ".." in v.split("/"):
            raise ValueError(f"{v!r} must not contain '..' (a cgroup path names a place in the "
                             "hierarchy, like '/autotune/llm')")
        return v

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

    @model_validator(mode="after")
    def _window_holds_samples(self) -> "AgentSettings":
        if self.window_s < 2 * self.sample_period_s:  # rates and quantiles need two samples
            raise ValueError(f"window_s ({self.window_s:g} s) must hold at least two samples: make it at "
                             f"least 2 x sample_period_s ({2 * self.sample_period_s:g} s)")
        return self


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


class SearchSettings(_Strict):
    """The search, a learned allocation search (autotune/diagnose/search/): for a
    latency-critical service with an SLO next to neighbours, trials of the allocation the rules
    allow, a Gaussian-process model of their score, and the next allocation by expected
    improvement among those predicted to keep the SLO. ``autotune search`` shows what it knows.
    Its section was ``[ranker]`` before: still read, with a one-line notice."""

    enabled: bool = True
    trial_s: float = Field(default=10.0, gt=0)  # an allocation in place this long is one trial
    safe_prob: float = Field(default=0.8, gt=0, lt=1)  # P(SLO kept) a candidate needs to be tried
    stop_ei: float = Field(default=0.01, gt=0)  # stop exploring under this share of the best score
    max_trials: int = Field(default=30, ge=1)  # per load phase
    phase_change: float = Field(default=0.35, gt=0)  # relative load change that starts a new phase


class Config(_Strict):
    agent: AgentSettings = AgentSettings()
    verification: Verification = Verification()
    search: SearchSettings = SearchSettings()
    services: list[Service] = Field(default=[], alias="service")
    source: str | None = Field(default=None, exclude=True)  # file it came from
    notices: tuple[str, ...] = Field(default=(), exclude=True)  # deprecated spellings read

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        """``[ranker]`` is the search's old section name: read as ``[search]``, with a notice."""
        if isinstance(data, dict) and "ranker" in data:
            data = dict(data)
            if "search" in data:
                raise ValueError("[ranker] and [search] both given: [ranker] is the old name of [search]; keep one")
            data["search"] = data.pop("ranker")
            data["notices"] = (*data.get("notices", ()), "[ranker] is now called [search]: rename the section")
        return data

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
    except UnicodeDecodeError as err:
        raise ConfigError(not_utf8(p, err)) from None
    except OSError as err:
        raise ConfigError(f"{p}: cannot read ({err.strerror})") from err
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(str(p), err)) from err
    for notice in cfg.notices:
        logging.getLogger(__name__).warning("%s: %s", p, notice)
    return cfg.model_copy(update={"source": str(p)})
