"""The colocation benchmark's outputs, and the report that rebuilds a run's tables from its files.

    python -m bench.coloc_report DIR        # DIR = a run's results directory

A run directory holds one ``seed-<s>/`` per arrival seed (``windows_<row>.csv``,
``requests_<row>.csv``, ``summary.csv``, ``reaction.csv``, ``table.md``, ``plot.png``, the agent
rows' config, log and journal) and, over the seeds: ``summary.csv`` (per row, phase and figure:
n, mean, 95 % interval, the per-seed values), ``comparisons.csv`` (paired differences between
rows), ``reaction.csv`` (per load step), ``table.md``, ``oracle.json``, ``meta.json`` and
``cache/`` (every cached measurement the run used). ``aggregate(DIR)`` builds the over-seeds
files from the per-seed ones, so the report reruns on a committed directory without the run.

Per seed, ``summary.csv`` has one line per (row, phase) plus one per row for the whole run
(phase ``all``): violation shares in percent, LC / BE shares and EMU (bench/coloc_metrics.py),
EMU as a share of the ``oracle`` row's in the same phase and seed (of the grid's chosen point
when that row did not run), the neighbour's ops/s and cores, the convergence time (empty =
never converged) and the requests per window (min, median). Intervals: bench/stats.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench import stats as st
from bench.coloc_metrics import (WINDOW_COLUMNS, Alloc, OracleChoice, PhaseStats, PointResult, Slo, Window, breaches,
                                 emu, mean_rate, phase_stats, point_emu, reactions, requests_per_window, stall_pct,
                                 violation_pct)
from bench.common import NEIGHBOUR_FLOOR_CORES
from bench.openloop import RequestRecord, Schedule

SUMMARY_COLUMNS = ["row", "phase_index", "phase", "load", "duration_s", "windows", "violation_pct",
                   "violation_pct_after", "lc_share", "be_share", "emu", "emu_vs_oracle", "neighbour_ops_per_s",
                   "neighbour_cores", "convergence_s", "converged", "requests_per_window_min",
                   "requests_per_window_median", "server_mem_stall_pct", "host_mem_stall_pct"]
REQUEST_COLUMNS = ["index", "phase", "arrival_s", "sent_s", "ttft_s", "finished_s", "outcome", "tokens",
                   "itl_p50_s", "itl_max_s", "deferrals", "error"]
REACTION_COLUMNS = ["row", "phase_index", "step", "direction", "first_action_s", "first_action", "violated",
                    "recovery_s"]
BREACH_COLUMNS = ["row", "start_s", "end_s", "phase_index", "fix_s", "fix"]
# the figures over seeds (per row and phase); the ones compared between rows
FIGURES = ["emu_vs_oracle", "emu", "violation_pct_after", "violation_pct", "convergence_s", "neighbour_ops_per_s",
           "neighbour_cores", "requests_per_window_min", "requests_per_window_median", "server_mem_stall_pct",
           "host_mem_stall_pct"]
COMPARED = ["emu_vs_oracle", "violation_pct_after", "violation_pct", "convergence_s", "neighbour_ops_per_s",
            "recovery_s", "first_action_s"]
AGG_COLUMNS = ["row", "phase", "load", "figure", "n", "mean", "lo", "hi", "values", "note"]
CMP_COLUMNS = ["a", "b", "phase", "figure", "n", "diff_mean", "lo", "hi", "differs", "seeds"]
AGG_REACTION_COLUMNS = ["row", "phase_index", "step", "direction", "n", "first_action_s_mean", "first_action_s_lo",
                        "first_action_s_hi", "no_action", "broke", "recovery_s_mean", "recovery_s_lo",
                        "recovery_s_hi", "never_recovered"]
# anchors for the reaction table (PARTIES converges within 20 s; our goal, issue 22)
ACTION_GOAL_S, RECOVERY_GOAL_S = 2.0, 20.0


# -- files ------------------------------------------------------------------------------------------
def _cell(v: object) -> object:
    if v is None:
        return ""
    if isinstance(v, float):
        return "inf" if v == float("inf") else round(v, 6)
    return v


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in columns})


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def num(v: str | None) -> float | None:
    """A CSV cell as a number: '' -> None, 'inf' -> inf."""
    if v is None or v == "":
        return None
    return float(v)


def write_windows(path: Path, windows: list[Window]) -> None:
    write_csv(path, WINDOW_COLUMNS, [w.model_dump() for w in windows])


def write_requests(path: Path, records: list[RequestRecord]) -> None:
    from bench.openloop import percentile

    rows = []
    for r in records:
        gaps = [g for _, g in r.itl_s()]
        rows.append({"index": r.index, "phase": r.phase, "arrival_s": r.arrival_s, "sent_s": r.sent_s,
                     "ttft_s": r.ttft_s, "finished_s": r.finished_s, "outcome": r.outcome, "tokens": len(r.token_s),
                     "itl_p50_s": percentile(gaps, 50), "itl_max_s": max(gaps) if gaps else None,
                     "deferrals": r.deferrals, "error": r.error})
    write_csv(path, REQUEST_COLUMNS, rows)


# -- one seed ---------------------------------------------------------------------------------------
def summarize(per_row: dict[str, tuple[list[Window], list[PhaseStats], object]], schedule: Schedule,
              args: argparse.Namespace, lc_ref: dict[str, float | None], be_ref: float | None,
              choices: dict[str, OracleChoice]) -> list[dict]:
    """Summary lines of one seed; ``per_row`` maps row -> (windows, phase stats, edges)."""
    labels = [p.label() for p in schedule.phases]
    starts = schedule.starts()

    def phase_emu(s: PhaseStats) -> tuple[float | None, float | None, float | None]:
        return emu(s.lc_perf, lc_ref.get(labels[s.phase_index]), s.neighbour_ops_per_s, be_ref)

    oracle_emu: list[float | None] = []
    for i, label in enumerate(labels):
        if "oracle" in per_row:
            oracle_emu.append(phase_emu(per_row["oracle"][1][i])[2])
        else:
            c = choices.get(label)
            oracle_emu.append(c.emu if c else None)

    lines = []
    for row, (windows, phases, edges) in per_row.items():
        emus = []
        for s in phases:
            lc, be, e = phase_emu(s)
            emus.append(e)
            o = oracle_emu[s.phase_index]
            lines.append({
                "row": row, "phase_index": s.phase_index, "phase": s.phase, "load": labels[s.phase_index],
                "duration_s": schedule.phases[s.phase_index].duration_s,
                "windows": s.windows, "violation_pct": s.violation_pct, "violation_pct_after": s.violation_pct_after,
                "lc_share": lc, "be_share": be, "emu": e, "emu_vs_oracle": e / o if e is not None and o else None,
                "neighbour_ops_per_s": s.neighbour_ops_per_s, "neighbour_cores": s.neighbour_cores,
                "convergence_s": s.convergence_s, "converged": "yes" if s.convergence_s is not None else "no",
                "requests_per_window_min": s.requests_per_window_min,
                "requests_per_window_median": s.requests_per_window_median,
                "server_mem_stall_pct": s.server_mem_stall_pct, "host_mem_stall_pct": s.host_mem_stall_pct})
        durations = [p.duration_s for p in schedule.phases]
        total = sum(durations)
        e_all = (sum(e * d for e, d in zip(emus, durations, strict=True)) / total
                 if emus and None not in emus else None)
        o_all = (sum(o * d for o, d in zip(oracle_emu, durations, strict=True)) / total
                 if oracle_emu and None not in oracle_emu else None)
        after = [w for w in windows if w.start_s >= starts[w.phase_index] + args.transient_s - 1e-9]
        ops, cores = mean_rate(edges, 0, len(windows))  # type: ignore[arg-type]
        conv = [s.convergence_s for s in phases]
        rmin, rmed = requests_per_window(windows)
        stall = {k: stall_pct(edges[0], edges[-1], c) if edges else None  # type: ignore[index]
                 for k, c in (("server_mem_stall_pct", "server_mem_some_us"), ("host_mem_stall_pct", "host_mem_some_us"))}
        lines.append({
            "row": row, "phase_index": "", "phase": "all", "load": "", "duration_s": max(durations),
            "windows": len(windows), "violation_pct": violation_pct(windows),
            "violation_pct_after": violation_pct(after),
            "lc_share": None, "be_share": None, "emu": e_all,
            "emu_vs_oracle": e_all / o_all if e_all is not None and o_all else None,
            "neighbour_ops_per_s": ops, "neighbour_cores": cores,
            "convergence_s": max(conv) if conv and None not in conv else None,  # type: ignore[type-var]
            "converged": f"{sum(c is not None for c in conv)}/{len(conv)}",
            "requests_per_window_min": rmin, "requests_per_window_median": rmed, **stall})
    return lines


def stale_baseline_warnings(lines: list[dict], slack: float = 1.1) -> list[str]:
    """A share well over 1 means the cached ``alone`` baseline no longer matches this machine
    (other load when it was measured): say so, with the flag that re-measures it."""
    out = []
    for ln in lines:
        for k, who in (("lc_share", "the server"), ("be_share", "the neighbour")):
            v = ln.get(k)
            if v is not None and v > slack:
                out.append(f"{ln['row']} {ln['phase']}: {who} did {v:.2f}x its alone figure; the alone "
                           "baseline looks stale (--alone-refresh re-measures it)")
    return out


def _f(v: object, nd: int = 2, pct: bool = False) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.{0 if pct else nd}f}{' %' if pct else ''}"
    return str(v)


def markdown_table(lines: list[dict], transient_s: float) -> str:
    """One seed's table: every row and phase."""
    t = int(transient_s)
    out = [f"| row | phase | load | windows | violating | violating after {t} s | EMU | EMU / oracle "
           "| neighbour ops/s | neighbour cores | convergence (s) | requests per window (min / median) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ln in lines:
        conv = ("never" if ln["converged"] == "no" else _f(ln["convergence_s"], 0)) if ln["phase"] != "all" \
            else f"{_f(ln['convergence_s'], 0)} max, {ln['converged']} converged"
        name = f"**{ln['row']}**" if ln["phase"] == "all" else ln["row"]
        out.append(f"| {name} | {ln['phase']} | {ln['load'] or '-'} | {ln['windows']} | "
                   f"{_f(ln['violation_pct'], pct=True)} | {_f(ln['violation_pct_after'], pct=True)} | "
                   f"{_f(ln['emu'])} | {_f(ln['emu_vs_oracle'])} | {_f(ln['neighbour_ops_per_s'], 0)} | "
                   f"{_f(ln['neighbour_cores'])} | {conv} | {_f(ln['requests_per_window_min'])} / "
                   f"{_f(ln['requests_per_window_median'], 1)} |")
    return "\n".join(out)


def write_seed(d: Path, args: argparse.Namespace, schedule: Schedule, slo: Slo, results: dict,
               lc_ref: dict, be_ref: float | None, choices: dict[str, OracleChoice]) -> list[dict]:
    """One seed's files: windows and requests per row, summary.csv, reaction.csv, table.md, plot.png."""
    d.mkdir(parents=True, exist_ok=True)
    per_row = {}
    react: list[dict] = []
    broke: list[dict] = []
    for name in [r for r in args.rows if r in results]:  # requested order, not execution order
        m = results[name]
        fname = name.replace("+", "_")
        write_windows(d / f"windows_{fname}.csv", m.windows)
        write_requests(d / f"requests_{fname}.csv", m.records)
        phases = phase_stats(m.windows, m.records, m.edges, schedule, window_s=args.window_s,
                             transient_s=args.transient_s, hold_s=args.hold_s)
        per_row[name] = (m.windows, phases, m.edges)
        agent = m.actions or name.startswith("autotune")
        for r in reactions(m.windows, schedule, transient_s=args.transient_s, actions=m.actions,
                           t0_wall=m.t0_wall if agent else None):
            react.append({"row": name, **r.model_dump()})
        broke += [{"row": name, **b.model_dump()}
                  for b in breaches(m.records, schedule, window_s=args.window_s, slo=slo, actions=m.actions,
                                    t0_wall=m.t0_wall if agent else None)]
    lines = summarize(per_row, schedule, args, lc_ref, be_ref, choices)
    write_csv(d / "summary.csv", SUMMARY_COLUMNS, lines)
    write_csv(d / "reaction.csv", REACTION_COLUMNS, react)
    write_csv(d / "breach.csv", BREACH_COLUMNS, broke)
    (d / "table.md").write_text(markdown_table(lines, args.transient_s) + "\n")
    (d / "warnings.txt").write_text("".join(f"{w}\n" for w in stale_baseline_warnings(lines)))
    floor_ops = None
    if be_ref:
        floor_ops = be_ref * NEIGHBOUR_FLOOR_CORES / max(1, min(args.noise_cpu, os.cpu_count() or 1))
    if per_row:
        plot({k: v[0] for k, v in per_row.items()}, schedule, slo, be_ref, floor_ops, d / "plot.png",
             title=f"{args.engine} {args.model}, scenario {args.scenario}, seed {d.name}; SLO TTFT p95 "
                   f"{slo.ttft_p95_s:g} s, ITL p95 {slo.itl_p95_s:g} s; {args.window_s:g}-s windows (red = violating)")
    return lines


# -- run-level files --------------------------------------------------------------------------------
def mean_refs(lc_refs: dict[int, dict[str, float | None]]) -> dict[str, float | None]:
    """Per load label, the mean of the seeds' server-alone figures (the grid's LC reference)."""
    out: dict[str, list[float]] = {}
    for ref in lc_refs.values():
        for k, v in ref.items():
            if v is not None:
                out.setdefault(k, []).append(v)
    return {k: sum(v) / len(v) for k, v in out.items()}


def write_oracle(out: Path, grid: dict[str, list[PointResult]], choices: dict[str, OracleChoice],
                 lc_ref: dict, be_ref: float | None) -> None:
    (out / "oracle.json").write_text(json.dumps({
        label: {"choice": choices[label].model_dump() if label in choices else None,
                "points": [{**p.model_dump(), "emu": point_emu(p, lc_ref.get(label), be_ref)} for p in points]}
        for label, points in grid.items()}, indent=1))


def _git(*argv: str) -> str:
    try:
        return subprocess.run(["git", *argv], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def meta(args: argparse.Namespace, schedule: Schedule, slo: Slo, *, wall_s: float, per_seed: dict, cache,  # noqa: ANN001
         lc_refs: dict, be_ref: float | None, server_starts: int, estimate_s: float | None = None) -> dict:
    skip = {"slo", "argv", "engine_spec", "compare"}
    a = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in skip}
    return {
        "command": "sudo python -m bench.colocation " + shlex.join(getattr(args, "argv", [])),
        "args": a, "seeds": args.seeds, "rows": args.rows, "compare": [list(p) for p in args.compare],
        "engine": args.engine, "model": args.model, "transient_s": args.transient_s, "window_s": args.window_s,
        "wall_s": round(wall_s, 1), "estimate_s": round(estimate_s, 1) if estimate_s is not None else None,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": _git("rev-parse", "--short", "HEAD"), "dirty": bool(_git("status", "--porcelain")),
        "kernel": os.uname().release, "ncpu": os.cpu_count(), "schedule": schedule.model_dump(),
        "slo": slo.model_dump(), "per_seed": per_seed, "interval_method": st.METHOD,
        "cache": {"dir": str(cache.dir), "hits": cache.hits, "measured": cache.misses},
        "lc_alone": {str(k): v for k, v in lc_refs.items()}, "be_alone_ops_per_s": be_ref,
        "server_starts": server_starts,
    }


# -- over seeds -------------------------------------------------------------------------------------
def default_pairs(rows: list[str]) -> list[tuple[str, str]]:
    """Each agent row against contended, static and the oracle; the learned search against the rules."""
    agents = [r for r in rows if r.startswith("autotune")]
    out = [(a, b) for a in agents for b in ("contended", "static", "oracle") if b in rows]
    if "autotune-learned" in rows and "autotune" in rows:
        out.insert(0, ("autotune-learned", "autotune"))
    return out


def parse_pairs(text: str) -> list[tuple[str, str]]:
    out = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        a, sep, b = item.partition(":")
        if not sep or not a or not b:
            raise SystemExit(f"--compare {item!r}: expected rowA:rowB")
        out.append((a, b))
    return out


def seed_dirs(run: Path) -> dict[str, Path]:
    dirs = sorted((p for p in run.glob("seed-*") if (p / "summary.csv").exists()),
                  key=lambda p: (len(p.name), p.name))
    return {p.name.removeprefix("seed-"): p for p in dirs}


def _censored(line: dict, figure: str) -> float | None:
    """A per-seed figure; a phase that never converged counts as its whole length (a lower bound)."""
    v = num(line.get(figure))
    if figure == "convergence_s" and v is None:
        return num(line.get("duration_s"))
    return v


def aggregate(run: Path) -> dict:
    """Over-seeds files of ``run`` (summary.csv, comparisons.csv, reaction.csv, table.md) from its
    ``seed-*/`` files and meta.json; returns what it wrote, as data."""
    seeds = seed_dirs(run)
    if not seeds:
        raise SystemExit(f"{run}: no seed-*/summary.csv (a run from before the repeated mode keeps "
                         "its own table.md)")
    meta_ = json.loads((run / "meta.json").read_text()) if (run / "meta.json").exists() else {}
    per_seed = {s: read_csv(d / "summary.csv") for s, d in seeds.items()}
    react_seed = {s: read_csv(d / "reaction.csv") for s, d in seeds.items() if (d / "reaction.csv").exists()}
    breach_seed = {s: read_csv(d / "breach.csv") for s, d in seeds.items() if (d / "breach.csv").exists()}
    rows = meta_.get("rows") or list(dict.fromkeys(ln["row"] for lines in per_seed.values() for ln in lines))
    pairs = [tuple(p) for p in meta_.get("compare", [])] or default_pairs(rows)
    phases = list(dict.fromkeys((ln["phase"], ln["load"]) for lines in per_seed.values() for ln in lines))

    def values(row: str, phase: str, figure: str) -> dict[str, float | None]:
        out = {}
        for s, lines in per_seed.items():
            for ln in lines:
                if ln["row"] == row and ln["phase"] == phase:
                    out[s] = _censored(ln, figure)
        return out

    def never(row: str, phase: str) -> tuple[int, int]:
        n = k = 0
        for lines in per_seed.values():
            for ln in lines:
                if ln["row"] == row and ln["phase"] == phase:
                    n += 1
                    k += ln["convergence_s"] == ""
        return k, n

    agg = []
    for row in rows:
        for phase, load in phases:
            for fig in FIGURES:
                iv = st.mean_ci(values(row, phase, fig).values())
                if iv.n == 0:
                    continue
                note = ""
                if fig == "convergence_s":
                    k, n = never(row, phase)
                    note = f"never converged in {k} of {n} (counted as the phase length)" if k else ""
                agg.append(agg_line(row, phase, load, fig, iv, note))
    # reaction, per row and step, and per row over the steps of each seed
    react_rows = []
    per_row_seed: dict[str, dict[str, dict[str, float | None]]] = {}
    steps = list(dict.fromkeys((r["phase_index"], r["step"], r["direction"])
                               for lines in react_seed.values() for r in lines))
    for row in rows:
        for idx, step, direction in steps:
            got = [r for lines in react_seed.values() for r in lines
                   if r["row"] == row and r["phase_index"] == idx]
            if not got:
                continue
            fa = st.mean_ci(num(r["first_action_s"]) for r in got)
            rec = st.mean_ci(num(r["recovery_s"]) for r in got)
            react_rows.append({
                "row": row, "phase_index": idx, "step": step, "direction": direction, "n": len(got),
                "first_action_s_mean": fa.mean, "first_action_s_lo": fa.lo, "first_action_s_hi": fa.hi,
                "no_action": sum(r["first_action_s"] == "" for r in got),
                "broke": sum(r["violated"] == "True" for r in got),
                "recovery_s_mean": rec.mean, "recovery_s_lo": rec.lo, "recovery_s_hi": rec.hi,
                "never_recovered": sum(r["violated"] == "True" and r["recovery_s"] == "" for r in got)})
        for s, lines in react_seed.items():
            mine = [r for r in lines if r["row"] == row]
            if not mine:
                continue
            d = per_row_seed.setdefault(row, {})
            fa = [num(r["first_action_s"]) for r in mine if r["first_action_s"] != ""]
            rec = [num(r["recovery_s"]) for r in mine if r["recovery_s"] != ""]
            d.setdefault("first_action_s", {})[s] = sum(fa) / len(fa) if fa else None  # type: ignore[arg-type]
            d.setdefault("recovery_s", {})[s] = sum(rec) / len(rec) if rec else None  # type: ignore[arg-type]
    for row, figs in per_row_seed.items():
        for fig, by_seed in figs.items():
            iv = st.mean_ci(by_seed.values())
            if iv.n:
                agg.append(agg_line(row, "all", "", fig, iv, "per seed: the mean over its load steps"))
    # paired comparisons
    cmp_rows = []
    for a, b in pairs:
        if a not in rows or b not in rows:
            continue
        for phase, _ in phases:
            for fig in COMPARED:
                if fig in ("recovery_s", "first_action_s"):
                    if phase != "all":
                        continue
                    va = per_row_seed.get(a, {}).get(fig, {})
                    vb = per_row_seed.get(b, {}).get(fig, {})
                else:
                    va, vb = values(a, phase, fig), values(b, phase, fig)
                pr = st.paired(a, b, va, vb)
                if pr.diff.n == 0:
                    continue
                cmp_rows.append({"a": a, "b": b, "phase": phase, "figure": fig, "n": pr.diff.n,
                                 "diff_mean": pr.diff.mean, "lo": pr.diff.lo, "hi": pr.diff.hi,
                                 "differs": pr.verdict(), "seeds": ";".join(str(x) for x in pr.seeds)})
    agg += breach_figures(rows, breach_seed, {s: {ln["row"] for ln in lines} for s, lines in per_seed.items()})
    write_csv(run / "summary.csv", AGG_COLUMNS, agg)
    write_csv(run / "comparisons.csv", CMP_COLUMNS, cmp_rows)
    write_csv(run / "reaction.csv", AGG_REACTION_COLUMNS, react_rows)
    oracle = json.loads((run / "oracle.json").read_text()) if (run / "oracle.json").exists() else {}
    text = aggregate_markdown(meta_, rows, list(seeds), phases, agg, cmp_rows, react_rows, oracle)
    (run / "table.md").write_text(text)
    return {"summary": agg, "comparisons": cmp_rows, "reaction": react_rows, "table": text}


def agg_line(row: str, phase: str, load: str, figure: str, iv: st.Interval, note: str = "") -> dict:
    """One line of the over-seeds summary.csv (AGG_COLUMNS)."""
    return {"row": row, "phase": phase, "load": load, "figure": figure, "n": iv.n, "mean": iv.mean, "lo": iv.lo,
            "hi": iv.hi, "values": ";".join(f"{v:.6g}" for v in iv.values), "note": note}


def breach_figures(rows: list[str], breach_seed: dict[str, list[dict]], ran: dict[str, set[str]]) -> list[dict]:
    """Per row over the seeds it ran in (``ran``: seed -> rows): breaches per seed, and per seed
    the mean time from a breach to the agent's first corrective change (answered ones); the note
    counts them over every seed."""
    out = []
    for row in rows:
        mine = {s: [b for b in lines if b["row"] == row] for s, lines in breach_seed.items() if row in ran.get(s, ())}
        if not mine:
            continue
        fixes = {s: [v for b in bs if (v := num(b["fix_s"])) is not None] for s, bs in mine.items()}
        total = sum(len(bs) for bs in mine.values())
        answered = [v for vs in fixes.values() for v in vs]
        note = (f"{len(answered)} of {total} answered, {sum(v <= ACTION_GOAL_S for v in answered)} within "
                f"{ACTION_GOAL_S:g} s" if total else "no breach")
        for fig, by_seed in (("breaches", {s: float(len(bs)) for s, bs in mine.items()}),
                             ("breach_fix_s", {s: sum(vs) / len(vs) if vs else None for s, vs in fixes.items()})):
            iv = st.mean_ci(by_seed.values())
            if iv.n:
                out.append(agg_line(row, "all", "", fig, iv, note))
    return out


def breach_markdown(rows: list[str], agg: list[dict], window_s: object) -> list[str]:
    shown = [r for r in rows if _entry(agg, r, "all", "breaches")]
    if not shown:
        return []
    out = ["", f"Breaches, seen from outside every second (the trailing {window_s}-s window of requests violates "
           f"the SLO), and the time from one to the agent's first change that is not a take (goal <= "
           f"{ACTION_GOAL_S:g} s; negative: it acted before the trailing window showed it).", "",
           "| row | breaches per seed | first corrective change after a breach (s) | answered, within the goal |",
           "|---|---|---|---|"]
    for row in shown:
        n = _entry(agg, row, "all", "breaches")
        out.append(f"| {row} | {_t(_iv(agg, row, 'all', 'breaches'), 1)} | "
                   f"{_t(_iv(agg, row, 'all', 'breach_fix_s'), 1) if row.startswith('autotune') else 'n/a'} | "
                   f"{n['note'] if row.startswith('autotune') else 'n/a'} |")  # type: ignore[index]
    return out


def _iv(agg: list[dict], row: str, phase: str, figure: str) -> st.Interval | None:
    a = _entry(agg, row, phase, figure)
    return None if a is None else st.Interval(n=a["n"], mean=a["mean"], lo=a["lo"], hi=a["hi"])


def density(agg: list[dict], row: str) -> str:
    """Requests per window over the whole run: the fewest in any window of any seed, and the
    mean of the seeds' medians (the same arrivals for every row of a seed, open loop)."""
    fewest = _fewest(agg, row, "all")
    med = _iv(agg, row, "all", "requests_per_window_median")
    if fewest is None or med is None or med.mean is None:
        return "-"
    return f"{fewest:.0f} / {med.mean:.1f}"


def _fewest(agg: list[dict], row: str, phase: str) -> float | None:
    """The fewest requests in any window of ``phase`` over every seed."""
    a = _entry(agg, row, phase, "requests_per_window_min")
    return min(float(v) for v in str(a["values"]).split(";")) if a and a["values"] else None


def _entry(agg: list[dict], row: str, phase: str, figure: str) -> dict | None:
    return next((a for a in agg if a["row"] == row and a["phase"] == phase and a["figure"] == figure), None)


def _t(iv: st.Interval | None, nd: int = 2, scale: float = 1.0) -> str:
    return "-" if iv is None else iv.text(nd, scale)


def against_contended(rows: list[str], per_phase: list[tuple[str, str]], agg: list[dict],
                      cmp_rows: list[dict]) -> list[str]:
    """Issue 23's target, read per phase for each agent row: its violating share at most
    contended's (the paired difference's interval; "<= contended" when its upper end is <= 0,
    "not shown" when the interval crosses 0 with a positive mean, "worse" when it excludes 0
    above), and its EMU / oracle against 0.95."""
    agents = [r for r in rows if r.startswith("autotune")]
    if "contended" not in rows or not agents:
        return []
    out = ["", "Agent rows against `contended`, per phase (issue 23: at most contended's violating share "
           "in every phase, >= 0.95 of the oracle's EMU). Difference = agent minus contended, paired by seed, "
           "in percentage points of violating windows (all of the phase's).", "",
           "| row | phase | violating windows: agent - contended | <= contended? | EMU / oracle | >= 0.95? |",
           "|---|---|---|---|---|---|"]
    for row in agents:
        for p, ld in per_phase:
            c = next((x for x in cmp_rows if x["a"] == row and x["b"] == "contended" and x["phase"] == p
                      and x["figure"] == "violation_pct"), None)
            if c is None:
                diff, verdict = "-", "-"
            else:
                iv = st.Interval(n=c["n"], mean=c["diff_mean"], lo=c["lo"], hi=c["hi"])
                diff, verdict = iv.text(0), _at_most(iv, 0.0)
            e = _iv(agg, row, p, "emu_vs_oracle")
            ok = "-" if e is None or e.mean is None else _at_most(
                st.Interval(n=e.n, mean=-e.mean, lo=None if e.hi is None else -e.hi,
                            hi=None if e.lo is None else -e.lo), -0.95)
            out.append(f"| {row} | {p} {ld} | {diff} | {verdict} | {_t(e)} | {ok} |")
    return out


def _at_most(iv: st.Interval, bound: float) -> str:
    """Is the figure at most ``bound``: by its whole interval, only on its mean, or not."""
    if iv.mean is None:
        return "-"
    if iv.lo is None or iv.hi is None:
        return f"{'yes' if iv.mean <= bound + 1e-9 else 'no'} ({iv.n} seed)"
    if iv.hi <= bound + 1e-9:
        return "yes"
    if iv.lo > bound + 1e-9:
        return "no"
    return "on the mean only" if iv.mean <= bound + 1e-9 else "no on the mean (within the interval)"


def memory_stall(rows: list[str], per_phase: list[tuple[str, str]], agg: list[dict]) -> list[str]:
    """Per phase, the share of time the server's cgroup and the host stalled on memory (PSI
    some): whether the neighbour's memory interference reached the server. Only when measured."""
    if not any(a["figure"] == "server_mem_stall_pct" for a in agg):
        return []
    out = ["", "Memory stall per phase (PSI memory some, % of the phase's time): the server's cgroup / the host.",
           "", "| row | " + " | ".join(f"{p} {ld}" for p, ld in per_phase) + " |", "|---|" + "---|" * len(per_phase)]
    for row in rows:
        out.append(f"| {row} | " + " | ".join(f"{_t(_iv(agg, row, p, 'server_mem_stall_pct'), 1)} / "
                                               f"{_t(_iv(agg, row, p, 'host_mem_stall_pct'), 1)}"
                                               for p, _ in per_phase) + " |")
    return out


def aggregate_markdown(meta_: dict, rows: list[str], seeds: list[str], phases: list[tuple[str, str]],
                       agg: list[dict], cmp_rows: list[dict], react_rows: list[dict], oracle: dict) -> str:
    t = f"{meta_.get('transient_s') or 20:g}"
    slo = meta_.get("slo") or {}
    out = [f"Engine {meta_.get('engine', '?')}, model {meta_.get('model', '?')}; seeds {', '.join(seeds)} "
           f"(rows interleaved per seed); SLO TTFT p95 {slo.get('ttft_p95_s', '?')} s, ITL p95 "
           f"{slo.get('itl_p95_s', '?')} s per {meta_.get('window_s', '?')}-s window. Each cell: mean "
           f"[95 % interval] over the seeds ({st.METHOD}).", "",
           f"| row | EMU / oracle | violating windows after {t} s (%) | violating windows (%) | convergence, "
           "slowest phase (s) | neighbour ops/s | requests per window: fewest / median | seeds |",
           "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        conv = _iv(agg, row, "all", "convergence_s")
        note = next((a["note"] for a in agg if a["row"] == row and a["phase"] == "all"
                     and a["figure"] == "convergence_s" and a["note"]), "")
        n = _iv(agg, row, "all", "emu") or _iv(agg, row, "all", "violation_pct")
        out.append(f"| {row} | {_t(_iv(agg, row, 'all', 'emu_vs_oracle'))} | "
                   f"{_t(_iv(agg, row, 'all', 'violation_pct_after'), 0)} | "
                   f"{_t(_iv(agg, row, 'all', 'violation_pct'), 0)} | "
                   f"{_t(conv, 0)}{' (' + note.split(' (')[0] + ')' if note else ''} | "
                   f"{_t(_iv(agg, row, 'all', 'neighbour_ops_per_s'), 0)} | {density(agg, row)} | {n.n if n else 0} |")
    per_phase = [p for p in phases if p[0] != "all"]
    if per_phase:
        out += ["", f"Per phase: EMU / oracle; violating windows (%), all of the phase's / from {t} s into it; "
                "fewest requests in a window.",
                "", "| row | " + " | ".join(f"{p} {ld}" for p, ld in per_phase) + " |",
                "|---|" + "---|" * len(per_phase)]
        for row in rows:
            cells = []
            for p, _ in per_phase:
                fewest = _fewest(agg, row, p)
                cells.append(f"{_t(_iv(agg, row, p, 'emu_vs_oracle'))}; "
                             f"{_t(_iv(agg, row, p, 'violation_pct'), 0)} / "
                             f"{_t(_iv(agg, row, p, 'violation_pct_after'), 0)}; "
                             f"{'-' if fewest is None else f'{fewest:.0f}'}")
            out.append(f"| {row} | " + " | ".join(cells) + " |")
        out += against_contended(rows, per_phase, agg, cmp_rows)
        out += memory_stall(rows, per_phase, agg)
    shown = [c for c in cmp_rows if c["phase"] == "all"]
    if shown:
        out += ["", "Paired differences (row a minus row b, per seed; whole run). \"Larger than its interval\": "
                "the 95 % interval of the difference excludes 0.", "",
                "| a - b | figure | difference | larger than its interval? | seeds |", "|---|---|---|---|---|"]
        for c in shown:
            iv = st.Interval(n=c["n"], mean=c["diff_mean"], lo=c["lo"], hi=c["hi"])
            nd = 2 if c["figure"] == "emu_vs_oracle" else 0 if c["figure"] == "neighbour_ops_per_s" else 1
            out.append(f"| {c['a']} - {c['b']} | {c['figure']} | {iv.text(nd)} | {c['differs']} | {c['n']} |")
    agents = [r for r in react_rows if r["row"].startswith("autotune")]
    if react_rows:
        out += ["", f"Reaction after each load step (goal: first action <= {ACTION_GOAL_S:g} s, recovery <= "
                f"{RECOVERY_GOAL_S:g} s; PARTIES <= 20 s). First action: the agent's first applied change in "
                "the phase. Recovery: to the first window that holds the SLO again after the step broke it "
                "(0 when no window broke it).", "",
                "| row | step | first action (s) | no action | broke the SLO | recovery (s) | never recovered |",
                "|---|---|---|---|---|---|---|"]
        for r in (agents or react_rows) + ([x for x in react_rows if x["row"] == "oracle"] if agents else []):
            fa = st.Interval(n=r["n"], mean=r["first_action_s_mean"], lo=r["first_action_s_lo"],
                             hi=r["first_action_s_hi"])
            rc = st.Interval(n=r["n"], mean=r["recovery_s_mean"], lo=r["recovery_s_lo"], hi=r["recovery_s_hi"])
            agent = r["row"].startswith("autotune")
            out.append(f"| {r['row']} | {r['step']} ({r['direction']}) | {fa.text(1) if agent else 'n/a'} | "
                       f"{str(r['no_action']) + '/' + str(r['n']) if agent else 'n/a'} | "
                       f"{r['broke']}/{r['n']} | "
                       f"{rc.text(0)} | {r['never_recovered']}/{r['n']} |")
        summary = [(row, _iv(agg, row, "all", "first_action_s"), _iv(agg, row, "all", "recovery_s"))
                   for row in rows if row.startswith("autotune")]
        if any(fa or rc for _, fa, rc in summary):
            out += ["", "Over all load steps (per seed the mean over its steps, then the interval over seeds):", "",
                    "| row | first action (s) | recovery (s) |", "|---|---|---|"]
            out += [f"| {row} | {_t(fa, 1)} | {_t(rc, 0)} |" for row, fa, rc in summary]
    out += breach_markdown(rows, agg, meta_.get("window_s", "?"))
    if oracle:
        out += ["", "Oracle per load (grid point chosen on the grid, then re-checked live on fresh arrivals):", "",
                "| load | allocation | grid: valid | live re-checks (violating / windows) | holds live |",
                "|---|---|---|---|---|"]
        for label, o in oracle.items():
            c = o.get("choice")
            if not c:
                out.append(f"| {label} | - | no point measured | - | - |")
                continue
            alloc = alloc_text(Alloc.model_validate(c["alloc"]))
            checks = ", ".join(f"{x['violating']}/{x['windows']}" for x in c.get("checks", [])) or "-"
            holds = {True: "yes", False: "**no: no grid point held the SLO here**",
                     None: "not checked"}[c.get("holds_live")]
            out.append(f"| {label} | {alloc} | {'yes' if c['valid'] else 'no'} | {checks} | {holds} |")
    skipped = {f"seed {s}: {r}": why for s, d in (meta_.get("per_seed") or {}).items()
               for r, why in (d.get("skipped") or {}).items()}
    if skipped:
        out += [""] + [f"- skipped {k}: {v}" for k, v in skipped.items()]
    return "\n".join(out) + "\n"


def alloc_text(a: Alloc) -> str:
    q = "max" if a.quota_cores is None else f"{a.quota_cores:g}"
    out = f"quota {q}, weights {a.server_weight}:{a.neighbour_weight}"
    if a.threads:
        out += f", threads {a.threads}"
    if a.neighbour_quota_cores is not None:
        out += f", neighbour quota {a.neighbour_quota_cores:g}"
    if a.neighbour_memory_max_bytes is not None:
        out += f", neighbour memory max {a.neighbour_memory_max_bytes / 2**30:.1f} GiB"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.coloc_report",
                                description="Rebuild a colocation run's over-seeds tables from its files.")
    p.add_argument("run", type=Path, help="a results directory with seed-*/summary.csv")
    a = p.parse_args(argv)
    if not a.run.is_dir():
        print(f"{a.run}: not a directory", file=sys.stderr)
        return 2
    aggregate(a.run)
    print((a.run / "table.md").read_text())
    return 0


# -- plot -----------------------------------------------------------------------------------------
def plot(per_row: dict[str, list[Window]], schedule: Schedule, slo: Slo, be_ref: float | None,
         floor_ops: float | None, path: Path, title: str) -> None:
    """One panel per row (TTFT p95 and ITL p95 as multiples of their SLO, log scale, violating
    windows shaded, the server's quota on the right axis), then the neighbour's ops/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(per_row)
    n = len(rows) + 1
    fig, axes = plt.subplots(n, 1, figsize=(11, 1.9 * n + 0.8), sharex=True,
                             gridspec_kw={"height_ratios": [1.0] * len(rows) + [1.3]})
    axes = list(axes) if n > 1 else [axes]
    starts, total = schedule.starts(), schedule.total_s
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    cap = 30.0

    def mark_phases(ax) -> None:  # noqa: ANN001
        for s in starts[1:]:
            ax.axvline(s, color="0.4", ls=":", lw=1)

    for ax, row in zip(axes, rows, strict=False):
        ws = per_row[row]
        if not ws:
            continue
        w = ws[0].start_s if len(ws) == 1 else ws[1].start_s - ws[0].start_s
        xs = [x.start_s + w / 2 for x in ws]

        def ratio(v: float | None, target: float) -> float:
            return float("nan") if v is None else min(cap, max(0.001, v / target))

        ax.plot(xs, [ratio(x.ttft_p95_s, slo.ttft_p95_s) for x in ws], marker="o", ms=3, color=palette[0],
                label=f"TTFT p95 / {slo.ttft_p95_s:g} s (failures at the top)")
        ax.plot(xs, [ratio(x.itl_p95_s, slo.itl_p95_s) for x in ws], marker="s", ms=3, color=palette[1],
                label=f"ITL p95 / {slo.itl_p95_s:g} s")
        ax.axhline(1.0, color="k", lw=1)
        finite = [v for x in ws for v in (ratio(x.ttft_p95_s, slo.ttft_p95_s), ratio(x.itl_p95_s, slo.itl_p95_s))
                  if v == v]
        lo = max(0.001, min(finite, default=0.1) / 1.6)
        for x in ws:
            if x.violating:
                ax.axvspan(x.start_s, x.start_s + w, color="red", alpha=0.12, lw=0)
        ax.set_yscale("log")
        ax.set_ylim(min(lo, 0.5), cap * 1.5)
        ax.set_ylabel("x SLO")
        viol = [x for x in ws if x.has_data]
        share = 100 * sum(x.violating for x in viol) / len(viol) if viol else 0
        ax.set_title(f"{row}: {share:.0f} % of windows violate", loc="left", fontsize=10)
        mark_phases(ax)
        ax.grid(alpha=0.25, which="both", axis="y")
        quotas = [x.server_quota_cores for x in ws]
        ax2 = ax.twinx()
        ncpu = os.cpu_count() or 2
        qplot = [q if q is not None else ncpu for q in quotas]  # no quota: drawn at the CPU count
        ax2.step([x.start_s for x in ws] + [ws[-1].start_s + w], qplot + qplot[-1:], where="post",
                 color="0.3", lw=1.2, alpha=0.8, label=f"server quota, cores ({ncpu} = none)")
        ax2.set_ylim(0, ncpu * 1.05)
        ax2.set_ylabel("quota", fontsize=8)
        ax2.tick_params(labelsize=7)
        if ax is axes[0]:
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left", ncol=3)

    nb = axes[-1]
    for i, row in enumerate(rows):
        ws = per_row[row]
        if not ws:
            continue
        w = ws[0].start_s if len(ws) == 1 else ws[1].start_s - ws[0].start_s
        nb.plot([x.start_s + w / 2 for x in ws], [float("nan") if x.neighbour_ops_per_s is None
                                                  else x.neighbour_ops_per_s / 1000 for x in ws],
                marker=".", color=palette[(i + 2) % len(palette)], label=row)
    if be_ref:
        nb.axhline(be_ref / 1000, color="k", ls="--", lw=1, label="neighbour alone")
    if floor_ops:
        nb.axhline(floor_ops / 1000, color="red", ls="--", lw=1, label="0.5-core floor (approx.)")
    nb.set_ylabel("neighbour kops/s")
    nb.set_xlabel("time (s)")
    nb.set_ylim(bottom=0)
    nb.grid(alpha=0.25)
    nb.legend(fontsize=7, loc="lower left", ncol=4)
    mark_phases(nb)
    for s, p in zip(starts, schedule.phases, strict=True):
        axes[0].annotate(f"{p.name} {p.label()}", xy=(s + p.duration_s / 2, 1.0), xycoords=("data", "axes fraction"),
                         xytext=(0, 14), textcoords="offset points", ha="center", fontsize=8, color="0.2")
    nb.set_xlim(0, total)
    fig.suptitle(title, fontsize=10, y=0.995)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



if __name__ == "__main__":
    raise SystemExit(main())
