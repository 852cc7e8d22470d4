from __future__ import annotations

import pytest

import json
import zlib

from autotune.detect.metrics import gauges, is_known_metric, steps
from autotune.errors import HostError
from autotune.store.db import migrate, open_db, schema_version
from autotune.store.samples import CODEC_JSON, CODEC_ZDICT, MIGRATIONS, MetricStats, SampleStore
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
    assert schema_version(db, "samples") == 2
    assert db["samples_raw"].exists() and db["samples_agg"].exists()
    assert "cpu_some_avg10" not in db["samples_raw"].columns_dict  # v1's unread column is gone


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
    a0 = aggs[0].stats["psi.cpu.some.avg10"]
    assert (a0.min, a0.mean, a0.max, a0.last) == (0.0, 2.5, 5.0, 5.0)
    assert aggs[0].n == 6 and aggs[0].last.ts == 50.0
    assert aggs[0].last.psi["cpu"].some.total_usec == 500  # counters stay exact in the last snapshot
    stall = aggs[0].stats["psi.cpu.some.stall_pct"]  # 100 us stalled per 10 s = 0.001 %
    assert stall.min == pytest.approx(0.001) and stall.max == pytest.approx(0.001)
    c = aggs[1].stats["psi.cpu.some.avg10"]
    assert (c.min, c.mean, c.max, c.last) == (7.0, 7.0, 7.0, 7.0)
    assert aggs[1].stats["psi.cpu.some.stall_pct"].max == 0.0  # 500 -> 0 at ts 60 is a reset: no rate
    assert set(st.aggregates(0, metrics=["mem.available_bytes"])[0].stats) == {"mem.available_bytes"}


def test_late_sample_merges_into_existing_bucket(db):
    st = SampleStore(db, aggregate_every_s=60)
    st.extend([snap(0.0, 2.0), snap(10.0, 4.0)])
    st.retain(now=100.0, raw_keep_s=0, agg_keep_s=3600)
    st.append(snap(20.0, 9.0))  # arrives after its bucket was folded
    st.retain(now=100.0, raw_keep_s=0, agg_keep_s=3600)
    (a,) = st.aggregates(0)
    s = a.stats["psi.cpu.some.avg10"]
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


def test_aggregate_keys_are_the_metric_vocabulary(db):
    snaps = [realistic_snapshot(float(t), tick=t) for t in range(0, 120, 10)]
    st = SampleStore(db, aggregate_every_s=60)
    st.extend(snaps)
    st.retain(now=120.0, raw_keep_s=0, agg_keep_s=3600)
    a0, a1 = st.aggregates(0)
    want = {k for _ts, m in steps(snaps[:6]) for k in m if not k.startswith("vmstat.")}
    assert set(a0.stats) == want and all(is_known_metric(k) for k in want)
    assert "psi.cpu.some.avg10" in want and "svc.llm.latency.p95_s" in want and "svc.llm.cpu.usage_cores" in want
    last = dict(steps(snaps[:6]))[50.0]
    for k in ("psi.cpu.some.avg10", "svc.llm.cpu.usage_cores", "svc.batch.psi.cpu.some.stall_pct", "cpu.util_pct"):
        assert a0.stats[k].last == last[k], k
    # the second bucket's first sample pairs with the first bucket's last: its rates are there
    assert a1.stats["cpu.util_pct"].last == steps(snaps)[-1][1]["cpu.util_pct"]
    assert a1.stats["cpu.util_pct"].min == min(m["cpu.util_pct"] for _ts, m in steps(snaps)[6:])


def test_first_sample_of_a_bucket_pairs_with_the_folded_bucket_before(db):
    st = SampleStore(db, aggregate_every_s=60)
    st.extend([snap(0.0, 1.0, total=0), snap(50.0, 1.0, total=1_000_000)])
    st.retain(now=60.0, raw_keep_s=0, agg_keep_s=3600)  # bucket 0 folded, its raw rows deleted
    st.append(snap(70.0, 2.0, total=3_000_000))  # alone in its bucket
    st.retain(now=120.0, raw_keep_s=0, agg_keep_s=3600)
    _, a1 = st.aggregates(0)
    assert a1.stats["psi.cpu.some.stall_pct"].last == pytest.approx(10.0)  # 2 s stalled over 20 s


