"""`autotune status`: what this host supports and what it reads right now."""

from __future__ import annotations

from typing import Any

import typer

from autotune.cli.common import ConfigOpt, JsonOpt, RootOpt, load_config_or_exit, print_json


def psi_json(reading) -> dict[str, Any] | None:
    """PsiReading -> {"some": {avg10, avg60, avg300, total}, "full": {...} | None}."""
    if reading is None:
        return None

    def line(ln):
        if ln is None:
            return None
        return {"avg10": ln.avg10_pct, "avg60": ln.avg60_pct, "avg300": ln.avg300_pct, "total": ln.total_usec}

    return {"some": line(reading.some), "full": line(reading.full)}


def psi_rows(snap) -> dict[str, list[float | None]]:
    """The human table's PSI cells per resource (some avg10/60/300, full avg10/60/300), read
    through the metric vocabulary (``psi.<res>.<line>.<avgN>``); None where the kernel has none."""
    from autotune.detect.metrics import PSI_FIELDS, PSI_LINES, gauges  # not at import: `--help` stays light

    m = gauges(snap)
    cells = [(line, avg) for line in PSI_LINES for avg in PSI_FIELDS]
    return {res: [m.get(f"psi.{res}.{line}.{avg}") for line, avg in cells] for res in snap.psi}


def snapshot_json(snap) -> dict[str, Any]:
    """The status JSON's ``metrics`` section (documented shape, units in the README)."""
    stat = None
    if snap.stat is not None:
        stat = snap.stat.model_dump()
        stat["total"]["busy_s"] = snap.stat.total.busy_s
    return {
        "ts": snap.ts,
        "psi": {res: psi_json(r) for res, r in snap.psi.items()},
        "vmstat": snap.vmstat,
        "meminfo": snap.meminfo_bytes,
        "loadavg": snap.loadavg.model_dump() if snap.loadavg else None,
        "stat": stat,
        "services": {name: svc.model_dump(mode="json") for name, svc in snap.services.items()},
        "missing": snap.missing,
    }


def register(app: typer.Typer) -> None:
    @app.command()
    def status(root: RootOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
        """Host capabilities (cgroup layout, PSI, triggers, cpufreq, THP) and the latest readings."""
        from autotune.host import Host
        from autotune.sensors.collect import collect

        cfg = load_config_or_exit(config)
        host = Host(root)
        caps = host.capabilities()
        snap = collect(host, cfg.services)
        agent = _agent_state(cfg)
        from autotune.cli.latency_report import latency_report, report_lines

        latency = latency_report(cfg)
        if json_out:
            print_json({"host": caps.model_dump(mode="json"), "metrics": snapshot_json(snap), "agent": agent,
                        "latency": latency})
            return
        _print_human(caps, snap, agent)
        for line in report_lines(latency):
            typer.echo(line)


def cgroup_lines(cg) -> list[str]:
    """A service's cgroups as status shows them: one line per distinct group with the
    controllers in it, how they were found, and why a controller has none."""
    if cg is None:
        return []
    by_path: dict[str, list[str]] = {}
    for field, path in cg.paths.items():
        by_path.setdefault(path, []).append(field)
    out = [f"{path}  ({', '.join(fields)})" for path, fields in by_path.items()]
    out = [f"cgroup {out[0]}"] + [f"       {x}" for x in out[1:]] if out else []
    out.append(f"found: {cg.how}" if cg.how else "found: -")
    if cg.problem:
        out.append(f"problem: {cg.problem}: {cg.fix}")
    for field, why in cg.why_not.items():
        out.append(f"no {field} cgroup: {why}")
    out += [f"note: {n}" for n in cg.notes]
    return out


def _agent_state(cfg) -> dict[str, Any]:
    """What the agent's state store says (managed targets, drift), if a store exists."""
    path = cfg.state_path()
    out: dict[str, Any] = {"state_path": str(path), "exists": path.exists()}
    if not path.exists():
        return out
    try:
        from autotune.journal.journal import Journal
        from autotune.store.db import open_db

        journal = Journal(open_db(path, read_only=True))
        out["unmanaged"] = [u.model_dump(mode="json") if hasattr(u, "model_dump") else u
                            for u in journal.unmanaged()]
        out["in_flight"] = [e.model_dump(mode="json") if hasattr(e, "model_dump") else e
                            for e in journal.unfinished()]
    except Exception as err:  # status must always print; say why the store part is missing
        out["error"] = f"{type(err).__name__}: {err}"
    return out


def _print_human(caps, snap, agent) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    cg = caps.cgroup
    t = Table(title=f"Host {caps.root}  (kernel {caps.kernel or '?'}, {caps.ncpu} CPUs)", show_header=False)
    t.add_row("cgroup layout", f"{cg.layout}  v2={cg.v2_mount or '-'} [{' '.join(cg.v2_controllers) or 'no controllers'}]")
    if cg.v1_mounts:
        t.add_row("cgroup v1", ", ".join(sorted(cg.v1_mounts)))
    t.add_row("PSI", ", ".join(f"{r}={'yes' if ok else 'no'}" for r, ok in caps.psi.items()))
    t.add_row("PSI triggers", f"{caps.psi_triggers} ({caps.psi_triggers_detail})")
    t.add_row("cpufreq", f"{caps.cpufreq} {' '.join(caps.governors_available)}")
    t.add_row("THP", ", ".join(caps.thp_files) or "absent")
    con.print(t)
    if caps.problems:
        from rich.markup import escape

        con.print(f"[yellow]host files unreadable (detected without them):[/] {escape('; '.join(caps.problems))}")
    p = Table(title="Pressure (PSI %)")
    for col in ("resource", "some avg10", "avg60", "avg300", "full avg10", "avg60", "avg300"):
        p.add_column(col, justify="right")
    for res, cells in psi_rows(snap).items():
        p.add_row(res, *(f"{v:.2f}" if v is not None else "-" for v in cells))
    con.print(p)
    from autotune.detect.metrics import gauges

    m = gauges(snap)
    if snap.loadavg:
        la = snap.loadavg
        con.print(f"load {m['load.1']:.2f} {m['load.5']:.2f} {m['load.15']:.2f}  runnable {la.runnable}/{la.threads}")
    if "mem.total_bytes" in m and "mem.available_bytes" in m:
        con.print(f"memory available {m['mem.available_bytes'] / 2**30:.1f} / {m['mem.total_bytes'] / 2**30:.1f} GiB")
    for name, svc in snap.services.items():
        cgr = svc.cgroup
        con.print(f"service {name}: {len(svc.processes)} process(es), cgroup "
                  f"{cgr.path if cgr else '-'}" + (f"  errors: {'; '.join(svc.errors)}" if svc.errors else ""),
                  markup=False, highlight=False)
        for line in cgroup_lines(svc.cgroups):
            con.print(f"  {line}", markup=False, highlight=False)
    if snap.missing:
        con.print(f"[yellow]missing readings:[/] {'; '.join(snap.missing)}")
    from rich.markup import escape

    for u in agent.get("unmanaged") or []:
        con.print(f"[yellow]unmanaged after drift:[/] {escape(u['knob'])} {escape(u['target'])} — "
                  f"{escape(str(u.get('reason', '')))}; re-enable with "
                  f"`autotune enable {escape(u['knob'])} {escape(u['target'])}`")
    if agent.get("in_flight"):
        con.print(f"changes being verified: {len(agent['in_flight'])} (see `autotune history`)")
    if agent.get("error"):
        con.print(f"[yellow]state store unreadable:[/] {escape(agent['error'])}")
