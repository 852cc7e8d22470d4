"""Build ``llama-server`` from the pinned tree with cmake + ninja, into the cache, once.

``-DGGML_NATIVE=ON`` (``-march=native``): the reference workload runs the kernels this host really
has, which is what the benchmarks measure. (``OFF`` in this tree means a
fixed AVX/AVX2/FMA/F16C/BMI2 level, ggml's ``INS_ENB``: no AVX-512 where a host has it, and still
SIGILL on a CPU without AVX2, so it is not portable either.) A native binary can die with SIGILL on
a CPU with fewer instructions, so the build directory is keyed by a hash of this CPU's feature
flags (``cpu_key``): a cache copied to, or shared with, another CPU misses and builds its own
instead of running a foreign binary.

The build runs at nice 19 (15 minutes on 2 cores, 67 minutes measured with both busy; the host
stays usable), without network: libcurl and OpenSSL off, no prebuilt web UI download
(``LLAMA_USE_PREBUILT_UI=OFF``; the server then serves no UI, which a benchmark does not need). A
stamp written after a good build (options, commit, CPU key, seconds) is what ``find_build`` checks:
a second run finds it and runs nothing; changed options rebuild.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import BaseModel

from autotune.errors import WorkloadError
from autotune.host import Host
from autotune.workload.llamacpp import source

# Every option is explicit, so a newer cmake default cannot change the binary silently.
CMAKE_OPTIONS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_CURL=OFF",  # a no-op in this tree (libcurl was replaced by cpp-httplib), kept explicit
    "-DLLAMA_OPENSSL=OFF",  # plain HTTP on 127.0.0.1; the binary must not depend on libssl being there
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # would download the web UI at build time
    "-DLLAMA_BUILD_UI=OFF",  # would run npm
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DGGML_NATIVE=ON",
    f"-DLLAMA_BUILD_COMMIT={source.LLAMA_CPP_COMMIT[:7]}",  # no git history in the sdist: name it
)
TARGET = "llama-server"
STAMP = "autotune-build.json"

Runner = Callable[..., subprocess.CompletedProcess]
Which = Callable[[str], str | None]


class BuildResult(BaseModel):
    binary: Path
    built: bool  # False: found in the cache, nothing ran
    seconds: float = 0.0
    log: Path | None = None


def cpu_key(host: Host | None = None) -> str:
    """12 hex digits naming this CPU's instruction set: a hash of the sorted feature flags of
    /proc/cpuinfo's first ``flags`` (x86) or ``Features`` (arm) line; "unknown" without one."""
    host = host or Host()
    text = host.read_optional("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            flags = " ".join(sorted(set(value.split())))
            return hashlib.sha256(flags.encode()).hexdigest()[:12]
    return "unknown"


def build_dir(root: Path, key: str) -> Path:
    return source.version_dir(root) / f"build-native-{key}"


def server_binary(root: Path, key: str) -> Path:
    return build_dir(root, key) / "bin" / TARGET


def configure_argv(src: Path, bdir: Path) -> list[str]:
    return ["cmake", "-S", str(src), "-B", str(bdir), "-G", "Ninja", *CMAKE_OPTIONS]


def build_argv(bdir: Path, jobs: int | None = None) -> list[str]:
    return ["cmake", "--build", str(bdir), "--target", TARGET, *(["-j", str(jobs)] if jobs else [])]


def _stamp(key: str) -> dict:
    return {"llama_cpp_python": source.LLAMA_CPP_PYTHON, "commit": source.LLAMA_CPP_COMMIT,
            "cpu_key": key, "options": list(CMAKE_OPTIONS)}


def find_build(root: Path, key: str) -> Path | None:
    """The built binary when its stamp matches this pin, CPU and options; else None."""
    binary = server_binary(root, key)
    try:
        stamp = json.loads((build_dir(root, key) / STAMP).read_text())
    except (OSError, ValueError):
        return None
    want = _stamp(key)
    if not binary.is_file() or any(stamp.get(k) != v for k, v in want.items()):
        return None
    return binary


def missing_tools(which: Which = shutil.which, env: Mapping[str, str] | None = None) -> list[str]:
    """What the build needs and PATH lacks: cmake, ninja, a C and a C++ compiler (``$CC`` /
    ``$CXX`` when set, else cc/gcc/clang and c++/g++/clang++)."""
    env = os.environ if env is None else env
    out = [tool for tool in ("cmake", "ninja") if which(tool) is None]
    for var, names, label in (("CC", ("cc", "gcc", "clang"), "a C compiler"),
                              ("CXX", ("c++", "g++", "clang++"), "a C++ compiler")):
        wanted = (env[var].split()[0],) if env.get(var) else names
        if not any(which(n) for n in wanted):
            out.append(f"{label} ({'/'.join(wanted)})")
    return out


def _nice19() -> None:
    os.setpriority(os.PRIO_PROCESS, 0, 19)


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["empty log"])[-1].strip()[:200]


def build(root: Path, *, host: Host | None = None, jobs: int | None = None,
          run: Runner = subprocess.run, which: Which = shutil.which,
          on_start: Callable[[Path, Path], None] | None = None) -> BuildResult:
    """The ``llama-server`` binary, built unless the cache has it. ``on_start(binary, log)`` is
    called once a build really starts (the CLI says where the log is). WorkloadError, one line,
    when a tool is missing or a step fails (naming the log)."""
    key = cpu_key(host)
    found = find_build(root, key)
    if found is not None:
        return BuildResult(binary=found, built=False)
    missing = missing_tools(which)
    if missing:
        raise WorkloadError(f"cannot build {TARGET}: {', '.join(missing)} not found on PATH "
                            "(e.g. apt-get install cmake ninja-build g++)")
    with source.locked(root):
        found = find_build(root, key)  # another run may have finished it while we waited
        if found is not None:
            return BuildResult(binary=found, built=False)
        src = source.unpack(root, run=run)
        bdir = build_dir(root, key)
        log_path = bdir.with_name(bdir.name + ".log")
        binary = server_binary(root, key)
        if on_start:
            on_start(binary, log_path)
        t0 = time.monotonic()
        with open(log_path, "w") as log:
            for step, argv in (("configure", configure_argv(src, bdir)), ("build", build_argv(bdir, jobs))):
                log.write(f"$ {' '.join(argv)}\n")
                log.flush()
                res = run(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_nice19)
                if res.returncode != 0:
                    raise WorkloadError(f"{TARGET} {step} failed (exit {res.returncode}): "
                                        f"{_last_line(log_path)}; full log: {log_path}")
        seconds = time.monotonic() - t0
        if not binary.is_file():
            raise WorkloadError(f"the build finished but left no {binary}; full log: {log_path}")
        (bdir / STAMP).write_text(json.dumps({**_stamp(key), "seconds": round(seconds, 1)}, indent=1) + "\n")
    return BuildResult(binary=binary, built=True, seconds=seconds, log=log_path)
