"""`autotune run` as a process: recommend writes nothing, systemd notifications arrive, apply
without a helper fails clearly, and a real apply run leaves a verifiable audit chain."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.audit.trail import AuditTrail
from autotune.journal.journal import Journal
from autotune.store.db import open_db
from tests.agent.test_crash import REPO, setup
from tests.fixtures.hosts import writable_copy


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def autotune(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    e.pop("AUTOTUNE_FAILPOINT", None)
    return subprocess.run([sys.executable, "-m", "autotune", *args], env=e, capture_output=True,
                          text=True, timeout=timeout)


def test_recommend_run_writes_nothing_and_notifies_systemd(tmp_path):
    root = writable_copy("hybrid-local", tmp_path)
    before = tree_digest(root)
    sock_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(sock_path)
        sock.settimeout(0.1)
        proc = autotune("run", "--mode", "recommend", "--duration", "3", "--root", str(root),
                        "--metrics-listen", "off", "--state", str(tmp_path / "s.db"),
                        env={"NOTIFY_SOCKET": sock_path})
        msgs = []
        while True:
            try:
                msgs.append(sock.recv(4096).decode())
            except TimeoutError:
                break
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert tree_digest(root) == before
    fields = [f for m in msgs for f in m.split("\n")]
    assert "READY=1" in fields and "WATCHDOG=1" in fields and "STOPPING=1" in fields
    assert any(f.startswith("STATUS=mode=recommend") for f in fields)
    assert fields.index("READY=1") < fields.index("WATCHDOG=1")


def test_apply_without_helper_exits_2_with_a_clear_message(tmp_path):
    root = writable_copy("hybrid-local", tmp_path)
    proc = autotune("run", "--mode", "apply", "--duration", "1", "--root", str(root),
                    "--metrics-listen", "off", "--state", str(tmp_path / "s.db"),
                    "--helper-socket", str(tmp_path / "nope.sock"))
    assert proc.returncode == 2
    assert "helper" in proc.stderr and "nope.sock" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="--local-actuator is root only")
def test_real_apply_run_leaves_a_verifiable_audit_chain(tmp_path):
    root, cfg = setup(tmp_path)
    proc = autotune("run", "--mode", "apply", "--root", str(root), "--config", str(cfg),
                    "--local-actuator", "--duration", "6", "--metrics-listen", "127.0.0.1:0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    db = open_db(tmp_path / "state.db")
    trail = AuditTrail(db)
    assert trail.verify().ok
    kinds = [e.kind for e in trail.query()]
    assert kinds[0] == "agent_start" and kinds[-1] == "agent_stop"
    assert "apply" in kinds and "verify" in kinds
    [e] = Journal(db).entries()
    assert e.state in ("kept", "rolled_back")  # static PSI: inconclusive -> on_inconclusive (keep)


def test_latency_scrapes_are_not_logged_per_request(tmp_path, canned_http):
    """The agent scrapes every sample; httpx's per-request INFO line would flood the journal."""
    srv = canned_http({("GET", "/metrics"): b"vllm:e2e_request_latency_seconds_count 0\n"})
    root = writable_copy("hybrid-local", tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""[[service]]
name = "llm"
cgroup = "/autotune-fixture/llm"
[service.latency]
metrics_url = "{srv.url}/metrics"
""")
    proc = autotune("run", "--config", str(cfg), "--mode", "recommend", "--duration", "3", "--root", str(root),
                    "--metrics-listen", "off", "--state", str(tmp_path / "s.db"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(srv.hits) >= 2  # it did scrape
    assert "HTTP Request" not in proc.stderr


def test_a_second_agent_on_one_state_exits_2_naming_the_first(tmp_path):
    """Issue 24 #5: two agents ran on one state DB with no lock and no warning and both acted
    on one target. The second now exits 2 with one line naming the holder; readers are not
    blocked; the kernel drops the lock when the holder is killed (-9)."""
    import signal
    import time

    from autotune.store.lock import lock_path

    root = writable_copy("hybrid-local", tmp_path)
    state = tmp_path / "s.db"
    with socket.socket() as s:  # one free port for both: the second must stop at the lock first
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = ["run", "--mode", "recommend", "--root", str(root), "--metrics-listen",
            f"127.0.0.1:{port}", "--state", str(state)]
    e = {**os.environ, "PYTHONPATH": str(REPO)}
    e.pop("AUTOTUNE_FAILPOINT", None)
    first = subprocess.Popen([sys.executable, "-m", "autotune", *base, "--duration", "120"], env=e,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (lock_path(state).exists() and lock_path(state).read_text().startswith(f"{first.pid} ")):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.1)
        second = autotune(*base, "--duration", "2")
        assert second.returncode == 2, second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"another agent is running on this state (pid {first.pid} since " in lines[0]
        assert str(state) in lines[0]
        assert autotune("history", "--state", str(state)).returncode == 0  # readers are not blocked
        assert autotune("audit", "--state", str(state), "list").returncode == 0
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    third = autotune(*base, "--duration", "2")
    assert third.returncode == 0, third.stderr[-2000:]
