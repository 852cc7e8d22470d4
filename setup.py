"""Build glue that pyproject.toml cannot express; metadata and dependencies live there.

The default rule pack is edited where users and docs look for it, the top-level ``rules/``. A
wheel must carry it too, so ``package_dir`` maps ``rules/`` to the package ``autotune.rules``:
setuptools copies ``rules/*.yaml`` into ``autotune/rules/`` of the wheel (and into the sdist),
with no copy in the tree to keep in sync and no symlink (which breaks on checkouts without
symlink support and is followed differently by sdist and wheel builds). An editable install
reads the checkout's ``rules/`` directly (``autotune.config.default_rule_dir``).
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["autotune", "autotune.*"]), "autotune.rules"],
    package_dir={"autotune.rules": "rules"},
    package_data={"autotune.rules": ["*.yaml", "README.md"]},
)
