"""Every bad input a newcomer tried (issue 14) is ONE clear line on stderr and exit 2: no
traceback, no click box, nothing written (no state file, no report, no sampling of a fake host)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def places(tmp_path) -> dict[str, str]:
    """Paths the cases use: an empty dir, a plain file, a valid state DB, configs."""
    from autotune.audit.trail import AuditTrail
    from autotune.store.db import open_db

    empty = tmp_path / "empty"
    empty.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("x\n")
    db = tmp_path / "state.db"
    AuditTrail(open_db(db)).db.conn.close()  # an (empty) audit trail
    norules = tmp_path / "norules.toml"
    norules.write_text('[agent]\nrule_dirs = ["/nonexistent-rules"]\n')
    badfield = tmp_path / "bad.toml"
    badfield.write_text("[agent]\nwindow_s = 0\n")
    latin1 = tmp_path / "latin1.toml"  # a non-UTF-8 byte (é in Latin-1) in a comment
    latin1.write_bytes(b"[agent]\nsample_period_s = 1.0\n# caf\xe9\n")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "latin1.yaml").write_bytes(b"rules: []\n# caf\xe9\n")
    latin1_rules = tmp_path / "latin1rules.toml"
    latin1_rules.write_text(f'[agent]\nrule_dirs = ["{tmp_path / "rules"}"]\n')
    svc = '[[service]]\nname = "llm"\ncgroup = "/autotune/llm"\n'
    dotdot = tmp_path / "dotdot.toml"
    dotdot.write_text('[[service]]\nname = "llm"\ncgroup = "/a/../../etc"\n')
    badurl = tmp_path / "badurl.toml"
    badurl.write_text(svc + '[service.latency]\nmetrics_url = "not a url"\n')
    window = tmp_path / "window.toml"
    window.write_text("[agent]\nsample_period_s = 2\nwindow_s = 1\n")
    policy = tmp_path / "policy.toml"  # a valid policy: the helper gets as far as its socket
    policy.write_text("[peers]\nuids = [0]\n")
    return {"EMPTY": str(empty), "FILE": str(afile), "DB": str(db), "NORULES": str(norules),
            "BADFIELD": str(badfield), "LATIN1RULES": str(latin1_rules), "LATIN1": str(latin1),
            "DOTDOT": str(dotdot), "BADURL": str(badurl), "WINDOW": str(window), "POLICY": str(policy),
            "TMP": str(tmp_path)}


# (argv with placeholders, what the one line must say, files that must not exist afterwards)
CASES = [
    ("run --state /proc/nope/x.db --duration 1 --metrics-listen off",
     "cannot create its directory /proc/nope", ()),
    ("run --state FILE/x.db --duration 1 --metrics-listen off", "a file is in the way", ("FILE/x.db",)),
    ("audit --state DB report --html /proc/nope/report.html", "directory /proc/nope does not exist", ()),
    ("audit --state DB report --html TMP", "is a directory", ()),
    ("recommend --root EMPTY --duration 1", "holds neither proc/ nor sys/", ()),
    ("recommend --root /nonexistent-root --duration 1", "no such directory", ()),
    ("status --root FILE", "not a directory", ()),
    ("run --root EMPTY --duration 1 --metrics-listen off --state TMP/s.db", "holds neither proc/ nor sys/",
     ("TMP/s.db",)),
    ("recommend --duration 0", "must be more than 0 seconds, got 0", ()),
    ("recommend --duration -5", "must be more than 0 seconds, got -5", ()),
    ("recommend --period 0 --duration 1", "must be more than 0 seconds", ()),
    ("run --duration 0 --state TMP/s.db", "must be more than 0 seconds", ("TMP/s.db",)),
    ("run --duration -1 --state TMP/s.db", "must be more than 0 seconds", ("TMP/s.db",)),
    ("demo --duration 0", "must be more than 0 seconds", ()),
    ("recommend --config /nonexistent.toml", "config file not found", ()),
    ("recommend --config TMP", "cannot read (Is a directory)", ()),
    ("recommend --config NORULES --duration 1", "rule directory not found", ()),
    ("config check BADFIELD", "agent.window_s: Input should be greater than 0", ()),
    ("history --state /nonexistent.db", "no state database at /nonexistent.db", ("/nonexistent.db",)),
    ("audit --state EMPTY list", "not a regular file", ()),
    ("audit --state DB list --since yesterdayish", "--since", ()),
    ("workload load --requests 0", "Input should be greater than or equal to 1", ()),
    ("workload serve --port 99999", "Input should be less than or equal to 65535", ()),
    ("gate --threshold 150", "Input should be less than or equal to 100", ()),
    ("helper --policy FILE --socket-mode 9x --socket TMP/h.sock", "--socket-mode '9x'", ("TMP/h.sock",)),
    ("run --metrics-listen nonsense --duration 1 --state TMP/s.db", "expected HOST:PORT", ()),
    ("config check LATIN1", "latin1.toml: not UTF-8 text: byte 0xe9 on line 3, column 6", ()),
    ("recommend --config LATIN1RULES --duration 1", "latin1.yaml: not UTF-8 text: byte 0xe9 on line 2", ()),
    ("config check DOTDOT", "dotdot.toml: service.0.cgroup: Value error, '/a/../../etc' must not contain '..'", ()),
    ("config check BADURL", "badurl.toml: service.0.latency.metrics_url: Value error, 'not a url' is not an http(s) URL",
     ()),
    ("config check WINDOW", "window.toml: agent: Value error, window_s (1 s) must hold at least two samples", ()),
    ("run --duration inf --state TMP/s.db", "must be a finite number of seconds, got inf", ("TMP/s.db",)),
    ("recommend --duration inf", "must be a finite number of seconds, got inf", ()),
    ("helper --policy POLICY --socket /nonexistent/dir/h.sock",
     "cannot listen on /nonexistent/dir/h.sock: No such file or directory; create its directory first", ()),
    ("recommend --bogus", "No such option: --bogus", ()),
    ("frobnicate", "No such command 'frobnicate'", ()),
]


def _fill(text: str, places: dict[str, str]) -> str:
    for key in sorted(places, key=len, reverse=True):
        text = text.replace(key, places[key])
    return text


@pytest.mark.parametrize("argv, message, absent", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(places, argv, message, absent):
    if " report " in argv and importlib.util.find_spec("matplotlib") is None:
        pytest.skip("audit report needs the report extra")
    if argv.startswith("helper --policy POLICY") and os.geteuid() != 0:
        pytest.skip("the helper runs as root only")
    args = _fill(argv, places).split()
    env = {k: v for k, v in os.environ.items() if k not in ("AUTOTUNE_ROOT", "AUTOTUNE_CONFIG", "AUTOTUNE_STATE")}
    r = subprocess.run([sys.executable, "-m", "autotune", *args], capture_output=True, text=True,
                       timeout=60, cwd=places["TMP"], env={**env, "COLUMNS": "80"})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("autotune: "), r.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in r.stderr + r.stdout and r.stdout == ""
    for path in absent:
        assert not Path(_fill(path, places)).exists(), path


@pytest.mark.parametrize("argv", ["status", "status --json", "config show", "version"])
def test_a_full_stdout_is_one_line_and_exit_2(argv):
    """`autotune status > /dev/full`: the write fails (ENOSPC); say so, no traceback."""
    env = {k: v for k, v in os.environ.items() if k not in ("AUTOTUNE_ROOT", "AUTOTUNE_CONFIG", "AUTOTUNE_STATE")}
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "autotune", *argv.split()], stdout=full, stderr=subprocess.PIPE,
                           text=True, timeout=60, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "autotune: cannot write the output: No space left on device", r.stderr
