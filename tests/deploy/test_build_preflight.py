"""deploy/container/build.sh checks its prerequisites first and names every missing one in one
line (the first hour's build ran a 2-minute debootstrap before failing on a missing piece)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "deploy" / "container" / "build.sh"


def test_missing_prerequisites_are_named_in_one_line_before_any_work(tmp_path):
    bindir = tmp_path / "bin"  # a PATH with only what the script needs to find itself
    bindir.mkdir()
    for tool in ("id", "dirname"):
        (bindir / tool).symlink_to(shutil.which(tool))
    scratch = tmp_path / "scratch"
    r = subprocess.run([shutil.which("bash"), str(BUILD)], capture_output=True, text=True, timeout=60,
                       env={"PATH": str(bindir), "BUILD_DIR": str(scratch), "HOME": str(tmp_path)})
    assert r.returncode == 2, (r.stdout, r.stderr)
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("build.sh: missing: ")
    for needed in ("podman or buildah (apt install podman)", "debootstrap (apt install debootstrap)",
                   "tar", "python3 >= 3.11 (apt install python3)"):
        assert needed in line, line
    assert ("root (run it with sudo)" in line) == (os.geteuid() != 0)
    assert not scratch.exists() and r.stdout == ""  # nothing was started


def test_an_old_python_or_one_without_pip_is_named(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("id", "dirname", "tar", "chroot"):
        if shutil.which(tool):
            (bindir / tool).symlink_to(shutil.which(tool))
    fake = bindir / "python3"  # answers like an interpreter that has no pip module
    fake.write_text("#!/bin/sh\ncase \"$*\" in *'-m pip'*) exit 1;; *) exit 0;; esac\n")
    fake.chmod(0o755)
    r = subprocess.run([shutil.which("bash"), str(BUILD)], capture_output=True, text=True, timeout=60,
                       env={"PATH": str(bindir), "HOME": str(tmp_path)})
    assert r.returncode == 2
    assert "pip for python3 (apt install python3-pip)" in r.stderr, r.stderr
