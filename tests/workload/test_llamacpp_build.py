"""llama.cpp source pin, cache paths and the build command, without building anything: the
tools are faked (``run`` / ``which`` injected), the sdist is a small tarball of the same layout."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from autotune.errors import WorkloadError
from autotune.host import Host
from autotune.workload.cache import cache_root
from autotune.workload.llamacpp import build, source

ALL_TOOLS = {"cmake", "ninja", "cc", "c++"}


def which_of(present: set[str]):
    return lambda name: f"/usr/bin/{name}" if name in present else None


# -- cache root ---------------------------------------------------------------------------------
def test_cache_root_prefers_autotune_cache_then_xdg_then_home():
    assert cache_root({"AUTOTUNE_CACHE": "/c", "XDG_CACHE_HOME": "/x", "HOME": "/h"}) == Path("/c")
    assert cache_root({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == Path("/x/autotune")
    assert cache_root({"AUTOTUNE_CACHE": "", "XDG_CACHE_HOME": "", "HOME": "/h"}) == Path("/h/.cache/autotune")


def test_everything_derived_from_the_pin_lives_under_one_versioned_dir(tmp_path):
    v = source.version_dir(tmp_path)
    assert v == tmp_path / "llamacpp" / source.LLAMA_CPP_PYTHON
    assert source.source_dir(tmp_path).parent == v
    assert build.server_binary(tmp_path, "abc").is_relative_to(v)
    assert source.sdist_path(tmp_path) == tmp_path / "src" / f"llama_cpp_python-{source.LLAMA_CPP_PYTHON}.tar.gz"


# -- fetching and checking the sdist ------------------------------------------------------------
def test_pip_download_is_the_ordinary_client_for_the_pinned_sdist(tmp_path):
    argv = source.pip_download_argv(tmp_path)
    assert argv[1:] == ["-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={source.LLAMA_CPP_PYTHON}", "-d", str(tmp_path)]


def test_a_downloaded_file_with_another_sha256_is_refused(tmp_path):
    calls = []

    def fake_pip(argv, **kw):
        calls.append(argv)
        Path(argv[-1], source.SDIST_NAME).write_bytes(b"not the sdist")
        return subprocess.CompletedProcess(argv, 0, "", "")

    with pytest.raises(WorkloadError) as err:
        source.fetch_sdist(tmp_path, run=fake_pip)
    assert len(calls) == 1
    msg = str(err.value)
    assert "\n" not in msg and source.SDIST_SHA256 in msg and hashlib.sha256(b"not the sdist").hexdigest() in msg


def test_a_failed_download_is_one_line_with_pips_last_words(tmp_path):
    def fake_pip(argv, **kw):
        return subprocess.CompletedProcess(argv, 1, "", "Looking in indexes...\nERROR: No matching distribution\n")

    with pytest.raises(WorkloadError, match=r"failed \(exit 1\): ERROR: No matching distribution$"):
        source.fetch_sdist(tmp_path, run=fake_pip)


def test_a_present_sdist_is_not_downloaded_again(tmp_path, monkeypatch):
    data = b"pretend sdist"
    source.sdist_path(tmp_path).parent.mkdir(parents=True)
    source.sdist_path(tmp_path).write_bytes(data)
    monkeypatch.setattr(source, "SDIST_SHA256", hashlib.sha256(data).hexdigest())
    assert source.fetch_sdist(tmp_path, run=_no_run) == source.sdist_path(tmp_path)


@pytest.mark.skipif(not source.sdist_path(cache_root()).is_file(), reason="the pinned sdist is not in the cache")
def test_the_cached_sdist_matches_the_recorded_sha256():
    source.check_sdist(source.sdist_path(cache_root()))


def _no_run(argv, **kw):
    raise AssertionError(f"nothing may run, got {argv}")


def _fake_sdist(root: Path) -> bytes:
    """A tarball laid out like the sdist: vendor/llama.cpp with a .git file, plus other files."""
    buf = io.BytesIO()
    top = f"llama_cpp_python-{source.LLAMA_CPP_PYTHON}"
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in ((f"{top}/pyproject.toml", "x"), (f"{top}/vendor/llama.cpp/CMakeLists.txt", "cmake"),
                           (f"{top}/vendor/llama.cpp/.git", "gitdir: ../../.git/modules/vendor/llama.cpp"),
                           (f"{top}/vendor/llama.cpp/tools/server/server.cpp", "int main(){}")):
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tf.addfile(info, io.BytesIO(text.encode()))
    data = buf.getvalue()
    source.sdist_path(root).parent.mkdir(parents=True, exist_ok=True)
    source.sdist_path(root).write_bytes(data)
    return data


def test_unpack_keeps_only_the_vendored_tree_once(tmp_path, monkeypatch):
    monkeypatch.setattr(source, "SDIST_SHA256", hashlib.sha256(_fake_sdist(tmp_path)).hexdigest())
    dest = source.unpack(tmp_path, run=_no_run)
    assert (dest / "CMakeLists.txt").read_text() == "cmake"
    assert (dest / "tools/server/server.cpp").is_file()
    assert not (dest / ".git").exists() and not (dest / "pyproject.toml").exists()
    (dest / "CMakeLists.txt").write_text("kept")  # a second call finds the marker: no re-extract
    assert source.unpack(tmp_path, run=_no_run) == dest
    assert (dest / "CMakeLists.txt").read_text() == "kept"


def test_a_half_unpacked_tree_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(source, "SDIST_SHA256", hashlib.sha256(_fake_sdist(tmp_path)).hexdigest())
    dest = source.source_dir(tmp_path)
    dest.mkdir(parents=True)
    (dest / "stray.o").write_text("from a killed run")
    source.unpack(tmp_path, run=_no_run)
    assert not (dest / "stray.o").exists() and (dest / source.UNPACKED_MARKER).is_file()


# -- the CPU key ----------------------------------------------------------------------------------
def _cpuinfo(tmp_path: Path, name: str, flags: str) -> Host:
    root = tmp_path / name
    (root / "proc").mkdir(parents=True)
    (root / "proc/cpuinfo").write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\n"
                                       f"processor\t: 1\nflags\t\t: {flags}\n")
    return Host(root)


def test_cpu_key_names_the_instruction_set_not_the_flag_order(tmp_path):
    a = build.cpu_key(_cpuinfo(tmp_path, "a", "fpu sse2 avx avx2 fma"))
    assert a == build.cpu_key(_cpuinfo(tmp_path, "b", "avx2 fma fpu avx sse2"))
    assert a != build.cpu_key(_cpuinfo(tmp_path, "c", "fpu sse2 avx avx2 fma avx512f"))
    assert len(a) == 12 and int(a, 16) >= 0
    (tmp_path / "d/proc").mkdir(parents=True)
    assert build.cpu_key(Host(tmp_path / "d")) == "unknown"


def test_arm_features_line_counts_too(tmp_path):
    root = tmp_path / "arm"
    (root / "proc").mkdir(parents=True)
    (root / "proc/cpuinfo").write_text("processor\t: 0\nFeatures\t: fp asimd sve\n")
    assert build.cpu_key(Host(root)) != "unknown"


# -- the build command ----------------------------------------------------------------------------
def test_cmake_command_lines(tmp_path):
    conf = build.configure_argv(tmp_path / "src", tmp_path / "b")
    assert conf[:7] == ["cmake", "-S", str(tmp_path / "src"), "-B", str(tmp_path / "b"), "-G", "Ninja"]
    for opt in ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON",
                "-DLLAMA_USE_PREBUILT_UI=OFF"):
        assert opt in conf
    assert build.build_argv(tmp_path / "b") == ["cmake", "--build", str(tmp_path / "b"), "--target", "llama-server"]
    assert build.build_argv(tmp_path / "b", jobs=2)[-2:] == ["-j", "2"]


def test_missing_tools_are_named(tmp_path):
    assert build.missing_tools(which_of(ALL_TOOLS), env={}) == []
    assert build.missing_tools(which_of({"cmake", "gcc", "g++"}), env={}) == ["ninja"]
    assert build.missing_tools(which_of({"cmake", "ninja"}), env={}) == [
        "a C compiler (cc/gcc/clang)", "a C++ compiler (c++/g++/clang++)"]
    assert build.missing_tools(which_of(ALL_TOOLS), env={"CXX": "/opt/x/clang++-19 -stdlib=libc++"}) == [
        "a C++ compiler (/opt/x/clang++-19)"]


def test_a_missing_tool_is_one_line_and_nothing_runs(tmp_path):
    with pytest.raises(WorkloadError) as err:
        build.build(tmp_path, host=_cpuinfo(tmp_path, "h", "avx2"), run=_no_run, which=which_of({"cc", "c++"}))
    assert str(err.value).startswith("cannot build llama-server: cmake, ninja not found on PATH")
    assert "\n" not in str(err.value)


class FakeCmake:
    """Records the steps; the build step leaves a binary (or fails at ``fail_at``)."""

    def __init__(self, root: Path, key: str, fail_at: str | None = None) -> None:
        self.root, self.key, self.fail_at, self.calls = root, key, fail_at, []

    def __call__(self, argv, *, stdout, stderr, preexec_fn):
        step = "build" if "--build" in argv else "configure"
        self.calls.append((step, preexec_fn))
        if step == self.fail_at:
            stdout.write("-- Looking for things\nCMake Error at CMakeLists.txt:1: no compiler\n")
            stdout.flush()
            return subprocess.CompletedProcess(argv, 1)
        if step == "build":
            b = build.server_binary(self.root, self.key)
            b.parent.mkdir(parents=True, exist_ok=True)
            b.write_text("#!/bin/sh\n")
        return subprocess.CompletedProcess(argv, 0)


def _unpacked(root: Path) -> None:
    src = source.source_dir(root)
    src.mkdir(parents=True)
    (src / source.UNPACKED_MARKER).write_text(source.SDIST_SHA256 + "\n")


def test_build_is_idempotent_and_niced(tmp_path):
    host = _cpuinfo(tmp_path, "h", "sse2 avx2")
    key = build.cpu_key(host)
    root = tmp_path / "cache"
    _unpacked(root)
    cmake = FakeCmake(root, key)
    started = []
    first = build.build(root, host=host, run=cmake, which=which_of(ALL_TOOLS),
                        on_start=lambda b, log: started.append((b, log)))
    assert first.built and first.binary == build.server_binary(root, key)
    assert [s for s, _ in cmake.calls] == ["configure", "build"]
    assert all(fn is build._nice19 for _, fn in cmake.calls)
    assert started == [(first.binary, first.log)]
    assert "$ cmake -S" in first.log.read_text()
    stamp = json.loads((build.build_dir(root, key) / build.STAMP).read_text())
    assert stamp["cpu_key"] == key and stamp["commit"] == source.LLAMA_CPP_COMMIT
    again = build.build(root, host=host, run=_no_run, which=which_of(set()))  # no tools needed
    assert not again.built and again.binary == first.binary


def test_another_cpu_or_changed_options_miss_the_cache(tmp_path, monkeypatch):
    host = _cpuinfo(tmp_path, "h", "sse2 avx2")
    key = build.cpu_key(host)
    root = tmp_path / "cache"
    _unpacked(root)
    build.build(root, host=host, run=FakeCmake(root, key), which=which_of(ALL_TOOLS))
    assert build.find_build(root, key) is not None
    assert build.find_build(root, build.cpu_key(_cpuinfo(tmp_path, "other", "sse2 avx2 avx512f"))) is None
    monkeypatch.setattr(build, "CMAKE_OPTIONS", (*build.CMAKE_OPTIONS, "-DGGML_LTO=ON"))
    assert build.find_build(root, key) is None


def test_a_failed_step_names_the_step_the_error_and_the_log(tmp_path):
    host = _cpuinfo(tmp_path, "h", "avx2")
    root = tmp_path / "cache"
    _unpacked(root)
    with pytest.raises(WorkloadError) as err:
        build.build(root, host=host, run=FakeCmake(root, build.cpu_key(host), fail_at="configure"),
                    which=which_of(ALL_TOOLS))
    msg = str(err.value)
    assert msg.startswith("llama-server configure failed (exit 1): CMake Error at CMakeLists.txt:1: no compiler")
    assert msg.endswith(".log") and "\n" not in msg
    assert build.find_build(root, build.cpu_key(host)) is None


def test_nice19_lowers_only_the_child(tmp_path):
    before = os.getpriority(os.PRIO_PROCESS, 0)
    out = subprocess.run(["sh", "-c", "cut -d' ' -f19 /proc/self/stat"], capture_output=True, text=True,
                         preexec_fn=build._nice19, check=True).stdout.strip()
    assert out == "19"
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
