"""The ``threads`` knob (autotune/knobs/threads.py): a systemd drop-in + daemon-reload + restart
(a fake ``systemctl`` on PATH records each call and the drop-in it saw), an env file + restart
command (a real tiny server process, started and restarted), the prior setting journaled and
restored, a failed restart put back; and the helper's policy: only the units, files and commands
it declares itself, never one from a request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotune.config import Threads
from autotune.errors import ConfigError, HostError, InvalidValue
from autotune.helper.handler import Helper
from autotune.helper.policy import load_policy
from autotune.host import Host
from autotune.knobs import get_knob
from autotune.knobs.threads import DROPIN, parse, render, target_for

KNOB = get_knob("threads")
UNIT = "llama-server.service"
DROPIN_PATH = f"/etc/systemd/system/{UNIT}.d/{DROPIN}"

FAKE_SYSTEMCTL = """#!{python}
import pathlib, sys
here = pathlib.Path(__file__).parent
root = pathlib.Path((here / "root").read_text())
args = sys.argv[1:]
seen = ""
if args[:1] == ["restart"]:
    f = root / "etc/systemd/system" / (args[1] + ".d") / "{dropin}"
    seen = " | " + (" ".join(l for l in f.read_text().splitlines()[1:]) if f.exists() else "no drop-in")
with open(here / "calls.log", "a") as log:
    log.write(" ".join(args) + seen + "\\n")
