"""A wheel, installed outside the checkout, carries its rule pack and runs recommend/config check.

Offline: the venv sees the system's site-packages for the core dependencies (pip resolves them
there with --no-index), so the test asserts that ``autotune`` itself is imported from the venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The README's example, without rule_dirs: the default rule pack must come from the package.
EXAMPLE = """
[agent]
sample_period_s = 0.5
window_s = 30

[[service]]
name = "llm"
role = "latency-critical"
cgroup = "/autotune/llm"
[service.slo]
p95_latency_s = 2.0

[[service]]
name = "batch"
role = "neighbour"
cmdline = "stress-ng|autotune workload noise"
"""

pytestmark = pytest.mark.slow


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # build from a copy: an in-tree build leaves build/ and *.egg-info behind
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "autotune", src / "autotune", ignore=ignore)
    shutil.copytree(REPO / "rules", src / "rules", ignore=ignore)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "AUTOTUNE_RULES", "AUTOTUNE_CONFIG", "AUTOTUNE_ROOT", "PIP_REQUIRE_VIRTUALENV")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
          str(src)], cwd=tmp, env=env)
    wheel = next((tmp / "dist").glob("autotune_node-*.whl"))
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(tmp / "venv")
    py = tmp / "venv" / "bin" / "python"
    # the venv's pip is the system's (system site-packages); --no-index: dependencies must already be there
    _run([str(py), "-m", "pip", "install", "-q", "--no-index", "--disable-pip-version-check", str(wheel)],
         cwd=tmp, env=env)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "autotune.toml").write_text(EXAMPLE)
    return tmp / "venv", elsewhere, env


def test_package_comes_from_the_wheel_with_its_rule_pack(installed):
    venv_dir, cwd, env = installed
    py = venv_dir / "bin" / "python"
    out = _run([str(py), "-c", "import autotune, autotune.config as c; print(autotune.__file__); "
                "print(c.default_rule_dir())"], cwd=cwd, env=env)
    pkg_file, rule_dir = out.stdout.split()
    assert Path(pkg_file).is_relative_to(venv_dir), pkg_file
    assert Path(rule_dir) == Path(pkg_file).parent / "rules"
    shipped = sorted(p.name for p in (REPO / "rules").glob("*.yaml"))
    assert sorted(p.name for p in Path(rule_dir).glob("*.yaml")) == shipped


def test_config_check_on_the_example_config_uses_the_packaged_rules(installed):
    venv_dir, cwd, env = installed
    out = _run([str(venv_dir / "bin" / "autotune"), "config", "check", "autotune.toml"], cwd=cwd, env=env)
    assert "OK" in out.stdout
    assert f"{venv_dir}" in out.stdout and "/autotune/rules" in out.stdout, out.stdout
    show = json.loads(_run([str(venv_dir / "bin" / "autotune"), "config", "show"], cwd=cwd, env=env).stdout)
    (rule_dir,) = show["effective"]["rule_dirs"]
    assert Path(rule_dir).is_relative_to(venv_dir), rule_dir


def test_recommend_runs_from_the_wheel(installed):
    venv_dir, cwd, env = installed
    out = _run([str(venv_dir / "bin" / "autotune"), "recommend", "--config", "autotune.toml", "--duration", "1",
                "--json"], cwd=cwd, env=env)
    rec = json.loads(out.stdout)
    assert "actions" in rec and "symptoms" in rec, sorted(rec)
