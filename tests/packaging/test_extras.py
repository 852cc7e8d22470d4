"""Optional extras: pyproject and the CLI's EXTRAS agree; a missing extra is one line, exit 2."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autotune.cli import common
from autotune.cli.main import app

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_distribution_name_matches_the_cli_hint():
    assert PYPROJECT["project"]["name"] == common.DIST
    assert PYPROJECT["project"]["scripts"] == {"autotune": "autotune.cli.main:main"}


def test_every_feature_extra_is_known_to_the_cli_and_brings_its_modules():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras) - {"dev"} == set(common.EXTRAS)
    for extra, modules in common.EXTRAS.items():
        assert set(modules) <= _names(extras[extra]), extra


def test_core_does_not_carry_single_feature_dependencies():
    core = _names(PYPROJECT["project"]["dependencies"])
    single = {m for mods in common.EXTRAS.values() for m in mods}
    assert not core & single, core & single


@pytest.mark.parametrize(("argv", "extra"), [
    (["audit", "report", "--html", "/nonexistent/r.html"], "report"),
    (["gate"], "gate"),
    (["workload", "serve"], "workload"),
])
def test_missing_extra_is_one_line_naming_it(monkeypatch, argv, extra):
    blocked = set(common.EXTRAS[extra])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in blocked else real(name, *a))
    res = CliRunner().invoke(app, argv)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1, res.output
    assert f"needs the '{extra}' extra" in lines[0] and f"[{extra}]'" in lines[0], lines[0]


def test_present_extras_pass_the_check():
    for extra in common.EXTRAS:
        if all(importlib.util.find_spec(m) for m in common.EXTRAS[extra]):
            common.require_extra(extra, what="x")  # no exit
