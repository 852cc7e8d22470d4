"""The colocation harness without a kernel: the open-loop client against a mock streaming
server, the agent's config, the summary, the cache, the arguments and the estimate."""

from __future__ import annotations

import asyncio
import json
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import agent_front as af  # noqa: E402
from bench import coloc_report as report  # noqa: E402
from bench import colocation as co  # noqa: E402
from bench.coloc_metrics import Alloc, EdgeSample, Slo, aggregate_windows  # noqa: E402
from bench.openloop import parse_phases, poisson_arrivals, run_schedule  # noqa: E402


def sse(tokens: int) -> list[bytes]:
    chunk = lambda fin: json.dumps({"choices": [{"text": "x", "index": 0, "finish_reason": fin}]})  # noqa: E731
    return [f"data: {chunk(None)}\n\n".encode() for _ in range(tokens)] + \
        [f"data: {chunk('length')}\n\n".encode(), b"data: [DONE]\n\n"]


class FakeServer:
    """Streams ``tokens`` chunks after ``delay_s``, ``gap_s`` apart; counts requests in flight."""

    def __init__(self, delay_s=0.2, gap_s=0.02, tokens=3):
        self.delay_s, self.gap_s, self.tokens = delay_s, gap_s, tokens
        self.inflight = self.max_inflight = self.calls = 0

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        assert json.loads(request.content)["stream"] is True

        async def body():
            try:
                await asyncio.sleep(self.delay_s)
                for i, part in enumerate(sse(self.tokens)):
                    if 0 < i < self.tokens:
                        await asyncio.sleep(self.gap_s)
                    yield part
            finally:
                self.inflight -= 1

        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})


def play(schedule, server, **kw):
    return asyncio.run(run_schedule("http://fake", schedule, transport=httpx.MockTransport(server.handler), **kw))


def test_open_loop_sends_at_arrival_times_without_a_cap():
    s = parse_phases("a:20:1")
    srv = FakeServer(delay_s=0.4)
    recs = play(s, srv, seed=3, window_s=0.5, timeout_s=5)
    arrivals = poisson_arrivals(s, 3)
    assert [r.arrival_s for r in recs] == [a.t_s for a in arrivals] and len(recs) >= 8
    assert srv.max_inflight > 2  # later requests went out while earlier ones were still running
    assert all(r.outcome == "ok" and len(r.token_s) == 3 for r in recs)
    for r in recs:
        assert 0 <= r.sent_s - r.arrival_s < 0.15  # sent on time, not after the previous one
        assert 0.38 < r.ttft_s < 0.8
        assert all(0.01 < g < 0.2 for _, g in r.itl_s())


def test_timeout_is_a_failure_counted_from_the_arrival():
    s = parse_phases("a:4:1")
    recs = play(s, FakeServer(delay_s=3.0), seed=1, window_s=0.5, timeout_s=0.3)
    assert recs and all(r.outcome == "timeout" and not r.token_s for r in recs)
    assert all(0.25 < r.finished_s - r.arrival_s < 0.6 for r in recs)
    ws = aggregate_windows(recs, [], s, 0.5, Slo(ttft_p95_s=1.0, itl_p95_s=1.0))
    assert all(w.violating for w in ws if w.offered) and sum(w.failed for w in ws) == len(recs)


def test_closed_loop_phase_keeps_n_clients_busy():
    s = parse_phases("c:c=2:1")
    srv = FakeServer(delay_s=0.05, gap_s=0.01)
    recs = play(s, srv, window_s=0.5, timeout_s=5)
    assert srv.max_inflight == 2 and 8 <= len(recs) <= 30
    assert len({r.index for r in recs}) == len(recs)
    assert all(r.outcome == "ok" and r.phase == 0 for r in recs)


