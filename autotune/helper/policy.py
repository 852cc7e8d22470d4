"""The helper's allowlist: a root-owned TOML file saying who may change what, and how far.

Deny by default. A knob absent from the policy is refused; a knob present must name its
targets (cgroup subtrees, sysctl keys, THP files, cpufreq policies, services) and its values
(a numeric range and/or literal values). The file is read once at start from an fd that was
checked to be root-owned and not group/world-writable, so nobody but root can widen it.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autotune.config import Service, format_validation_error
from autotune.errors import ConfigError, not_utf8
from autotune.knobs import KNOBS
from autotune.knobs.base import TargetKind
from autotune.knobs.grammar import parse_cpulist_strict, parse_decimal_strict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValueRule(_Strict):
    """Allowed values: numbers in [min, max] (every whitespace field) and/or literal strings."""

    min: float | None = None
    max: float | None = None
    values: list[str] = []

    @model_validator(mode="after")
    def _bounded(self) -> "ValueRule":
        if self.min is None and self.max is None and not self.values and not getattr(self, "cpus", None):
            raise ValueError("give min/max and/or values: a knob with no value rule allows nothing")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self

    def refusal(self, value: str) -> str | None:
        """None if ``value`` (already normalized by the knob) is allowed, else why not."""
        if value in self.values:
            return None
        if self.min is None and self.max is None:
            return f"value {value!r} is not one of {self.values}"
        try:  # the knobs' own strict grammar: "1_0", "\uff11", "inf" or "1e1" are no numbers
            nums = [float(parse_decimal_strict(f, signed=True)) for f in value.split(" ")]
        except ValueError:
            nums = []
        if not nums:
            lits = f" or one of {self.values}" if self.values else ""
            return f"value {value!r} is not a number{lits}"
        for n in nums:
            if (self.min is not None and n < self.min) or (self.max is not None and n > self.max):
                return f"value {value!r} outside allowed range [{self.min}, {self.max}]"
        return None


class CgroupRule(ValueRule):
    """``cgroup.*`` knobs: targets must resolve (after '..' and symlinks) under a subtree."""

    subtrees: list[str] = Field(min_length=1)
    cpus: str | None = None  # cgroup.cpuset: allowed cpu list (values must be subsets)

    @model_validator(mode="after")
    def _abs(self) -> "CgroupRule":
        for s in self.subtrees:
            if not s.startswith("/") or ".." in s.split("/"):
                raise ValueError(f"subtree {s!r} must be an absolute cgroup path without '..'")
        _cpus_ok(self.cpus)
        return self


class SysctlRule(_Strict):
    keys: dict[str, ValueRule] = Field(min_length=1)

    @model_validator(mode="after")
    def _keys(self) -> "SysctlRule":
        for k in self.keys:
            if sysctl_key(k) is None:
                raise ValueError(f"sysctl key {k!r} is not a well-formed key like 'vm.swappiness'")
        return self


class ChoiceRule(ValueRule):
    """thp / governor / governor.epp: a fixed list of target names."""

    targets: list[str] = Field(min_length=1)


class AffinityRule(_Strict):
    services: list[str] = Field(min_length=1)
    cpus: str | None = None  # allowed cpu list; None = any online cpu

    @model_validator(mode="after")
    def _cpus(self) -> "AffinityRule":
        _cpus_ok(self.cpus)
        return self


class ThreadsRule(ValueRule):
    """``threads``: the services whose compute threads the helper may set, each through the
    restart path its own ``[service.<name>.threads]`` table declares (the client names only the
    service; no unit, file or command ever comes from a request). ``default`` (the service's own
    setting back) is always allowed."""

    services: list[str] = Field(min_length=1)

    def refusal(self, value: str) -> str | None:
        return None if value == "default" else super().refusal(value)


def _cpus_ok(cpus: str | None) -> None:
    if cpus is not None:
        try:
            parse_cpulist_strict(cpus)
        except ValueError as err:
            raise ValueError(f"cpus {cpus!r}: {err}") from None


class Peers(_Strict):
    """A peer may connect when its uid is listed OR its primary gid is listed. ``users`` and
    ``groups`` are names, added to ``uids``/``gids`` when the policy loads (``resolve_peers``):
    the agent's system user gets its uid only at install time."""

    uids: list[int] = [0]
    gids: list[int] = []
    users: list[str] = []
    groups: list[str] = []


def resolve_peers(peers: Peers, source: str) -> tuple[Peers, list[str]]:
    """``users``/``groups`` looked up on this host and merged into ``uids``/``gids``, and a note
    for each name that does not exist (it admits nobody; the helper still starts, and the agent
    it would have admitted is refused with a reason in its own log)."""
    import grp
    import pwd

    uids, gids, notes = list(peers.uids), list(peers.gids), []
    for name in peers.users:
        try:
            uids.append(pwd.getpwnam(name).pw_uid)
        except KeyError:
            notes.append(f"{source}: peers.users: no user {name!r} on this host, so it admits nobody "
                         f"(create it: useradd --system {name})")
    for name in peers.groups:
        try:
            gids.append(grp.getgrnam(name).gr_gid)
        except KeyError:
            notes.append(f"{source}: peers.groups: no group {name!r} on this host, so it admits nobody")
    return peers.model_copy(update={"uids": sorted(set(uids)), "gids": sorted(set(gids))}), notes


