"""The agent row of every benchmark: ``autotune run --mode apply --local-actuator``.

The agent runs the DEFAULT rule pack (``rules/``) unchanged, with a config that declares only
the two services (the server: latency-critical, its SLO and its metrics page; the neighbour:
its ``min_cpu_cores`` floor) and where to keep state. No thresholds, steps, bounds or timings
are set for the benchmark: the row measures what a user with the shipped pack gets.

``--local-actuator`` writes through the knobs as root with no helper and no policy: fine for a
benchmark on throwaway cgroups, never for production. Both bench/seed_table.py and
bench/colocation.py start their agent rows from here.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter
from pathlib import Path

from autotune.workload.load import LoadSpec, run_load
from bench import common
from bench.common import NEIGHBOUR_FLOOR_CORES, BenchCgroup


class AgentUnavailable(Exception):
    """``autotune run`` (with ``--local-actuator``) is not in this checkout."""


def check_available() -> None:
    """Raise AgentUnavailable with the reason when ``autotune run --local-actuator`` is missing."""
    res = subprocess.run(common.autotune_argv("run", "--help"), capture_output=True, text=True)
    if res.returncode != 0:
        raise AgentUnavailable("'autotune run' is not available in this checkout")
    if "--local-actuator" not in res.stdout:
        raise AgentUnavailable("'autotune run' has no --local-actuator flag")


# -- config ---------------------------------------------------------------------------------------
def agent_config(*, server_cg: BenchCgroup, neighbour_cg: BenchCgroup, server_url: str,
                 slo: dict[str, float], state_path: Path, metrics_port: int,
                 overrides: dict | None = None, latency: dict | None = None, threads: dict | None = None) -> dict:
    """The agent's config as a dict: the two services, the SLO, the floor; nothing tuned.

    ``slo``: [service.slo] fields (itl_p95_s, ttft_p95_s, itl_mean_s...: the engine's, those its
    latency source can measure). ``latency``: the server's [service.latency] table (the engine's,
    bench/engines.py; default: its metrics page, flavor auto). ``threads``: its [service.threads]
    (the engine's: the reference server's pool follows its quota; llama.cpp's is fixed at its
    ``--threads``, plus the restart path where the row allows the lever). ``overrides`` are merged in ({"verification": {...}}, or {"service:llm":
    {...}} for one service's table)."""
    doc: dict = {
        "agent": {"mode": "apply", "state_path": str(state_path),
                  "metrics_listen": f"127.0.0.1:{metrics_port}"},
        "service": [
            {"name": "llm", "role": "latency-critical", "cgroup": server_cg.cpu_cgroup_path(),
             "slo": dict(slo),
             "latency": dict(latency or {"metrics_url": f"{server_url}/metrics", "flavor": "auto"}),
             # a fact about the server, not tuning (default: the reference server sizes its torch
             # threads from its quota)
             "threads": dict(threads or {"pool": "follows-quota"})},
            {"name": "neighbour", "role": "neighbour", "cgroup": neighbour_cg.cpu_cgroup_path(),
             "min_cpu_cores": NEIGHBOUR_FLOOR_CORES},
        ],
    }
    for key, body in (overrides or {}).items():
        if key.startswith("service:"):
            name = key.split(":", 1)[1]
            for svc in doc["service"]:
                if svc["name"] == name:
                    deep_merge(svc, body)
        else:
            deep_merge(doc.setdefault(key, {}), body)
    return doc


def deep_merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            deep_merge(into[k], v)
        else:
            into[k] = v


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string for these values
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(doc: dict, header: str = "") -> str:
    """Enough TOML for the agent's config: tables of scalars / inline tables, [[service]] arrays."""
    lines = [f"# {header}"] if header else []
    for section, body in doc.items():
        items = body if isinstance(body, list) else [body]
        for item in items:
            lines += ["", f"[[{section}]]" if isinstance(body, list) else f"[{section}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def write_config(path: Path, doc: dict, *, header: str) -> str | None:
    """Write the config and let the agent validate it; its one-line complaint, or None."""
    path.write_text(to_toml(doc, header=header))
    check = subprocess.run(common.autotune_argv("config", "check", str(path)), capture_output=True, text=True)
    if check.returncode != 0:
        return (check.stderr or check.stdout).strip().replace("\n", " | ")
    return None


# -- running --------------------------------------------------------------------------------------
def start_agent(config: Path, log_path: Path):
    """``autotune run --mode apply --local-actuator`` in the bench's own cgroup (not the roles')."""
    return common.spawn(common.autotune_argv("run", "--config", str(config), "--mode", "apply",
                                             "--local-actuator"), None, log_path)


def rollback_all(state_path: Path, config: Path | None = None) -> dict:
    """``autotune rollback --all --local`` on one agent row's state: the agent's own restore of
    everything it changed (its cgroup changes and any host-wide one), run as soon as the row
    ends so the next row starts from the host as found. What it restored and any problem.
    ``config``: the row's agent config (a service's threads lever is found through it: without
    it the restore of a threads change fails, as the first llama.cpp run showed)."""
    if not Path(state_path).exists():
        return {"restored": 0, "problems": []}
    argv = ["rollback", "--all", "--local", "--json", "--state", str(state_path)]
    if config is not None:
        argv += ["--config", str(config)]
    res = subprocess.run(common.autotune_argv(*argv), capture_output=True, text=True, timeout=120)
    if "nothing to roll back" in res.stdout + res.stderr:
        return {"restored": 0, "problems": []}
    try:
        outcomes = json.loads(res.stdout)
    except ValueError:
        return {"restored": 0, "problems": [f"rollback --all exit {res.returncode}: "
                                            f"{(res.stderr or res.stdout).strip()[:300]}"]}
    return {"restored": sum(o.get("result") == "restored" for o in outcomes),
            "problems": [f"#{o.get('entry_id')} {o.get('knob', '')} {o.get('target', '')}: {o.get('result')} "
                         f"({o.get('reason')})" for o in outcomes
                         if o.get("result") in ("skipped_drift", "failed", "blocked")]}


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


def knob_snapshot(server_cg: BenchCgroup, neighbour_cg: BenchCgroup) -> dict:
    """What the agent may have changed, read back raw (for the log and summary.json)."""

    def cpu_file(cg: BenchCgroup, name: str) -> str | None:
        d = cg.dirs.get("cpu")
        text = cg.host.read_optional(f"{d}/{name}") if d else None
        return text.strip() if text else None

    return {
        "server_cfs_quota_us": cpu_file(server_cg, "cpu.cfs_quota_us"),
        "server_shares": cpu_file(server_cg, "cpu.shares"),
        "neighbour_shares": cpu_file(neighbour_cg, "cpu.shares"),
    }


def journal_summary(state_path: Path) -> dict:
    """The agent's changes from its state DB: counts per rule and per verdict, and the share of
    verdicts that are conclusive (anything but ``inconclusive``)."""
    from autotune.journal.journal import Journal
    from autotune.store.db import open_db

    if not Path(state_path).exists():
        return {"changes": 0}
    db = open_db(state_path)
    try:
        entries = Journal(db).entries()
    finally:
        db.close()
    verdicts = Counter(e.verify_result.verdict for e in entries if e.verify_result is not None)
    judged = sum(verdicts.values())
    return {
        "changes": len(entries),
        "by_rule": dict(Counter(e.rule for e in entries)),
        "by_state": dict(Counter(e.state for e in entries)),
        "verdicts": dict(verdicts),
        "conclusive_share": None if not judged else 1 - verdicts.get("inconclusive", 0) / judged,
        "entries": [{"rule": e.rule, "knob": e.knob, "target": e.target, "prior": e.prior_value,
                     "proposed": e.proposed, "state": e.state, "applied_ts": e.applied_ts,
                     "mode": e.verify_plan.mode if e.verify_plan else None,
                     "verdict": e.verify_result.verdict if e.verify_result else None,
                     "reason": e.verify_result.reason if e.verify_result else e.error}
                    for e in entries],
    }
