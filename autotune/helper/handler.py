"""Request -> decision -> response, independent of sockets (so it is testable without one).

Order of checks for a change: policy knows the knob -> target confined -> the knob's own raw
files confined -> optional drift check (expect_before) -> knob normalizes the value -> policy
range on the normalized value -> ``Knob.change`` (read, record origin, write, read back).
A restore writes a client's raw record verbatim only when it is a prior state this helper
itself recorded; any other restore becomes an ordinary, range-checked apply of its value.
Every line read gets exactly one answer: anything raised while handling it becomes a refusal
code (``internal`` only for a genuine bug), never a dropped connection.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from autotune.errors import (
    ConfigError, HostError, InvalidValue, MissingFile, PolicyRefused, TargetGone,
)
from autotune.helper import allow
from autotune.errors import PolicyRefused
from autotune.helper.allow import Resolver, Target
from autotune.helper.confined import ConfinedHost, SymlinkRefused
from autotune.helper.policy import Policy
from autotune.helper.protocol import (
    PROTOCOL_VERSION, ApplyRequest, BadRequest, PingRequest, ReadRequest, Response, RestoreRequest,
    Result, parse_request,
)
from autotune.host import Host
from autotune.knobs.base import Knob, KnobState

log = logging.getLogger("autotune.helper")

DecisionHook = Callable[[dict], None]
# Alive(knob, target, records) -> keep this entry? (the Helper prunes with its policy and host)
Alive = Callable[[str, str, list[dict[str, str]]], bool]
MAX_ORIGINS_PER_TARGET = 16  # the first (the true original) is always kept
MAX_ORIGIN_TARGETS = 256
_SEP = "\x1f"
QUIET_MAX = 1024  # refused reads remembered as already logged (Helper._level)


class Origins:
    """Prior states this helper saw before its own writes: the only raw records it restores.

    Kept in memory and, with ``path``, in a root-owned JSON file (atomic replace) so a helper
    restart does not forget them. Keyed by the knob and the target's ONE spelling
    (``Target.canonical``), so '//a//b/' and '/a/b' share an entry. Bounded: at most
    ``MAX_ORIGINS_PER_TARGET`` records per target and ``max_targets`` targets; past that, entries
    ``alive`` rejects (a deleted cgroup, a knob no longer in policy) go first, then the least
    recently recorded.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 max_targets: int = MAX_ORIGIN_TARGETS) -> None:
        self.path = Path(path) if path else None
        self.max_targets = max_targets
        self.alive: Alive | None = None
        self._data: dict[str, list[dict[str, str]]] = {}
        if self.path and self.path.exists():
            try:
                loaded = json.loads(self.path.read_text())
                self._data = {
                    k: [{str(p): str(c) for p, c in r.items()} for r in v][-MAX_ORIGINS_PER_TARGET:]
                    for k, v in loaded.items() if isinstance(k, str) and _SEP in k and isinstance(v, list)
                }
            except (OSError, ValueError, TypeError, AttributeError) as err:
                log.warning("origins file %s unreadable, starting empty: %s", self.path, err)
                self._data = {}

    @staticmethod
    def _key(knob: str, target: str) -> str:
        return f"{knob}{_SEP}{target}"

    def entries(self) -> list[tuple[str, str, list[dict[str, str]]]]:
        return [(*k.split(_SEP, 1), v) for k, v in self._data.items()]  # type: ignore[misc]

    def record(self, knob: str, target: str, raw: dict[str, str]) -> None:
        """Remember ``raw`` for the target's canonical spelling ``target``."""
        key = self._key(knob, target)
        lst = self._data.pop(key, [])
        self._data[key] = lst  # most recently recorded last
        if dict(raw) in lst:
            return
        lst.append(dict(raw))
        if len(lst) > MAX_ORIGINS_PER_TARGET:
            del lst[1:len(lst) - MAX_ORIGINS_PER_TARGET + 1]
        if len(self._data) > self.max_targets:
            self.prune()
        self._save()

    def known(self, knob: str, target: str, raw: dict[str, str]) -> bool:
        return dict(raw) in self._data.get(self._key(knob, target), [])

    def rekey(self, canonical: Callable[[str, str], str | None]) -> None:
        """Merge entries written under other spellings (older helpers keyed by the target as
        the client spelled it) into the canonical one; drop those that have none."""
        merged: dict[str, list[dict[str, str]]] = {}
        for knob, target, recs in self.entries():
            canon = canonical(knob, target)
            if canon is None:
                continue
            lst = merged.setdefault(self._key(knob, canon), [])
            lst += [r for r in recs if r not in lst]
            del lst[1:max(1, len(lst) - MAX_ORIGINS_PER_TARGET + 1)]
        if merged != self._data:
            log.info("origins: %d entries under %d canonical targets", len(self._data), len(merged))
            self._data = merged
            self._save()

    def prune(self) -> None:
        """Drop entries ``alive`` rejects, then the least recently recorded past the cap."""
        before = len(self._data)
        if self.alive is not None:
            self._data = {k: v for k, v in self._data.items()
                          if self.alive(*k.split(_SEP, 1), v)}  # type: ignore[misc]
        while len(self._data) > self.max_targets:
            self._data.pop(next(iter(self._data)))
        if len(self._data) != before:
            log.info("origins: pruned %d entries (targets gone or over %d)",
                     before - len(self._data), self.max_targets)
            self._save()

    def _save(self) -> None:
        if not self.path:
            return
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".origins.")
        with os.fdopen(fd, "w") as fh:
            json.dump(self._data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


def default_knobs() -> Mapping[str, Knob]:
    """The knob registry, imported lazily; empty (every knob 'not installed') if unavailable."""
    try:
        from autotune.knobs import KNOBS
    except ImportError as err:
        log.error("knob registry autotune.knobs.KNOBS unavailable (%s): every change is refused", err)
        return {}
    return KNOBS


class Helper:
    """Decides and executes one request at a time (a lock serializes all writes).

    The host is always a ``ConfinedHost`` (a plain ``Host`` is wrapped): no symlink below the
    root is followed on any read or write the helper makes.
    """

    def __init__(
        self,
        policy: Policy,
        host: Host,
        *,
        knobs: Mapping[str, Knob] | None = None,
        resolver: Resolver | None = None,
        origins: Origins | None = None,
        on_decision: DecisionHook | None = None,
    ) -> None:
        self.policy = policy
        self.host = ConfinedHost.of(host)
        self._knobs = knobs
        self.resolver = resolver
        self.origins = origins if origins is not None else Origins()
        self.origins.alive = self._origin_alive
        self.origins.rekey(lambda knob, target: allow.canonical_spelling(policy, knob, target))
        self.origins.prune()
        self.on_decision = on_decision
        self._lock = threading.Lock()
        self._quiet: set[tuple] = set()  # refused reads already logged at WARNING (``_level``)

    def _origin_alive(self, knob: str, target: str, records: list[dict[str, str]]) -> bool:
        """Keep an origin while policy allows its knob and (for file records) a file of its
        latest record still exists: a deleted cgroup's entry goes."""
        if self.policy.rule(knob) is None:
            return False
        paths = [p for p in (records[-1] if records else {}) if p.startswith("/")]
        if not paths:
            return True  # tid:<n> / service records: bounded by the policy's services
        try:
            return any(self.host.exists(p) for p in paths)
        except (HostError, OSError):
            return False

    @property
    def knobs(self) -> Mapping[str, Knob]:
        if self._knobs is None:
            self._knobs = default_knobs()
        return self._knobs

    # -- entry points ---------------------------------------------------------------------
    def handle_line(self, line: bytes, peer: dict | None = None) -> Response:
        """Parse and handle one request line; never raises, always answers and audits."""
        try:
            req = parse_request(line)
        except BadRequest as err:
            resp = Response.refuse("bad_request", err.reason, err.request_id)
            self.decide(peer, None, resp)
            return resp
        except Exception as err:  # a parser bug must still be answered
            log.exception("internal error parsing a request line")
            resp = Response.refuse("internal", f"{type(err).__name__} while parsing the request")
            self.decide(peer, None, resp)
            return resp
        return self.handle(req, peer)

    def handle(self, req, peer: dict | None = None) -> Response:
        rid = getattr(req, "request_id", None)
        try:
            with self._lock:
                resp = self._dispatch(req)
        except PolicyRefused as err:
            resp = Response.refuse(err.code, err.reason, rid)
        except InvalidValue as err:
            resp = Response.refuse("invalid_value", str(err), rid)
        except (TargetGone, MissingFile) as err:
            resp = Response.refuse("target_gone", str(err), rid)
        except SymlinkRefused as err:
            resp = Response.refuse("target_refused", str(err), rid)
        except PolicyRefused as err:
            resp = Response.refuse("target_refused", err.reason, rid)
        except (HostError, ConfigError) as err:
            resp = Response.refuse("host_error", str(err), rid)
        except OSError as err:  # the host said no (ENAMETOOLONG, EACCES...): not a helper bug
            resp = Response.refuse("host_error", f"{getattr(req, 'target', '')}: {err.strerror or err}", rid)
        except Exception as err:  # a helper bug must not stop the service
            log.exception("internal error handling %r", req)
            resp = Response.refuse("internal", f"{type(err).__name__}: {err}", rid)
        resp.request_id = rid
        self.decide(peer, req, resp)
        return resp

    def decide(self, peer: dict | None, req, resp: Response) -> None:
        """Log one decision and hand it to the audit hook (hook errors never propagate)."""
        event = {
            "peer": peer,
            "op": getattr(req, "op", None),
            "knob": getattr(req, "knob", None),
            "target": getattr(req, "target", None),
            "value": getattr(req, "value", None),
            "dry_run": getattr(req, "dry_run", None),
            "request_id": getattr(req, "request_id", None),
            "ok": resp.ok,
            "code": resp.error.code if resp.error else None,
            "reason": resp.error.reason if resp.error else None,
            "changed": resp.result.changed if resp.result else None,
        }
        log.log(self._level(event), "decision %s", {k: v for k, v in event.items() if v is not None})
        if self.on_decision is not None:
            try:
                self.on_decision(event)
            except Exception:
                log.exception("on_decision hook failed")

    def _level(self, event: dict) -> int:
        """Writes are INFO (WARNING when refused). Reads are the agent's routine: DEBUG, and a
        refused read WARNING only the first time per (uid, knob, target, code), since the agent
        asks again every tick (a host without cpufreq answers 'target_gone' for the governor
        every few seconds); the on_decision hook still sees every one."""
        if event["op"] != "read":
            return logging.INFO if event["ok"] else logging.WARNING
        if event["ok"]:
            return logging.DEBUG
        key = ((event["peer"] or {}).get("uid"), event["knob"], event["target"], event["code"])
        if key in self._quiet:
            return logging.DEBUG
        if len(self._quiet) < QUIET_MAX:
            self._quiet.add(key)
        return logging.WARNING

    # -- operations -----------------------------------------------------------------------
    def _dispatch(self, req) -> Response:
        if isinstance(req, PingRequest):
            return Response(ok=True, result=Result(version=PROTOCOL_VERSION))
        if isinstance(req, ReadRequest):
            return self._read(req)
        if isinstance(req, ApplyRequest):
            return self._apply(req)
        if isinstance(req, RestoreRequest):
            return self._restore(req)
        raise PolicyRefused("bad_request", f"unknown op {getattr(req, 'op', None)!r}")  # pragma: no cover

    def _knob_and_target(self, knob_name: str, target: str) -> tuple[Knob, Target]:
        t = allow.check_target(self.policy, self.host, knob_name, target, self.resolver)
        knob = self.knobs.get(knob_name)
        if knob is None:
            raise PolicyRefused("unknown_knob", f"knob {knob_name!r} is allowed by policy but not installed")
        return knob, t

    def _client_state(self, t: Target, state: KnobState | None) -> KnobState | None:
        """Report states under the client's own target name (a service, not its pids)."""
        if state is None or state.target == t.client_target:
            return state
        return state.model_copy(update={"target": t.client_target})

    def _read_checked(self, knob: Knob, t: Target) -> KnobState:
        try:
            state = knob.read(self.host, t.knob_target)
        except SymlinkRefused as err:
            allow.check_paths(self.policy, self.host, t, knob, [err.path])  # names where it leads
            raise
        allow.check_paths(self.policy, self.host, t, knob, state.raw.keys())
        return state

    def _read(self, req: ReadRequest) -> Response:
        knob, t = self._knob_and_target(req.knob, req.target)
        return Response(ok=True, result=Result(before=self._client_state(t, self._read_checked(knob, t))))

    def _apply(self, req: ApplyRequest) -> Response:
        knob, t = self._knob_and_target(req.knob, req.target)
        before = self._read_checked(knob, t)
        if req.expect_before is not None:
            try:
                expected = knob.validate(self.host, t.knob_target, req.expect_before)
            except InvalidValue:
                expected = req.expect_before  # compared as given: a malformed value differs
            if not knob.same(before.value, expected):
                raise PolicyRefused("drift", f"{req.knob} on {req.target} is {before.value!r}, client expected "
                                       f"{req.expect_before!r}: someone else changed it")
        proposed = knob.validate(self.host, t.knob_target, req.value)
        allow.check_value(self.host, t, proposed, before.value)
        return self._change(knob, t, proposed, dry_run=req.dry_run)

    def _change(self, knob: Knob, t: Target, value: str, *, dry_run: bool) -> Response:
        def record(before: KnobState, _proposed: str) -> None:
            allow.check_paths(self.policy, self.host, t, knob, before.raw.keys())
            self.origins.record(t.knob, t.canonical, before.raw)

        res = knob.change(self.host, t.knob_target, value, dry_run=dry_run, before_write=record)
        return Response(ok=True, result=Result(
            before=self._client_state(t, res.before), after=self._client_state(t, res.after),
            proposed=res.proposed, changed=res.changed, dry_run=res.dry_run,
        ))

    def _restore(self, req: RestoreRequest) -> Response:
        knob, t = self._knob_and_target(req.knob, req.target)
        allow.check_paths(self.policy, self.host, t, knob, req.state.raw.keys())
        current = self._read_checked(knob, t)
        if req.state.raw and self.origins.known(req.knob, t.canonical, dict(req.state.raw)):
            # Exactly a state this helper saw before its own write: put it back verbatim.
            state = KnobState(knob=req.knob, target=t.knob_target, value=req.state.value,
                              raw=dict(req.state.raw))
            if dict(state.raw) == dict(current.raw):
                return Response(ok=True, result=Result(before=self._client_state(t, current),
                                                       proposed=state.value))
            knob.restore(self.host, state)
            after = knob.read(self.host, t.knob_target)
            return Response(ok=True, result=Result(
                before=self._client_state(t, current), after=self._client_state(t, after),
                proposed=state.value, changed=True,
            ))
        # Unknown record: never write client-supplied raw bytes; treat it as a checked apply.
        proposed = knob.validate(self.host, t.knob_target, req.state.value)
        allow.check_value(self.host, t, proposed, current.value)
        return self._change(knob, t, proposed, dry_run=False)
