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


def test_search_help_names_only_commands_that_exist():
    """It listed a `status` command; the status is `autotune search` with no command."""
    out = subprocess.run([sys.executable, "-m", "autotune", "search", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    listed = out.stdout.split("Commands:")[1].split()
    assert [w for w in listed if w in ("status", "export", "import")] == ["export", "import"]
    assert "with no command" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "autotune", "search", "status"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "No such command 'status'" in bad.stderr


def test_the_old_name_ranker_runs_the_search_with_a_one_line_notice():
    out = subprocess.run([sys.executable, "-m", "autotune", "ranker", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines() == ["autotune: `ranker` is now `autotune search`; running that"]
    assert "with no command" in out.stdout and "autotune search" in out.stdout


def test_the_old_section_ranker_is_read_as_search_with_a_notice(tmp_path, caplog):
    from autotune.config import load_config

    (tmp_path / "a.toml").write_text("[ranker]\nenabled = false\n")
    cfg = load_config(tmp_path / "a.toml")
    assert cfg.search.enabled is False
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'a.toml'}: [ranker] is now called [search]: rename the section"]
    (tmp_path / "b.toml").write_text("[ranker]\nenabled = false\n[search]\nenabled = true\n")
    import pytest

    from autotune.errors import ConfigError

    with pytest.raises(ConfigError, match="keep one"):
        load_config(tmp_path / "b.toml")


def test_the_listing_is_the_whole_clis_help():
    """`autotune --help` comes from main.COMMANDS without importing the commands: the same text
    as the app with every command registered."""
    from typer.testing import CliRunner

    from autotune.cli import main

    full = CliRunner().invoke(main.full_app(), ["--help"], terminal_width=80)
    listed = CliRunner().invoke(main.app_for(["--help"]), ["--help"], terminal_width=80)
    assert full.exit_code == listed.exit_code == 0
    assert listed.output == full.output


def test_commands_table_is_what_the_modules_register():
    import typer

    from autotune.cli import main

    group = typer.main.get_command(main.full_app())
    real = {name: (isinstance(cmd, typer.core.TyperGroup), " ".join((cmd.help or "").split("\n\n")[0].split()))
            for name, cmd in group.commands.items() if name != "version"}
    assert real == {name: (g, text) for name, (_, g, text) in main.COMMANDS.items()}
    for name, (module, _, _) in main.COMMANDS.items():  # each one's module registers it
        one = typer.main.get_command(main.app_for([name]))
        assert name in one.commands, (name, module)


PROBE_ONE = """
import sys
sys.argv = ["autotune", *{argv!r}]
from autotune.cli.main import main
try:
    main()
except SystemExit:
    pass
print("LOADED:" + ",".join(sorted(m for m in sys.modules if m.startswith("autotune.cli.") and m not in
                                  ("autotune.cli.main", "autotune.cli.common"))))
"""


def test_a_command_imports_its_own_module_only():
    for argv, loaded in ((["--help"], ""), (["version"], ""), (["history", "--help"], "autotune.cli.history"),
                         (["config", "--help"], "autotune.cli.config_cmd")):
        out = subprocess.run([sys.executable, "-c", PROBE_ONE.format(argv=argv)], capture_output=True, text=True,
                             timeout=60)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("LOADED:")]
        assert line == [f"LOADED:{loaded}"], (argv, out.stdout, out.stderr)


def test_the_search_says_in_which_section_it_is_disabled(tmp_path):
    """Rich took `[search]` in the line for markup and printed 'disabled in ;'."""
    from autotune.store.db import open_db

    open_db(tmp_path / "s.db").close()
    (tmp_path / "c.toml").write_text("[search]\nenabled = false\n")
    out = subprocess.run([sys.executable, "-m", "autotune", "search", "--config", str(tmp_path / "c.toml"),
                          "--state", str(tmp_path / "s.db")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "search: not in use: disabled in [search]; the rules decide alone"
