"""SQLite state store (sqlite-utils), WAL mode, per-component schema migrations.

Each component (samples, journal, audit...) owns its tables and declares an ordered list of
migration steps; ``migrate`` applies the missing ones inside a transaction and records the
version in ``schema_version``. Components never edit each other's tables.

``open_db`` is the one way to open the state DB, and it checks the file before anything trusts
it; every failure is a StateError naming the file and what is wrong, in one line:
- the file: a regular file with the SQLite header, a sane page size and a whole number of
  pages. A zero-byte file is refused: SQLite would take it for an empty database (so `history`
  said "no journal entries" and `audit verify` "OK"), and autotune never leaves one, because a
  new state DB is built in a temporary file and linked into place complete.
- ``PRAGMA quick_check`` (structure of every b-tree page; not index-vs-table contents). It
  costs ~65 ms on a 38 MB audit DB of 100,000 events (page cache warm) and is cut off after
  ``QUICK_CHECK_BUDGET_S``: a bigger file is then checked partly, with a warning.
- the schema: a non-empty DB must have ``schema_version``; ``migrate`` then refuses a component
  newer than this code and one whose recorded tables are gone (``DROP TABLE audit_events``).

``read_only=True`` is for commands that only read (history, audit, status, search). They never
create, migrate or change anything - no file appears beside the DB, no byte of it changes - so
they work on a file the user may only read and on a full disk:
- no ``-wal`` beside the DB (no writer has it open, everything is checkpointed): ``immutable=1``,
  which reads the main file without locks or -wal/-shm files;
- a ``-wal`` and its ``-shm`` (a running agent, or a killed one): ``mode=ro`` reads through them;
- a ``-wal`` without a ``-shm`` (a killed writer whose -shm went away, or garbage): ``mode=ro``
  would create the -shm, so the DB and its -wal are read through a private copy in a temporary
  directory (removed when the connection closes).
If a -wal cannot be read at all (the -shm is unusable and no copy can be made: a full disk), it
falls back to ``immutable=1``: changes still only in the -wal are then not seen, which
``read_note`` reports (``audit verify`` refuses to say OK).
The trade-off of ``immutable=1``: no locks, so a writer that starts *and checkpoints* during
the read could show the reader a half-written page; writers append to the -wal and checkpoint
only every ~1,000 pages or at close, so for a CLI read this window is small.
A component with no schema in a read-only DB is an error, never "0 events": a read-only command
never creates a DB, so there is no "just created" case. Writing commands create what is missing.

A writing open refuses, before anything is created or changed, a DB file or directory it cannot
write (permissions, ``chattr +i``: SQLite would otherwise open it read-only, leave -wal/-shm
behind and fail at the first write) and a DB the read-only checks refuse (they run first,
through the read-only door). It changes nothing an existing DB's header records until the first
write: a foreign or restored DB in rollback-journal mode becomes a WAL DB then, not when a
component's schema check is about to refuse it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import sqlite_utils

from autotune.errors import StateError

log = logging.getLogger(__name__)

Migration = Callable[[sqlite_utils.Database], None]

QUICK_CHECK_BUDGET_S = 5.0
_PROGRESS_EVERY = 20000  # SQLite VM steps between budget checks (~1 ms)
_MAGIC = b"SQLite format 3\x00"
_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " component TEXT PRIMARY KEY, version INTEGER NOT NULL, applied_ts REAL NOT NULL)"
)
# attributes kept on the sqlite_utils.Database by open_db
_PATH, _RO, _NOTE = "_autotune_path", "_autotune_read_only", "_autotune_note"
_WAL_PENDING = "_autotune_wal_pending"  # a rollback-journal DB to switch to WAL at its first write
_OPENED: deque[str] = deque(maxlen=4)  # paths opened by this process, newest last (describe())


def open_db(path: str | os.PathLike[str], *, read_only: bool = False,
            create_dirs: bool = True, probe: bool = False) -> sqlite_utils.Database:
    """Open the state DB, checked (see the module doc); StateError says what is wrong.

    Read-write (the agent, rollback, enable): creates the DB when absent, in WAL mode with full
    fsync so commits survive kill -9. ``read_only``: the file must exist; nothing is written.
    ``probe`` (read-only, for a liveness probe every few seconds and the demo's feed): the same
    door without the integrity check, and a -wal no agent has open is left unread (the main
    file says how old the DB is) instead of copied.
    """
    if str(path) == ":memory:":
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        _pragmas(conn)
        conn.execute(_SCHEMA_TABLE)
        return _wrap(conn, ":memory:", read_only=False, note=None)
    p = Path(path)
    if read_only or probe:
        return _open_read_only(p, probe=probe)
    if create_dirs:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a parent that is a file, /proc, a read-only or foreign dir
            why = ("a file is in the way" if isinstance(err, (FileExistsError, NotADirectoryError))
                   else err.strerror or str(err))
            raise StateError(f"{p}: cannot create its directory {p.parent} ({why}); "
                             "pass --state PATH in a writable directory") from err
    if not p.exists():
        _create(p)
    head = _check_file(p)
    _check_writable(p)
    checked = _open_read_only(p, for_writing=True)  # refuses what readers refuse; changes nothing
    try:
        tables = _tables(checked.conn)
    finally:
        checked.conn.close()
    try:
        conn = sqlite3.connect(str(p), timeout=30, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as err:
        raise StateError(f"{p}: cannot open state database ({err})") from err
    try:
        conn.execute("PRAGMA busy_timeout=30000")
        if not tables:  # a valid but empty SQLite file becomes a new state DB
            _pragmas(conn)
            conn.execute(_SCHEMA_TABLE)
        else:  # an existing DB: nothing its header records changes before the first write
            _connection_pragmas(conn)
    except sqlite3.Error as err:
        conn.close()
        raise describe(err, str(p)) from err
    db = _wrap(conn, str(p), read_only=False, note=None)
    setattr(db, _WAL_PENDING, bool(tables) and head[18:20] != b"\x02\x02")
    return db


def ensure_wal(db: sqlite_utils.Database) -> None:
    """Before the first write on a DB opened in rollback-journal mode (restored from a backup,
    made by another tool): switch it to WAL (see the module doc). Called by ``transaction`` and
    by writers that begin their own transactions."""
    if getattr(db, _WAL_PENDING, False) and not db.conn.in_transaction:
        db.conn.execute("PRAGMA journal_mode=WAL")
        setattr(db, _WAL_PENDING, False)


def read_note(db: sqlite_utils.Database) -> str | None:
    """Why a read-only open could not see everything (its -wal was unreadable), else None."""
    return getattr(db, _NOTE, None)


def db_path(db: sqlite_utils.Database) -> str:
    """The file behind ``db`` (for messages)."""
    known = getattr(db, _PATH, None)
    if known:
        return known
    try:
        return db.execute("PRAGMA database_list").fetchone()[2] or ":memory:"
    except sqlite3.Error:
        return "state database"


def describe(err: sqlite3.Error, where: str | None = None) -> StateError:
    """A one-line StateError for an sqlite error; ``where`` defaults to the file(s) opened."""
    where = where or (", ".join(dict.fromkeys(_OPENED)) if _OPENED else "state database")
    text = str(err)
    if "not a database" in text:
        return StateError(f"{where}: not an SQLite database ({text})")
    if "malformed" in text or "corrupt" in text:
        detail = "" if text == "database disk image is malformed" else f" ({text})"
        return StateError(f"{where}: database disk image is malformed{detail}; restore it from a "
                          "backup or move it away to start a new state database")
    if "no such table" in text:
        return StateError(f"{where}: damaged or not autotune's: {text}")
    return StateError(f"{where}: state database error: {text}")


# -- opening -------------------------------------------------------------------------------
def _wrap(conn: sqlite3.Connection, path: str, *, read_only: bool, note: str | None) -> sqlite_utils.Database:
    db = sqlite_utils.Database(conn)
    setattr(db, _PATH, path)
    setattr(db, _RO, read_only)
    setattr(db, _NOTE, note)
    _OPENED.append(path)
    return db


def _pragmas(conn: sqlite3.Connection) -> None:
    """A NEW database's settings (they are recorded in its header), then the connection's."""
    # Must precede the first table: lets retention hand freed pages back to the filesystem
    # (``PRAGMA incremental_vacuum``). On an existing DB it rewrites the header even when it
    # changes nothing, so it is set only here.
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    _connection_pragmas(conn)


def _connection_pragmas(conn: sqlite3.Connection) -> None:
    """Settings of this connection only: nothing in the file changes."""
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")


def _check_writable(p: Path) -> None:
    """A writing command must be able to write the DB and create -wal/-shm beside it; refused
    here, before SQLite silently opens it read-only and leaves files behind."""
    try:
        fd = os.open(p, os.O_RDWR)
    except OSError as err:
        raise StateError(f"{p}: the state database cannot be written ({err.strerror or err}; "
                         "an immutable attribute shows in lsattr); the agent, rollback and enable "
                         "write it: fix that or pass --state PATH") from err
    os.close(fd)
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise StateError(f"{p}: its directory {p.parent} cannot be written (the database keeps "
                         "-wal/-shm files beside it); fix that or pass --state PATH")


def _create(p: Path) -> None:
    """Build a new state DB in a temporary file and link it into place complete, so a crash
    never leaves a half-made (e.g. zero-byte) file at ``p``. Losing a race to another process
    creating it too is fine: theirs is used."""
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{threading.get_ident()}.new")
    try:
        conn = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            _pragmas(conn)
            conn.execute(_SCHEMA_TABLE)
        finally:
            conn.close()  # checkpoints the WAL into the file and removes -wal/-shm
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, p)  # unlike rename, never replaces a DB that appeared meanwhile
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not p.exists():
                os.replace(tmp, p)
        _fsync_dir(p.parent)
    except sqlite3.Error as err:
        raise StateError(f"{p}: cannot create state database ({err})") from err
    except OSError as err:
        raise StateError(f"{p}: cannot create state database ({err.strerror or err})") from err
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_file(p: Path) -> bytes:
    """The first 100 bytes (the header) after checking type, size, magic and page size."""
    try:
        st = os.stat(p)
        if not stat.S_ISREG(st.st_mode):
            raise StateError(f"{p}: not a regular file; expected the autotune state database")
        with open(p, "rb") as fh:
            head = fh.read(100)
    except FileNotFoundError as err:
        raise StateError(f"{p}: no state database there") from err
    except OSError as err:
        raise StateError(f"{p}: cannot read the state database ({err.strerror or err})") from err
    if st.st_size == 0:
        raise StateError(f"{p}: empty file (0 bytes), not an autotune state database (autotune never "
                         "leaves one; it was truncated or made by something else): restore it from a "
                         "backup or move it away to start a new one")
    if not head.startswith(_MAGIC):
        raise StateError(f"{p}: not an SQLite database (header {head[:16]!r}, expected {_MAGIC!r})")
    if len(head) < 100:
        raise StateError(f"{p}: truncated ({st.st_size} bytes, shorter than an SQLite header)")
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1):
        raise StateError(f"{p}: database disk image is malformed (page size {page} in the header)")
    if st.st_size % page:
        raise StateError(f"{p}: database disk image is malformed ({st.st_size} bytes is not a whole "
                         f"number of {page}-byte pages: truncated or appended to)")
    return head


def _quick_check(conn: sqlite3.Connection, p: Path) -> None:
    deadline = time.monotonic() + QUICK_CHECK_BUDGET_S
    conn.set_progress_handler(lambda: time.monotonic() > deadline, _PROGRESS_EVERY)
    try:
        rows = conn.execute("PRAGMA quick_check(10)").fetchall()
    except sqlite3.OperationalError as err:
        if "interrupt" not in str(err):
            raise
        log.warning("%s: quick_check stopped after %.0f s (%d MB); the file was checked only partly",
                    p, QUICK_CHECK_BUDGET_S, p.stat().st_size >> 20)
        return
    finally:
        conn.set_progress_handler(None, 0)
    # one row per problem, the first prefixed "*** in database main ***\n"; keep one line
    problems = [ln for r in rows for ln in str(r[0]).splitlines() if ln and not ln.startswith("***")]
    if problems != ["ok"]:
        more = f"; {len(problems) - 1} more" if len(problems) > 1 else ""
        raise StateError(f"{p}: database disk image is malformed (quick_check: {problems[0]}{more}); "
                         "restore it from a backup or move it away to start a new state database")


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    return {r[0] for r in rows if not r[0].startswith("sqlite_")}


def _not_ours(p: Path | str, tables: set[str]) -> str:
    some = ", ".join(sorted(tables)[:5]) or "no tables"
    return f"{p}: not an autotune state database (no schema_version table; has {some})"


def _uri(p: Path, query: str) -> str:
    return f"file:{quote(str(p.resolve()))}?{query}"


def _open_read_only(p: Path, *, for_writing: bool = False, probe: bool = False) -> sqlite_utils.Database:
    """The read-only door (module doc). ``for_writing``: the checks a writing open runs first; an
    empty SQLite file (no tables) is then accepted, since the writer makes it a state DB.
    ``probe``: no integrity check, and no private copy of an orphaned -wal (open_db)."""
    head = _check_file(p)
    wal, shm = Path(f"{p}-wal"), Path(f"{p}-shm")
    in_wal_mode = head[18:20] == b"\x02\x02"
    note = None
    conn = None
    if in_wal_mode and wal.exists() and not shm.exists():
        # mode=ro here would create the -shm beside the DB
        conn = None if probe else _private_copy(p, wal)
    elif not (in_wal_mode and not wal.exists()):
        try:
            conn = sqlite3.connect(_uri(p, "mode=ro"), uri=True, timeout=30, check_same_thread=False,
                                   isolation_level=None)
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens the WAL index
        except sqlite3.OperationalError:  # the -shm is unusable (read-only dir, full disk)
            if conn is not None:
                conn.close()
            conn = _private_copy(p, wal) if in_wal_mode and wal.exists() else None
        except sqlite3.DatabaseError as err:
            if conn is not None:
                conn.close()
            raise describe(err, str(p)) from err
    if conn is None and in_wal_mode and wal.exists() and wal.stat().st_size and not probe:
        note = (f"{wal} ({wal.stat().st_size} bytes) could not be read; showing the database as "
                "of its last checkpoint, newer changes are not included")
        log.warning("%s", note)
    if conn is None:
        # everything is in the main file (or the -wal is unreadable): read it as a plain file
        conn = sqlite3.connect(_uri(p, "mode=ro&immutable=1"), uri=True, check_same_thread=False,
                               isolation_level=None)
    try:
        conn.execute("PRAGMA query_only=ON")
        if not probe:
            _quick_check(conn, p)
        tables = _tables(conn)
        if "schema_version" not in tables and (tables or not for_writing):
            raise StateError(_not_ours(p, tables) if tables else
                             f"{p}: not an autotune state database (empty: no schema_version table)")
    except sqlite3.Error as err:
        conn.close()
        raise describe(err, str(p)) from err
    except StateError:
        conn.close()
        raise
    return _wrap(conn, str(p), read_only=True, note=note)


class _CopyConnection(sqlite3.Connection):
    """A connection to a private copy of a DB; closing it removes the copy."""

    scratch: str | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.scratch:
                shutil.rmtree(self.scratch, ignore_errors=True)
                self.scratch = None

    def __del__(self) -> None:
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _private_copy(p: Path, wal: Path) -> sqlite3.Connection | None:
    """``p`` and its -wal copied into a private temporary directory and opened read-only there
    (its -shm is made there), so a -wal without a -shm is read in full and nothing appears
    beside ``p``. None when no copy can be made (full disk): the caller reads ``p`` alone."""
    scratch = tempfile.mkdtemp(prefix="autotune-ro-")
    try:
        copy = Path(scratch) / "state.db"
        shutil.copyfile(p, copy)
        shutil.copyfile(wal, f"{copy}-wal")
        conn = sqlite3.connect(_uri(copy, "mode=ro"), uri=True, timeout=30, check_same_thread=False,
                               isolation_level=None, factory=_CopyConnection)
        conn.scratch = scratch
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except (OSError, sqlite3.OperationalError) as err:
        log.debug("cannot read %s through a private copy: %s", wal, err)
        shutil.rmtree(scratch, ignore_errors=True)
        return None


# -- transactions and migrations ----------------------------------------------------------
_LOCK_ATTR = "_autotune_tx_lock"
_LOCK_GUARD = threading.Lock()


@contextmanager
def transaction(db: sqlite_utils.Database, *, durable: bool = True) -> Iterator[None]:
    """One write transaction (BEGIN IMMEDIATE ... COMMIT, rollback on error).

    The connection is shared across threads (check_same_thread=False), so components that
    write (samples, journal, ...) serialize through one lock per Database; otherwise a second
    thread's BEGIN would land inside the first one's transaction. Do not nest.

    ``durable=False`` (samples only): commit without an fsync (synchronous=NORMAL for this one
    commit). In WAL mode that commit still survives kill -9 of the agent (the OS holds the
    written WAL pages); only an OS crash or power loss may take the newest samples. Journal
    and audit keep the default: each of their commits is on disk before the helper writes.
    An fsync per sample was an eighth of the agent's CPU at a 0.2-s sample period.
    """
    with _LOCK_GUARD:
        lock = getattr(db, _LOCK_ATTR, None)
        if lock is None:
            lock = threading.RLock()
            setattr(db, _LOCK_ATTR, lock)
    with lock:
        ensure_wal(db)
        if not durable:
            db.execute("PRAGMA synchronous=NORMAL")
        try:
            with db.conn:
                db.execute("BEGIN IMMEDIATE")
                yield
        finally:
            if not durable:
                db.execute("PRAGMA synchronous=FULL")


def schema_version(db: sqlite_utils.Database, component: str) -> int:
    row = db.execute("SELECT version FROM schema_version WHERE component=?", [component]).fetchone()
    return int(row[0]) if row else 0


def migrate(db: sqlite_utils.Database, component: str, steps: Sequence[Migration]) -> int:
    """Apply steps[version:] for ``component``; each step commits atomically with its version.

    StateError when the recorded version is newer than ``steps``, when a read-only DB lacks
    the component or needs migrating, and when an up-to-date component's tables are missing.
    """
    path = db_path(db)
    try:
        current = schema_version(db, component)
    except sqlite3.Error as err:
        raise describe(err, path) from err
    if current > len(steps):
        raise StateError(
            f"{path}: state database has {component} schema v{current}, newer than this autotune "
            f"(knows v{len(steps)}); upgrade autotune or use another state path"
        )
    if current == len(steps):
        _check_tables(db, component, steps, path)
        return current
    if getattr(db, _RO, False):
        if current == 0:
            have = ", ".join(f"{c} v{v}" for c, v in db.execute(
                "SELECT component, version FROM schema_version ORDER BY component")) or "nothing"
            raise StateError(f"{path}: no {component} data in this state database (it has: {have}); "
                             "a missing table is not read as empty")
        raise StateError(f"{path}: {component} schema v{current} is older than this autotune's "
                         f"v{len(steps)}; run the agent once to migrate it, then read it")
    for version, step in enumerate(steps[current:], start=current + 1):
        with transaction(db):  # one transaction per step
            # another process (the agent and a CLI opening the same file) may have run this
            # step between our read and our write lock: read again under the lock
            if schema_version(db, component) >= version:
                continue
            step(db)
            db.execute(
                "INSERT INTO schema_version(component, version, applied_ts) VALUES (?,?,?) "
                "ON CONFLICT(component) DO UPDATE SET version=excluded.version, "
                "applied_ts=excluded.applied_ts",
                [component, version, time.time()],
            )
    return len(steps)


_EXPECTED: dict[tuple[str, tuple[Migration, ...]], frozenset[str] | None] = {}


def _expected_tables(component: str, steps: Sequence[Migration]) -> frozenset[str] | None:
    """Tables ``steps`` leave behind, found by running them on an empty in-memory DB once per
    process (so components declare nothing twice); None if they do not run there."""
    key = (component, tuple(steps))
    if key not in _EXPECTED:
        mem = sqlite_utils.Database(sqlite3.connect(":memory:", isolation_level=None))
        try:
            mem.execute(_SCHEMA_TABLE)
            for step in steps:
                step(mem)
            _EXPECTED[key] = frozenset(_tables(mem.conn) - {"schema_version"})
        except Exception as err:  # noqa: BLE001 - a step needing real data: skip the check
            log.debug("cannot derive %s tables from its migrations: %s", component, err)
            _EXPECTED[key] = None
        finally:
            mem.conn.close()
    return _EXPECTED[key]


def _check_tables(db: sqlite_utils.Database, component: str, steps: Sequence[Migration], path: str) -> None:
    expected = _expected_tables(component, steps)
    if not expected:
        return
    try:
        missing = sorted(expected - _tables(db.conn))
    except sqlite3.Error as err:
        raise describe(err, path) from err
    if missing:
        raise StateError(f"{path}: {component} schema v{len(steps)} is recorded but its table(s) "
                         f"{', '.join(missing)} are missing (dropped or damaged); restore the file "
                         "from a backup or move it away to start a new state database")
