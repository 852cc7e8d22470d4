from __future__ import annotations

import threading

import pytest

from autotune.journal.journal import Journal
from autotune.store.db import migrate, open_db, schema_version, transaction
from autotune.store.samples import SampleStore
from autotune.types import Snapshot


def test_auto_vacuum_incremental_on_new_files(tmp_path):
    db = open_db(tmp_path / "a.db")
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_failed_step_rolls_back_and_keeps_version(tmp_path):
    db = open_db(tmp_path / "a.db")

    def bad(d):
        d.execute("CREATE TABLE t2 (x)")
        raise RuntimeError("boom")

    migrate(db, "c", [lambda d: d.execute("CREATE TABLE t1 (x)")])
    with pytest.raises(RuntimeError):
        migrate(db, "c", [lambda d: d.execute("CREATE TABLE t1 (x)"), bad])
    assert schema_version(db, "c") == 1 and not db["t2"].exists()


def test_transaction_serializes_threads_on_one_connection(tmp_path):
    """Samples and journal written from two threads through one shared connection."""
    db = open_db(tmp_path / "a.db")
    st, j = SampleStore(db), Journal(db)
    errors: list[BaseException] = []

    def samples():
        try:
            for i in range(100):
                st.append(Snapshot(ts=float(i)))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def journal():
        try:
            for i in range(100):
                j.plan(knob="k", target=f"t{i}", prior={"value": "a"}, proposed="b", rule="r")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=samples), threading.Thread(target=journal)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    assert st.counts()["raw"] == 100 and len(j.entries()) == 100
    with transaction(db):
        db.execute("DELETE FROM samples_raw")
    assert st.counts()["raw"] == 0
