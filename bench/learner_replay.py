"""Replay: how many trials each way of choosing allocations needs, on measured surfaces.

    python -m bench.learner_replay [--cache bench/results/2026-12-02-coloc-gpt2/cache] [--runs 200] [--out DIR]

No live run: the colocation benchmark's oracle grid (bench/colocation.py, cached under
``--cache``) measured every grid allocation at every load of its schedule, window by window.
Here an optimiser "tries" an allocation by drawing one of that point's measured 10-s windows
at random (the real noise of the real system), scored as the agent scores a trial
(diagnose/search/model.score: CLITE's, from the window's SLO slack and the neighbour's share of
the host). Per load, each method runs ``--runs`` times with different seeds; reported: the
distribution of trials until the allocation it would hold scores within 95 % of the best
grid point (mean score over its windows), and how many of its trials broke the SLO.

Methods:
- ``learned``: diagnose/search/model.propose over the grid (the agent's own search: a trial of the
  allocation in place first, the static start, as it proposes nothing before it has measured
  something; then a safe set grown from known-safe allocations, then expected improvement);
- ``rules``: the rule pack's walk on the grid from the static start (0.5 core, 1:1): slack under
  5 % -> the next upsize (quota up a grid step while it is the quota that binds, then the
  weight ratio), slack over 20 % -> give back one step toward the start, else hold;
- ``random``: the grid in a random order, holding the best seen so far.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import warnings
from pathlib import Path

from autotune.diagnose.search import model as L

HERE = Path(__file__).resolve().parent
TARGET = 0.95


def load_surfaces(cache: Path) -> tuple[dict[str, dict[L.Allocation, list[tuple[float, float]]]], dict]:
    """{load label: {allocation: [(slack, neighbour share) per measured window]}} and the SLO."""
    out: dict[str, dict[L.Allocation, list[tuple[float, float]]]] = {}
    meta: dict = {}
    for f in sorted(cache.glob("oracle-point-*.json")):
        data = json.loads(f.read_text())
        key, value = data["key"], data["value"]
        slo = key["slo"]
        ncpu = key["ncpu"]
        meta = {"slo": slo, "ncpu": ncpu, "model": key["model"]}
        a = key["alloc"]
        alloc = L.Allocation(quota_cores=a["quota_cores"], ratio=a["server_weight"] / a["neighbour_weight"])
        rows = []
        for w in value["windows"]:
            if w.get("phase") != "measure" or not w.get("has_data"):
                continue
            ratios = [x / t for x, t in ((w.get("ttft_p95_s"), slo["ttft_p95_s"]), (w.get("itl_p95_s"), slo["itl_p95_s"]))
                      if x is not None]
            if not ratios or w.get("neighbour_cores") is None:
                continue
            rows.append((1.0 - max(ratios), w["neighbour_cores"] / ncpu))
        if rows:
            out.setdefault(key["load"], {})[alloc] = rows
    return out, meta


def mean_score(rows: list[tuple[float, float]]) -> float:
    return statistics.fmean(L.score(s, b) for s, b in rows)


def draw(rng: random.Random, rows: list[tuple[float, float]]) -> tuple[float, float]:
    return rows[rng.randrange(len(rows))]


def _reached(alloc: L.Allocation | None, surface: dict, best: float) -> bool:
    return alloc is not None and alloc in surface and mean_score(surface[alloc]) >= TARGET * best


def run_learned(surface: dict, rng: random.Random, ncpu: int, load: float, budget: int) -> tuple[int | None, int]:
    cands = sorted(surface, key=lambda a: (L.server_cores(a, ncpu), a.ratio))
    best = max(mean_score(r) for r in surface.values())
    trials: list[L.Trial] = []
    broke = 0
    for i in range(budget):
        p = L.propose(trials, cands, load=load, ncpu=ncpu, phase_trials=trials)
        if _reached(p.allocation, surface, best) and (p.status == "converged" or _holds(trials, p.allocation)):
            return i, broke
        alloc = p.allocation
        if alloc is None and not trials:  # waiting: the allocation in place is measured first
            alloc = static_start(surface)
        if alloc is None or alloc not in surface:
            break
        slack, be = draw(rng, surface[alloc])
        broke += slack < 0
        trials.append(L.Trial(ts=float(i), service="llm", allocation=alloc, ncpu=ncpu, load=load,
                              slack=slack, be_share=be, score=L.score(slack, be)))
    return None, broke


def static_start(surface: dict) -> L.Allocation | None:
    """The allocation in place before any change: the static 0.5 core at equal weights (the
    rules' walk starts there too), else the grid's least generous point."""
    start = L.Allocation(quota_cores=0.5, ratio=1.0)
    if start in surface:
        return start
    return min(surface, key=lambda a: (99.0 if a.quota_cores is None else a.quota_cores, a.ratio), default=None)


def _holds(trials: list[L.Trial], a: L.Allocation | None) -> bool:
    """The search already tried ``a`` and it kept the SLO: it is what it would hold now."""
    return any(t.allocation == a and t.slack >= 0 for t in trials)


def run_rules(surface: dict, rng: random.Random, ncpu: int, budget: int) -> tuple[int | None, int]:
    quotas = sorted({a.quota_cores for a in surface}, key=lambda q: 99.0 if q is None else q)
    ratios = sorted({a.ratio for a in surface})
    best = max(mean_score(r) for r in surface.values())
    qi = quotas.index(0.5) if 0.5 in quotas else 0
    ri = ratios.index(1.0) if 1.0 in ratios else 0
    start = (qi, ri)
    broke = 0
    undo: tuple[int, int] | None = None  # where the last give-back came from
    locked, streak = 0, 0  # trials left without give-back (the lockout, 3 trials ~ 30 s, doubling)
    for i in range(budget):
        alloc = L.Allocation(quota_cores=quotas[qi], ratio=ratios[ri])
        if alloc not in surface:
            return None, broke
        slack, _be = draw(rng, surface[alloc])
        broke += slack < 0
        locked = max(0, locked - 1)
        if slack < 0 and undo is not None:  # the give-back broke the SLO: undone at once, locked out
            (qi, ri), undo = undo, None
            streak += 1
            locked = 3 * 2 ** (streak - 1)
            continue
        undo = None
        if slack < 0.05:  # upsize: the quota while it binds, then the weights
            if qi + 1 < len(quotas):
                qi += 1
            elif ri + 1 < len(ratios):
                ri += 1
        elif slack > 0.20 and not locked and (ri > start[1] or qi > start[0]):
            undo, streak = (qi, ri), 0 if streak == 0 else streak
            if ri > start[1]:  # give back one step toward the start, last taken first
                ri -= 1
            else:
                qi -= 1
        elif _reached(alloc, surface, best):
            return i + 1, broke
    return None, broke


def run_random(surface: dict, rng: random.Random, budget: int) -> tuple[int | None, int]:
    order = list(surface)
    rng.shuffle(order)
    best = max(mean_score(r) for r in surface.values())
    seen: list[tuple[float, L.Allocation]] = []
    broke = 0
    for i, a in enumerate(order[:budget]):
        slack, be = draw(rng, surface[a])
        broke += slack < 0
        seen.append((L.score(slack, be), a))
        if _reached(max(seen, key=lambda x: x[0])[1], surface, best):
            return i + 1, broke
    return None, broke


def _load_value(label: str) -> float:
    try:
        return float(label.split("/")[0])
    except ValueError:
        return 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=HERE / "results" / "2026-12-02-coloc-gpt2" / "cache",
                    help="a colocation run's cache/ (its oracle grid, window by window)")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--budget", type=int, default=30, help="trials per run")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    surfaces, meta = load_surfaces(args.cache)
    if not surfaces:
        print(f"{args.cache}: no measured oracle grid (run `python -m bench.colocation` first)")
        return 2
    ncpu = meta["ncpu"]
    rows = []
    for label, surface in sorted(surfaces.items()):
        best_alloc = max(surface, key=lambda a: mean_score(surface[a]))
        for method in ("learned", "rules", "random"):
            got, broken = [], []
            for seed in range(args.runs):
                rng = random.Random(seed)
                if method == "learned":
                    n, b = run_learned(surface, rng, ncpu, _load_value(label), args.budget)
                elif method == "rules":
                    n, b = run_rules(surface, rng, ncpu, args.budget)
                else:
                    n, b = run_random(surface, rng, args.budget)
                got.append(n)
                broken.append(b)
            done = sorted(n for n in got if n is not None)
            rows.append({
                "load": label, "method": method, "points": len(surface), "best": best_alloc.label(),
                "best_score": round(mean_score(surface[best_alloc]), 4), "runs": args.runs,
                "reached_pct": round(100 * len(done) / args.runs, 1),
                "trials_median": statistics.median(done) if done else None,
                "trials_p90": done[int(0.9 * (len(done) - 1))] if done else None,
                "trials_max": done[-1] if done else None,
                "slo_breaking_trials_mean": round(statistics.fmean(broken), 2),
            })
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join("-" if r[c] is None else str(r[c]) for c in cols))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "replay.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
        (args.out / "replay_meta.json").write_text(json.dumps(
            {"argv": argv if argv is not None else os.sys.argv[1:], "meta": meta, "target": TARGET}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
