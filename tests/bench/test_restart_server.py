"""The threads lever of the benchmark's agent rows: the restart path the row declares
(bench/restart_server.py as ``restart_command``, an env file the ``threads`` knob writes) restarts
the server in its own cgroup, on its own port, with the knob's thread count; the knob's restore
brings the server's own setting back; the bench stops a server it did not start (``reclaim``)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from autotune.config import Threads
from autotune.host import Host
from autotune.knobs.threads import ThreadsKnob, target_for
from tests.bench.conftest import REPO

sys.path.insert(0, str(REPO))

from bench import common, engines  # noqa: E402
from bench import restart_server as rs  # noqa: E402



def REAL_MARKS(fn):  # noqa: N802 - a decorator: real cgroups, as root
    for m in (pytest.mark.realkernel, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="creates cgroups: needs root"),
              pytest.mark.skipif(not Path("/sys/fs/cgroup").is_dir(), reason="no cgroup filesystem")):
        fn = m(fn)
    return fn


# a stand-in server: answers 200 on every GET, its thread setting only in its command line
FAKE = ("import sys, http.server\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'ok')\n"
        "    def log_message(self, *a): pass\n"
        "http.server.HTTPServer.allow_reuse_address = True\n"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n")


def test_threads_from_the_env_file(tmp_path):
    f = tmp_path / "t.env"
    assert rs.threads_from(f, "LLAMA_ARG_THREADS", "2") == "2"  # no file: the server's own setting
    f.write_text("# autotune: threads=1 (...)\nLLAMA_ARG_THREADS=1\n")
    assert rs.threads_from(f, "LLAMA_ARG_THREADS", "2") == "1"
    f.write_text("OTHER=3\n")
    assert rs.threads_from(f, "LLAMA_ARG_THREADS", "2") == "2"


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def _one_pid(cg) -> int:  # noqa: ANN001
    pids = cg.pids()
    assert len(pids) == 1, pids
    return next(iter(pids))


@REAL_MARKS
def test_knob_restarts_the_server_in_its_cgroup_on_its_port(tmp_path):
    """What the agent's apply does with the row's restart path, on a stand-in server."""
    host = Host("/", writable=True)
    cg = common.BenchCgroup(host, f"autotune-test-restart-{os.getpid()}/server")
    try:
        port = common.free_port()
        url = f"http://127.0.0.1:{port}"
        fake = tmp_path / "fake_server.py"
        fake.write_text(FAKE)
        argv = [sys.executable, str(fake), str(port), "--threads", "{threads}"]
        first = common.spawn([x.replace("{threads}", "2") for x in argv], cg, tmp_path / "server.log")
        common.wait_healthy(url, first, timeout_s=30, path="/")
        env_file = tmp_path / "threads.env"
        cmd = [sys.executable, str(REPO / "bench" / "restart_server.py"), "--env-file", str(env_file),
               "--env", "LLAMA_ARG_THREADS", "--default-threads", "2", "--health", f"{url}/", "--log",
               str(tmp_path / "restarts.log")]
        for d in dict.fromkeys(cg.dirs.values()):
            cmd += ["--cgroup", d]
        th = Threads(count=2, pool="fixed", env_file=str(env_file), env="LLAMA_ARG_THREADS",
                     restart_command=cmd + ["--", *argv], restart_timeout_s=60)
        knob, target = ThreadsKnob(), target_for(th)
        before = knob.read(host, target)
        assert before.value == "default"

        knob.write(host, target, knob.validate(host, target, "1"))  # the agent's change
        assert first.wait(timeout=5) is not None  # the old server is gone ...
        pid = _one_pid(cg)  # ... and exactly one new one runs in the row's cgroup
        assert pid != first.pid and _cmdline(pid)[-2:] == ["--threads", "1"]
        for d in cg.dirs.values():  # in every hierarchy the row's cgroup is in
            assert str(pid) in Path(d, "cgroup.procs").read_text().split()
        assert httpx.get(f"{url}/", timeout=5).status_code == 200  # same port
        assert knob.read(host, target).value == "1"

        knob.restore(host, before)  # the rollback: no file, the server's own --threads 2
        assert not env_file.exists()
        back = _one_pid(cg)
        assert back != pid and _cmdline(back)[-2:] == ["--threads", "2"]
        assert httpx.get(f"{url}/", timeout=5).status_code == 200
        assert "LLAMA_ARG_THREADS=1" in (tmp_path / "restarts.log").read_text()
    finally:
        common.stop_cgroup(cg)
        assert cg.pids() == set()
        common.cleanup()
    assert not Path(cg.dirs.get("cpu", "/nonexistent")).exists()


@pytest.mark.slow
@pytest.mark.llamacpp
@REAL_MARKS
def test_llama_server_restarted_by_the_lever_then_reclaimed(tmp_path):
    """The real llama-server (tiny GGUF) started by the bench's Server, restarted by the threads
    knob through the row's restart path with --threads 1, serves on the same URL from the same
    cgroup; ``reclaim`` then sees a server it did not start and stops it."""
    from autotune.workload.load import LoadSpec, run_load

    try:
        engines.LLAMACPP.check("tiny")
    except engines.EngineUnavailable as why:
        pytest.skip(str(why))
    import asyncio

    host = Host("/", writable=True)
    cg = common.BenchCgroup(host, f"autotune-test-llrestart-{os.getpid()}/server")
    srv = engines.Server(engines.LLAMACPP, cg, model="tiny", max_concurrency=2, max_tokens=4, out=tmp_path)
    try:
        url = srv.ensure("2")
        assert srv.reclaim() is False  # untouched: nothing to do
        path = srv.restart_path((tmp_path / "threads.env").resolve(), tmp_path / "restarts.log")
        th = Threads(count=2, pool="fixed", **path)
        assert json.loads(target_for(th))["env"] == "LLAMA_ARG_THREADS"
        knob, target = ThreadsKnob(), target_for(th)
        t0 = time.monotonic()
        knob.write(host, target, "1")
        print(f"restart with --threads 1: {time.monotonic() - t0:.1f} s")
        pid = _one_pid(cg)
        assert pid != srv.proc.pid and Path(f"/proc/{pid}/exe").resolve().name == "llama-server"
        cmd = _cmdline(pid)
        assert cmd[cmd.index("--threads") + 1] == "1" and cmd[cmd.index("--port") + 1] == url.rsplit(":", 1)[1]
        res = asyncio.run(run_load(LoadSpec(url=url, requests=2, concurrency=2, max_tokens=4)))
        assert [r.outcome for r in res] == ["ok", "ok"]
        assert srv.busy() == (0, 0)  # from its /metrics gauges (its /health has no queue)
        assert srv.reclaim() is True and cg.pids() == set() and srv.proc is None and srv.threads is None
    finally:
        srv.stop()
        common.cleanup()
