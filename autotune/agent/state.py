"""What the agent keeps across restarts besides samples, journal and audit trail: the
detector's memory (when each symptom's breach started), so a restart neither forgets a
sustained breach nor re-announces one. One key-value table, ``agent_state``."""

from __future__ import annotations

import logging

from autotune.detect.symptoms import DetectorState
from autotune.store.db import migrate, transaction

log = logging.getLogger(__name__)

COMPONENT = "agent"


def _v1(db) -> None:
    db.execute("CREATE TABLE agent_state (key TEXT PRIMARY KEY, value TEXT NOT NULL, ts REAL NOT NULL)")


MIGRATIONS = [_v1]


def load_detector(db) -> DetectorState:
    """The saved detector state; a fresh one when none was saved or it cannot be read."""
    migrate(db, COMPONENT, MIGRATIONS)
    row = db.execute("SELECT value FROM agent_state WHERE key='detector'").fetchone()
    if row is None:
        return DetectorState()
    try:
        return DetectorState.model_validate_json(row[0])
    except ValueError as err:  # an old or garbled state only costs the detector's memory
        log.warning("ignoring unreadable detector state: %s", err)
        return DetectorState()


def save_detector(db, state: DetectorState, ts: float) -> None:
    """Every evaluation. Without an fsync, like the samples (store.db.transaction): it survives
    kill -9 of the agent, and a power loss costs at most the last seconds of detector memory,
    not a decision; the fsync was 7 % of the agent's sampled stacks."""
    with transaction(db, durable=False):
        db.execute(
            "INSERT INTO agent_state(key, value, ts) VALUES ('detector', ?, ?) ON CONFLICT(key)"
            " DO UPDATE SET value=excluded.value, ts=excluded.ts",
            [state.model_dump_json(), ts],
        )
