"""The colocation benchmark's memory-heavy scenario without a kernel: its sizing, arguments, oracle
grid, cache keys, estimate, the refusals that keep the host safe, and its report tables."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import coloc_report as report  # noqa: E402
from bench import colocation as co  # noqa: E402
from bench import scenarios  # noqa: E402
from bench.coloc_metrics import Alloc, EdgeSample, PointResult, cache_key, floor_ok, is_valid, stall_pct  # noqa: E402

GIB = 1024**3
MIB = 1024**2


def test_mem_sizing_from_memtotal():
    s = scenarios.mem_sizing(24105 * MIB)  # this VM
    assert (s.hog_mib, s.stream_mib) == (13056, 9472)  # 55 % and 40 % of MemTotal, in 256-MiB steps
    # hog + file exceed the memory once the server and the kernel are counted: the file cannot stay cached
    assert s.hog_mib + s.stream_mib + scenarios.SERVER_MIB + scenarios.RESERVE_MIB > 24105
    assert s.stream_mib > 24105 - s.hog_mib - scenarios.SERVER_MIB - scenarios.RESERVE_MIB - 4096
    # the cap: 1.25x the anonymous memory, under the hog plus what the page cache may hold
    assert s.cap_bytes == int(1.25 * (13056 + scenarios.NOISE_BASE_MIB) * MIB)
    assert s.cap_bytes - (13056 + scenarios.NOISE_BASE_MIB) * MIB < 24105 * MIB - s.cap_bytes
    small = scenarios.mem_sizing(8 * GIB, hog_mib=1000, stream_mib=2000)
    assert (small.hog_mib, small.stream_mib) == (1000, 2000) and small.cap_bytes == scenarios.cap_bytes(1000)


def test_the_hog_must_leave_room():
    assert scenarios.check_room(22000 * MIB, 13056) is None
    why = scenarios.check_room(12000 * MIB, 13056)
    assert why and "13056 MiB hog" in why and "--mem-mib" in why and "12000 MiB" in why


def _fstype(path: Path) -> str | None:
    import psutil

    best = max((p for p in psutil.disk_partitions(all=True) if str(path).startswith(p.mountpoint)),
               key=lambda p: len(p.mountpoint), default=None)
    return best.fstype if best else None


def test_the_streamers_file_goes_to_a_disk_with_room(tmp_path):
    assert "not a directory" in scenarios.stream_dir_problem(tmp_path / "nope", 1)
    if _fstype(tmp_path) not in scenarios.MEMORY_FS:
        assert scenarios.stream_dir_problem(tmp_path, 1) is None
        assert "MiB free" in scenarios.stream_dir_problem(tmp_path, 10**9)
    shm = Path("/dev/shm")
    if not shm.is_dir() or _fstype(shm) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm to refuse")
    assert "tmpfs" in scenarios.stream_dir_problem(shm, 1)


def test_a_killed_runs_files_are_swept_and_a_live_ones_are_not(tmp_path):
    import os

    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    stale = [tmp_path / f"autotune-noise-stream-{gone}.bin", scenarios.weights_path(tmp_path, gone)]
    live = [tmp_path / f"autotune-noise-stream-{os.getpid()}.bin", scenarios.weights_path(tmp_path, os.getpid())]
    for f in stale + live:
        f.write_bytes(b"x")
    assert sorted(scenarios.sweep_stream_files(tmp_path)) == sorted(stale)
    assert all(f.exists() for f in live) and not any(f.exists() for f in stale)


def test_mem_arguments_rows_and_grid(tmp_path):
    a = co.parse_args(["--scenario", "mem", "--cache-dir", str(tmp_path)])
    size = scenarios.mem_sizing(scenarios.host_mem_total(co.Host("/")))
    assert (a.noise_mem_mib, a.stream_mib, a.cap_bytes) == (size.hog_mib, size.stream_mib, size.cap_bytes)
    assert a.noise_cpu == 1 and a.schedule.name == "mem.yaml" and a.rows == co.MEM_ROWS
    assert a.weights_file is not None and a.weights_file.parent == Path("/var/tmp")
    assert a.grid_quotas == [1.0, None] and a.grid_ratios == [(4, 1)]
    assert a.grid_neighbour_quotas == [None, 0.5] and a.grid_neighbour_mem == [None, size.cap_bytes]
    points = co.grid_points(a)
    assert len(points) == 8 and len({p.label() for p in points}) == 8
    assert {(p.neighbour_quota_cores, p.neighbour_memory_max_bytes) for p in points} == {
        (None, None), (None, size.cap_bytes), (0.5, None), (0.5, size.cap_bytes)}
    s = co.schedule_from(a)
    assert [p.duration_s for p in s.phases] == [60, 60, 60] and all(p.duration_s >= 45 for p in s.phases)
    assert len(co.distinct_loads(s)) == 2
    # the other scenarios keep their neighbour: no streamer, no neighbour caps, anonymous weights
    cpu = co.parse_args(["--cache-dir", str(tmp_path)])
    assert (cpu.stream_mib, cpu.weights_file, cpu.grid_neighbour_quotas, cpu.grid_neighbour_mem) == (0, None, [None], [None])
    assert len(co.grid_points(cpu)) == 12 and co.parse_args(["--scenario", "cpu+mem"]).noise_mem_mib == 1024
    assert co.parse_args(["--scenario", "mem", "--mem-mib", "2048", "--stream-mib", "4096"]).cap_bytes == \
        scenarios.cap_bytes(2048)
    q = co.parse_args(["--quick", "--scenario", "mem"])
    assert (q.noise_mem_mib, q.stream_mib, len(co.grid_points(q))) == (256, 512, 2)
    with pytest.raises(SystemExit):
        co.parse_args(["--stream-mib", "100"])  # the cpu scenario has no streamer
    with pytest.raises(SystemExit):
        co.parse_args(["--grid-neighbour-mem", "cap"])  # no hog to size a cap from


def test_cache_keys_of_allocations_without_neighbour_caps_did_not_change(tmp_path):
    """The neighbour's caps join a key only when set: the cpu scenario's cached grid stays valid."""
    a = Alloc(quota_cores=1.0, server_weight=400, memory_max_bytes=4 * GIB)
    old = {"quota_cores": 1.0, "server_weight": 400, "neighbour_weight": 100, "memory_max_bytes": 4 * GIB,
           "threads": None}
    assert a.key() == old and cache_key({"alloc": a.key()}) == cache_key({"alloc": old})
    capped = a.model_copy(update={"neighbour_quota_cores": 0.5})
    assert capped.key() != old and "nq=0.5" in capped.label()
    args = co.parse_args(["--cache-dir", str(tmp_path)])
    s = co.schedule_from(args)
    assert "stream_mib" not in co.point_key(args, s.phases[0], a, args.slo)
    assert "weights" not in co.lc_alone_key(args, s, 1)
    mem = co.parse_args(["--scenario", "mem", "--cache-dir", str(tmp_path)])
    assert co.lc_alone_key(mem, co.schedule_from(mem), 1)["weights"] == "mapped"


def test_a_neighbour_capped_at_its_floor_holds_it():
    assert floor_ok(0.6, 0.5) and not floor_ok(0.49, 0.5)
    assert floor_ok(0.48, 0.5, cap_cores=0.5)  # flat out under a cap at the floor: the window edges' noise
    assert not floor_ok(0.40, 0.5, cap_cores=0.5)  # well under its cap: it did not get it
    assert not floor_ok(0.30, 0.5, cap_cores=0.3)  # a cap under the floor never holds it
    capped = PointResult(alloc=Alloc(neighbour_quota_cores=0.5), load="0.1/s", windows=6, violating=0,
                         lc_perf=1.0, neighbour_ops_per_s=1.0, neighbour_cores=0.49)
    assert is_valid(capped, 0.5)
    assert not is_valid(capped.model_copy(update={"alloc": Alloc()}), 0.5)


class FakeCg:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *a: self.calls.append((name, *a))


def test_set_alloc_resets_every_lever_a_row_may_have_moved(monkeypatch):
    weights = []
    monkeypatch.setattr(co, "set_cpu_weight", lambda cg, w: weights.append((cg, w)))
    srv, nb = FakeCg(), FakeCg()
    co.set_alloc({"server": srv, "neighbour": nb}, Alloc(quota_cores=1.0))
    assert ("set_cpu_quota", None) in nb.calls and ("set_memory_max", None) in nb.calls
    assert ("reset_memory_high",) in nb.calls and ("reset_memory_low",) in srv.calls
    nb.calls.clear()
    co.set_alloc({"server": srv, "neighbour": nb}, Alloc(neighbour_quota_cores=0.5, neighbour_memory_max_bytes=GIB))
    assert ("set_cpu_quota", 0.5) in nb.calls and ("set_memory_max", GIB) in nb.calls


def test_mem_estimate_counts_the_neighbours_start_and_the_grid(tmp_path):
    a = co.parse_args(["--scenario", "mem", "--cache-dir", str(tmp_path / "empty")])
    total, most, parts = co.estimate(a, co.schedule_from(a), co.Cache(a.cache_dir, set()))
    names = " | ".join(p for p, _ in parts)
    assert "16 of 16 points" in names and "streamer writes" in names and "3 seed(s) x 4 rows x 180 s" in names
    assert most > total
    with_rules = co.estimate(co.parse_args(["--scenario", "mem", "--rows", ",".join(co.MEM_ROWS + ["autotune"]),
                                            "--cache-dir", str(tmp_path / "empty")]),
                             co.schedule_from(a), co.Cache(a.cache_dir, set()))[0]
    assert 3 * 180 < with_rules - total < 3 * 220  # the rules-only row: one more schedule per seed


def test_stall_share_from_psi_totals():
    a = EdgeSample(k=0, t_s=0.0, server_mem_some_us=1_000_000, host_mem_some_us=0)
    b = EdgeSample(k=1, t_s=10.0, server_mem_some_us=1_500_000, host_mem_some_us=2_000_000)
    assert stall_pct(a, b, "server_mem_some_us") == pytest.approx(5.0)
    assert stall_pct(a, b, "host_mem_some_us") == pytest.approx(20.0)
    assert stall_pct(a, b, "host_mem_full_us") is None and stall_pct(None, b, "host_mem_some_us") is None


def test_the_target_table_reads_per_phase_against_contended():
    agg = [{"row": "autotune-learned", "phase": "calm", "figure": "emu_vs_oracle", "n": 3, "mean": 0.97,
            "lo": 0.96, "hi": 0.98, "values": "", "note": ""},
           {"row": "autotune-learned", "phase": "peak", "figure": "emu_vs_oracle", "n": 3, "mean": 0.96,
            "lo": 0.90, "hi": 1.02, "values": "", "note": ""},
           {"row": "contended", "phase": "calm", "figure": "server_mem_stall_pct", "n": 3, "mean": 1.0,
            "lo": 0.5, "hi": 1.5, "values": "", "note": ""}]
    cmp_rows = [{"a": "autotune-learned", "b": "contended", "phase": "calm", "figure": "violation_pct", "n": 3,
                 "diff_mean": -20.0, "lo": -30.0, "hi": -10.0},
                {"a": "autotune-learned", "b": "contended", "phase": "peak", "figure": "violation_pct", "n": 3,
                 "diff_mean": 5.0, "lo": -10.0, "hi": 20.0}]
    phases = [("calm", "0.1/s"), ("peak", "0.3/s")]
    lines = report.against_contended(["contended", "autotune-learned"], phases, agg, cmp_rows)
    calm = next(ln for ln in lines if "| calm 0.1/s |" in ln)
    peak = next(ln for ln in lines if "| peak 0.3/s |" in ln)
    assert "| yes | 0.97 [0.96, 0.98] | yes |" in calm
    assert "no on the mean (within the interval)" in peak and "| on the mean only |" in peak
    assert report.against_contended(["static", "autotune"], phases, agg, cmp_rows) == []
    stall = report.memory_stall(["contended"], phases, agg)
    assert any("| contended | 1.0 [0.5, 1.5] / - |" in ln for ln in stall)
    assert report.memory_stall(["contended"], phases, agg[:2]) == []
