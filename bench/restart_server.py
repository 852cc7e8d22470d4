"""The restart command a benchmark row declares for its server's threads lever: what a user's
start script does when autotune's ``threads`` knob changes the env file (autotune/knobs/threads.py:
``[service.threads] env_file``, ``env``, ``restart_command``).

    restart_server.py --env-file F --env LLAMA_ARG_THREADS --default-threads 2 \\
        --cgroup DIR [--cgroup DIR ...] --health URL --log PATH [--timeout-s 90] -- ARGV...

Reads N from the env file (its last ``VAR=N`` line; no file or no such line: the default),
stops every process in the server's cgroup (SIGTERM, SIGKILL after 10 s), starts ARGV with
``{threads}`` replaced by N inside the same cgroups (every hierarchy, joined before exec, so the
server never runs outside them) in its own session with its output appended to the log, and
returns once URL answers 200. ARGV names the port, so the server comes back where it was.
Exit 1 with one line on stderr saying why otherwise (the knob journals it and puts the previous
file back). Stdlib only: the knob runs it with PATH and LANG alone; ARGV's ``python -m autotune``
gets this checkout on its PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STOP_S = 10.0


def threads_from(env_file: Path, var: str, default: str) -> str:
    try:
        text = env_file.read_text()
    except FileNotFoundError:
        return default
    found = re.findall(rf"^{re.escape(var)}=([1-9][0-9]*)\s*$", text, re.M)
    return found[-1] if found else default


def procs_in(cgroup_dirs: list[str]) -> set[int]:
    out: set[int] = set()
    for d in cgroup_dirs:
        try:
            out.update(int(x) for x in Path(d, "cgroup.procs").read_text().split())
        except FileNotFoundError:
            pass
    return out


def stop_all(cgroup_dirs: list[str]) -> None:
    """SIGTERM to every process in the cgroup, SIGKILL to what is left after STOP_S; returns
    once the cgroup is empty (an exited process leaves cgroup.procs even while it is a zombie
    of its parent, and its listening socket is closed by then)."""
    for sig, wait_s in ((signal.SIGTERM, STOP_S), (signal.SIGKILL, 5.0)):
        for pid in procs_in(cgroup_dirs):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while procs_in(cgroup_dirs) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not procs_in(cgroup_dirs):
            return
    raise RuntimeError(f"processes {sorted(procs_in(cgroup_dirs))} still in {cgroup_dirs[0]} after SIGKILL")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env-file", type=Path, required=True)
    p.add_argument("--env", required=True, help="the variable the knob writes, e.g. LLAMA_ARG_THREADS")
    p.add_argument("--default-threads", required=True, help="the thread count without the file")
    p.add_argument("--cgroup", action="append", required=True, help="the server's cgroup directory, per hierarchy")
    p.add_argument("--health", required=True, help="URL that answers 200 once the server serves")
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--timeout-s", type=float, default=90.0)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- ARGV with {threads}")
    a = p.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        p.error("no server command after --")
    n = threads_from(a.env_file, a.env, a.default_threads)
    cmd = [x.replace("{threads}", n) for x in cmd]
    dirs = list(dict.fromkeys(a.cgroup))
    try:
        stop_all(dirs)
    except RuntimeError as err:
        print(f"restart: {err}", file=sys.stderr)
        return 1

    def join() -> None:  # in the child, before exec: the server starts inside its cgroups
        for d in dirs:
            Path(d, "cgroup.procs").write_text(str(os.getpid()))

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": os.environ.get("LANG", "C.UTF-8"),
           "PYTHONPATH": str(REPO)}
    with open(a.log, "ab") as fh:
        fh.write(f"\n[restart_server {time.strftime('%H:%M:%S')}] {a.env}={n}: {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=join, start_new_session=True)
    deadline = time.monotonic() + a.timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"restart: the server exited with {proc.returncode} while starting; see {a.log}", file=sys.stderr)
            return 1
        if healthy(a.health):
            print(f"restart: pid {proc.pid} serving with {a.env}={n}")
            return 0
        time.sleep(0.25)
    print(f"restart: {a.health} not ready {a.timeout_s:g} s after the start; see {a.log}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
