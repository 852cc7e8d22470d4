"""The shipped units verify and stay strongly sandboxed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


@pytest.fixture()
def units(tmp_path):
    """Copies of the units with ExecStart pointing at this install (verify checks the binary)."""
    exe = shutil.which("autotune") or str(Path(sys.executable).with_name("autotune"))
    for f in UNITS.glob("autotune*"):
        (tmp_path / f.name).write_text(f.read_text().replace("/opt/autotune/bin/autotune", exe))
    return tmp_path


def test_units_verify(units):
    out = subprocess.run(
        ["systemd-analyze", "verify", "autotune.service", "autotune-helper.service", "autotune-helper.socket"],
        cwd=units, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "Unknown" not in out.stderr and "Invalid" not in out.stderr, out.stderr


@pytest.mark.parametrize("unit,limit", [("autotune.service", 2.0), ("autotune-helper.service", 2.5)])
def test_exposure_is_low(units, unit, limit):
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", unit],
        cwd=units, capture_output=True, text=True, timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
    assert m, out.stdout[-500:] + out.stderr
    assert float(m.group(1)) <= limit


def test_agent_unit_is_unprivileged_notify_with_watchdog():
    text = (UNITS / "autotune.service").read_text()
    assert re.search(r"^User=(?!root)\w+", text, re.M)
    assert "Type=notify" in text and re.search(r"^WatchdogSec=\d+", text, re.M)
    assert re.search(r"^CapabilityBoundingSet=$", text, re.M)


def test_helper_has_only_needed_capabilities():
    text = (UNITS / "autotune-helper.service").read_text()
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
    assert caps == ["CAP_SYS_NICE"]
    assert "PrivateNetwork=yes" in text and "RestrictAddressFamilies=AF_UNIX" in text
