"""The agent-managed row: ``autotune run --mode apply --local-actuator`` over the static limits.

The run starts exactly like ``static`` (server quota 0.5 core, memory max 4 GiB, neighbour
burning every CPU) with ``autotune gate`` in front of the server. The agent watches both
cgroups with a bench config (``write_config``) whose only rules are ``bench/agent_rules.yaml``:
server quota 0.5..1.5 cores (the neighbour keeps a 0.5-core floor on 2 CPUs), cpu weights of
both, and the gate's PSI threshold. Short verification windows (settle 4 s, window 15 s) let
it converge within the warm-up (load at concurrency 2 for ``warmup_s``) before the measured
cells; it keeps running, and may keep acting, while they are measured.

``--local-actuator`` writes through the knobs as root with no helper and no policy: fine for
a benchmark on a throwaway cgroup, never for production.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

from autotune.workload.load import LoadSpec, run_load
from bench import common
from bench.common import BenchCgroup, log

RULES_TEMPLATE = Path(__file__).with_name("agent_rules.yaml")
NEIGHBOUR_FLOOR_CORES = 0.5


class AgentUnavailable(Exception):
    """``autotune run`` (with ``--local-actuator``) is not in this checkout yet."""


def check_available() -> None:
    """Raise AgentUnavailable with the reason when ``autotune run --local-actuator`` is missing."""
    res = subprocess.run(common.autotune_argv("run", "--help"), capture_output=True, text=True)
    if res.returncode != 0:
        raise AgentUnavailable("'autotune run' is not available in this checkout")
    if "--local-actuator" not in res.stdout:
        raise AgentUnavailable("'autotune run' has no --local-actuator flag")


def _q(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string for these values


def write_config(path: Path, *, server_cg: BenchCgroup, neighbour_cg: BenchCgroup, server_url: str,
                 slo_p95_s: float, rules_dir: Path, state_path: Path, metrics_port: int) -> Path:
    """The agent's TOML: llm = server cgroup (latency-critical, SLO p95), neighbour with a floor."""
    text = f"""# written by bench/agent_front.py for one benchmark run
[agent]
mode = "apply"
sample_period_s = 1.0
window_s = 15.0
evaluate_every_s = 2.0
state_path = {_q(str(state_path))}
rule_dirs = [{_q(str(rules_dir))}]
metrics_listen = {_q(f"127.0.0.1:{metrics_port}")}
restore_on_stop = false

[verification]
settle_s = 4.0
window_s = 15.0
on_inconclusive = "keep"
rule_cooldown_s = 20.0
knob_cooldown_s = 5.0
max_changes_per_hour = 60

[[service]]
name = "llm"
role = "latency-critical"
cgroup = {_q(server_cg.cpu_cgroup_path())}
slo = {{ p95_latency_s = {slo_p95_s:.3f} }}
latency = {{ metrics_url = {_q(server_url + "/metrics")}, flavor = "auto" }}

[[service]]
name = "neighbour"
role = "neighbour"
cgroup = {_q(neighbour_cg.cpu_cgroup_path())}
min_cpu_cores = {NEIGHBOUR_FLOOR_CORES}
"""
    path.write_text(text)
    return path


def write_rules(rules_dir: Path, *, gate_url: str) -> Path:
    rules_dir.mkdir(parents=True, exist_ok=True)
    out = rules_dir / "bench.yaml"
    out.write_text(RULES_TEMPLATE.read_text().replace("@GATE_URL@", gate_url))
    return out


def knob_snapshot(server_cg: BenchCgroup, neighbour_cg: BenchCgroup, gate_url: str) -> dict:
    """What the agent may have changed, read back raw (for the log and summary.json)."""

    def cpu_file(cg: BenchCgroup, name: str) -> str | None:
        d = cg.dirs.get("cpu")
        text = cg.host.read_optional(f"{d}/{name}") if d else None
        return text.strip() if text else None

    gate = None
    try:
        import httpx

        gate = {k: v for k, v in httpx.get(f"{gate_url}/gate/status", timeout=5).json().items()
                if k in ("threshold_pct", "limit", "min_inflight", "admitted", "deferred", "rejected")}
    except Exception as err:  # noqa: BLE001 - a snapshot for the log, never fatal
        gate = {"error": str(err)}
    return {
        "server_cfs_quota_us": cpu_file(server_cg, "cpu.cfs_quota_us"),
        "server_shares": cpu_file(server_cg, "cpu.shares"),
        "neighbour_shares": cpu_file(neighbour_cg, "cpu.shares"),
        "gate": gate,
    }


def warm_up(url: str, seconds: float, *, concurrency: int = 2, max_tokens: int = 50) -> int:
    """Keep ``concurrency`` requests going for ``seconds`` so the agent sees the real load."""
    deadline = time.monotonic() + seconds
    sent = 0
    seed = 1000
    while time.monotonic() < deadline:
        spec = LoadSpec(url=url, requests=concurrency, concurrency=concurrency, max_tokens=max_tokens,
                        seed=seed)
        asyncio.run(run_load(spec))
        sent += concurrency
        seed += 1
    return sent


def start_agent(config: Path, log_path: Path):
    """``autotune run --mode apply --local-actuator`` in the bench's own cgroup (not the roles')."""
    return common.spawn(common.autotune_argv("run", "--config", str(config), "--mode", "apply",
                                             "--local-actuator"), None, log_path)
