"""Time filters and JSON/CSV export of audit events (pure; used by ``autotune audit list``).

CSV holds one event per line in trail column order; ``test``/``detail`` are their canonical
JSON text and an empty cell means null, so an export re-hashes to the same chain.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from pydantic import TypeAdapter

from autotune.audit.trail import COLUMNS, AuditEvent, canonical_json

_REL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_INT_COLS = {"id", "action_id"}
_FLOAT_COLS = {"ts", "objective_before", "objective_after"}


def parse_when(text: str, now: float) -> float:
    """"2h"/"7d"/"30m"/"45s"/"1w" ago, an ISO 8601 time (naive = local time) or unix seconds."""
    m = _REL.match(text)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as err:
        raise ValueError(
            f"time {text!r}: use an ISO time like 2024-05-01T12:00, unix seconds, or a relative age like 2h, 7d"
        ) from err
    return dt.timestamp()


def iso(ts: float) -> str:
    """Unix seconds -> local ISO time with offset, second precision (for humans)."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).astimezone().isoformat(timespec="seconds")


_LIST = TypeAdapter(list[AuditEvent])


def to_json(events: Iterable[AuditEvent]) -> str:
    """JSON array of events (pydantic's serializer: ~10x faster than json.dumps on 100k events)."""
    return _LIST.dump_json(list(events), indent=2).decode()


def from_json(text: str) -> list[AuditEvent]:
    return _LIST.validate_json(text)


def to_csv(events: Iterable[AuditEvent]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for e in events:
        row = e.row()
        w.writerow(["" if row[c] is None else (repr(row[c]) if isinstance(row[c], float) else row[c])
                    for c in COLUMNS])
    return buf.getvalue()


def from_csv(text: str) -> list[AuditEvent]:
    out = []
    for rec in csv.DictReader(io.StringIO(text)):
        d: dict[str, Any] = {}
        for c in COLUMNS:
            v = rec.get(c, "")
            if v == "":
                d[c] = None
            elif c in _INT_COLS:
                d[c] = int(v)
            elif c in _FLOAT_COLS:
                d[c] = float(v)
            elif c in ("test", "detail"):
                d[c] = json.loads(v)
            else:
                d[c] = v
        if d["detail"] is None:
            d["detail"] = {}
        out.append(AuditEvent.model_validate(d))
    return out


__all__ = ["parse_when", "iso", "to_json", "from_json", "to_csv", "from_csv", "canonical_json"]
