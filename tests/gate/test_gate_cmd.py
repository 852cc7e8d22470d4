"""`autotune gate` as a process: proxy on one port, control plane on another."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gate_command_proxies_and_serves_control_separately(upstream, tmp_path):
    (tmp_path / "proc/pressure").mkdir(parents=True)
    (tmp_path / "proc/pressure/cpu").write_text("some avg10=1.00 avg60=1.00 avg300=1.00 total=1\n")
    port, cport = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune", "gate", "--listen", f"127.0.0.1:{port}", "--upstream", upstream.url,
         "--control-listen", f"127.0.0.1:{cport}", "--max-concurrency", "3", "--min-inflight", "2", "--no-adaptive",
         "--root", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                st = httpx.get(f"http://127.0.0.1:{cport}/gate/status", timeout=1).json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "gate did not come up"
                time.sleep(0.1)
        assert st["limit"] == 3 and st["pressure_pct"] == 1.0 and st["adaptive"] is False
        assert st["min_inflight"] == 2
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=10)
        assert c.completions.create(model="fake", prompt="z", max_tokens=1).choices[0].text == "echo:z"
        # control plane lives only on the control port: on the proxy port /gate/status is forwarded
        assert httpx.get(f"http://127.0.0.1:{port}/gate/status").status_code == 404
        # both forwarded; only the completion went through admission
        assert httpx.get(f"http://127.0.0.1:{cport}/gate/status").json()["admitted"] == 1
        assert "autotune_gate_passthrough_total 1.0" in httpx.get(f"http://127.0.0.1:{cport}/gate/metrics").text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
