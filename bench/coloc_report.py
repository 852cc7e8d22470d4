"""The colocation benchmark's outputs: per-row window CSVs, summary.csv, table.md, plot.png,
meta.json, oracle.json, and the wall-time estimate.

summary.csv has one line per (row, phase) plus one per row for the whole run (phase ``all``):
violation shares in percent, LC / BE shares and EMU (bench/coloc_metrics.py), EMU as a share
of the ``oracle`` row's in the same phase (of the grid's chosen point when that row did not
run), the neighbour's ops/s and cores, and the convergence time (empty = never converged).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import time
from pathlib import Path

from bench.coloc_metrics import (WINDOW_COLUMNS, OracleChoice, PhaseStats, PointResult, Slo, Window,
                                 emu, mean_rate, point_emu, violation_pct)
from bench.openloop import RequestRecord, Schedule

SUMMARY_COLUMNS = ["row", "phase_index", "phase", "load", "windows", "violation_pct", "violation_pct_after",
                   "lc_share", "be_share", "emu", "emu_vs_oracle", "neighbour_ops_per_s", "neighbour_cores",
                   "convergence_s", "converged"]
REQUEST_COLUMNS = ["index", "phase", "arrival_s", "sent_s", "ttft_s", "finished_s", "outcome", "tokens",
                   "itl_p50_s", "itl_max_s", "deferrals", "error"]


def _cell(v: object) -> object:
    if v is None:
        return ""
    if isinstance(v, float):
        return "inf" if v == float("inf") else round(v, 6)
    return v


def write_windows(path: Path, windows: list[Window]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=WINDOW_COLUMNS)
        w.writeheader()
        for win in windows:
            w.writerow({k: _cell(v) for k, v in win.model_dump().items()})


def write_requests(path: Path, records: list[RequestRecord]) -> None:
    from bench.openloop import percentile

    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=REQUEST_COLUMNS)
        w.writeheader()
        for r in records:
            gaps = [g for _, g in r.itl_s()]
            w.writerow({k: _cell(v) for k, v in {
                "index": r.index, "phase": r.phase, "arrival_s": r.arrival_s, "sent_s": r.sent_s,
                "ttft_s": r.ttft_s, "finished_s": r.finished_s, "outcome": r.outcome, "tokens": len(r.token_s),
                "itl_p50_s": percentile(gaps, 50), "itl_max_s": max(gaps) if gaps else None,
                "deferrals": r.deferrals, "error": r.error}.items()})


# -- summary --------------------------------------------------------------------------------------
def summarize(per_row: dict[str, tuple[list[Window], list[PhaseStats], object]], schedule: Schedule,
              args: argparse.Namespace, lc_ref: dict[str, float | None], be_ref: float | None,
              choices: dict[str, OracleChoice]) -> list[dict]:
    """Summary lines; ``per_row`` maps row -> (windows, phase stats, edges)."""
    labels = [p.label() for p in schedule.phases]
    starts = schedule.starts()

    def phase_emu(st: PhaseStats) -> tuple[float | None, float | None, float | None]:
        return emu(st.lc_perf, lc_ref.get(labels[st.phase_index]), st.neighbour_ops_per_s, be_ref)

    oracle_emu: list[float | None] = []
    for i, label in enumerate(labels):
        if "oracle" in per_row:
            oracle_emu.append(phase_emu(per_row["oracle"][1][i])[2])
        else:
            c = choices.get(label)
            oracle_emu.append(c.emu if c else None)

    lines = []
    for row, (windows, st, edges) in per_row.items():
        emus = []
        for s in st:
            lc, be, e = phase_emu(s)
            emus.append(e)
            o = oracle_emu[s.phase_index]
            lines.append({
                "row": row, "phase_index": s.phase_index, "phase": s.phase, "load": labels[s.phase_index],
                "windows": s.windows, "violation_pct": s.violation_pct, "violation_pct_after": s.violation_pct_after,
                "lc_share": lc, "be_share": be, "emu": e, "emu_vs_oracle": e / o if e is not None and o else None,
                "neighbour_ops_per_s": s.neighbour_ops_per_s, "neighbour_cores": s.neighbour_cores,
                "convergence_s": s.convergence_s, "converged": "yes" if s.convergence_s is not None else "no"})
        durations = [p.duration_s for p in schedule.phases]
        total = sum(durations)
        e_all = (sum(e * d for e, d in zip(emus, durations, strict=True)) / total
                 if emus and None not in emus else None)
        o_all = (sum(o * d for o, d in zip(oracle_emu, durations, strict=True)) / total
                 if oracle_emu and None not in oracle_emu else None)
        after = [w for w in windows if w.start_s >= starts[w.phase_index] + args.transient_s - 1e-9]
        ops, cores = mean_rate(edges, 0, len(windows))  # type: ignore[arg-type]
        conv = [s.convergence_s for s in st]
        lines.append({
            "row": row, "phase_index": "", "phase": "all", "load": "", "windows": len(windows),
            "violation_pct": violation_pct(windows), "violation_pct_after": violation_pct(after),
            "lc_share": None, "be_share": None, "emu": e_all,
            "emu_vs_oracle": e_all / o_all if e_all is not None and o_all else None,
            "neighbour_ops_per_s": ops, "neighbour_cores": cores,
            "convergence_s": max(conv) if conv and None not in conv else None,  # type: ignore[type-var]
            "converged": f"{sum(c is not None for c in conv)}/{len(conv)}"})
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


def write_summary(path: Path, lines: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        for line in lines:
            w.writerow({k: _cell(line[k]) for k in SUMMARY_COLUMNS})


def _f(v: object, nd: int = 2, pct: bool = False) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.{0 if pct else nd}f}{' %' if pct else ''}"
    return str(v)


def markdown_table(lines: list[dict], args: argparse.Namespace) -> str:
    t = int(args.transient_s)
    out = [f"| row | phase | load | windows | violating | violating after {t} s | EMU | EMU / oracle "
           "| neighbour ops/s | neighbour cores | convergence (s) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for ln in lines:
        conv = ("never" if ln["converged"] == "no" else _f(ln["convergence_s"], 0)) if ln["phase"] != "all" \
            else f"{_f(ln['convergence_s'], 0)} max, {ln['converged']} converged"
        name = f"**{ln['row']}**" if ln["phase"] == "all" else ln["row"]
        out.append(f"| {name} | {ln['phase']} | {ln['load'] or '-'} | {ln['windows']} | "
                   f"{_f(ln['violation_pct'], pct=True)} | {_f(ln['violation_pct_after'], pct=True)} | "
                   f"{_f(ln['emu'])} | {_f(ln['emu_vs_oracle'])} | {_f(ln['neighbour_ops_per_s'], 0)} | "
                   f"{_f(ln['neighbour_cores'])} | {conv} |")
    return "\n".join(out)


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


# -- meta, estimate -------------------------------------------------------------------------------
def _git(*argv: str) -> str:
    try:
        return subprocess.run(["git", *argv], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def meta(args: argparse.Namespace, schedule: Schedule, slo: Slo, *, wall_s: float, skipped: dict, notes: dict,
         cache, lc_ref: dict, be_ref: float | None, server_starts: int) -> dict:  # noqa: ANN001
    a = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("slo", "argv")}
    return {
        "command": "sudo python -m bench.colocation " + shlex.join(getattr(args, "argv", [])),
        "args": a, "wall_s": round(wall_s, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": _git("rev-parse", "--short", "HEAD"), "dirty": bool(_git("status", "--porcelain")),
        "kernel": os.uname().release, "ncpu": os.cpu_count(), "schedule": schedule.model_dump(),
        "slo": slo.model_dump(), "skipped": skipped, "row_notes": notes,
        "cache": {"dir": str(cache.dir), "hits": cache.hits, "measured": cache.misses},
        "lc_alone": lc_ref, "be_alone_ops_per_s": be_ref, "server_starts": server_starts,
    }


START_S = {"gpt2": 35.0, "tiny": 15.0}  # server start + warm-up requests
DRAIN_S = {"gpt2": 25.0, "tiny": 4.0}  # mean wait for in-flight requests after a row's last phase


def estimate_text(args: argparse.Namespace, schedule: Schedule, cache) -> str:  # noqa: ANN001
    """Expected wall time from the schedule, the grid and what is cached (first line: the total)."""
    from bench import colocation as co

    start, drain = START_S.get(args.model, 35.0), DRAIN_S.get(args.model, 25.0)
    parts: list[tuple[str, float]] = []
    threads_seen: set[int] = set()

    def server_for(alloc) -> float:  # noqa: ANN001
        t = co.expected_threads(alloc, args.server_threads)
        if t in threads_seen:
            return 0.0
        threads_seen.add(t)
        return start

    sched = schedule.total_s
    if not cache.has(co.lc_alone_key(args, schedule)):
        parts.append(("alone: server over the schedule", server_for(co.Alloc()) + sched + drain))
    if not cache.has(co.be_alone_key(args)):
        parts.append(("alone: neighbour", args.be_alone_s + 3))
    if "oracle" in args.rows:
        todo = [(load, a) for a in co.grid_points(args) for load in co.distinct_loads(schedule)
                if not cache.has(co.point_key(args, load, a, args.slo))]
        per_point = args.grid_settle_s + args.grid_measure_s + 3
        restarts = sum(server_for(a) for _, a in todo)
        n_all = len(co.grid_points(args)) * len(co.distinct_loads(schedule))
        parts.append((f"oracle grid: {len(todo)} of {n_all} points to measure (x {per_point:.0f} s at most)",
                      len(todo) * per_point + restarts))
    for r in args.rows:
        row = co.ROWS[r]
        parts.append((f"row {r}", sched + drain + 3 + (start if row.oracle else server_for(row.alloc))))
    total = sum(s for _, s in parts) + 5
    lines = [f"estimated wall time: {total / 60:.0f} min ({len(args.rows)} rows x {sched:.0f} s schedule, "
             f"model {args.model}, cache {cache.dir})"]
    lines += [f"  {what}: {s / 60:.1f} min" for what, s in parts]
    return "\n".join(lines)


# -- everything -----------------------------------------------------------------------------------
def write_all(args: argparse.Namespace, schedule: Schedule, slo: Slo, results: dict, grid: dict[str, list[PointResult]],
              choices: dict[str, OracleChoice], lc_ref: dict, be_ref: float | None, meta_: dict) -> list[dict]:
    from bench import colocation as co

    out: Path = args.out
    per_row = {}
    for name in [r for r in args.rows if r in results]:  # requested order, not execution order
        m = results[name]
        fname = name.replace("+", "_")
        write_windows(out / f"windows_{fname}.csv", m.windows)
        write_requests(out / f"requests_{fname}.csv", m.records)
        per_row[name] = (m.windows, co.stats(m, schedule, args), m.edges)
    lines = summarize(per_row, schedule, args, lc_ref, be_ref, choices)
    meta_["warnings"] = stale_baseline_warnings(lines)
    write_summary(out / "summary.csv", lines)
    (out / "table.md").write_text(markdown_table(lines, args) + "\n")
    (out / "oracle.json").write_text(json.dumps({
        label: {"choice": choices[label].model_dump() if label in choices else None,
                "points": [{**p.model_dump(), "emu": point_emu(p, lc_ref.get(label), be_ref)} for p in points]}
        for label, points in grid.items()}, indent=1))
    (out / "meta.json").write_text(json.dumps(meta_, indent=1, default=str))
    floor_ops = None
    if be_ref:
        floor_ops = be_ref * co.NEIGHBOUR_FLOOR_CORES / max(1, min(args.noise_cpu, os.cpu_count() or 1))
    if per_row:
        plot({k: v[0] for k, v in per_row.items()}, schedule, slo, be_ref, floor_ops, out / "plot.png",
             title=f"{args.model}, scenario {args.scenario}; SLO TTFT p95 {slo.ttft_p95_s:g} s, "
                   f"ITL p95 {slo.itl_p95_s:g} s; {args.window_s:g}-s windows (red = violating)")
    return lines
