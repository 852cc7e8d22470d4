"""Sample store: raw Snapshots for recent hours, per-bucket aggregates for weeks, bounded on disk.

Raw rows hold one Snapshot each as JSON compressed with zlib and a preset dictionary (the
first snapshot's JSON, stored once in ``samples_dict``): snapshots repeat the same keys every
tick, so the dictionary roughly halves the bytes plain zlib gives (~10 KB JSON -> ~2 KB for a
host with two services). ``retain`` folds raw rows older than ``raw_keep_s`` into one
aggregate row per ``aggregate_every_s`` bucket and deletes them.

Why per-bucket rows with both a compacted snapshot and per-metric stats: the *last* snapshot
of a bucket keeps every cumulative counter exact (vmstat, CPU seconds, PSI total_usec), so
rates between buckets stay computable with the same code that reads raw snapshots; the
per-metric ``[min, mean, max, last]`` keeps what a last value loses (a PSI spike inside the
minute). Stats are keyed by the ``detect.metrics`` vocabulary (``psi.cpu.some.avg10``,
``svc.<s>.cpu.throttled_pct``...), one value per sample from ``detect.metrics.steps``: its
gauges plus rates over the pair ending there (a bucket's first sample pairs with the previous
bucket's last, when that is kept). ``vmstat.*.rate`` is left out of the stats (recoverable from
consecutive buckets' snapshots) to keep rows small.

Deletes hand pages back to the filesystem through ``PRAGMA incremental_vacuum`` (open_db sets
``auto_vacuum=INCREMENTAL`` on new files) and a WAL checkpoint, so the file stays bounded.
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import math
import os
import re
import time
import zlib
from collections.abc import Iterable
from typing import Any

import sqlite_utils
from pydantic import BaseModel, ConfigDict, ValidationError

from autotune.detect.metrics import steps
from autotune.store.db import migrate, transaction
from autotune.types import Snapshot

log = logging.getLogger(__name__)

COMPONENT = "samples"
CODEC_JSON, CODEC_ZLIB, CODEC_ZDICT = 0, 1, 2
_ZDICT_MAX = 32 * 1024  # zlib's window: dictionary bytes beyond this are never referenced


def _v1(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE samples_raw (id INTEGER PRIMARY KEY, ts REAL NOT NULL,"
        " codec INTEGER NOT NULL, dict_id INTEGER, body BLOB NOT NULL,"
        " cpu_some_avg10 REAL, memory_some_avg10 REAL, io_some_avg10 REAL)"
    )
    db.execute("CREATE INDEX samples_raw_ts ON samples_raw(ts)")
    db.execute(
        "CREATE TABLE samples_agg (bucket_ts REAL PRIMARY KEY, every_s INTEGER NOT NULL,"
        " n INTEGER NOT NULL, first_ts REAL NOT NULL, last_ts REAL NOT NULL,"
        " codec INTEGER NOT NULL, dict_id INTEGER, last_body BLOB,"
        " stats_codec INTEGER NOT NULL, stats_dict_id INTEGER, stats_body BLOB NOT NULL)"
    )
    db.execute(
        "CREATE TABLE samples_dict (id INTEGER PRIMARY KEY, kind TEXT NOT NULL,"
        " created_ts REAL NOT NULL, data BLOB NOT NULL)"
    )


# v1 stats keys that have a vocabulary name (gauges); everything else there was a raw counter
# (PSI total_usec, CPU seconds, cgroup usage, process fault counts), exact in the bucket's
# last snapshot, and is dropped.
_V1_HOST = {"loadavg.load1": "load.1", "loadavg.load5": "load.5", "loadavg.load15": "load.15",
            "stat.procs_running": "stat.procs_running", "stat.procs_blocked": "stat.procs_blocked",
            "meminfo.MemTotal": "mem.total_bytes", "meminfo.MemAvailable": "mem.available_bytes"}
_V1_SVC = {"cgroup.cpu_quota_cores": "cpu.quota_cores", "cgroup.cpu_weight": "cpu.weight",
           "cgroup.memory_current_bytes": "mem.usage_bytes", "cgroup.memory_max_bytes": "mem.max_bytes",
           "cgroup.memory_high_bytes": "mem.high_bytes", "cgroup.nr_tasks": "tasks",
           "procs.count": "processes", "procs.rss_bytes": "rss_bytes", "procs.num_threads": "threads",
           "procs.running_threads": "running_threads",
           **{f"latency.{k}": f"latency.{k}" for k in
              ("p50_s", "p95_s", "p99_s", "ttft_p95_s", "requests", "running", "waiting")}}
_V1_PSI = re.compile(r"(?:(svc\..+?\.)cgroup\.)?(psi\.[a-z]+\.(?:some|full)\.avg(?:10|60|300))_pct")
_V1_SVC_KEY = re.compile(r"(svc\..+?\.)(" + "|".join(re.escape(k) for k in _V1_SVC) + ")")


@functools.cache  # the same few hundred keys repeat in every row
def _v1_name(key: str) -> str | None:
    """The vocabulary name of a v1 stats key, or None when it was a raw counter."""
    if key in _V1_HOST:
        return _V1_HOST[key]
    m = _V1_PSI.fullmatch(key)
    if m:
        return (m.group(1) or "") + m.group(2)
    m = _V1_SVC_KEY.fullmatch(key)
    return m.group(1) + _V1_SVC[m.group(2)] if m else None


def _v2(db: sqlite_utils.Database) -> None:
    """Drop the raw table's PSI columns (written, never read: the snapshot holds PSI) and rename
    aggregate stats to the ``detect.metrics`` vocabulary (``_v1_name``; raw counters dropped)."""
    for col in ("cpu_some_avg10", "memory_some_avg10", "io_some_avg10"):
        db.execute(f"ALTER TABLE samples_raw DROP COLUMN {col}")
    zdicts = {int(i): bytes(d) for i, d in db.execute("SELECT id, data FROM samples_dict")}
    rows = db.execute("SELECT bucket_ts, stats_codec, stats_dict_id, stats_body FROM samples_agg").fetchall()
    for bucket_ts, codec, dict_id, body in rows:
        zdict = zdicts.get(dict_id) if dict_id is not None else None
        try:
            stats = json.loads(_decode(codec, zdict, body))
        except (zlib.error, ValueError) as err:
            log.warning("state DB samples_agg bucket=%s: undecodable stats left as is (%s)", bucket_ts, err)
            continue
        renamed = {new: v for k, v in stats.items() if (new := _v1_name(k)) is not None}
        db.execute("UPDATE samples_agg SET stats_body=? WHERE bucket_ts=?",
                   [_encode(json.dumps(renamed, separators=(",", ":")).encode(), codec, zdict), bucket_ts])


MIGRATIONS = [_v1, _v2]


def _decode(codec: int, zdict: bytes | None, body: bytes) -> bytes:
    if codec == CODEC_JSON:
        return bytes(body)
    if codec == CODEC_ZLIB:
        return zlib.decompress(body)
    if codec == CODEC_ZDICT and zdict is not None:
        d = zlib.decompressobj(zdict=zdict)
        return d.decompress(body) + d.flush()
    raise ValueError(f"unknown codec {codec}")


def _encode(raw: bytes, codec: int, zdict: bytes | None) -> bytes:
    if codec == CODEC_JSON:
        return raw
    if codec == CODEC_ZLIB:
        return zlib.compress(raw, 6)
    c = zlib.compressobj(6, zdict=zdict) if zdict is not None else zlib.compressobj(6)
    return c.compress(raw) + c.flush()


class MetricStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    min: float
    mean: float
    max: float
    last: float


class Aggregate(BaseModel):
    """One bucket [bucket_ts, bucket_ts + every_s) of downsampled raw samples."""

    model_config = ConfigDict(frozen=True)

    bucket_ts: float
    every_s: int
    n: int  # raw samples folded in
    first_ts: float
    last_ts: float
    last: Snapshot | None  # the bucket's last snapshot (counters exact)
    stats: dict[str, MetricStats]


class RetainReport(BaseModel):
    buckets: int = 0
    raw_folded: int = 0
    raw_deleted: int = 0
    agg_deleted: int = 0
    file_bytes: int = 0


# -- stats ---------------------------------------------------------------------------------
def _stat_metrics(snaps: list[Snapshot], before: Snapshot | None) -> list[dict[str, float]]:
    """One vocabulary dict per sample of ``snaps`` (vmstat rates left out, see above);
    ``before``, the previous bucket's last sample, only gives the first sample's rates."""
    window = ([before] if before is not None else []) + snaps
    out = [{k: v for k, v in m.items() if not k.startswith("vmstat.")} for _ts, m in steps(window)]
    return out[len(window) - len(snaps):]


def _round(x: float) -> float:
    """Means to 6 significant digits: plenty for metrics, and far better compression."""
    return float(f"{x:.6g}")


def _pack_stats(stats: dict[str, list[float]]) -> dict[str, Any]:
    """A metric constant over the bucket is stored as one number instead of four."""
    return {k: (v[3] if v[0] == v[2] else v) for k, v in stats.items()}


def _unpack_stats(packed: dict[str, Any]) -> dict[str, list[float]]:
    return {k: (v if isinstance(v, list) else [v, v, v, v]) for k, v in packed.items()}


# -- the store -----------------------------------------------------------------------------
class SampleStore:
    """Append-only Snapshot store with downsampling retention. One per state DB."""

    def __init__(
        self,
        db: sqlite_utils.Database,
        *,
        aggregate_every_s: int = 60,
        compress: bool = True,
        keep_bucket_snapshot: bool = True,
        recent_s: float = 0.0,
    ) -> None:
        if aggregate_every_s <= 0:
            raise ValueError("aggregate_every_s must be > 0 seconds")
        self.db = db
        # The snapshots this store appended in the last ``recent_s`` seconds, kept decoded:
        # ``window`` serves a range from them when it starts at or after the oldest one (every
        # row from there on is one of ours, as one agent writes one state DB). The agent holds
        # most of them in its own window anyway (same objects); decoding them again from SQLite
        # for each verification was most of what verifying cost.
        self.recent_s = recent_s
        self._recent: list[Snapshot] = []
        self.every_s = int(aggregate_every_s)
        self.compress = compress
        self.keep_bucket_snapshot = keep_bucket_snapshot
        migrate(db, COMPONENT, MIGRATIONS)
        self._dicts: dict[int, bytes] = {}
        self._dict_ids: dict[str, int] = {}  # kind ("snapshot" | "metrics") -> newest dict id
        for did, kind, data in db.execute("SELECT id, kind, data FROM samples_dict ORDER BY id"):
            self._dict_ids[kind] = int(did)
            self._dicts[int(did)] = bytes(data)

    # encoding --------------------------------------------------------------------------
    def _encode(self, raw: bytes, kind: str = "snapshot") -> tuple[int, int | None, bytes]:
        if not self.compress:
            return CODEC_JSON, None, raw
        did = self._dict_ids.get(kind)
        if did is None:
            # The first document of a kind seeds its preset dictionary, in the caller's
            # transaction, so a row never references a dictionary that was not committed.
            cur = self.db.execute(
                "INSERT INTO samples_dict(kind, created_ts, data) VALUES (?, ?, ?)",
                [kind, time.time(), raw[-_ZDICT_MAX:]],
            )
            did = self._dict_ids[kind] = int(cur.lastrowid)
            self._dicts[did] = raw[-_ZDICT_MAX:]
        return CODEC_ZDICT, did, _encode(raw, CODEC_ZDICT, self._dicts[did])

    def _zdict(self, dict_id: int) -> bytes:
        if dict_id not in self._dicts:
            row = self.db.execute("SELECT data FROM samples_dict WHERE id=?", [dict_id]).fetchone()
            if row is None:
                raise ValueError(f"samples_dict id {dict_id} missing")
            self._dicts[dict_id] = bytes(row[0])
        return self._dicts[dict_id]

    def _decode(self, codec: int, dict_id: int | None, body: bytes) -> bytes:
        return _decode(codec, self._zdict(dict_id) if codec == CODEC_ZDICT and dict_id is not None else None, body)

    def _snapshot(self, codec: int, dict_id: int | None, body: bytes, where: str) -> Snapshot | None:
        """Decode one row; a corrupt row is skipped with a warning, never raised into the loop."""
        try:
            return Snapshot.model_validate_json(self._decode(codec, dict_id, body))
        except (zlib.error, ValueError, ValidationError) as err:
            log.warning("state DB %s: undecodable snapshot skipped (%s)", where, err)
            return None

    # writing ---------------------------------------------------------------------------
    def _insert(self, s: Snapshot) -> None:
        codec, dict_id, body = self._encode(s.model_dump_json(exclude_defaults=True).encode())
        self.db.execute("INSERT INTO samples_raw(ts, codec, dict_id, body) VALUES (?,?,?,?)",
                        [s.ts, codec, dict_id, body])

    def append(self, snapshot: Snapshot) -> None:
        """Store one snapshot (one committed transaction)."""
        self.extend([snapshot])

    def extend(self, snapshots: Iterable[Snapshot]) -> int:
        """Store many snapshots in one transaction (no fsync: see store.db.transaction);
        returns how many."""
        done = []
        with transaction(self.db, durable=False):
            for s in snapshots:
                self._insert(s)
                done.append(s)
        if self.recent_s > 0:
            self._remember(done)
        return len(done)

    def _remember(self, snaps: list[Snapshot]) -> None:
        for s in snaps:
            if self._recent and s.ts < self._recent[-1].ts:
                bisect.insort(self._recent, s, key=lambda x: x.ts)
            else:
                self._recent.append(s)
        cut = bisect.bisect_left(self._recent, self._recent[-1].ts - self.recent_s, key=lambda x: x.ts)
        if cut:
            del self._recent[:cut]

    # reading ---------------------------------------------------------------------------
    def window(self, since_ts: float, until_ts: float | None = None) -> list[Snapshot]:
        """Raw snapshots with since_ts <= ts <= until_ts (None: up to now), oldest first."""
        if self._recent and since_ts >= self._recent[0].ts:
            key = lambda x: x.ts  # noqa: E731
            lo = bisect.bisect_left(self._recent, since_ts, key=key)
            hi = len(self._recent) if until_ts is None else bisect.bisect_right(self._recent, until_ts, key=key)
            return self._recent[lo:hi]
        sql = "SELECT codec, dict_id, body, ts FROM samples_raw WHERE ts >= ?"
        args: list[float] = [since_ts]
        if until_ts is not None:
            sql += " AND ts <= ?"
            args.append(until_ts)
        rows = self.db.execute(sql + " ORDER BY ts, id", args).fetchall()
        out = [self._snapshot(c, d, b, f"samples_raw ts={ts}") for c, d, b, ts in rows]
        return [s for s in out if s is not None]

    def latest(self) -> Snapshot | None:
        for c, d, b, ts in self.db.execute(
            "SELECT codec, dict_id, body, ts FROM samples_raw ORDER BY ts DESC, id DESC LIMIT 5"
        ):
            s = self._snapshot(c, d, b, f"samples_raw ts={ts}")
            if s is not None:
                return s
        return None

    def aggregates(
        self, since_ts: float, until_ts: float | None = None, metrics: Iterable[str] | None = None
    ) -> list[Aggregate]:
        """Buckets starting in [since_ts, until_ts], oldest first; ``metrics`` filters stats."""
        sql = ("SELECT bucket_ts, every_s, n, first_ts, last_ts, codec, dict_id, last_body,"
               " stats_codec, stats_dict_id, stats_body FROM samples_agg WHERE bucket_ts >= ?")
        args: list[float] = [since_ts]
        if until_ts is not None:
            sql += " AND bucket_ts <= ?"
            args.append(until_ts)
        wanted = set(metrics) if metrics is not None else None
        out = []
        for (b, every, n, first, last_ts, codec, dict_id, last_body, scodec, sdict,
             stats_body) in self.db.execute(sql + " ORDER BY bucket_ts", args):
            last = (self._snapshot(codec, dict_id, last_body, f"samples_agg bucket={b}")
                    if last_body is not None else None)
            try:
                raw = _unpack_stats(json.loads(self._decode(scodec, sdict, stats_body)))
            except (zlib.error, ValueError) as err:
                log.warning("state DB samples_agg bucket=%s: undecodable stats (%s)", b, err)
                continue
            stats = {
                k: MetricStats(min=v[0], mean=v[1], max=v[2], last=v[3])
                for k, v in raw.items() if wanted is None or k in wanted
            }
            out.append(Aggregate(bucket_ts=b, every_s=every, n=n, first_ts=first,
                                 last_ts=last_ts, last=last, stats=stats))
        return out

    def counts(self) -> dict[str, int]:
        raw = self.db.execute("SELECT COUNT(*) FROM samples_raw").fetchone()[0]
        agg = self.db.execute("SELECT COUNT(*) FROM samples_agg").fetchone()[0]
        return {"raw": int(raw), "aggregates": int(agg)}

    # retention -------------------------------------------------------------------------
    def _last_before(self, bucket_ts: float) -> Snapshot | None:
        """The previous bucket's last sample: raw if still kept, else its aggregate's snapshot."""
        row = self.db.execute(
            "SELECT codec, dict_id, body, ts FROM samples_raw WHERE ts >= ? AND ts < ?"
            " ORDER BY ts DESC, id DESC LIMIT 1", [bucket_ts - self.every_s, bucket_ts],
        ).fetchone()
        if row is None:
            row = self.db.execute(
                "SELECT codec, dict_id, last_body, last_ts FROM samples_agg WHERE bucket_ts >= ?"
                " AND bucket_ts < ? AND last_body IS NOT NULL ORDER BY bucket_ts DESC LIMIT 1",
                [bucket_ts - self.every_s, bucket_ts],
            ).fetchone()
        return None if row is None else self._snapshot(row[0], row[1], row[2], f"sample ts={row[3]}")

    def _fold_bucket(self, bucket_ts: float, end_ts: float) -> int:
        rows = self.db.execute(
            "SELECT codec, dict_id, body, ts FROM samples_raw WHERE ts >= ? AND ts < ? "
            "ORDER BY ts, id", [bucket_ts, end_ts],
        ).fetchall()
        snaps = [s for s in (self._snapshot(c, d, b, f"samples_raw ts={ts}") for c, d, b, ts in rows)
                 if s is not None]
        if not snaps:
            return len(rows)
        acc: dict[str, list[float]] = {}  # name -> [min, sum, max, last, count]
        for m in _stat_metrics(snaps, self._last_before(bucket_ts)):
            for k, v in m.items():
                if v is None or (isinstance(v, float) and not math.isfinite(v)):
                    continue
                a = acc.get(k)
                if a is None:
                    acc[k] = [v, v, v, v, 1]
                else:
                    a[0] = min(a[0], v)
                    a[1] += v
                    a[2] = max(a[2], v)
                    a[3] = v
                    a[4] += 1
        stats = {k: [a[0], _round(a[1] / a[4]), a[2], a[3]] for k, a in acc.items()}
        n, first, last_snap = len(snaps), snaps[0].ts, snaps[-1]
        old = self.db.execute(
            "SELECT n, first_ts, last_ts, stats_codec, stats_dict_id, stats_body, codec, dict_id,"
            " last_body FROM samples_agg WHERE bucket_ts=?", [bucket_ts],
        ).fetchone()
        if old is not None:  # late samples for a bucket already folded: merge (mean weighted by n)
            on, ofirst, olast, oscodec, osdict, ostats_body, ocodec, odict, olast_body = old
            ostats = _unpack_stats(json.loads(self._decode(oscodec, osdict, ostats_body)))
            for k, o in ostats.items():
                if k not in stats:
                    stats[k] = o
                    continue
                c = stats[k]
                newer_last = c[3] if last_snap.ts >= olast else o[3]
                stats[k] = [min(c[0], o[0]), _round((c[1] * n + o[1] * on) / (n + on)),
                            max(c[2], o[2]), newer_last]
            first = min(first, ofirst)
            if olast > last_snap.ts and olast_body is not None:
                older = self._snapshot(ocodec, odict, olast_body, f"samples_agg bucket={bucket_ts}")
                last_snap = older or last_snap
            n += on
        codec, dict_id, body = (CODEC_JSON, None, None)
        if self.keep_bucket_snapshot:
            codec, dict_id, body = self._encode(last_snap.model_dump_json(exclude_defaults=True).encode())
        scodec, sdict, sbody = self._encode(  # "metrics": v2 names, so not v1's "stats" dictionary
            json.dumps(_pack_stats(stats), separators=(",", ":")).encode(), "metrics"
        )
        self.db.execute(
            "INSERT OR REPLACE INTO samples_agg(bucket_ts, every_s, n, first_ts, last_ts, codec,"
            " dict_id, last_body, stats_codec, stats_dict_id, stats_body)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [bucket_ts, self.every_s, n, first, last_snap.ts, codec, dict_id, body,
             scodec, sdict, sbody],
        )
        return len(rows)

    def retain(self, now: float, raw_keep_s: float, agg_keep_s: float) -> RetainReport:
        """Fold raw rows older than now-raw_keep_s into buckets, drop aggregates older than
        now-agg_keep_s, then return freed pages to the filesystem. Seconds throughout."""
        rep = RetainReport()
        every = self.every_s
        # Fold only whole buckets so a bucket is never split between raw and aggregate.
        cutoff = math.floor((now - raw_keep_s) / every) * every
        while True:
            row = self.db.execute("SELECT MIN(ts) FROM samples_raw WHERE ts < ?", [cutoff]).fetchone()
            if row is None or row[0] is None:
                break
            first_bucket = math.floor(row[0] / every) * every
            with transaction(self.db):  # up to 100 buckets per commit: bounded work
                b = first_bucket
                for _ in range(100):
                    if b >= cutoff:
                        break
                    folded = self._fold_bucket(b, b + every)
                    if folded:
                        rep.buckets += 1
                        rep.raw_folded += folded
                    b += every
                rep.raw_deleted += self.db.execute(
                    "DELETE FROM samples_raw WHERE ts < ?", [min(b, cutoff)]
                ).rowcount
        with transaction(self.db):
            rep.agg_deleted = self.db.execute(
                "DELETE FROM samples_agg WHERE bucket_ts + every_s <= ?", [now - agg_keep_s]
            ).rowcount
        self.vacuum()
        rep.file_bytes = self.file_bytes()
        return rep

    def vacuum(self) -> None:
        """Give free pages back (incremental vacuum) and fold the WAL into the main file."""
        # executescript steps the pragma to completion; execute() would free a single page.
        self.db.conn.executescript("PRAGMA incremental_vacuum;")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def file_bytes(self) -> int:
        """Main DB file plus WAL, in bytes (0 for an in-memory DB)."""
        row = self.db.execute("PRAGMA database_list").fetchone()
        path = row[2] if row else ""
        if not path:
            return 0
        return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
