"""``threads``: a service's compute-thread count, set through the restart path the operator declared.

A fixed pool of N threads on fewer than N CPUs collapses (llama.cpp ``--threads 2`` on one CPU:
1.3-1.5 tokens/s against 62 with ``--threads 1`` here), and no cgroup file changes a running
server's pool: the server reads it at start. So this knob writes the setting where the server
reads it and restarts it, exactly as ``[service.<name>.threads]`` in the helper's root-owned
policy declares (config.Threads; the agent's own config only says the lever exists):

- systemd: a drop-in ``/etc/systemd/system/<unit>.d/50-autotune-threads.conf`` with
  ``Environment=<env>=N`` (llama-server reads ``LLAMA_ARG_THREADS``; torch/TGI ``OMP_NUM_THREADS``)
  or an ``ExecStart=`` override (an empty ``ExecStart=`` first, then the declared command line
  with ``{threads}`` filled), then ``systemctl daemon-reload`` and ``systemctl restart <unit>``
  (``systemctl`` from the helper's PATH). Removing the drop-in gives the unit its own setting back.
- a server not under systemd: ``<env>=N`` in the declared ``env_file`` (a file autotune owns,
  read by the server's start script), then the declared ``restart_command`` (an argv, no shell,
  bounded by ``restart_timeout_s``; it should return once the server is up again).

Value: the thread count, or ``default`` (no file: the server's own setting). ``read`` parses the
file (``custom`` when it holds something else); the raw record is the file's exact content
(empty: no file), so the prior setting is journaled before the write and ``restore`` writes it
back (or removes the file) and restarts again. A restart that fails puts the previous file back
and restarts once more before the error is raised, so a failed change never leaves the service
down on a setting that did not start. A restart costs the service seconds of downtime: the
rules that use this knob run at most every ten minutes, their verification settles past the
restart, and a sample without latency (the server reloading) is no evidence either way
(verify/stage.py).

Where no restart path is declared the rules advise instead, naming each engine's own flag
(rules/threads.yaml), as documented by the engines:
- llama.cpp ``llama-server``: ``-t, --threads N`` "number of CPU threads to use during
  generation (default: <num_cpus>)", env ``LLAMA_ARG_THREADS``; ``-tb, --threads-batch N`` for
  batch and prompt processing, "default: same as --threads" (llama-server(1), Debian
  llama.cpp-tools).
- vLLM CPU backend: ``VLLM_CPU_OMP_THREADS_BIND`` "specify the CPU cores dedicated to the OpenMP
  threads", e.g. ``0-31`` = 32 OpenMP threads on cores 0-31 (docs.vllm.ai, "Installation with
  CPU"); with ``nobind``, ``OMP_NUM_THREADS``.
- TGI / torch: ``OMP_NUM_THREADS``, or ``torch.set_num_threads(N)``, which "sets the number of
  threads used for intraop parallelism on CPU" (pytorch.org docs).
- ollama: the ``num_thread`` model parameter (Modelfile ``PARAMETER num_thread N`` or the API's
  ``options``), "the number of threads to use during computation" (ollama docs/modelfile.md).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import TYPE_CHECKING

from pydantic import ValidationError

from autotune.errors import HostError, InvalidValue, TargetGone
from autotune.host import Host
from autotune.knobs._util import invalid
from autotune.knobs.base import Knob, KnobState
from autotune.knobs.grammar import parse_int_strict, strip_ws

if TYPE_CHECKING:
    from autotune.config import Config, Service, Threads
    from autotune.types import ServiceCgroups

DEFAULT = "default"  # no autotune file: the server's own setting
CUSTOM = "custom"  # a file autotune did not write in a form it reads
DROPIN = "50-autotune-threads.conf"
MAX_THREADS = 4096
_MARK = re.compile(r"^# autotune: threads=([1-9][0-9]{0,3})\b")
# the restart path's fields: what the knob target carries (the helper builds it from its policy)
PATH_FIELDS = {"unit", "env", "exec_start", "env_file", "restart_command", "restart_timeout_s"}


def target_for(threads: Threads) -> str:
    """The knob target for a declared restart path: its fields as JSON (the helper builds it
    from its own policy; a client only ever names the service)."""
    return threads.model_dump_json(include=PATH_FIELDS, exclude_none=True)


def path_of(target: str) -> Threads:
    from autotune.config import Threads

    try:
        th = Threads.model_validate_json(target)
    except (ValidationError, ValueError) as err:
        raise InvalidValue(f"threads target is not a restart path: {str(err).splitlines()[0]}") from None
    if not th.has_lever:
        raise InvalidValue("threads target declares no restart path")
    return th


def file_of(th: Threads) -> str:
    """The one file the knob writes for this restart path."""
    if th.unit is not None:
        return f"/etc/systemd/system/{th.unit}.d/{DROPIN}"
    assert th.env_file is not None
    return th.env_file


def render(th: Threads, n: int) -> str:
    """The file's whole content for ``n`` threads."""
    head = (f"# autotune: threads={n} (written by autotune's threads knob; "
            f"remove this file to give the service its own setting back)\n")
    if th.unit is None:
        return f"{head}{th.env}={n}\n"
    if th.env is not None:
        return f"{head}[Service]\nEnvironment={th.env}={n}\n"
    assert th.exec_start is not None
    return f"{head}[Service]\nExecStart=\nExecStart={th.exec_start.replace('{threads}', str(n))}\n"


