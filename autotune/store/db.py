"""SQLite state store (sqlite-utils), WAL mode, per-component schema migrations.

Each component (samples, journal, audit...) owns its tables and declares an ordered list of
migration steps; ``migrate`` applies the missing ones inside a transaction and records the
version in ``schema_version``. Components never edit each other's tables.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from autotune.errors import HostError

Migration = Callable[[sqlite_utils.Database], None]


def open_db(path: str | os.PathLike[str], *, create_dirs: bool = True) -> sqlite_utils.Database:
    """Open (creating) the state DB in WAL mode with full fsync so commits survive kill -9."""
    p = Path(path)
    if str(p) != ":memory:" and create_dirs:
        p.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(str(p), timeout=30, isolation_level=None, check_same_thread=False)
        # Must precede the first table: lets retention hand freed pages back to the filesystem
        # (``PRAGMA incremental_vacuum``). A no-op on a DB created without it.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error as err:
        raise HostError(f"{p}: cannot open state database ({err})") from err
    db = sqlite_utils.Database(conn)
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " component TEXT PRIMARY KEY, version INTEGER NOT NULL, applied_ts REAL NOT NULL)"
    )
    return db


_LOCK_ATTR = "_autotune_tx_lock"
_LOCK_GUARD = threading.Lock()


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[None]:
    """One write transaction (BEGIN IMMEDIATE ... COMMIT, rollback on error).

    The connection is shared across threads (check_same_thread=False), so components that
    write (samples, journal, ...) serialize through one lock per Database; otherwise a second
    thread's BEGIN would land inside the first one's transaction. Do not nest.
    """
    with _LOCK_GUARD:
        lock = getattr(db, _LOCK_ATTR, None)
        if lock is None:
            lock = threading.RLock()
            setattr(db, _LOCK_ATTR, lock)
    with lock, db.conn:
        db.execute("BEGIN IMMEDIATE")
        yield


def schema_version(db: sqlite_utils.Database, component: str) -> int:
    row = db.execute("SELECT version FROM schema_version WHERE component=?", [component]).fetchone()
    return int(row[0]) if row else 0


def migrate(db: sqlite_utils.Database, component: str, steps: Sequence[Migration]) -> int:
    """Apply steps[version:] for ``component``; each step commits atomically with its version."""
    import time

    current = schema_version(db, component)
    if current > len(steps):
        raise HostError(
            f"state database has {component} schema v{current}, newer than this autotune "
            f"(knows v{len(steps)}); upgrade autotune or use another state path"
        )
    for version, step in enumerate(steps[current:], start=current + 1):
        with transaction(db):  # one transaction per step
            step(db)
            db.execute(
                "INSERT INTO schema_version(component, version, applied_ts) VALUES (?,?,?) "
                "ON CONFLICT(component) DO UPDATE SET version=excluded.version, "
                "applied_ts=excluded.applied_ts",
                [component, version, time.time()],
            )
    return len(steps)
