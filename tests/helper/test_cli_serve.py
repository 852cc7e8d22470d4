"""`autotune helper` as a real process: systemd socket activation (fd 3) and clean SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from autotune.errors import PolicyRefused
from autotune.helper.client import HelperClient

from .conftest import needs_root, write_policy

pytestmark = needs_root

# Become the process systemd would start: listening socket on fd 3, LISTEN_PID = our pid.
ACTIVATED = """
import os, sys
os.environ["LISTEN_PID"] = str(os.getpid()); os.environ["LISTEN_FDS"] = "1"
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3); os.close(fd)
sys.argv = ["autotune", "helper", "--policy", sys.argv[2], "--root", sys.argv[3]]
from autotune.cli.main import main
main()
"""


def _wait_ping(path: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            with HelperClient(path, timeout=2) as c:
                if c.ping() == 1:
                    return
        except Exception:
            time.sleep(0.1)
    pytest.fail("helper did not answer ping")


def test_socket_activation_and_sigterm(tmp_path, host_root):
    pol = write_policy(tmp_path / "p.toml")
    path = str(tmp_path / "act.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    proc = subprocess.Popen(
        [sys.executable, "-c", ACTIVATED, str(listener.fileno()), str(pol), str(host_root)],
        pass_fds=(listener.fileno(),), stderr=subprocess.PIPE, text=True,
    )
    listener.close()
    try:
        _wait_ping(path, proc)
        with HelperClient(path) as c, pytest.raises(PolicyRefused) as info:
            c.apply("sysctl", "kernel.panic", "1")
        assert info.value.code == "target_refused"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "decision" in proc.stderr.read()  # decisions are logged


def test_cli_serve_on_socket_path_removes_socket_on_exit(tmp_path, host_root):
    pol = write_policy(tmp_path / "p.toml")
    path = str(tmp_path / "cli.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune", "helper", "--policy", str(pol), "--socket", path,
         "--root", str(host_root)], stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_ping(path, proc)
        assert oct(os.stat(path).st_mode & 0o777) == "0o660"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not os.path.exists(path)


def test_cli_serve_refuses_insecure_policy(tmp_path, host_root):
    pol = write_policy(tmp_path / "p.toml")
    os.chmod(pol, 0o666)
    out = subprocess.run([sys.executable, "-m", "autotune", "helper", "--policy", str(pol), "--socket",
                          str(tmp_path / "x.sock"), "--root", str(host_root)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "world-writable" in out.stderr and str(pol) in out.stderr