def test_hooks_edges_phases_and_early_stop():
    s = parse_phases("a:5:1,b:5:1")
    seen_edges, events = [], []
    recs = play(s, FakeServer(delay_s=0.05), window_s=0.5, timeout_s=5,
                on_edge=lambda k, t: (seen_edges.append((k, t)), events.append(("edge", k))),
                on_phase=lambda i: events.append(("phase", i)))
    assert [k for k, _ in seen_edges] == [0, 1, 2, 3, 4]
    assert all(abs(t - 0.5 * k) < 0.15 for k, t in seen_edges)
    # a phase's setting comes before the sample at its first edge
    assert events[:2] == [("phase", 0), ("edge", 0)] and events[3:5] == [("phase", 1), ("edge", 2)]
    assert {r.phase for r in recs} == {0, 1}
    stopped = []
    recs = play(parse_phases("a:10:2"), FakeServer(delay_s=5.0), window_s=0.5, timeout_s=10,
                on_edge=lambda k, t: stopped.append(k), stop=lambda records, now: now > 0.9)
    assert stopped == [0, 1, 2]  # stopped at the edge after 0.9 s
    assert recs and all(r.outcome == "cancelled" for r in recs)


def test_client_side_admission_can_drop_a_request():
    async def refuse():
        return False, 10

    srv = FakeServer()
    recs = play(parse_phases("a:5:1"), srv, window_s=0.5, timeout_s=5, admit=refuse)
    assert recs and all(r.outcome == "rejected" and r.deferrals == 10 for r in recs) and srv.calls == 0


# -- agent config ---------------------------------------------------------------------------------
class FakeCg:
    def __init__(self, path):
        self.path = path

    def cpu_cgroup_path(self):
        return self.path


def agent_doc(fields=("ttft_p95_s", "itl_p95_s"), overrides=None):
    slo = {"ttft_p95_s": 4.0, "itl_p95_s": 0.15}
    return af.agent_config(server_cg=FakeCg("/b/server"), neighbour_cg=FakeCg("/b/neighbour"),
                           server_url="http://127.0.0.1:9000", slo={k: slo[k] for k in fields},
                           state_path=Path("/tmp/s.db"), metrics_port=9999, overrides=overrides or {})


def test_agent_config_declares_only_services_slo_and_floor(tmp_path):
    text = af.to_toml(agent_doc(), header="test")
    data = tomllib.loads(text)
    assert set(data) == {"agent", "service"}  # nothing tuned: default rules, default verification
    assert "rule_dirs" not in data["agent"] and data["agent"]["mode"] == "apply"
    llm, nb = data["service"]
    assert llm == {"name": "llm", "role": "latency-critical", "cgroup": "/b/server",
                   "slo": {"ttft_p95_s": 4.0, "itl_p95_s": 0.15},
                   "latency": {"metrics_url": "http://127.0.0.1:9000/metrics", "flavor": "auto"},
                   "threads": {"pool": "follows-quota"}}  # a fact about the reference server
    assert nb == {"name": "neighbour", "role": "neighbour", "cgroup": "/b/neighbour", "min_cpu_cores": 0.5}


def test_agent_validates_the_config_or_names_the_field(tmp_path):
    from autotune.config import load_config
    from autotune.errors import ConfigError

    path = tmp_path / "c.toml"
    path.write_text(af.to_toml(agent_doc()))
    cfg = load_config(path)
    assert cfg.service("llm").slo.ttft_p95_s == 4.0 and cfg.service("neighbour").min_cpu_cores == 0.5
    assert cfg.service("llm").slo.itl_p95_s == 0.15
    assert af.write_config(path, agent_doc(), header="test") is None  # the agent itself agrees
    bad = agent_doc(overrides={"service:llm": {"slo": {"itl_p95": 0.1}}})
    problem = af.write_config(path, bad, header="test")
    assert problem and "itl_p95" in problem  # the agent names the field
    with pytest.raises(ConfigError):
        load_config(path)


def test_agent_overrides_from_the_row_and_the_command_line():
    ov = co.merge_overrides({"verification": {"window_s": 15}, "service:llm": {"slo": {"ttft_p95_s": 2.0}}},
                            ["search.enabled=false", "verification.settle_s=4", "agent.sample_period_s=0.5"])
    doc = agent_doc(overrides=ov)
    assert doc["verification"] == {"window_s": 15, "settle_s": 4}
    assert doc["search"] == {"enabled": False} and doc["agent"]["sample_period_s"] == 0.5
    assert doc["service"][0]["slo"] == {"ttft_p95_s": 2.0, "itl_p95_s": 0.15}
    assert tomllib.loads(af.to_toml(doc))["verification"]["window_s"] == 15
    with pytest.raises(SystemExit, match="section.key=value"):
        co.merge_overrides({}, ["nodot=1"])


