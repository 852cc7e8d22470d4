"""Soak: the agent's own CPU and memory over a long run, with everything active.

    sudo python -m bench.soak [--duration-s 3600] [--sample-period-s 0.2] [--out DIR]
    sudo python -m bench.soak --scenario explore-converge [--agent-pythonpath OLD_CHECKOUT]
    python -m bench.soak --table DIR [DIR ...]   # one row per run's summary.json (before/after)

The reference server (tiny GPT-2, in its own cgroup, starting at the static 0.5-core quota)
serves an open-loop load; a neighbour (one CPU burner, capped at 0.4 core so the soak leaves
the machine usable) runs in its own cgroup. The agent is ``autotune run --mode apply
--local-actuator`` with the default rule pack and the learned search on (``--rules-only``: off),
sampling every ``--sample-period-s``, with the SLO served (``--slo-itl``, the server's page
scraped).

Scenarios (``--scenario``):
- ``cycle`` (default): the rate cycles through low / high / peak / medium phases of
  ``--phase-s``, so the SLO controller steps both ways and the search explores again at each
  phase; at ``--sample-period-s 0.2`` an hour is five hours of sampling.
- ``explore-converge``: the cycle for ``--explore-s`` (the search exploring), then the medium rate
  until the end (the search converged and holding). Issue 26's run: 30 minutes at the default
  1-s sampling.

Every ``--every-s`` the agent process's CPU time (utime + stime from /proc/<pid>/stat) and its
RSS (VmRSS, and VmHWM: the peak) are recorded; at the end: CPU as a share of one core (per
interval, steady mean after the first two intervals, and per segment: exploring / converged),
RSS over time, at start and end, the peak, whether scipy or scikit-learn were loaded, how many
trials the search recorded (per segment) and how many changes the agent made.
``--agent-pythonpath DIR`` runs the agent from another checkout (the "before" of a comparison;
the bench itself runs from this one). Writes ``soak.csv``, ``summary.json`` and the agent's
state DB and log under the output dir.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import threading
import time
from pathlib import Path

from autotune.host import Host
from bench import agent_front as af
from bench import common
from bench.common import log
from bench.openloop import Phase, Schedule, run_schedule

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def proc_mem_kib(pid: int) -> tuple[int | None, int | None]:
    rss = hwm = None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def heavy_loaded(pid: int) -> bool:
    """scipy or scikit-learn mapped into the agent (their shared objects)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return "/sklearn/" in maps or "/scipy/" in maps


def cycle(duration_s: float, phase_s: float) -> Schedule:
    rates = [("low", 2.0), ("high", 6.0), ("peak", 9.0), ("medium", 4.0)]
    phases, t, i = [], 0.0, 0
    while t < duration_s:
        name, rate = rates[i % len(rates)]
        d = min(phase_s, duration_s - t)
        phases.append(Phase(name=f"{name}{i // len(rates)}", rate=rate, duration_s=d))
        t += d
        i += 1
    return Schedule(phases=phases)


def explore_converge(duration_s: float, phase_s: float, explore_s: float) -> Schedule:
    """The cycle for ``explore_s``, then the medium rate (4 req/s) to the end."""
    head = cycle(min(explore_s, duration_s), phase_s).phases
    rest = duration_s - sum(p.duration_s for p in head)
    return Schedule(phases=head + ([Phase(name="hold", rate=4.0, duration_s=rest)] if rest > 0 else []))


def segment_cpu(rows: list[dict], start_s: float, end_s: float) -> float | None:
    """CPU as a % of one core between the recorded points nearest inside [start_s, end_s]."""
    pts = [r for r in rows if r["cpu_s"] is not None and start_s <= r["t_s"] <= end_s]
    if len(pts) < 2 or pts[-1]["t_s"] <= pts[0]["t_s"]:
        return None
    return round(100 * (pts[-1]["cpu_s"] - pts[0]["cpu_s"]) / (pts[-1]["t_s"] - pts[0]["t_s"]), 3)


