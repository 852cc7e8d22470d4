from __future__ import annotations

import pytest

from autotune.errors import HostError
from autotune.store.db import open_db, schema_version
from autotune.store.samples import SampleStore, flatten
from autotune.types import PsiLine, PsiReading, Snapshot
from samplegen import realistic_snapshot


def snap(ts: float, cpu_avg10: float = 0.0, total: int = 0) -> Snapshot:
    line = PsiLine(avg10_pct=cpu_avg10, avg60_pct=0.0, avg300_pct=0.0, total_usec=total)
    return Snapshot(ts=ts, psi={"cpu": PsiReading(some=line)}, meminfo_bytes={"MemAvailable": 1000})


@pytest.fixture
def db(tmp_path):
    d = open_db(tmp_path / "state.db")
    yield d
    d.conn.close()


def test_migration_is_versioned_and_idempotent(db):
    SampleStore(db)
    SampleStore(db)
    assert schema_version(db, "samples") == 1
    assert db["samples_raw"].exists() and db["samples_agg"].exists()


def test_newer_schema_is_refused(db):
    SampleStore(db)
    db.execute("UPDATE schema_version SET version=99 WHERE component='samples'")
    with pytest.raises(HostError, match="newer than this autotune"):
        SampleStore(db)


def test_roundtrip_window_latest(db):
    st = SampleStore(db)
    assert st.latest() is None
    snaps = [realistic_snapshot(1000.0 + i, tick=i) for i in range(5)]
    for s in snaps:
        st.append(s)
    assert st.window(1000.0) == snaps
    assert st.window(1001.0, 1003.0) == snaps[1:4]
    assert st.latest() == snaps[-1]


def test_uncompressed_rows_readable_by_compressing_store(db):
    SampleStore(db, compress=False).append(snap(1.0, 5.0))
    st = SampleStore(db)
    st.append(snap(2.0, 6.0))
    assert [s.psi["cpu"].some.avg10_pct for s in st.window(0)] == [5.0, 6.0]


def test_corrupt_row_is_skipped_not_raised(db):
    st = SampleStore(db)
    st.extend([snap(1.0), snap(2.0)])
    db.execute("UPDATE samples_raw SET body=X'00FF' WHERE ts=1.0")
    assert [s.ts for s in st.window(0)] == [2.0]


def test_compression_beats_plain_json(db, tmp_path):
    s = realistic_snapshot(1.0, tick=1)
    st = SampleStore(db)
    st.extend(realistic_snapshot(float(i), tick=i) for i in range(20))
    avg = db.execute("SELECT AVG(LENGTH(body)) FROM samples_raw WHERE id > 1").fetchone()[0]
    assert avg < len(s.model_dump_json(exclude_defaults=True)) / 3


def test_retain_folds_buckets_with_stats(db):
    st = SampleStore(db, aggregate_every_s=60)
    # bucket [0,60): values 0..5 over 6 samples; bucket [60,120): constant 7
    st.extend(snap(float(i * 10), cpu_avg10=float(i), total=i * 100) for i in range(6))
    st.extend(snap(60.0 + i * 10, cpu_avg10=7.0) for i in range(6))
    st.append(snap(130.0, cpu_avg10=9.0))
    rep = st.retain(now=125.0, raw_keep_s=0, agg_keep_s=3600)
    assert rep.buckets == 2 and rep.raw_deleted == 12
    assert [s.ts for s in st.window(0)] == [130.0]  # the current bucket stays raw
    aggs = st.aggregates(0)
    assert [a.bucket_ts for a in aggs] == [0.0, 60.0]
    a0 = aggs[0].stats["psi.cpu.some.avg10_pct"]
    assert (a0.min, a0.mean, a0.max, a0.last) == (0.0, 2.5, 5.0, 5.0)
    assert aggs[0].n == 6 and aggs[0].last.ts == 50.0
    assert aggs[0].stats["psi.cpu.some.total_usec"].last == 500
    c = aggs[1].stats["psi.cpu.some.avg10_pct"]
    assert (c.min, c.mean, c.max, c.last) == (7.0, 7.0, 7.0, 7.0)
    assert set(st.aggregates(0, metrics=["meminfo.MemAvailable"])[0].stats) == {"meminfo.MemAvailable"}


def test_late_sample_merges_into_existing_bucket(db):
    st = SampleStore(db, aggregate_every_s=60)
    st.extend([snap(0.0, 2.0), snap(10.0, 4.0)])
    st.retain(now=100.0, raw_keep_s=0, agg_keep_s=3600)
    st.append(snap(20.0, 9.0))  # arrives after its bucket was folded
    st.retain(now=100.0, raw_keep_s=0, agg_keep_s=3600)
    (a,) = st.aggregates(0)
    s = a.stats["psi.cpu.some.avg10_pct"]
    assert a.n == 3 and (s.min, s.max, s.last) == (2.0, 9.0, 9.0)
    assert s.mean == pytest.approx(5.0)


def test_retain_drops_old_aggregates(db):
    st = SampleStore(db, aggregate_every_s=60)
    st.extend(snap(float(t)) for t in range(0, 600, 30))
    st.retain(now=600.0, raw_keep_s=0, agg_keep_s=300)
    assert [a.bucket_ts for a in st.aggregates(0)] == [300.0, 360.0, 420.0, 480.0, 540.0]  # [240,300) is wholly older


@pytest.mark.slow
def test_simulated_day_file_stays_bounded(tmp_path):
    """A day at 30 s sampling, 1 h raw, 6 h aggregates: the file stops growing once full."""
    db = open_db(tmp_path / "day.db")
    st = SampleStore(db, aggregate_every_s=60)
    period, day = 30, 86400
    sizes = {}
    tick = 0
    for chunk_start in range(0, day, 1800):
        st.extend(realistic_snapshot(float(t), tick=(tick := tick + 1))
                  for t in range(chunk_start, chunk_start + 1800, period))
        rep = st.retain(now=chunk_start + 1800, raw_keep_s=3600, agg_keep_s=6 * 3600)
        sizes[chunk_start + 1800] = rep.file_bytes
    counts = st.counts()
    assert counts["raw"] <= 3600 // period + 3600 // period  # < 1 h raw (+ one chunk)
    assert counts["aggregates"] <= 6 * 60 + 1
    full = sizes[12 * 3600]
    assert sizes[day] <= full * 1.1, sizes  # no growth once both tiers are full
    assert max(sizes.values()) <= full * 1.15
    db.conn.close()


def test_flatten_names_units():
    s = realistic_snapshot(1.0, tick=3)
    f = flatten(s)
    assert "psi.cpu.some.avg10_pct" in f
    assert "svc.llm.latency.p95_s" in f
    assert "svc.batch.cgroup.psi.cpu.some.total_usec" in f
    assert f["svc.llm.procs.count"] == 3
    assert not any(k.startswith("vmstat.") for k in f)


def test_deletes_shrink_the_file(db):
    st = SampleStore(db)
    st.extend(realistic_snapshot(float(i), tick=i) for i in range(600))
    st.vacuum()
    full = st.file_bytes()
    rep = st.retain(now=10_000.0, raw_keep_s=0, agg_keep_s=0)
    assert st.counts() == {"raw": 0, "aggregates": 0}
    assert rep.file_bytes < full / 5