def test_rows_are_a_registry():
    assert co.DEFAULT_ROWS == ["contended", "static", "static+psi", "autotune", "autotune-learned", "oracle"]
    assert co.ROWS["autotune"].agent_overrides == {"search": {"enabled": False}}  # rules only
    assert co.ROWS["autotune-learned"].agent_overrides == {}  # the agent's defaults
    assert co.ROWS["static"].alloc == co.ROWS["autotune"].alloc == co.STATIC
    assert co.STATIC.quota_cores == 0.5 and co.STATIC.memory_max_bytes == 4 * 1024**3
    assert co.ROWS["contended"].alloc == Alloc() and co.ROWS["static+psi"].seed_psi
    assert co.ROWS["autotune"].controller is co.agent_controller and co.ROWS["oracle"].oracle


# -- server restarts, arguments, cache, estimate ----------------------------------------------------
def test_server_restarts_only_when_its_thread_setting_changes(tmp_path, monkeypatch):
    """--threads auto follows the quota while the server runs: a quota change is no restart."""
    from bench import common, engines

    starts = []

    def fake_start(cg, *, model, threads, max_concurrency, log_path, check_only=False):
        starts.append(threads)
        return common.spawn(["sleep", "60"], None, log_path), "http://127.0.0.1:1"

    async def no_load(spec, **kw):
        return []

    monkeypatch.setattr(engines, "run_load", no_load)
    eng = engines.Engine(name="fake", doc="", models=("m",), start=fake_start, static_threads=lambda n: "auto",
                         flavor="auto", slo={"m": Slo(ttft_p95_s=1, itl_p95_s=1)}, seed_slo_itl={"m": 0.1},
                         cost={"m": engines.GPT2.cost["tiny"]})
    srv = engines.Server(eng, None, model="m", max_concurrency=2, max_tokens=4, out=tmp_path)
    try:
        args = co.parse_args([])
        for alloc in (Alloc(quota_cores=0.5), Alloc(quota_cores=None), Alloc(quota_cores=1.5)):
            assert co.start(srv, alloc, args) == "http://127.0.0.1:1"
        assert starts == ["auto"]
        co.start(srv, Alloc(quota_cores=0.5, threads="1"), args)  # a fixed pool: a restart
        co.start(srv, Alloc(quota_cores=None, threads="1"), args)
        assert starts == ["auto", "1"] and srv.starts == 2
    finally:
        srv.stop()
    assert co.thread_groups(["auto", "1", "auto", "2"], current="1") == ["1", "auto", "2"]
    assert co.thread_groups(["auto"], current=None) == ["auto"]


def test_quick_arguments():
    from bench import engines

    a = co.parse_args(["--quick"])
    assert (a.model, a.window_s, a.max_tokens, a.grid_quotas, a.grid_ratios) == ("tiny", 2.5, 8, [0.5, None], [(1, 1)])
    assert a.schedule.name == "quick.yaml" and a.slo == engines.GPT2.slo["tiny"]
    assert a.seeds == [1, 2] and a.rows == co.QUICK_ROWS
    full = co.parse_args([])
    assert (full.window_s, full.transient_s, full.hold_s, full.grid_settle_s, full.grid_measure_s) == (10, 20, 30, 10, 60)
    assert (full.oracle_check_s, full.oracle_tries, full.grid_seed) == (60, 3, co.GRID_SEED)
    assert full.seeds == [1, 2, 3] and full.rows == co.DEFAULT_ROWS and full.server_threads == "auto"
    assert full.grid_quotas == [0.5, 1.0, 1.5, None] and full.grid_ratios == [(1, 4), (1, 1), (4, 1)]
    assert full.grid_threads == [] and len(co.grid_points(full)) == 12
    assert full.slo == Slo(ttft_p95_s=4.0, itl_p95_s=0.15) and full.noise_mem_mib == 0
    assert co.parse_args(["--repeats", "5"]).seeds == [1, 2, 3, 4, 5]
    assert co.parse_args(["--seeds", "7,9"]).seeds == [7, 9]
    with pytest.raises(SystemExit):
        co.parse_args(["--seeds", "1", "--repeats", "2"])
    with pytest.raises(SystemExit):
        co.parse_args(["--seeds", "1000"])  # the grid's own arrivals
    with pytest.raises(SystemExit):
        co.parse_args(["--seeds", "1,1"])
    dense = co.parse_args(["--dense"])
    assert (dense.model, dense.max_tokens, dense.schedule.name) == ("tiny", 8, "dense.yaml")
    assert dense.slo == engines.GPT2.dense.slo and dense.window_s == 10
    assert full.compare[0] == ("autotune-learned", "autotune") and ("autotune", "oracle") in full.compare
    assert co.parse_args(["--scenario", "cpu+mem"]).noise_mem_mib == 1024
    assert co.parse_args(["--slo-ttft", "2", "--slo-itl", "0.1"]).slo == Slo(ttft_p95_s=2, itl_p95_s=0.1)
    with pytest.raises(SystemExit):
        co.parse_args(["--rows", "static,nonsense"])


