"""Where the default rule pack is found: $AUTOTUNE_RULES, checkout, package copy, /usr/share."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune import config


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """A fake checkout and a fake installed package, both empty until a test fills them."""
    checkout, packaged = tmp_path / "checkout", tmp_path / "site" / "autotune" / "rules"
    checkout.mkdir()
    packaged.mkdir(parents=True)
    monkeypatch.setattr(config, "REPO_ROOT", checkout)
    monkeypatch.setattr(config, "PACKAGED_RULES", packaged)
    monkeypatch.delenv("AUTOTUNE_RULES", raising=False)
    return checkout, packaged


def test_checkout_rules_come_first(layout):
    checkout, packaged = layout
    (checkout / "pyproject.toml").write_text("")
    (checkout / "rules").mkdir()
    (packaged / "cpu.yaml").write_text("")
    assert config.default_rule_dir() == checkout / "rules"


def test_packaged_copy_when_not_in_a_checkout(layout):
    checkout, packaged = layout
    (checkout / "rules").mkdir()  # a stray rules/ next to site-packages is not a checkout
    (packaged / "cpu.yaml").write_text("")
    assert config.default_rule_dir() == packaged


def test_system_dir_when_the_package_has_no_copy(layout):
    assert config.default_rule_dir() == Path("/usr/share/autotune/rules")


def test_environment_overrides_everything(layout, monkeypatch, tmp_path):
    checkout, packaged = layout
    (checkout / "pyproject.toml").write_text("")
    (checkout / "rules").mkdir()
    monkeypatch.setenv("AUTOTUNE_RULES", str(tmp_path / "mine"))
    assert config.default_rule_dir() == tmp_path / "mine"


def test_the_real_checkout_uses_its_rules_dir(monkeypatch):
    monkeypatch.delenv("AUTOTUNE_RULES", raising=False)
    assert config.default_rule_dir() == Path(__file__).resolve().parents[2] / "rules"
