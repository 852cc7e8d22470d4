"""``sysctl``: any /proc/sys key ("vm.swappiness" or "vm/swappiness").

Which keys and ranges may be changed is the privileged helper's policy; this knob checks that
the key is well formed and the value is one the kernel takes. A key whose current value is all
integers is an integer sysctl (``proc_dointvec`` and friends): every field must be a strict
decimal integer (``knobs/grammar.parse_int_strict``; the kernel refuses ``60.5``, ``1e1``, ``+5``
and reads ``010`` as octal), with as many fields as the key has. Any other key takes printable
ASCII fields. Fields are separated by ASCII spaces/tabs, so "4096\t87380 6291456" equals
"4096 87380 6291456".
"""

from __future__ import annotations

import re
import stat

from autotune.errors import InvalidValue, MissingFile
from autotune.host import Host
from autotune.knobs._util import invalid
from autotune.knobs.base import Knob, KnobState
from autotune.knobs.grammar import fields, parse_int_strict, printable_ascii

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


_KERNEL_INT = re.compile(r"-?[0-9]+", re.ASCII)  # how the kernel prints an integer field


def normalize(text: str) -> str:
    """Fields joined by one space ("4096\t87380  6291456" -> "4096 87380 6291456"); nothing
    else changes, so "060" stays "060" (the kernel would read it as octal 48, not 60)."""
    return " ".join(fields(text))


def is_integer_value(text: str) -> bool:
    """Does this (read) value consist of integer fields only, i.e. is the key an integer sysctl?"""
    fs = fields(text)
    return bool(fs) and all(_KERNEL_INT.fullmatch(f) for f in fs)


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
        text = str(value)
        if not printable_ascii(text.strip(" \t\n")):
            raise invalid(self.name, target, value, "must be one line of printable ASCII")
        want = fields(text)
        if not want:
            raise invalid(self.name, target, value, "is empty")
        local = host.path(path)
        if not local.exists():
            raise invalid(self.name, target, value, f"cannot be set: {path} does not exist")
        if local.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0:
            raise invalid(self.name, target, value, f"cannot be set: {path} is read-only")
        current = self.read(host, target).value
        if not is_integer_value(current):
            return " ".join(want)
        try:
            nums = [parse_int_strict(f, signed=True) for f in want]
        except ValueError as err:
            raise invalid(self.name, target, value, f"is not an integer for this integer sysctl: "
                                                    f"{err}") from err
        if len(nums) != len(fields(current)):
            raise invalid(self.name, target, value, f"has {len(nums)} fields; {target} takes "
                                                    f"{len(fields(current))} (now {current!r})")
        return " ".join(map(str, nums))

    def write(self, host: Host, target: str, value: str) -> None:
        host.write_text(sysctl_path(target), value)