def test_cache_round_trip_and_refresh(tmp_path):
    key = {"kind": "oracle-point", "load": "0.4/s", "x": 1}
    c = co.Cache(tmp_path, refresh=set())
    assert c.get(key) is None and not c.has(key)
    c.put(key, {"point": 42})
    assert c.has(key) and c.get(key) == {"point": 42} and c.hits and c.misses
    assert co.Cache(tmp_path, refresh={"oracle-point"}).get(key) is None  # --oracle-refresh
    assert c.get({**key, "x": 2}) is None


def test_estimate_multiplies_seeds_rows_and_the_oracle_grid(tmp_path, capsys):
    def est(*argv):
        a = co.parse_args([*argv, "--cache-dir", str(tmp_path / "empty")])
        return co.estimate(a, co.schedule_from(a), co.Cache(a.cache_dir, set()))

    three, most3, parts = est()
    assert any("48 of 48 points" in p for p, _ in parts) and most3 > three
    one, _, _ = est("--seeds", "1")
    rows_only, _, _ = est("--seeds", "1", "--rows", "contended")
    # seeds x rows x the 300-s schedule, plus an alone baseline per seed: the third seed adds
    # six rows and its baseline, ~6 x 305 + 310 s
    assert 2 * (6 * 300 + 300) < three - one < 2 * (6 * 330 + 330)
    assert one - rows_only > 45 * 60 * co.EARLY_STOP_FACTOR  # the grid: 48 points x 73 s at most
    # a grid in the cache is not measured again
    a = co.parse_args(["--seeds", "1", "--cache-dir", str(tmp_path / "c")])
    s = co.schedule_from(a)
    c = co.Cache(a.cache_dir, set())
    for load, alloc in co.grid_todo(a, s):
        c.put(co.point_key(a, load, alloc, a.slo), {"point": {}})
    cached, _, parts = co.estimate(a, s, c)
    assert any("0 of 48 points" in p for p, _ in parts) and cached < one - 40 * 60
    assert co.main(["--estimate", "--cache-dir", str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    assert "oracle grid" in out and "calibration: bench/results/" in out and "3 seed(s) x 6 rows" in out


def test_summary_lines_and_table(tmp_path):
    s = parse_phases("a:1:20,b:2:20")
    args = co.parse_args(["--phases", "a:1:20,b:2:20", "--out", str(tmp_path)])
    from bench.coloc_metrics import phase_stats

    def row(ops):
        edges = [EdgeSample(k=k, t_s=10.0 * k, noise_ops_total=int(10 * k * ops), noise_elapsed_s=10.0 * k,
                            neighbour_cpu_s=5.0 * k) for k in range(5)]
        ws = aggregate_windows([], edges, s, 10.0, args.slo)
        st = phase_stats(ws, [], edges, s, window_s=10, transient_s=20, hold_s=30)
        for x in st:
            x.lc_perf = 1.0
        return ws, st, edges

    lines = report.summarize({"oracle": row(80.0), "autotune": row(60.0)}, s, args,
                             lc_ref={"1/s": 1.0, "2/s": 1.0}, be_ref=100.0, choices={})
    auto = [ln for ln in lines if ln["row"] == "autotune"]
    assert [ln["phase"] for ln in auto] == ["a", "b", "all"]
    assert auto[0]["emu"] == pytest.approx(1.6) and auto[0]["emu_vs_oracle"] == pytest.approx(1.6 / 1.8)
    assert auto[2]["emu_vs_oracle"] == pytest.approx(1.6 / 1.8) and auto[2]["neighbour_cores"] == pytest.approx(0.5)
    assert auto[0]["converged"] == "no" and auto[2]["converged"] == "0/2"  # 20-s phases cannot hold 30 s
    report.write_csv(tmp_path / "summary.csv", report.SUMMARY_COLUMNS, lines)
    header = (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    assert header == report.SUMMARY_COLUMNS
    md = report.markdown_table(lines, args.transient_s)
    assert md.count("\n") == len(lines) + 1 and "| **autotune** | all |" in md


def test_a_share_over_one_flags_a_stale_baseline():
    lines = [{"row": "static", "phase": "low", "lc_share": 1.0, "be_share": 2.4},
             {"row": "static", "phase": "all", "lc_share": None, "be_share": None}]
    (w,) = report.stale_baseline_warnings(lines)
    assert "static low: the neighbour did 2.40x" in w and "--alone-refresh" in w


def test_oracle_keeps_one_thread_setting_across_loads():
    """A fixed pool cannot change between phases: one setting for every load, the one valid in
    the most phases (then the highest EMU over them), not the first load's favourite."""
    from bench.coloc_metrics import LiveCheck, PointResult

    a = co.parse_args(["--phases", "low:1:20,high:2:20"])
    s = co.schedule_from(a)

    def pt(load, threads, ops):
        return PointResult(alloc=Alloc(quota_cores=1.0, threads=threads), load=load, windows=6, violating=0,
                           lc_perf=1.0, neighbour_ops_per_s=ops, neighbour_cores=0.8)

    grid = {"1/s": [pt("1/s", "1", 90), pt("1/s", "2", 50)], "2/s": [pt("2/s", "1", 40), pt("2/s", "2", 80)]}
    checked = []

    def live(load, alloc):
        checked.append((load.label(), alloc.threads))
        return LiveCheck(alloc=alloc, windows=6, violating=0, neighbour_cores=0.8, holds=True)

    got = co.plan_oracle(a, s, grid, {"1/s": 1.0, "2/s": 1.0}, 100.0, live)
    assert got["1/s"].alloc.threads == "1" and "fixes the server's --threads 1" in got["1/s"].reason
    assert got["2/s"].alloc.threads == "1"  # not the 2-thread point, better at 2/s on its own
    assert checked == [("1/s", "1"), ("2/s", "1")]
    # the reference server (threads follow the quota) has no such dimension
    grid = {"1/s": [pt("1/s", None, 90)], "2/s": [pt("2/s", None, 80)]}
    got = co.plan_oracle(a, s, grid, {"1/s": 1.0, "2/s": 1.0}, 100.0, live)
    assert got["2/s"].alloc.threads is None and "fixes" not in got["1/s"].reason
    # 2 threads win the first load, but hold nowhere else: the setting valid in every phase wins
    a = co.parse_args(["--phases", "low:1:20,high:2:20,low2:1:20"])
    s = co.schedule_from(a)
    bad = pt("2/s", "2", 90).model_copy(update={"violating": 2})
    grid = {"1/s": [pt("1/s", "1", 60), pt("1/s", "2", 95)], "2/s": [pt("2/s", "1", 40), bad]}
    checked.clear()
    got = co.plan_oracle(a, s, grid, {"1/s": 1.0, "2/s": 1.0}, 100.0, live)
    assert got["1/s"].alloc.threads == got["2/s"].alloc.threads == "1"
    assert "--threads 1: valid on the grid in 3/3 phase(s)" in got["1/s"].reason
    assert "--threads 2: valid on the grid in 2/3 phase(s)" in got["1/s"].reason
    assert checked == [("1/s", "1"), ("2/s", "1")]