if args[:1] == ["restart"] and (here / "fail-restart").exists():
    print("Job for " + args[1] + " failed because the control process exited with error code.", file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture
def fake_systemd(tmp_path, monkeypatch):
    """(host root, bin dir with a fake systemctl first on PATH); ``calls()`` reads its log."""
    root, bindir = tmp_path / "root", tmp_path / "bin"
    (root / "etc/systemd/system").mkdir(parents=True)
    bindir.mkdir()
    fake = bindir / "systemctl"
    fake.write_text(FAKE_SYSTEMCTL.format(python=sys.executable, dropin=DROPIN))
    fake.chmod(0o755)
    (bindir / "root").write_text(str(root))
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    return root, bindir


def calls(bindir: Path) -> list[str]:
    log = bindir / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


ENV = Threads(unit="llama-server", env="LLAMA_ARG_THREADS")
EXEC = Threads(unit=UNIT, exec_start="/usr/bin/llama-server -m /models/m.gguf --threads {threads} --port 8080")


def test_a_drop_in_sets_the_threads_and_the_unit_restarts_with_it(fake_systemd):
    root, bindir = fake_systemd
    host, target = Host(root, writable=True), target_for(ENV)
    before = KNOB.read(host, target)
    assert before.value == "default" and before.raw == {DROPIN_PATH: ""}
    journaled = []
    res = KNOB.change(host, target, "1", before_write=lambda b, p: journaled.append(
        (b, (root / DROPIN_PATH.lstrip("/")).exists())))
    assert journaled == [(before, False)]  # the prior value was recorded before anything was written
    assert res.changed and res.after.value == "1"
    assert (root / DROPIN_PATH.lstrip("/")).read_text() == (
        "# autotune: threads=1 (written by autotune's threads knob; remove this file to give the service "
        "its own setting back)\n[Service]\nEnvironment=LLAMA_ARG_THREADS=1\n")
    assert calls(bindir) == ["daemon-reload", f"restart {UNIT} | [Service] Environment=LLAMA_ARG_THREADS=1"]
    # the rollback: the recorded prior (no drop-in) back, and a restart with the unit's own setting
    KNOB.restore(host, before)
    assert not (root / DROPIN_PATH.lstrip("/")).exists() and KNOB.read(host, target).value == "default"
    assert calls(bindir)[2:] == ["daemon-reload", f"restart {UNIT} | no drop-in"]


def test_an_execstart_override_fills_in_the_thread_count(fake_systemd):
    root, bindir = fake_systemd
    host, target = Host(root, writable=True), target_for(EXEC)
    KNOB.change(host, target, "2")
    text = (root / DROPIN_PATH.lstrip("/")).read_text()
    assert text.splitlines()[1:] == ["[Service]", "ExecStart=",
                                     "ExecStart=/usr/bin/llama-server -m /models/m.gguf --threads 2 --port 8080"]
    assert KNOB.read(host, target).value == "2"
    assert calls(bindir)[-1].startswith(f"restart {UNIT} | [Service] ExecStart= ExecStart=/usr/bin/llama-server")


def test_a_failed_restart_puts_the_previous_setting_back_and_restarts_again(fake_systemd):
    root, bindir = fake_systemd
    host, target = Host(root, writable=True), target_for(ENV)
    KNOB.change(host, target, "2")
    (bindir / "fail-restart").write_text("")
    with pytest.raises(HostError, match=r"restart llama-server.service exited 1: Job for .* failed.*previous "
                                        r"setting is back but restarting with it failed too"):
        KNOB.change(host, target, "1")
    assert KNOB.read(host, target).value == "2"  # the file is what it was
    assert calls(bindir)[-4:] == ["daemon-reload", f"restart {UNIT} | [Service] Environment=LLAMA_ARG_THREADS=1",
                                  "daemon-reload", f"restart {UNIT} | [Service] Environment=LLAMA_ARG_THREADS=2"]
    # when the restart works again, so does the change
    (bindir / "fail-restart").unlink()
    KNOB.change(host, target, "1")
    assert KNOB.read(host, target).value == "1"


def test_a_read_only_host_writes_and_restarts_nothing(fake_systemd):
    root, bindir = fake_systemd
    host, target = Host(root), target_for(ENV)
    assert KNOB.change(host, target, "1", dry_run=True).changed is False
    with pytest.raises(HostError, match="read-only"):
        KNOB.write(host, target, "1")
    assert calls(bindir) == [] and not (root / DROPIN_PATH.lstrip("/")).exists()


def test_values_and_what_a_file_says():
    target = target_for(ENV)
    assert KNOB.validate(Host("/"), target, " 2 ") == "2" and KNOB.validate(Host("/"), target, "default") == "default"
    for bad in ("0", "1.5", "010", "+2", "two", "4097", ""):
        with pytest.raises(InvalidValue):
            KNOB.validate(Host("/"), target, bad)
    with pytest.raises(InvalidValue, match="not a restart path"):
        KNOB.validate(Host("/"), '{"unit": "x; rm -rf /"}', "1")
    assert parse(ENV, None) == "default" and parse(ENV, "\n") == "default"
    assert parse(ENV, render(ENV, 3)) == "3"
    # an operator's own drop-in setting the variable plainly reads as its number (edited or not);
    # one that sets something else is custom (the agent then sees drift, and leaves it alone)
    assert parse(ENV, "[Service]\nEnvironment=LLAMA_ARG_THREADS=4\n") == "4"
    assert parse(ENV, render(ENV, 3).replace("[Service]", "[Service]\nNice=5")) == "3"
    assert parse(ENV, "[Service]\nEnvironment=OTHER=1\n") == "custom"
    assert parse(EXEC, render(EXEC, 3)) == "3" and parse(EXEC, render(EXEC, 3).replace("--port", "--p")) == "custom"


def test_only_a_service_that_declares_a_restart_path_has_the_lever():
    from autotune.config import Config, Service

    cfg = Config(service=[Service(name="llm", cgroup="/a", threads=ENV), Service(name="b", cgroup="/b"),
                          Service(name="c", cgroup="/c", threads=Threads(count=2))])
    assert KNOB.service_target(cfg.service("llm")) == "llm"
    assert KNOB.service_target(cfg.service("b")) is None and KNOB.service_target(cfg.service("c")) is None
    assert json.loads(KNOB.resolve_target(Host("/"), cfg, "llm"))["unit"] == UNIT
    assert KNOB.host_files(Host("/"), target_for(ENV)) == {DROPIN_PATH}


@pytest.mark.parametrize(("table", "match"), [
    ({"env": "X"}, "need a unit or an env_file"),
    ({"unit": "a", "env": "X", "exec_start": "/b {threads}"}, "exactly one of env or exec_start"),
    ({"unit": "a", "exec_start": "/b --threads 4"}, "containing {threads}"),
    ({"unit": "../a", "env": "X"}, "not a systemd unit name"),
    ({"unit": "a", "env": "X=1"}, "not an environment variable name"),
    ({"env_file": "/e", "env": "X", "restart_command": ["restart-it"]}, "absolute path"),
    ({"env_file": "/e", "env": "X", "restart_command": ["/bin/sh", "-c", "a\nb"]}, "one line"),
    ({"env_file": "/e", "env": "X"}, "needs env_file, env and restart_command"),
    ({"unit": "a", "env": "X", "restart_command": ["/bin/true"]}, "not both"),
])
def test_a_bad_restart_path_names_the_problem(table, match):
    with pytest.raises(ValueError, match=match):
        Threads.model_validate(table)


# -- through the helper, with its policy ------------------------------------------------------
def write_policy(path: Path, service_threads: str, *, services: str = '["llm"]', extra: str = "") -> Path:
    path.write_text(f"""
[knob.threads]
services = {services}
min = 1
max = 2

[service.llm]
cgroup = "/autotune/llm"
[service.llm.threads]
{service_threads}
{extra}
""")
    return path


def ask(helper: Helper, **req) -> object:
    return helper.handle_line(json.dumps(req).encode())


def test_the_helper_sets_threads_only_as_its_policy_declares(fake_systemd, tmp_path):
    root, bindir = fake_systemd
    pol = load_policy(write_policy(tmp_path / "p.toml", f'unit = "{UNIT}"\nenv = "LLAMA_ARG_THREADS"'),
                      require_root_owned=False)
    helper = Helper(pol, Host(root, writable=True))
    got = ask(helper, op="read", knob="threads", target="llm")
    assert got.ok and got.result.before.value == "default" and got.result.before.target == "llm"
    prior = got.result.before
    resp = ask(helper, op="apply", knob="threads", target="llm", value="1", expect_before="default")
    assert resp.ok and resp.result.changed and resp.result.after.value == "1"
    assert calls(bindir) == ["daemon-reload", f"restart {UNIT} | [Service] Environment=LLAMA_ARG_THREADS=1"]
    # refused: another service, a restart path in the request, a count out of the policy's range
    for target in ("other", target_for(Threads(unit="sshd", env="X")), "llm; systemctl stop sshd"):
        r = ask(helper, op="apply", knob="threads", target=target, value="1")
        assert not r.ok and r.error.code == "target_refused" and "not an allowed service" in r.error.reason
    r = ask(helper, op="apply", knob="threads", target="llm", value="3")
    assert not r.ok and r.error.code == "out_of_range"
    # a forged restore record: another file is refused, forged content for the drop-in is never
    # written verbatim (only a prior state the helper recorded is)
    r = ask(helper, op="restore", knob="threads", target="llm", state={"value": "1", "raw": {"/etc/passwd": "x"}})
    assert not r.ok and r.error.code == "target_refused"
    forged = {DROPIN_PATH: "[Service]\nExecStartPre=/bin/sh -c evil\n"}
    r = ask(helper, op="restore", knob="threads", target="llm", state={"value": "2", "raw": forged})
    assert r.ok and "evil" not in (root / DROPIN_PATH.lstrip("/")).read_text()
    assert KNOB.read(Host(root), target_for(ENV.model_copy(update={"unit": UNIT}))).value == "2"
    # the true prior (no drop-in), recorded by the helper before its first write: restored verbatim
    r = ask(helper, op="restore", knob="threads", target="llm", state={"value": prior.value, "raw": prior.raw})
    assert r.ok and r.result.changed and not (root / DROPIN_PATH.lstrip("/")).exists()
    assert calls(bindir)[-1] == f"restart {UNIT} | no drop-in"
    assert not [c for c in calls(bindir) if "sshd" in c or "evil" in c]


def test_a_policy_threads_table_must_name_services_with_a_restart_path(tmp_path):
    with pytest.raises(ConfigError, match=r"services \['llm'\] declare no restart path"):
        load_policy(write_policy(tmp_path / "a.toml", "count = 2"), require_root_owned=False)
    with pytest.raises(ConfigError, match="without a \\[service.<name>\\] table"):
        load_policy(write_policy(tmp_path / "b.toml", 'unit = "x"\nenv = "A"', services='["llm", "ghost"]'),
                    require_root_owned=False)
    with pytest.raises(ConfigError, match="absolute path"):
        load_policy(write_policy(tmp_path / "c.toml", 'env_file = "/e"\nenv = "A"\nrestart_command = ["sh"]'),
                    require_root_owned=False)


# -- the env file + restart command path, for real ---------------------------------------------
SERVER = """
import os, pathlib, sys, threading, time
env_file, pid_file = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
n = 2  # its own default: two compute threads
if env_file.exists():
    for line in env_file.read_text().splitlines():
        if line.startswith("TINY_THREADS="):
            n = int(line.split("=", 1)[1])
for _ in range(n):
    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
pid_file.write_text(f"{os.getpid()} {n}")
time.sleep(3600)
"""

RESTART = """
import os, pathlib, signal, subprocess, sys, time
server, env_file, pid_file = sys.argv[1:4]
pid_path = pathlib.Path(pid_file)
if pid_path.exists():
    old = int(pid_path.read_text().split()[0])
    pid_path.unlink()
    try:
        os.kill(old, signal.SIGTERM)
        for _ in range(200):
            os.kill(old, 0)
            time.sleep(0.02)
    except ProcessLookupError:
        pass
subprocess.Popen([sys.executable, server, env_file, pid_file], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(500):  # return once the server is up
    if pid_path.exists() and pid_path.read_text().strip():
        sys.exit(0)
    time.sleep(0.01)
sys.exit("server did not start")
"""


def _running(pid_file: Path) -> tuple[int, int, int]:
    """(pid, threads it says it started, threads /proc shows besides its main one)."""
    pid, n = (int(x) for x in pid_file.read_text().split())
    return pid, n, len(os.listdir(f"/proc/{pid}/task")) - 1


def test_an_env_file_and_a_restart_command_restart_a_real_process(tmp_path):
    d = tmp_path / "svc"
    d.mkdir()
    (d / "server.py").write_text(SERVER)
    (d / "restart.py").write_text(RESTART)
    env_file, pid_file = d / "threads.env", d / "server.pid"
    command = [sys.executable, str(d / "restart.py"), str(d / "server.py"), str(env_file), str(pid_file)]
    path = f'env_file = "{env_file}"\nenv = "TINY_THREADS"\nrestart_command = {json.dumps(command)}\nrestart_timeout_s = 30'
    pol = load_policy(write_policy(tmp_path / "p.toml", path), require_root_owned=False)
    helper = Helper(pol, Host("/", writable=True))
    subprocess.run(command, check=True, timeout=30)  # the service, started the way it is restarted
    try:
        first = _running(pid_file)
        assert first[1:] == (2, 2)
        prior = ask(helper, op="read", knob="threads", target="llm").result.before
        assert prior.value == "default" and prior.raw == {str(env_file): ""}
        resp = ask(helper, op="apply", knob="threads", target="llm", value="1", expect_before="default")
        assert resp.ok, resp.error
        second = _running(pid_file)
        assert second[0] != first[0] and second[1:] == (1, 1)  # restarted with one compute thread
        assert env_file.read_text().endswith("TINY_THREADS=1\n")
        # the rollback restores the recorded prior (no env file) and restarts it again
        resp = ask(helper, op="restore", knob="threads", target="llm", state={"value": prior.value, "raw": prior.raw})
        assert resp.ok and resp.result.changed, resp.error
        third = _running(pid_file)
        assert third[0] != second[0] and third[1:] == (2, 2) and not env_file.exists()
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        time.sleep(0.05)
