"""Issue 10, defect 9: the state DB checks itself on open and read-only commands never write.

Damaged files (zero bytes, random bytes, a damaged page, a dropped table) must give ONE line
naming the file and exit 2 from every command, never a traceback, never "0 events" / "OK".
Read-only commands (history, audit list/verify, status, search) must work on a file the user
may only read and on a full disk, and must leave the file and its directory untouched.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.audit.trail import AuditTrail
from autotune.errors import StateError
from autotune.journal.journal import Journal
from autotune.store import db as dbmod
from autotune.store.db import migrate, open_db, read_note
from tests.audit.conftest import make_events

REPO = Path(__file__).resolve().parents[2]
READ_COMMANDS = {
    "history": lambda db: ["history", "--state", str(db)],
    "audit verify": lambda db: ["audit", "--state", str(db), "verify"],
    "audit list": lambda db: ["audit", "--state", str(db), "list", "--limit", "3"],
}
N_EVENTS = len(make_events(60))  # what make_db appends


def make_db(path: Path, *, entries: int = 120, events: int = 60) -> Path:
    """A real state DB: journal entries and an audit trail, closed cleanly (no -wal left)."""
    db = open_db(path)
    journal, trail = Journal(db), AuditTrail(db)
    for i in range(entries):
        journal.plan(knob="cgroup.cpu_quota", target=f"/t{i}", prior={"value": "1.8"},
                     proposed="0.2", rule="cap-noisy", rationale="cpu pressure " * 10)
    trail.append_many(make_events(events))
    db.conn.close()
    assert not Path(f"{path}-wal").exists()
    return path


def cli(*args: str, reader: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    """`autotune ARGS` in a child. ``reader``: as a user without any write access to files it
    does not own: uid 0 with every capability dropped (no CAP_DAC_OVERRIDE), which is what a
    non-root operator is, while still reaching the interpreter installed under /root."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "400"}
    env.pop("AUTOTUNE_STATE", None)
    pre = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"] if reader else []
    return subprocess.run([*pre, sys.executable, "-m", "autotune", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd="/")


def assert_one_line_error(r: subprocess.CompletedProcess, path: Path, what: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "OK" not in r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"autotune: {path}: ") and what in lines[0], lines[0]


def page_of(path: Path, table: str) -> tuple[int, int]:
    """(page number, page size) of a leaf page in the middle of ``table``."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        pages = [r[0] for r in conn.execute(
            "SELECT pageno FROM dbstat WHERE name=? AND pagetype='leaf' ORDER BY pageno", [table])]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    assert len(pages) >= 3, f"{table} too small to damage one of its middle pages"
    return pages[len(pages) // 2], size


def damage_page(path: Path, table: str) -> None:
    pageno, size = page_of(path, table)
    with open(path, "r+b") as fh:
        fh.seek((pageno - 1) * size)
        fh.write(bytes((i * 37 + 11) % 256 for i in range(size // 2)))  # header and cell pointers


# -- the file itself --------------------------------------------------------------------------
@pytest.mark.parametrize("read_only", [False, True])
def test_zero_byte_file_is_refused(tmp_path, read_only):
    p = tmp_path / "autotune.db"
    p.write_bytes(b"")
    with pytest.raises(StateError, match=r"autotune.db: empty file \(0 bytes\), not an autotune state database"):
        open_db(p, read_only=read_only)
    assert p.stat().st_size == 0  # not silently turned into a new database


@pytest.mark.parametrize("read_only", [False, True])
def test_random_bytes_are_refused(tmp_path, read_only):
    p = tmp_path / "autotune.db"
    p.write_bytes(bytes((i * 131 + 7) % 256 for i in range(40960)))
    with pytest.raises(StateError, match="autotune.db: not an SQLite database"):
        open_db(p, read_only=read_only)


def test_truncated_file_is_refused(tmp_path):
    p = make_db(tmp_path / "a.db")
    with open(p, "r+b") as fh:
        fh.truncate(p.stat().st_size - 1000)
    with pytest.raises(StateError, match="not a whole number of 4096-byte pages"):
        open_db(p, read_only=True)


@pytest.mark.parametrize("table", ["audit_events", "journal_entries"])
@pytest.mark.parametrize("read_only", [False, True])
def test_damaged_page_is_caught_by_quick_check(tmp_path, table, read_only):
    p = make_db(tmp_path / "a.db")
    damage_page(p, table)
    with pytest.raises(StateError, match=r"a.db: database disk image is malformed"):
        open_db(p, read_only=read_only)


def test_foreign_sqlite_db_is_not_ours(tmp_path):
    p = tmp_path / "other.db"
    conn = sqlite3.connect(p)
    conn.execute("CREATE TABLE foo (x)")
    conn.commit()
    conn.close()
    for ro in (False, True):
        with pytest.raises(StateError, match=r"not an autotune state database \(no schema_version table; has foo\)"):
            open_db(p, read_only=ro)


def test_empty_sqlite_file_becomes_a_state_db_only_when_writing(tmp_path):
    p = tmp_path / "a.db"
    sqlite3.connect(p).execute("PRAGMA user_version=1").connection.close()  # valid, no tables
    with pytest.raises(StateError, match="empty: no schema_version table"):
        open_db(p, read_only=True)
    assert Journal(open_db(p)).entries() == []


def test_new_db_appears_complete_or_not_at_all(tmp_path, monkeypatch):
    """A crash while creating leaves no (zero-byte) file behind for the next open to trip on."""
    p = tmp_path / "a.db"

    def crash(fd):
        raise KeyboardInterrupt  # stands in for kill -9 between creating and linking

    monkeypatch.setattr(dbmod.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        open_db(p)
    assert not p.exists() and os.listdir(tmp_path) == []
    monkeypatch.undo()
    open_db(p).conn.close()
    assert sorted(os.listdir(tmp_path)) == ["a.db"]
    assert open_db(p, read_only=True).execute("PRAGMA journal_mode").fetchone()[0] in ("wal", "delete")


def test_quick_check_time_budget_bounds_the_cost(tmp_path, monkeypatch, caplog):
    p = make_db(tmp_path / "a.db")
    monkeypatch.setattr(dbmod, "QUICK_CHECK_BUDGET_S", -1.0)
    monkeypatch.setattr(dbmod, "_PROGRESS_EVERY", 1)
    with caplog.at_level("WARNING"):
        db = open_db(p, read_only=True)
    assert "quick_check stopped after" in caplog.text and "checked only partly" in caplog.text
    assert len(Journal(db).entries()) == 120  # opened anyway


# -- schema -------------------------------------------------------------------------------
def test_dropped_audit_table_fails_verify_instead_of_zero_events(tmp_path):
    p = make_db(tmp_path / "a.db")
    conn = sqlite3.connect(p)
    conn.execute("DROP TABLE audit_events")
    conn.commit()
    conn.close()
    for ro in (True, False):
        with pytest.raises(StateError, match="audit schema v1 is recorded but its table.s. audit_events are missing"):
            AuditTrail(open_db(p, read_only=ro))
    assert len(Journal(open_db(p, read_only=True)).entries()) == 120  # the journal still reads


def test_table_dropped_after_open_never_verifies(tmp_path):
    p = make_db(tmp_path / "a.db")
    trail = AuditTrail(open_db(p))
    other = sqlite3.connect(p)
    other.execute("DROP TABLE audit_events")
    other.commit()
    other.close()
    with pytest.raises(StateError, match=f"{p}: .*no such table: audit_events"):
        trail.verify()


def test_read_only_missing_component_is_an_error_not_empty(tmp_path):
    p = tmp_path / "a.db"
    db = open_db(p)
    Journal(db)
    db.conn.close()
    with pytest.raises(StateError, match=r"no audit data in this state database \(it has: journal v3\)"):
        AuditTrail(open_db(p, read_only=True))
    AuditTrail(open_db(p))  # a writing command creates what it needs ("just created")


def test_read_only_older_schema_asks_for_a_migration(tmp_path):
    p = tmp_path / "a.db"
    db = open_db(p)
    migrate(db, "c", [lambda d: d.execute("CREATE TABLE c1 (x)")])
    db.conn.close()
    two = [lambda d: d.execute("CREATE TABLE c1 (x)"), lambda d: d.execute("CREATE TABLE c2 (x)")]
    with pytest.raises(StateError, match="c schema v1 is older than this autotune's v2"):
        migrate(open_db(p, read_only=True), "c", two)


# -- read-only opens write nothing ---------------------------------------------------------
def _fingerprint(d: Path) -> dict[str, tuple[int, int]]:
    return {f.name: (f.stat().st_size, f.stat().st_mtime_ns) for f in d.iterdir()}


def test_read_only_open_writes_nothing(tmp_path):
    p = make_db(tmp_path / "a.db")
    os.utime(p, ns=(10**18, 10**18))
    before = _fingerprint(tmp_path)
    db = open_db(p, read_only=True)
    assert len(Journal(db).entries()) == 120 and AuditTrail(db).verify().ok
    with pytest.raises(sqlite3.OperationalError, match="readonly|query_only"):
        db.execute("INSERT INTO schema_version VALUES ('x', 1, 0)")
    db.conn.close()
    assert _fingerprint(tmp_path) == before  # no -wal, no -shm, same size and mtime


def test_read_only_open_sees_a_live_writers_newest_commit(tmp_path):
    p = make_db(tmp_path / "a.db")
    writer = open_db(p)  # the agent, running: -wal and -shm exist
    Journal(writer).plan(knob="k", target="/new", prior={"value": "1"}, proposed="2", rule="r")
    main_before = (p.stat().st_size, p.stat().st_mtime_ns)
    reader = open_db(p, read_only=True)
    assert Journal(reader).entries(newest_first=True, limit=1)[0].target == "/new"
    assert read_note(reader) is None
    assert (p.stat().st_size, p.stat().st_mtime_ns) == main_before
    writer.conn.close()


# -- the CLI: one line, exit 2 -------------------------------------------------------------
def _broken(tmp_path: Path, kind: str) -> tuple[Path, str]:
    p = tmp_path / f"{kind}.db"
    if kind == "zero":
        p.write_bytes(b"")
        return p, "empty file (0 bytes)"
    if kind == "random":
        p.write_bytes(bytes((i * 131 + 7) % 256 for i in range(40960)))
        return p, "not an SQLite database"
    make_db(p)
    if kind == "damaged":
        damage_page(p, "audit_events")
        return p, "database disk image is malformed"
    conn = sqlite3.connect(p)
    conn.execute("DROP TABLE audit_events")
    conn.execute("DROP TABLE journal_entries")
    conn.commit()
    conn.close()
    return p, "are missing (dropped or damaged)"


@pytest.mark.parametrize("kind", ["zero", "random", "damaged", "dropped"])
def test_cli_commands_on_a_broken_db_say_one_line_and_exit_2(tmp_path, kind):
    p, what = _broken(tmp_path, kind)
    for name, args in READ_COMMANDS.items():
        r = cli(*args(p))
        assert_one_line_error(r, p, what)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[agent]\nstate_path = "{p}"\nmetrics_listen = "off"\n')
    r = cli("run", "--mode", "recommend", "--config", str(cfg), "--duration", "5")
    assert_one_line_error(r, p, what)  # was: two tracebacks and exit 0
    r = cli("status", "--config", str(cfg), "--root", str(REPO / "tests/fixtures/hosts/v2-docs"))
    assert r.returncode == 0 and "state store unreadable" in r.stdout and what.split(" (")[0] in r.stdout


def test_health_probe_on_a_random_file_is_one_line(tmp_path):
    """`health` stays a light probe (open_db(probe=True): no quick_check every few seconds) but
    never a traceback: the same one line as any command that opens a file that is no database."""
    p, _ = _broken(tmp_path, "random")
    r = cli("health", "--state", str(p))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"autotune: {p}: not an SQLite database (header ")


def test_cli_safety_net_for_damage_found_after_open(tmp_path, monkeypatch, capsys):
    """Damage quick_check cannot see (a record's contents) still ends in one line, exit 2."""
    from autotune.cli import main as main_mod

    p = make_db(tmp_path / "a.db")

    def malformed(*a, **kw):
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(Journal, "entries", malformed)
    monkeypatch.setattr(sys, "argv", ["autotune", "history", "--state", str(p)])
    with pytest.raises(SystemExit) as exc:
        main_mod.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(p) in err[0] and "malformed" in err[0]


# -- read-only file, a user who may only read ------------------------------------------------
needs_setpriv = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                   reason="dropping capabilities needs root and setpriv(1)")


def _hand_over(d: Path) -> None:
    """Make ``d`` and its files belong to uid 65534, read-only (r-x / r--) for everyone else."""
    for f in d.iterdir():
        os.chown(f, 65534, 65534)
        f.chmod(0o444)
    os.chown(d, 65534, 65534)
    d.chmod(0o555)


@needs_setpriv
def test_read_only_commands_work_for_a_user_who_may_only_read(tmp_path):
    d = tmp_path / "state"
    d.mkdir()
    p = make_db(d / "autotune.db")
    _hand_over(d)
    before = _fingerprint(d)
    for name, args in READ_COMMANDS.items():
        r = cli(*args(p), reader=True)
        assert r.returncode == 0, (name, r.stderr)
        assert "Traceback" not in r.stderr
    assert f"audit trail OK: {N_EVENTS} events" in cli(*READ_COMMANDS["audit verify"](p), reader=True).stdout
    assert cli("rollback", "--all", "--state", str(p), reader=True).returncode == 2  # writers still refuse
    assert _fingerprint(d) == before


@needs_setpriv
def test_unreadable_wal_never_verifies_ok(tmp_path):
    """A killed agent left a -wal with commits and no -shm. A reader who cannot read the -wal
    never hears "OK"; one who can reads it through a private copy, creating nothing beside it."""
    d = tmp_path / "state"
    d.mkdir()
    p = make_db(d / "autotune.db")
    code = ("import os,sys; sys.path.insert(0, %r)\n"
            "from autotune.store.db import open_db\nfrom autotune.audit.trail import AuditTrail, AuditEvent\n"
            "t = AuditTrail(open_db(%r)); t.append(AuditEvent(ts=1.0, kind='agent_start'))\n"
            "os._exit(0)  # like kill -9: no checkpoint\n") % (str(REPO), str(p))
    subprocess.run([sys.executable, "-c", code], check=True)
    assert Path(f"{p}-wal").stat().st_size > 0
    Path(f"{p}-shm").unlink()
    _hand_over(d)
    wal = Path(f"{p}-wal")
    wal.chmod(0)  # the reader cannot read the -wal at all (nor copy it)
    before = _fingerprint(d)
    r = cli(*READ_COMMANDS["audit verify"](p), reader=True)
    assert r.returncode == 1 and "OK" not in r.stdout, r.stderr
    assert f"verified only up to its last checkpoint ({N_EVENTS} events" in r.stderr and "-wal" in r.stderr
    r = cli(*READ_COMMANDS["history"](p), reader=True)
    assert r.returncode == 0 and "newer changes are not included" in r.stderr
    wal.chmod(0o444)  # readable, in a directory the reader cannot write: read through a copy
    before = _fingerprint(d)
    r = cli(*READ_COMMANDS["audit verify"](p), reader=True)
    assert r.returncode == 0 and f"audit trail OK: {N_EVENTS + 1} events" in r.stdout
    d.chmod(0o755)  # even where it could create the -shm beside the DB, it creates nothing
    r = cli(*READ_COMMANDS["audit verify"](p))
    assert r.returncode == 0 and f"audit trail OK: {N_EVENTS + 1} events" in r.stdout
    assert _fingerprint(d) == before


# -- full disk -----------------------------------------------------------------------------
@pytest.fixture
def full_disk(tmp_path):
    """A 16 MiB tmpfs (root only) that the test fills up; unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(d: Path) -> None:
    fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 16, 1 << 12, 1 << 9):
            try:
                while True:
                    os.write(fd, b"\1" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    with pytest.raises(OSError):  # really full
        (d / "probe").write_bytes(b"\0" * 8192)


@pytest.mark.parametrize("writer_running", [False, True])
def test_read_only_commands_work_on_a_full_disk(full_disk, writer_running):
    p = make_db(full_disk / "autotune.db")
    writer = open_db(p) if writer_running else None  # the agent holds -wal/-shm open
    try:
        _fill(full_disk)
        for name, args in READ_COMMANDS.items():
            r = cli(*args(p))
            assert r.returncode == 0, (name, r.stderr)
        assert f"audit trail OK: {N_EVENTS} events" in cli(*READ_COMMANDS["audit verify"](p)).stdout
        assert Path(f"{p}-wal").exists() == writer_running
    finally:
        if writer is not None:
            writer.conn.close()


def test_a_migration_another_process_ran_meanwhile_is_not_run_twice(tmp_path, monkeypatch):
    """CI failure: the agent and a reader opened one DB at once and both ran journal v2 ("duplicate
    column name: verify_plan"). A stale version read before the write lock must not rerun a step."""
    from autotune.journal import journal as jmod

    path = tmp_path / "state.db"
    first = open_db(path)
    migrate(first, "journal", jmod.MIGRATIONS[:1])  # an older autotune left journal v1
    first.conn.close()
    a, b = open_db(path), open_db(path)
    migrate(b, "journal", jmod.MIGRATIONS)  # the other process wins the race
    stale = iter([1])
    real = dbmod.schema_version
    monkeypatch.setattr(dbmod, "schema_version",
                        lambda db, comp: next(stale, None) or real(db, comp))
    assert migrate(a, "journal", jmod.MIGRATIONS) == len(jmod.MIGRATIONS)
    cols = [r[1] for r in a.execute("PRAGMA table_info(journal_entries)")]
    assert cols.count("verify_plan") == 1 and "landed" in cols