def parse(th: Threads, text: str | None) -> str:
    """The value a file says: ``default`` (none or empty), N, or ``custom``."""
    if text is None or not text.strip():
        return DEFAULT
    m = _MARK.match(text)
    if m and text == render(th, int(m.group(1))):
        return m.group(1)
    if th.env is not None:  # an operator's own file setting the variable plainly
        prefix = "Environment=" if th.unit is not None else ""
        found = re.findall(rf"^{prefix}{re.escape(th.env)}=([1-9][0-9]{{0,3}})\s*$", text, re.M)
        if found:
            return found[-1]
    return CUSTOM


class ThreadsKnob(Knob):
    name = "threads"
    description = "a service's compute threads, set through its declared restart path"
    target_kind = "restart"
    numeric = True
    min_interval_s = 600.0  # each change restarts the service: seconds of outage

    def service_target(self, service: Service, cgroups: ServiceCgroups | None = None) -> str | None:
        """Only a service that declares a restart path has this lever (else: advice)."""
        th = service.threads
        return service.name if th is not None and th.has_lever else None

    def resolve_target(self, host: Host, cfg: Config, target: str) -> str:
        if target.startswith("{"):
            return target
        try:
            th = cfg.service(target).threads
        except KeyError as err:
            raise InvalidValue(f"threads target {target!r} is not a configured [[service]]") from err
        if th is None or not th.has_lever:
            raise TargetGone(f"service {target!r} declares no restart path for its threads "
                             "([service.threads] unit + env / exec_start, or env_file + env + restart_command)")
        return target_for(th)

    def host_files(self, host: Host, target: str) -> frozenset[str] | None:
        return frozenset({file_of(path_of(target))})

    def read(self, host: Host, target: str) -> KnobState:
        th = path_of(target)
        f = file_of(th)
        text = host.read_optional(f)
        return KnobState(knob=self.name, target=target, value=parse(th, text), raw={f: text or ""})

    def validate(self, host: Host, target: str, value: str) -> str:
        path_of(target)
        v = strip_ws(str(value))
        if v == DEFAULT:
            return v
        try:
            n = parse_int_strict(v)
        except ValueError as err:
            raise invalid(self.name, target, value, f"is not a thread count or 'default': {err}") from err
        if not 1 <= n <= MAX_THREADS:
            raise invalid(self.name, target, value, f"must be 1..{MAX_THREADS}")
        return str(n)

    def write(self, host: Host, target: str, value: str) -> None:
        th = path_of(target)
        f = file_of(th)
        before = host.read_optional(f)
        host.replace_file(f, None if value == DEFAULT else render(th, int(value)))
        self._restart_or_put_back(host, th, f, before)

    def restore(self, host: Host, state: KnobState) -> None:
        th = path_of(state.target)
        f = file_of(th)
        if set(state.raw) != {f}:
            raise HostError(f"threads restore record names {sorted(state.raw)}, not {f}")
        before = host.read_optional(f)
        host.replace_file(f, state.raw[f] or None)
        self._restart_or_put_back(host, th, f, before)

    def _restart_or_put_back(self, host: Host, th: Threads, f: str, before: str | None) -> None:
        try:
            restart(th)
        except HostError as err:
            host.replace_file(f, before or None)
            try:
                restart(th)
                back = "the previous setting is back and the service restarted with it"
            except HostError as again:
                back = f"the previous setting is back but restarting with it failed too ({again})"
            raise HostError(f"threads: {err}; {back}") from err


def restart(th: Threads) -> None:
    """Apply the file: systemd reloads units and restarts the unit, or the declared command
    runs. HostError with the command's own last words when one fails or times out."""
    if th.unit is not None:
        systemctl = shutil.which("systemctl") or "/bin/systemctl"
        _run([systemctl, "daemon-reload"], th.restart_timeout_s)
        _run([systemctl, "restart", th.unit], th.restart_timeout_s)
    else:
        assert th.restart_command is not None
        _run(list(th.restart_command), th.restart_timeout_s)


def _run(argv: list[str], timeout_s: float) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8"}
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s,
                             env=env, check=False)
    except subprocess.TimeoutExpired as err:
        raise HostError(f"{' '.join(argv)} did not finish within {timeout_s:g} s") from err
    except OSError as err:
        raise HostError(f"{' '.join(argv)} could not run ({err.strerror})") from err
    if res.returncode != 0:
        said = (res.stderr or res.stdout or b"").decode(errors="replace").strip().splitlines()
        raise HostError(f"{' '.join(argv)} exited {res.returncode}" + (f": {said[-1][:200]}" if said else ""))