def table(dirs: list[Path]) -> str:
    """One markdown row per run (its summary.json): the before/after table."""
    head = ("| run | agent | scenario | sampling | CPU % of a core: steady / exploring / converged | "
            "RSS MiB: 1 min -> end (peak) | scipy/sklearn loaded | trials / changes |\n|---|---|---|---|---|---|---|---|")
    rows = [head]
    for d in dirs:
        sm = json.loads((d / "summary.json").read_text())
        seg = sm.get("cpu_pct_of_core_segments") or {}
        rows.append(
            f"| `{d.name}` | {sm.get('agent_commit') or '?'} | {sm.get('scenario', 'cycle')} | "
            f"{sm['sample_period_s']:g} s | {sm.get('cpu_pct_of_core_steady_mean')} / {seg.get('exploring', '-')} / "
            f"{seg.get('converged', '-')} | {sm.get('rss_mib_start')} -> {sm.get('rss_mib_end')} ({sm.get('rss_mib_peak')}) | "
            f"{sm.get('heavy_loaded', sm.get('sklearn_loaded'))} | {sm.get('learner_trials')} / "
            f"{sm.get('agent_changes', {}).get('changes')} |")
    return "\n".join(rows)


def _commit(path: Path) -> str | None:
    import subprocess

    r = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration-s", type=float, default=3600.0)
    ap.add_argument("--sample-period-s", type=float, default=0.2)
    ap.add_argument("--phase-s", type=float, default=120.0, help="load phase length")
    ap.add_argument("--every-s", type=float, default=60.0, help="how often the agent's CPU/RSS is read")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--slo-itl", type=float, default=0.05)
    ap.add_argument("--rules-only", action="store_true",
                    help="[search] enabled = false: the agent without the learned search")
    ap.add_argument("--scenario", choices=("cycle", "explore-converge"), default="cycle")
    ap.add_argument("--explore-s", type=float, default=720.0,
                    help="explore-converge: how long the load cycles before it holds")
    ap.add_argument("--agent-pythonpath", type=Path, default=None,
                    help="run the agent from this checkout (e.g. the commit before a change)")
    ap.add_argument("--table", type=Path, nargs="+", default=None,
                    help="print the before/after table of these runs' summary.json and exit")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    if os.geteuid() != 0:
        log("needs root: it creates cgroups and moves processes into them")
        return 2
    out = args.out or Path("bench/results") / time.strftime("soak-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    common.install_cleanup()
    host = Host("/", writable=True)
    guard = common.HostGuard(host)
    rows: list[dict] = []
    t0 = load_t0 = time.time()
    try:
        cgs = common.bench_cgroups(host)
        server_cg, nb_cg = cgs["server"], cgs["neighbour"]
        server_cg.set_cpu_quota(0.5)
        nb_cg.set_cpu_quota(0.4)
        neighbour = common.start_neighbour(nb_cg, cpu=1, mem_mib=0, json_path=out / "noise.json",
                                           log_path=out / "noise.log")
        server, url = common.start_server(server_cg, model=args.model, max_concurrency=2,
                                          log_path=out / "server.log")
        state = out / "state.db"
        doc = af.agent_config(server_cg=server_cg, neighbour_cg=nb_cg, server_url=url,
                              slo={"itl_p95_s": args.slo_itl}, state_path=state,
                              metrics_port=common.free_port(),
                              overrides={"agent": {"sample_period_s": args.sample_period_s},
                                         **({"search": {"enabled": False}} if args.rules_only else {})})
        problem = af.write_config(out / "config.toml", doc, header="written by bench/soak.py")
        if problem:
            log(f"the agent rejects the config: {problem}")
            return 2
        if args.agent_pythonpath is not None:  # the agent from another checkout, the bench from this one
            env = {**os.environ, "PYTHONPATH": str(args.agent_pythonpath.resolve())}
            agent = common.spawn(common.autotune_argv("run", "--config", str(out / "config.toml"), "--mode", "apply",
                                                      "--local-actuator"), None, out / "agent.log", env=env)
        else:
            agent = af.start_agent(out / "config.toml", out / "agent.log")
        log(f"agent pid {agent.pid}, sampling every {args.sample_period_s} s, {args.duration_s:.0f} s of load")
        schedule = (explore_converge(args.duration_s, args.phase_s, args.explore_s)
                    if args.scenario == "explore-converge" else cycle(args.duration_s, args.phase_s))
        done = threading.Event()
        start, load_t0 = time.monotonic(), time.time()

        def watch() -> None:
            while not done.is_set():
                cpu = proc_cpu_s(agent.pid)
                rss, hwm = proc_mem_kib(agent.pid)
                rows.append({"t_s": round(time.monotonic() - start, 1), "cpu_s": cpu, "rss_kib": rss,
                             "hwm_kib": hwm, "heavy": heavy_loaded(agent.pid)})
                done.wait(args.every_s)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        records = asyncio.run(run_schedule(url, schedule, seed=0, max_tokens=16, timeout_s=30.0))
        done.set()
        watcher.join()
        cpu, (rss, hwm) = proc_cpu_s(agent.pid), proc_mem_kib(agent.pid)
        rows.append({"t_s": round(time.monotonic() - start, 1), "cpu_s": cpu, "rss_kib": rss, "hwm_kib": hwm,
                     "heavy": heavy_loaded(agent.pid)})
        alive = agent.poll() is None
        common.stop(agent)
        back = af.rollback_all(state, out / "config.toml")  # the agent's own restore first
        common.stop(server)
        common.stop(neighbour)
    finally:
        common.cleanup()
        host_values = guard.finish()
    with open(out / "soak.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    pts = [r for r in rows if r["cpu_s"] is not None]
    per = [(b["cpu_s"] - a["cpu_s"]) / (b["t_s"] - a["t_s"]) for a, b in zip(pts, pts[1:]) if b["t_s"] > a["t_s"]]
    steady = per[2:] or per  # the first minutes include start-up (imports, the first fits)
    journal = af.journal_summary(state)
    trials = _trials(state)
    agent_src = args.agent_pythonpath or Path(__file__).resolve().parents[1]
    segments = {}
    if args.scenario == "explore-converge":
        end = rows[-1]["t_s"]
        # the first two minutes are start-up (imports, the first fits); the search needs a few
        # minutes of the held load to converge
        segments = {"exploring": segment_cpu(rows, 120.0, min(args.explore_s, end)),
                    "converged": segment_cpu(rows, min(args.explore_s + 300.0, end), end)}
    summary = {
        "command": "python -m bench.soak " + " ".join(argv if argv is not None else os.sys.argv[1:]),
        "scenario": args.scenario, "agent_commit": _commit(agent_src),
        "duration_s": args.duration_s, "sample_period_s": args.sample_period_s,
        "agent_alive_at_end": alive,
        "cpu_pct_of_core_first_interval": round(100 * per[0], 3) if per else None,
        "cpu_pct_of_core_last_interval": round(100 * per[-1], 3) if per else None,
        "cpu_pct_of_core_steady_mean": round(100 * sum(steady) / len(steady), 3) if steady else None,
        "cpu_s_total": pts[-1]["cpu_s"] if pts else None,
        "rss_mib_start": round(pts[0]["rss_kib"] / 1024, 1) if pts and pts[0]["rss_kib"] else None,
        "rss_mib_end": round(rss / 1024, 1) if rss else None,
        "rss_mib_peak": round(hwm / 1024, 1) if hwm else None,
        "rss_mib_over_time": [[round(r["t_s"] / 60, 1), round(r["rss_kib"] / 1024, 1)] for r in pts if r["rss_kib"]],
        "cpu_pct_of_core_segments": segments or None,
        "heavy_loaded": any(r["heavy"] for r in rows),
        "requests": len(records), "requests_ok": sum(r.outcome == "ok" for r in records),
        "agent_changes": {k: v for k, v in journal.items() if k != "entries"},
        "learner_trials": trials,
        "learner_trials_per_segment": _trials_by_time(state, load_t0, args.explore_s) if segments else None,
        "wall_s": round(time.time() - t0, 1),
        "rollback": back, "host_values": host_values,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "host_values"}, indent=2))
    print(host_values["line"])
    return 0


def _trials(state: Path) -> int:
    from autotune.store.db import open_db

    db = open_db(state, read_only=True)
    try:
        row = db.execute("SELECT COUNT(*) FROM learner_trials").fetchone() if db.execute(
            "SELECT 1 FROM sqlite_master WHERE name='learner_trials'").fetchone() else (0,)
        return int(row[0])
    finally:
        db.close()


def _trials_by_time(state: Path, t0: float, explore_s: float) -> dict:
    """Trials recorded while the load cycled and after it held (the search converged: one a
    minute while it holds, one per trial_s while it explores)."""
    from autotune.store.db import open_db

    db = open_db(state, read_only=True)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name='learner_trials'").fetchone():
            return {}
        ts = [r[0] for r in db.execute("SELECT ts FROM learner_trials")]
    finally:
        db.close()
    return {"exploring": sum(t < t0 + explore_s for t in ts), "held": sum(t >= t0 + explore_s for t in ts)}


if __name__ == "__main__":
    raise SystemExit(main())
