"""A wheel, installed outside the checkout, carries its rule pack and runs recommend/config check.

Offline: the new venv sees the site-packages of the interpreter running the tests (a ``.pth``
file lists them: ``system_site_packages`` would show the *base* interpreter's, which lacks the
dependencies when the tests run from a venv), so pip resolves the core dependencies there with
--no-index, and the test asserts that ``autotune`` itself is imported from the new venv. The
wheel is built without build isolation when this interpreter has the build requirements, else
with it (pip fetches them from the configured index, as ``pip install -e .`` did).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

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


def _has_build_requirements() -> bool:
    """True when this interpreter satisfies pyproject's [build-system] requires (a fresh venv's
    setuptools 65 without ``wheel`` does not: ``invalid command 'bdist_wheel'``)."""
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    for text in requires:
        req = Requirement(text)
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            return False
        if not req.specifier.contains(installed, prereleases=True):
            return False
    return True


def _outer_site_dirs(env: dict[str, str]) -> list[str]:
    """The site-packages directories of the interpreter running the tests (a venv's own and,
    when it was made with system site packages, its base's), without PYTHONPATH's checkout."""
    code = ("import site, sys; dirs = site.getsitepackages()\n"
            "if site.ENABLE_USER_SITE: dirs.append(site.getusersitepackages())\n"
            "print('\\n'.join(dirs))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return [d for d in out.stdout.splitlines() if d and Path(d).is_dir()]


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
    isolation = ["--no-build-isolation"] if _has_build_requirements() else []
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(tmp / "dist"), str(src)],
         cwd=tmp, env=env)
    wheel = next((tmp / "dist").glob("autotune_node-*.whl"))
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(tmp / "venv")
    py = tmp / "venv" / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             env=env, capture_output=True, text=True, check=True).stdout.strip()
    # Listed in a .pth, these directories are on the venv's path but their own .pth files are not
    # run, so an editable install of the checkout there cannot shadow the wheel.
    (Path(purelib) / "outer_site_packages.pth").write_text("\n".join(_outer_site_dirs(env)) + "\n")
    # the venv's pip is the outer interpreter's; --no-index: dependencies must already be there
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