class Limits(_Strict):
    max_request_bytes: int = Field(default=65536, ge=256, le=1 << 20)
    rate_per_s: float = Field(default=5.0, gt=0)  # sustained requests per second per peer uid
    burst: int = Field(default=20, ge=1)
    conn_timeout_s: float = Field(default=10.0, gt=0, le=600)  # idle time before closing
    first_byte_timeout_s: float = Field(default=2.0, gt=0, le=60)  # a fresh connection's silence
    request_timeout_s: float = Field(default=5.0, gt=0, le=600)  # a started line must end by then
    max_connections: int = Field(default=16, ge=1, le=1024)


# How the policy confines each kind of target (``Knob.target_kind``).
_KIND_MODEL: dict[TargetKind, type[BaseModel]] = {
    "cgroup": CgroupRule, "key": SysctlRule, "choice": ChoiceRule, "service": AffinityRule,
    "restart": ThreadsRule,
}


def helper_knobs() -> dict[str, TargetKind]:
    """Registry knobs the helper writes, with the kind of target each takes."""
    return {n: k.target_kind for n, k in KNOBS.items() if k.needs_helper and not k.advisory}


def rule_model(name: str) -> type[BaseModel] | None:
    """The policy table model for knob ``name``; None when the helper does not write it."""
    kind = helper_knobs().get(name)
    return None if kind is None else _KIND_MODEL[kind]


class Policy(_Strict):
    peers: Peers = Peers()
    limits: Limits = Limits()
    knob: dict[str, CgroupRule | SysctlRule | ChoiceRule | AffinityRule | ThreadsRule] = {}
    service: dict[str, Service] = {}
    source: str | None = Field(default=None, exclude=True)
    notes: list[str] = Field(default=[], exclude=True)  # what loading found odd (unknown peer names)

    @model_validator(mode="before")
    @classmethod
    def _typed_knobs(cls, data):
        """Pick each knob's rule model from its name so errors name the right fields."""
        if not isinstance(data, dict):
            return data
        knobs = data.get("knob", {})
        if isinstance(knobs, dict):
            typed = {}
            for name, body in knobs.items():
                model = rule_model(name)
                if model is None:
                    raise ValueError(
                        f"knob {name!r}: the helper does not know this knob (expected one of "
                        f"{', '.join(sorted(helper_knobs()))})"
                    )
                try:
                    typed[name] = model.model_validate(body)
                except ValidationError as err:
                    raise ValueError("; ".join(
                        f"knob.{name}.{'.'.join(str(p) for p in e['loc']) or '(table)'}: {e['msg']}"
                        for e in err.errors()
                    )) from None
            data = {**data, "knob": typed}
        services = data.get("service", {})
        if isinstance(services, dict):
            data = {**data, "service": {
                n: ({**b, "name": n} if isinstance(b, dict) else b) for n, b in services.items()
            }}
        return data

    @model_validator(mode="after")
    def _services_defined(self) -> "Policy":
        for name, rule in self.knob.items():
            if isinstance(rule, AffinityRule | ThreadsRule):
                missing = [s for s in rule.services if s not in self.service]
                if missing:
                    raise ValueError(f"knob {name!r} names services without a [service.<name>] "
                                     f"table: {missing}")
            if isinstance(rule, ThreadsRule):
                bare = [s for s in rule.services if not (self.service[s].threads and self.service[s].threads.has_lever)]
                if bare:
                    raise ValueError(f"knob {name!r}: services {bare} declare no restart path: give "
                                     "[service.<name>.threads] unit + env (or exec_start), or env_file + "
                                     "env + restart_command")
        return self

    def rule(self, knob: str):
        return self.knob.get(knob)


def sysctl_key(target: str) -> str | None:
    """Canonical dotted key ("vm/swappiness" -> "vm.swappiness"), or None if malformed."""
    key = target.strip().replace("/", ".")
    parts = key.split(".")
    ok = all(p and p not in (".", "..") and all(c.isalnum() or c in "_-" for c in p) for p in parts)
    return key if ok and len(parts) >= 2 and key.isascii() else None


def insecure_reason(path: Path, st: os.stat_result) -> str | None:
    """Why a policy file with this stat is not trustworthy, or None."""
    if not stat.S_ISREG(st.st_mode):
        return f"policy file {path} is not a regular file"
    if st.st_uid != 0:
        return f"policy file {path} is owned by uid {st.st_uid}, not root: chown root:root {path}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"policy file {path} is group/world-writable (mode {stat.S_IMODE(st.st_mode):04o}): "
                f"chmod 0644 {path}")
    for parent in path.parents:
        pst = parent.stat()
        if pst.st_uid != 0:
            return f"directory {parent} holding the policy is owned by uid {pst.st_uid}, not root"
        if pst.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not pst.st_mode & stat.S_ISVTX:
            return f"directory {parent} holding the policy is group/world-writable"
    return None


def load_policy(path: str | os.PathLike[str], *, require_root_owned: bool = True) -> Policy:
    """Read, ownership-check (on the open fd, no race) and validate a policy file."""
    p = Path(path).absolute()
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise ConfigError(f"{p}: policy file not found") from err
    except OSError as err:
        raise ConfigError(f"{p}: cannot open policy ({err.strerror}; symlinks are refused)") from err
    with os.fdopen(fd, "rb") as fh:
        if require_root_owned:
            why = insecure_reason(p, os.fstat(fh.fileno()))
            if why:
                raise ConfigError(f"refusing to start: {why}")
        raw = fh.read(1 << 20)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(not_utf8(p, err)) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: not valid TOML: {err}") from err
    try:
        pol = Policy.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(str(p), err)) from err
    except ValueError as err:  # raised by the before-validator
        raise ConfigError(f"{p}: {err}") from err
    peers, notes = resolve_peers(pol.peers, str(p))  # the caller shows the notes
    return pol.model_copy(update={"source": str(p), "peers": peers, "notes": notes})
