"""Issue 24 #4: ``open_db`` is the one door to the state DB, and a command that only reads, or
one that refuses the DB, leaves it exactly as it found it: the same files beside it, the same
bytes in each (a read-only open used to create a ``-shm``; a refused DB got its header
rewritten; ``run`` on an immutable DB left ``-wal``/``-shm`` behind).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.audit.trail import AuditEvent, AuditTrail
from autotune.errors import StateError
from autotune.journal.journal import Journal
from autotune.store.db import open_db, read_note
from tests.audit.conftest import make_events
from tests.store.test_db_checks import REPO, cli, make_db


def files(d: Path) -> dict[str, bytes]:
    """Every file in ``d`` and its exact bytes."""
    return {f.name: f.read_bytes() for f in sorted(d.iterdir()) if f.is_file()}


def killed_writer(p: Path, n: int = 3) -> None:
    """A writer that appended ``n`` audit events and died without a checkpoint (kill -9)."""
    code = ("import os,sys; sys.path.insert(0, %r)\n"
            "from autotune.store.db import open_db\nfrom autotune.audit.trail import AuditTrail, AuditEvent\n"
            "t = AuditTrail(open_db(%r))\n"
            "for i in range(%d): t.append(AuditEvent(ts=1.0 + i, kind='agent_start'))\n"
            "os._exit(0)\n") % (str(REPO), str(p), n)
    subprocess.run([sys.executable, "-c", code], check=True)
    assert Path(f"{p}-wal").stat().st_size > 0


def test_read_only_open_with_a_garbage_wal_creates_nothing(tmp_path):
    """``history`` on a DB with a garbage -wal (no -shm) created a -shm beside it."""
    p = make_db(tmp_path / "a.db")
    Path(f"{p}-wal").write_bytes(bytes((i * 7 + 3) % 256 for i in range(8192)))
    before = files(tmp_path)
    db = open_db(p, read_only=True)
    assert len(Journal(db).entries()) == 120
    db.conn.close()
    assert files(tmp_path) == before
    r = cli("history", "--state", str(p))
    assert r.returncode == 0, r.stderr
    assert files(tmp_path) == before


def test_read_only_open_reads_a_killed_writers_wal_without_creating_a_shm(tmp_path):
    """A -wal with commits and no -shm: read in full through a private copy, nothing created
    beside the DB."""
    p = make_db(tmp_path / "a.db", events=10)
    killed_writer(p)
    Path(f"{p}-shm").unlink()
    before = files(tmp_path)
    db = open_db(p, read_only=True)
    assert AuditTrail(db).verify().checked == len(make_events(10)) + 3 and read_note(db) is None
    db.conn.close()
    assert files(tmp_path) == before


def test_read_only_open_beside_a_killed_writers_wal_and_shm_changes_no_file(tmp_path):
    p = make_db(tmp_path / "a.db", events=10)
    killed_writer(p)
    names = set(files(tmp_path))
    main = p.read_bytes()
    db = open_db(p, read_only=True)
    assert AuditTrail(db).verify().checked == len(make_events(10)) + 3
    db.conn.close()
    assert set(files(tmp_path)) == names and p.read_bytes() == main


@pytest.fixture
def immutable(tmp_path):
    """``chattr +i`` on a state DB (even root cannot write it); undone at teardown."""
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("chattr +i needs root and chattr(1)")
    p = make_db(tmp_path / "a.db")
    r = subprocess.run(["chattr", "+i", str(p)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"this filesystem has no immutable attribute: {r.stderr.strip()}")
    try:
        yield p
    finally:
        subprocess.run(["chattr", "-i", str(p)], check=False)


def test_run_on_an_immutable_db_is_one_line_and_leaves_no_wal(tmp_path, immutable):
    p = immutable
    before = files(tmp_path)
    with pytest.raises(StateError, match="cannot be written"):
        open_db(p)
    assert files(tmp_path) == before
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[agent]\nstate_path = "{p}"\nmetrics_listen = "off"\n')
    before = files(tmp_path)
    r = cli("run", "--mode", "recommend", "--config", str(cfg), "--duration", "3")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "cannot be written" in r.stderr
    assert files(tmp_path) == before
    db = open_db(p, read_only=True)  # readers still read it
    assert len(Journal(db).entries()) == 120
    db.conn.close()
    assert files(tmp_path) == before


def _refused(d: Path, kind: str) -> Path:
    """A DB autotune must refuse, made the way another tool would (its journal mode theirs)."""
    d.mkdir()
    p = d / f"{kind}.db"
    if kind == "not-ours":
        conn = sqlite3.connect(p)
        conn.execute("CREATE TABLE users(name)")
    elif kind == "newer":
        conn = sqlite3.connect(p)  # rollback-journal mode, as most tools leave a file
        conn.execute("CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER "
                     "NOT NULL, applied_ts REAL NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES ('journal', 99, 0), ('audit', 99, 0)")
    elif kind in ("dropped", "dropped-delete-mode"):
        make_db(p)
        conn = sqlite3.connect(p)
        if kind == "dropped-delete-mode":
            conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("DROP TABLE journal_events")
    elif kind == "damaged":
        from tests.store.test_db_checks import damage_page

        make_db(p)
        damage_page(p, "audit_events")
        return p
    conn.commit()
    conn.close()
    return p


@pytest.mark.parametrize("kind", ["not-ours", "newer", "dropped", "dropped-delete-mode", "damaged"])
def test_a_refused_db_is_left_byte_for_byte(tmp_path, kind):
    p = _refused(tmp_path / "state", kind)
    before = files(p.parent)
    for read_only in (True, False):
        with pytest.raises(StateError):
            db = open_db(p, read_only=read_only)
            try:
                Journal(db)
                AuditTrail(db)
            finally:
                db.conn.close()
        assert files(p.parent) == before, f"read_only={read_only}"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[agent]\nstate_path = "{p}"\nmetrics_listen = "off"\n')
    for args in (["history", "--state", str(p)], ["audit", "--state", str(p), "verify"],
                 ["rollback", "--all", "--state", str(p)],
                 ["run", "--mode", "recommend", "--config", str(cfg), "--duration", "3"]):
        r = cli(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)
        assert files(p.parent) == before, args


def test_writing_still_makes_an_old_rollback_journal_db_a_wal_db(tmp_path):
    """The conversion a refused DB must not get still happens to one autotune accepts."""
    p = make_db(tmp_path / "a.db")
    conn = sqlite3.connect(p)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    db = open_db(p)
    AuditTrail(db).append(AuditEvent(ts=1.0, kind="agent_start"))
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.conn.close()
