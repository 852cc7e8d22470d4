"""Knob ``admission``: the gate's PSI threshold and concurrency limit, set over HTTP.

Target: the gate's control URL ("http://127.0.0.1:8100"). Value: comma-separated settings,
normalized to ``threshold=40,limit=4,min_limit=1,max_limit=64,min_threshold=10,
max_threshold=90,adaptive=on`` (thresholds in percent of PSI some avg10, or "off"). A proposal
may name a subset ("limit=6"): the rest is taken from the gate's current settings.

With ``adaptive=on`` the gate moves ``threshold`` and ``limit`` itself, by design: they are its
controller's state, so ``same`` ignores them and only the bounds and the mode count as our
value (otherwise every adaptation would read as drift and the target would go unmanaged). To
steer an adaptive gate, set the bounds: ``min_threshold=90`` stops it holding on pressure. Read = GET /gate/status; write = POST /gate/config;
restore = POST the recorded settings back. Nothing here touches host files, so the Host's
``writable`` flag does not apply; dry run is still ``change(dry_run=True)``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, ClassVar

from autotune.errors import HostError, InvalidValue, TargetGone
from autotune.host import Host
from autotune.knobs.base import Knob, KnobState
from autotune.knobs.grammar import parse_decimal_strict, parse_int_strict

if TYPE_CHECKING:
    import httpx

    from autotune.config import Config

KEYS = ("threshold", "limit", "min_limit", "max_limit", "min_threshold", "max_threshold", "adaptive")
PERCENT_KEYS = ("threshold", "min_threshold", "max_threshold")
ADAPTED = ("threshold", "limit")  # moved by the gate itself while adaptive=on
# our key -> /gate/config field
FIELDS = {"threshold": "threshold_pct", "limit": "limit", "min_limit": "min_limit",
          "max_limit": "max_limit", "min_threshold": "min_threshold_pct",
          "max_threshold": "max_threshold_pct", "adaptive": "adaptive"}


def parse_value(value: str) -> dict[str, str]:
    """'threshold=40, limit=4' -> {'threshold': '40', 'limit': '4'} with each value checked."""
    out: dict[str, str] = {}
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, val = part.partition("=")
        key, val = key.strip(), val.strip().lower()
        if not sep or key not in KEYS:
            raise InvalidValue(f"admission: {part!r} is not KEY=VALUE with KEY in {', '.join(KEYS)}")
        if key in PERCENT_KEYS:
            if key == "threshold" and val in ("off", "none"):
                val = "off"
            else:
                try:
                    t = float(parse_decimal_strict(val))
                except ValueError as err:
                    hint = " or 'off'" if key == "threshold" else ""
                    raise InvalidValue(f"admission: {key}={val!r} is not a number{hint}") from err
                if not 0 <= t <= 100:
                    raise InvalidValue(f"admission: {key}={val} outside 0..100 (percent PSI some avg10)")
                val = f"{t:g}"
        elif key == "adaptive":
            if val not in ("on", "off", "true", "false", "1", "0"):
                raise InvalidValue(f"admission: adaptive={val!r}; use on or off")
            val = "on" if val in ("on", "true", "1") else "off"
        else:
            try:
                n = parse_int_strict(val, signed=True)
            except ValueError as err:
                raise InvalidValue(f"admission: {key}={val!r} is not an integer") from err
            if n < 1:
                raise InvalidValue(f"admission: {key}={n} must be >= 1")
            val = str(n)
        out[key] = val
    if not out:
        raise InvalidValue("admission: empty value; e.g. 'threshold=40,limit=4'")
    return out


def format_value(settings: dict[str, str]) -> str:
    return ",".join(f"{k}={settings[k]}" for k in KEYS if k in settings)


def settings_from_status(status: dict) -> dict[str, str]:
    t = status.get("threshold_pct")
    return {
        "threshold": "off" if t is None else f"{float(t):g}",
        "limit": str(int(status["limit"])),
        "min_limit": str(int(status["min_limit"])),
        "max_limit": str(int(status["max_limit"])),
        "min_threshold": f"{float(status['min_threshold_pct']):g}",
        "max_threshold": f"{float(status['max_threshold_pct']):g}",
        "adaptive": "on" if status.get("adaptive") else "off",
    }


def config_body(settings: dict[str, str]) -> dict:
    body: dict = {}
    for key, val in settings.items():
        if key in PERCENT_KEYS:
            body[FIELDS[key]] = None if val == "off" else float(val)
        elif key == "adaptive":
            body["adaptive"] = val == "on"
        else:
            body[FIELDS[key]] = int(val)
    return body


class AdmissionKnob(Knob):
    name: ClassVar[str] = "admission"
    description: ClassVar[str] = "Admission gate: PSI threshold (%) and concurrency limit (POST /gate/config)"
    target_kind = "service"
    needs_helper = False  # the gate's HTTP control API is unprivileged: the agent applies it

    def resolve_target(self, host: Host, cfg: Config, target: str) -> str:
        """Rules name the service; the knob talks to its gate (config ``admission_url``)."""
        if "://" in target:
            return target
        try:
            url = cfg.service(target).admission_url
        except KeyError:
            url = None
        if not url:
            raise TargetGone(f"admission: service {target!r} has no admission_url (no gate in "
                             "front of it)")
        return url

    def __init__(self, *, timeout: float = 5.0, transport: httpx.BaseTransport | None = None) -> None:
        self.timeout = timeout
        self.transport = transport  # tests inject a transport

    def _client(self) -> httpx.Client:
        import httpx  # here, not at import: the agent loads every knob, and only a gate needs it (~8 MB)

        return httpx.Client(timeout=self.timeout, transport=self.transport)

    def _status(self, target: str) -> dict:
        import httpx

        url = f"{target.rstrip('/')}/gate/status"
        try:
            with self._client() as c:
                resp = c.get(url)
                resp.raise_for_status()
                return resp.json()
        except httpx.ConnectError as err:
            raise TargetGone(f"admission: no gate answering at {url} (is `autotune gate` running?)") from err
        except (httpx.HTTPError, json.JSONDecodeError) as err:
            raise HostError(f"admission: cannot read {url}: {err}") from err

    def read(self, host: Host, target: str) -> KnobState:
        try:
            settings = settings_from_status(self._status(target))
        except (KeyError, TypeError, ValueError) as err:
            raise HostError(f"admission: {target}/gate/status lacks or garbles {err}") from err
        value = format_value(settings)
        return KnobState(knob=self.name, target=target, value=value, raw={"gate_config": value})

    def validate(self, host: Host, target: str, value: str) -> str:
        asked = parse_value(value)
        proposed = dict(asked)
        if set(proposed) != set(KEYS):  # partial: fill the rest from the live gate
            current = parse_value(self.read(host, target).value)
            proposed = {**current, **proposed}
        lo, hi, lim = int(proposed["min_limit"]), int(proposed["max_limit"]), int(proposed["limit"])
        if lo > hi:
            raise InvalidValue(f"admission: min_limit {lo} > max_limit {hi}")
        if not lo <= lim <= hi:
            raise InvalidValue(f"admission: limit {lim} outside [min_limit {lo}, max_limit {hi}]")
        tlo, thi = float(proposed["min_threshold"]), float(proposed["max_threshold"])
        if tlo > thi:
            raise InvalidValue(f"admission: min_threshold {tlo:g} > max_threshold {thi:g}")
        if proposed["threshold"] != "off":
            t = float(proposed["threshold"])
            if not tlo <= t <= thi:
                if "threshold" in asked:
                    raise InvalidValue(f"admission: threshold {t:g} outside [min_threshold {tlo:g}, "
                                       f"max_threshold {thi:g}]")
                proposed["threshold"] = f"{min(max(t, tlo), thi):g}"  # the gate clamps it the same way
        return format_value(proposed)

    def write(self, host: Host, target: str, value: str) -> None:
        import httpx

        url = f"{target.rstrip('/')}/gate/config"
        body = config_body(parse_value(value))
        try:
            with self._client() as c:
                resp = c.post(url, json=body)
        except httpx.ConnectError as err:
            raise TargetGone(f"admission: no gate answering at {url}") from err
        except httpx.HTTPError as err:
            raise HostError(f"admission: POST {url} failed: {err}") from err
        if resp.status_code != 200:
            try:
                msg = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                msg = resp.text[:200]
            raise HostError(f"admission: gate refused {value!r} (HTTP {resp.status_code}): {msg}")

    def restore(self, host: Host, state: KnobState) -> None:
        self.write(host, state.target, state.raw.get("gate_config", state.value))

    def same(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None or a == b:
            return a == b
        try:
            pa, pb = parse_value(a), parse_value(b)
        except InvalidValue:
            return False  # a malformed value differs; validate names what is wrong with it
        adaptive = pa.get("adaptive") == pb.get("adaptive") == "on"
        common = set(pa) & set(pb)
        if not common:  # partial values about different settings say nothing about each other
            return False
        for key in common:
            x, y = pa[key], pb[key]
            if adaptive and key in ADAPTED and not (key == "threshold" and "off" in (x, y)):
                continue  # the gate's own controller moves these; not drift
            if key in PERCENT_KEYS and "off" not in (x, y):
                if abs(float(x) - float(y)) > 0.01:
                    return False
            elif x != y:
                return False
        return True
