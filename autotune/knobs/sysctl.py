"""``sysctl``: any /proc/sys key ("vm.swappiness" or "vm/swappiness").

Which keys and ranges may be changed is the privileged helper's policy; this knob only checks
that the key is well formed and the value is a plausible single line. Values are compared
field-wise after whitespace normalization, so "4096\t87380 6291456" equals "4096 87380 6291456".
"""

from __future__ import annotations

import re
import stat

from autotune.errors import InvalidValue, MissingFile
from autotune.host import Host
from autotune.knobs._util import invalid
from autotune.knobs.base import Knob, KnobState

SYSCTL_ROOT = "/proc/sys"
_KEY_RE = re.compile(r"^[a-z0-9_.\-/]+$")
_RULE_KEY_RE = re.compile(r"[a-z0-9_]+(\.[a-zA-Z0-9_-]+)+")  # rules name keys dotted


def sysctl_path(target: str) -> str:
    """Host path of a sysctl key. Dotted keys map '.'->'/'; slashed keys are kept as written
    (so a key part that itself contains a dot, e.g. a VLAN device "eth0.100", needs '/' form)."""
    key = target.strip()
    if not key or not _KEY_RE.match(key):
        raise InvalidValue(f"sysctl key {target!r} is malformed: use characters [a-z0-9_.-/], "
                           "e.g. 'vm.swappiness'")
    rel = key.strip("/") if "/" in key else key.replace(".", "/")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts) or len(parts) < 2:
        raise InvalidValue(f"sysctl key {target!r} is malformed: empty part or '..'")
    return f"{SYSCTL_ROOT}/{rel}"


def normalize(text: str) -> str:
    """Whitespace-normalize; integer fields lose leading zeros/plus signs ("060" -> "60")."""
    out = []
    for f in text.split():
        try:
            out.append(str(int(f)))
        except ValueError:
            out.append(f)
    return " ".join(out)


class Sysctl(Knob):
    name = "sysctl"
    description = "kernel parameter under /proc/sys (value: the key's own format)"
    target_kind = "key"
    numeric = True  # single-number keys step; multi-field values compare field by field

    def canonical(self, value: str) -> str:
        return normalize(value)

    def check_target(self, target: str) -> None:
        if not _RULE_KEY_RE.fullmatch(target):
            raise InvalidValue(f"sysctl target must be a key like 'vm.swappiness', got {target!r}")

    def host_files(self, host: Host, target: str) -> frozenset[str] | None:
        return frozenset({sysctl_path(target)})

    def read(self, host: Host, target: str) -> KnobState:
        path = sysctl_path(target)
        try:
            raw = host.read_text(path)
        except MissingFile as err:
            raise MissingFile(f"sysctl {target!r}: {path} does not exist on this kernel") from err
        return KnobState(knob=self.name, target=target, value=normalize(raw), raw={path: raw})

    def validate(self, host: Host, target: str, value: str) -> str:
        path = sysctl_path(target)
        norm = normalize(str(value))
        if not norm:
            raise invalid(self.name, target, value, "is empty")
        if any(ord(c) < 32 and c not in " \t\n" for c in str(value)) or "\n" in str(value).strip():
            raise invalid(self.name, target, value, "must be a single line without control chars")
        local = host.path(path)
        if not local.exists():
            raise invalid(self.name, target, value, f"cannot be set: {path} does not exist")
        if local.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0:
            raise invalid(self.name, target, value, f"cannot be set: {path} is read-only")
        return norm

    def write(self, host: Host, target: str, value: str) -> None:
        host.write_text(sysctl_path(target), value)
