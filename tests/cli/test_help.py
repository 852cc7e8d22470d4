"""`autotune --help` stays light: it must not import torch, transformers or scikit-learn."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "sklearn", "matplotlib", "scipy")

PROBE = """
import sys
sys.argv = ["autotune", "--help"]
from autotune.cli.main import app
try:
    app()
except SystemExit:
    pass
print("HEAVY:" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


def test_help_does_not_import_heavy_modules():
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("HEAVY:")][0]
    assert line == "HEAVY:", f"--help imported heavy modules: {line}"


def test_help_lists_core_commands():
    out = subprocess.run([sys.executable, "-m", "autotune", "--help"], capture_output=True, text=True, timeout=60)
    for cmd in ("status", "recommend", "config"):
        assert cmd in out.stdout


def test_ranker_help_names_only_commands_that_exist():
    """It listed a `status` command; the status is `autotune ranker` with no command."""
    out = subprocess.run([sys.executable, "-m", "autotune", "ranker", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    listed = out.stdout.split("Commands:")[1].split()
    assert [w for w in listed if w in ("status", "export", "import")] == ["export", "import"]
    assert "with no command" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "autotune", "ranker", "status"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "No such command 'status'" in bad.stderr
