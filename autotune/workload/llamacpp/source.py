"""The pinned llama.cpp source: the tree vendored in the ``llama-cpp-python`` sdist.

The package index is the one source reachable here, and that sdist carries a complete llama.cpp
checkout (``vendor/llama.cpp``: the server, ``convert_hf_to_gguf.py``, ``gguf-py``) at a known
commit. It is fetched with pip's ordinary client, checked against the sha256 recorded below (a
different file is refused, never used), and only ``vendor/llama.cpp`` is unpacked, through
tarfile's ``data`` filter (no absolute paths, no links out of the tree).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from autotune.errors import WorkloadError

LLAMA_CPP_PYTHON = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# The vendor/llama.cpp submodule's HEAD in that sdist (.git/modules/vendor/llama.cpp/HEAD).
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
VENDOR_PREFIX = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
UNPACKED_MARKER = ".autotune-unpacked"  # holds the sdist's sha256 once the tree is complete

Runner = Callable[..., subprocess.CompletedProcess]


def sdist_path(root: Path) -> Path:
    return root / "src" / SDIST_NAME


def version_dir(root: Path) -> Path:
    """Everything derived from this pin: the source, its builds, the models it converted."""
    return root / "llamacpp" / LLAMA_CPP_PYTHON


def source_dir(root: Path) -> Path:
    return version_dir(root) / "llama.cpp"


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold this pin's lock (an flock on ``version_dir/.lock``): two commands unpacking, building
    or converting at once wait for each other instead of replacing each other's files."""
    path = version_dir(root) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pip_download_argv(dest: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(dest)]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_sdist(path: Path) -> None:
    digest = file_sha256(path)
    if digest != SDIST_SHA256:
        raise WorkloadError(f"{path}: sha256 {digest}, expected {SDIST_SHA256} (llama-cpp-python "
                            f"{LLAMA_CPP_PYTHON} sdist); remove the file and run again")


def fetch_sdist(root: Path, *, run: Runner = subprocess.run) -> Path:
    """The checked sdist, downloaded by pip when it is not in the cache yet."""
    path = sdist_path(root)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        argv = pip_download_argv(path.parent)
        res = run(argv, capture_output=True, text=True)
        if res.returncode != 0:
            last = (res.stderr or res.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise WorkloadError(f"pip download llama-cpp-python=={LLAMA_CPP_PYTHON} failed "
                                f"(exit {res.returncode}): {last[0]}")
        if not path.exists():
            raise WorkloadError(f"pip download llama-cpp-python=={LLAMA_CPP_PYTHON} left no {path}")
    check_sdist(path)
    return path


def _vendor_only(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """Keep ``vendor/llama.cpp/**`` re-rooted at the tree's top. Its ``.git`` file points at the
    sdist's submodule store, which is not unpacked: dropped, so git sees no broken checkout."""
    if not member.name.startswith(VENDOR_PREFIX):
        return None
    name = member.name[len(VENDOR_PREFIX):]
    if not name or name == ".git":
        return None
    return tarfile.data_filter(member.replace(name=name, deep=False), dest)


def unpack(root: Path, *, run: Runner = subprocess.run) -> Path:
    """The llama.cpp tree in the cache (fetched and unpacked once; a half-unpacked tree from an
    interrupted run is replaced, never built from). Call it holding ``locked(root)``."""
    dest = source_dir(root)
    marker = dest / UNPACKED_MARKER
    if marker.is_file() and marker.read_text().strip() == SDIST_SHA256:
        return dest
    sdist = fetch_sdist(root, run=run)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(sdist) as tf:
            tf.extractall(tmp, filter=_vendor_only)
        if not (tmp / "CMakeLists.txt").is_file():
            raise WorkloadError(f"{sdist}: no vendor/llama.cpp tree inside")
        (tmp / UNPACKED_MARKER).write_text(SDIST_SHA256 + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
