"""The colocation benchmark's neighbours (``--scenario``): what runs beside the server, how big,
and the oracle grid and schedule each one defaults to.

- ``cpu``: one CPU burner per CPU (the default; bench/schedules/default.yaml).
- ``cpu+mem``: the same plus a 1 GiB anonymous hog.
- ``mem``: a memory-heavy neighbour (issue 23): a large resident anonymous hog, a reader
  streaming a file bigger than the free memory through the page cache, and one CPU burner, all
  in the neighbour's cgroup (bench/schedules/mem.yaml). The server stalls on memory: reclaim
  takes its file pages (code, libraries) and it reads them back, which no CPU weight fixes.

Sizing of ``mem`` (``mem_sizing``, from MemTotal; this VM: 24 GiB, no swap):
- the hog holds 55 % of MemTotal (13.2 GiB here), touched page by page, so it is resident; it
  never shrinks (no swap), so it is sized to leave room: the server (~1.5 GiB), the kernel and
  the rest of the host (2-3 GiB here) and ~6 GiB of page cache;
- the streamer's file is 40 % of MemTotal (9.6 GiB here): more than the page cache can hold
  beside the hog, so every pass reads it from disk again and evicts older file pages (the
  server's among them): hog + file = 95 % of MemTotal, + the server and the kernel > 100 %;
- the oracle's neighbour memory cap is 1.25x the neighbour's anonymous memory (the hog plus
  the noise processes' own ~``NOISE_BASE_MIB``), the least the agent's cap-neighbour-memory
  rules ever set: the neighbour then keeps at most ~3.4 GiB of page cache, less than the ~6 GiB
  left, so the host stops reclaiming from the server.
- before the neighbour starts, ``check_room`` refuses (one line, exit 2) when the hog would
  leave less than ``RESERVE_MIB`` + the server's ~``SERVER_MIB`` of MemAvailable: a hog on a
  host without swap cannot be reclaimed, and the run must never OOM the host. The hog also
  sets its oom_score_adj to 1000 (autotune/workload/noise.py): if memory runs out anyway, it
  is the process the kernel kills.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from autotune.host import Host
from autotune.sensors.meminfo import read_meminfo

MIB = 1024 * 1024
HOG_SHARE = 0.55  # of MemTotal
STREAM_SHARE = 0.40  # of MemTotal
CAP_FACTOR = 1.25  # the neighbour's memory cap: x its anonymous memory (rules/interference.yaml)
NOISE_BASE_MIB = 128  # the noise processes' own anonymous memory beside the hog (interpreter, burners)
SERVER_MIB = 1536  # the GPT-2 reference server's resident memory, with its libraries
RESERVE_MIB = 1024  # left to the kernel and everything else on top of the server, at the least
ROUND_MIB = 256


@dataclass(frozen=True)
class Scenario:
    name: str
    doc: str
    schedule: str  # the default schedule's file under bench/schedules/
    noise_cpu: int | None  # CPU burners (None: one per CPU)
    stream: bool = False  # a page-cache streamer
    mmap_weights: bool = False  # the server maps its weights from a file (page cache, evictable)
    mem_default_mib: int = 0  # the hog (the mem scenario sizes it from MemTotal instead)
    # oracle grid defaults: server quotas, weight ratios, neighbour quotas, neighbour memory caps
    grid_quotas: str = "0.5,1,1.5,max"
    grid_ratios: str = "1:4,1:1,4:1"
    grid_neighbour_quotas: str = "max"
    grid_neighbour_mem: str = "max"


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("cpu", "one CPU burner per CPU", schedule="default.yaml", noise_cpu=None),
    Scenario("cpu+mem", "one CPU burner per CPU and a 1 GiB anonymous hog", schedule="default.yaml",
             noise_cpu=None, mem_default_mib=1024),
    # The grid: the neighbour's caps are the levers this scenario is about (its cpu quota at none
    # or its 0.5-core floor, its memory at none or 1.25x its anonymous memory); the server's
    # quota at 1 core or none and the weights at 4:1 only: in the CPU scenario's committed
    # grids 1:4 was never chosen, quota 1.5 never either, and 4:1 was within 2 % of 1:1's EMU
    # where both held. 2 x 1 x 2 x 2 = 8 points per load (bench/METHOD.md).
    Scenario("mem", "a memory-heavy neighbour: an anonymous hog of 55 % of MemTotal, a reader streaming a "
             "file of 40 % of MemTotal through the page cache, one CPU burner; the server maps its weights from a "
             "file", schedule="mem.yaml", noise_cpu=1, stream=True, mmap_weights=True, grid_quotas="1,max", grid_ratios="4:1", grid_neighbour_quotas="max,0.5",
             grid_neighbour_mem="max,cap"),
]}


@dataclass(frozen=True)
class MemSizing:
    hog_mib: int
    stream_mib: int
    cap_bytes: int  # the neighbour's memory cap in the oracle grid ("cap")


def _round(mib: float) -> int:
    return int(mib // ROUND_MIB * ROUND_MIB)


def mem_sizing(mem_total_bytes: int, *, hog_mib: int | None = None, stream_mib: int | None = None) -> MemSizing:
    """The mem scenario's hog, file and cap from MemTotal (the module docstring says why);
    ``hog_mib`` / ``stream_mib`` override the computed ones."""
    total = mem_total_bytes / MIB
    hog = hog_mib if hog_mib is not None else _round(HOG_SHARE * total)
    stream = stream_mib if stream_mib is not None else _round(STREAM_SHARE * total)
    return MemSizing(hog_mib=hog, stream_mib=stream, cap_bytes=cap_bytes(hog))


def cap_bytes(hog_mib: int) -> int:
    """1.25x the neighbour's anonymous memory: the hog and the noise processes' own."""
    return int(CAP_FACTOR * (hog_mib + NOISE_BASE_MIB) * MIB)


def host_mem_total(host: Host) -> int:
    return read_meminfo(host)["MemTotal"]


def check_room(available_bytes: int, hog_mib: int) -> str | None:
    """Why a hog of ``hog_mib`` must not start with ``available_bytes`` of MemAvailable (None:
    it may): it would leave less than the server and ``RESERVE_MIB``."""
    need = hog_mib + SERVER_MIB + RESERVE_MIB
    avail = available_bytes / MIB
    if avail < need:
        return (f"a {hog_mib} MiB hog needs {need} MiB available (the hog, ~{SERVER_MIB} MiB for the server, "
                f"{RESERVE_MIB} MiB for the kernel), and only {avail:.0f} MiB is (other processes hold the rest): "
                "stop them or give a smaller --mem-mib; a hog without swap cannot be reclaimed")
    return None


MEMORY_FS = {"tmpfs", "ramfs", "devtmpfs"}


def stream_dir_problem(directory: Path, stream_mib: int) -> str | None:
    """Why the streamer's file must not go to ``directory`` (None: it may): it must be a
    directory on a disk (a file in tmpfs is memory that cannot be evicted: without swap, an
    OOM) with room for the file and 1 GiB more."""
    import psutil

    if not directory.is_dir():
        return f"--stream-dir {directory}: not a directory"
    target = str(directory.resolve())
    best = max((p for p in psutil.disk_partitions(all=True)
                if target == p.mountpoint or target.startswith(p.mountpoint.rstrip("/") + "/")),
               key=lambda p: len(p.mountpoint), default=None)
    if best is not None and best.fstype in MEMORY_FS:
        return (f"--stream-dir {directory} is on {best.fstype} ({best.mountpoint}): the streamer's file would be "
                "memory, not page cache; give a directory on a disk")
    free_mib = shutil.disk_usage(directory).free / MIB
    if free_mib < stream_mib + 1024:
        return f"--stream-dir {directory}: {free_mib:.0f} MiB free, the streamer needs {stream_mib} MiB + 1 GiB"
    return None


def weights_path(directory: Path, pid: int) -> Path:
    """Where a run's server keeps the weights it maps (removed at the end of the run)."""
    return directory / f"autotune-bench-weights-{pid}.pt"


def sweep_stream_files(directory: Path) -> list[Path]:
    """Remove streamer files (autotune/workload/noise.py names them by pid) and mapped weights
    (``weights_path``) whose process is gone: what a run killed with -9 left behind."""
    import psutil

    removed = []
    for f in [*directory.glob("autotune-noise-stream-*.bin"), *directory.glob("autotune-bench-weights-*.pt")]:
        pid = f.stem.rsplit("-", 1)[-1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)) and f.is_file():
            try:
                os.unlink(f)
                removed.append(f)
            except OSError:
                pass
    return removed