def _v1_db(db) -> None:
    """A samples store at schema v1, with rows as v1 wrote them (old stats keys, PSI columns)."""
    migrate(db, "samples", MIGRATIONS[:1])
    old = {"psi.cpu.some.avg10_pct": [1.0, 2.0, 3.0, 3.0], "psi.cpu.some.total_usec": 500,
           "loadavg.load1": 0.5, "meminfo.MemAvailable": 1000, "meminfo.Cached": 7, "stat.user_s": 9.0,
           "svc.llm.latency.p95_s": [0.1, 0.2, 0.3, 0.25], "svc.llm.cgroup.psi.io.full.avg300_pct": 4.0,
           "svc.llm.cgroup.cpu_quota_cores": 1.5, "svc.llm.cgroup.cpu_usage_usec": 123,
           "svc.llm.procs.count": 3, "svc.llm.procs.cpu_s": 8.0, "svc.my.svc.procs.rss_bytes": 10}
    raw = json.dumps(old).encode()
    zdict = b'{"psi.cpu.some.avg10_pct":'
    did = db.execute("INSERT INTO samples_dict(kind, created_ts, data) VALUES ('stats', 0, ?)", [zdict]).lastrowid
    c = zlib.compressobj(6, zdict=zdict)
    for bucket, codec, dict_id, body in ((0.0, CODEC_JSON, None, raw),
                                         (60.0, CODEC_ZDICT, did, c.compress(raw) + c.flush())):
        db.execute("INSERT INTO samples_agg VALUES (?, 60, 2, ?, ?, 0, NULL, NULL, ?, ?, ?)",
                   [bucket, bucket, bucket + 50, codec, dict_id, body])
    db.execute("INSERT INTO samples_raw(ts, codec, dict_id, body, cpu_some_avg10) VALUES (?, 0, NULL, ?, 5.0)",
               [130.0, snap(130.0, 5.0).model_dump_json().encode()])
    db.conn.commit()


def test_v2_migration_renames_stats_to_the_vocabulary_and_drops_the_unread_column(db):
    _v1_db(db)
    st = SampleStore(db)
    assert schema_version(db, "samples") == 2
    assert set(db["samples_raw"].columns_dict) == {"id", "ts", "codec", "dict_id", "body"}
    assert st.window(0) == [snap(130.0, 5.0)]
    for a in st.aggregates(0):
        assert {k: [v.min, v.mean, v.max, v.last] for k, v in a.stats.items()} == {
            "psi.cpu.some.avg10": [1.0, 2.0, 3.0, 3.0], "load.1": [0.5] * 4, "mem.available_bytes": [1000] * 4,
            "svc.llm.latency.p95_s": [0.1, 0.2, 0.3, 0.25], "svc.llm.psi.io.full.avg300": [4.0] * 4,
            "svc.llm.cpu.quota_cores": [1.5] * 4, "svc.llm.processes": [3] * 4, "svc.my.svc.rss_bytes": [10] * 4,
        }  # raw counters (total_usec, user_s, cpu_usage_usec, cpu_s) and meminfo beyond the vocabulary dropped
        assert all(is_known_metric(k) for k in a.stats)
    st.retain(now=200.0, raw_keep_s=0, agg_keep_s=3600)  # new buckets are written with v2 names
    (new,) = st.aggregates(120.0)
    assert new.stats == {k: MetricStats(min=v, mean=v, max=v, last=v) for k, v in gauges(snap(130.0, 5.0)).items()}


def test_samples_commit_without_fsync_and_the_journal_still_with_it(db):
    """Samples commit at synchronous=NORMAL (WAL: survives kill -9, not power loss); every other
    commit on the connection, the journal's included, stays at FULL."""
    from autotune.journal.journal import Journal

    store, journal = SampleStore(db), Journal(db)
    seen = []
    db.conn.set_trace_callback(lambda sql: seen.append(
        (sql, db.conn.execute("PRAGMA synchronous").fetchone()[0]) if sql.startswith(("BEGIN", "COMMIT")) else None))
    store.append(snap(1.0))
    journal.plan(knob="sysctl", target="vm.swappiness", prior={"value": "60", "raw": {"/proc/sys/vm/swappiness": "60\n"}},
                 proposed="10", rule="r", rationale="t")
    db.conn.set_trace_callback(None)
    commits = [level for sql, level in (x for x in seen if x) if sql == "COMMIT"]
    assert commits[0] == 1 and all(level == 2 for level in commits[1:]) and len(commits) >= 2
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert [s.ts for s in store.window(0)] == [1.0]


def test_recent_snapshots_are_served_from_memory_exactly_as_the_db_has_them(db):
    store = SampleStore(db, recent_s=10.0)
    plain = SampleStore(db)  # reads SQLite only
    store.extend([snap(float(t), cpu_avg10=t) for t in range(0, 30)])
    store.append(snap(25.5, cpu_avg10=99.0))  # a late sample lands in order
    assert [s.ts for s in store._recent][0] >= 19.0
    for since, until in [(20.0, None), (25.0, 27.0), (25.5, 25.5), (29.5, None), (5.0, 22.0), (0.0, None)]:
        got, want = store.window(since, until), plain.window(since, until)
        assert [s.model_dump() for s in got] == [s.model_dump() for s in want], (since, until)
    db.execute("DELETE FROM samples_raw WHERE ts >= 20")  # not what the cache holds now: DB read
    assert store.window(5.0, 22.0) == plain.window(5.0, 22.0)
    assert store.window(22.0)  # served from memory
