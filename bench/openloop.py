"""Open-loop streaming load that follows a schedule of phases (the colocation benchmark's client).

A phase is either open-loop (``rate`` requests/s, Poisson arrivals) or closed-loop
(``concurrency`` clients, each sending its next request when the last one ended). In an
open-loop phase a request is sent at its arrival time whether or not earlier ones finished
(one asyncio task each, no client-side cap), so queueing in the server shows up as latency
instead of slowing the client down. Arrival times and prompts come from a fixed seed: every row
of a benchmark sees the same requests at the same offsets.

Every request streams, so the client sees each token chunk: TTFT = first token chunk minus the
request's *scheduled* arrival (client lateness and client-side admission deferrals included),
inter-token latency = gaps between consecutive token chunks. A request that has not finished
``timeout_s`` after its arrival is a failure (``timeout``). Times are seconds from the start of
the schedule (the event loop's monotonic clock).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import httpx
import numpy as np
import yaml
from pydantic import BaseModel, Field, model_validator

from autotune.workload.load import SEED_PROMPTS, AdmitHook

Outcome = Literal["ok", "timeout", "rejected", "error", "cancelled"]


class Phase(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]{1,32}$")
    duration_s: float = Field(gt=0)
    rate: float | None = Field(default=None, gt=0)  # requests/s, Poisson (open loop)
    concurrency: int | None = Field(default=None, ge=1)  # clients (closed loop)

    @model_validator(mode="after")
    def _one_kind(self) -> "Phase":
        if (self.rate is None) == (self.concurrency is None):
            raise ValueError(f"phase {self.name!r}: give exactly one of rate or concurrency")
        return self

    def label(self) -> str:
        return f"{self.rate:g}/s" if self.rate is not None else f"c={self.concurrency}"


class Schedule(BaseModel):
    phases: list[Phase] = Field(min_length=1)

    def starts(self) -> list[float]:
        out, t = [], 0.0
        for p in self.phases:
            out.append(t)
            t += p.duration_s
        return out

    @property
    def total_s(self) -> float:
        return sum(p.duration_s for p in self.phases)

    def phase_at(self, t: float) -> int:
        """Index of the phase running at ``t`` s (the last one for t >= total)."""
        for i, s in enumerate(self.starts()):
            if t < s + self.phases[i].duration_s:
                return i
        return len(self.phases) - 1

    def check_windows(self, window_s: float) -> None:
        """Phases must be whole windows, so that no window straddles a phase change."""
        for p in self.phases:
            n = p.duration_s / window_s
            if abs(n - round(n)) > 1e-6 or round(n) < 1:
                raise ValueError(f"phase {p.name!r}: {p.duration_s:g} s is not a whole number of "
                                 f"{window_s:g}-s windows")


def parse_phases(text: str) -> Schedule:
    """``"low:0.15:60,peak:c=8:60"`` -> Schedule: name:rate:duration_s, or name:c=N:duration_s."""
    phases = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        parts = item.split(":")
        if len(parts) != 3:
            raise ValueError(f"phase {item!r}: expected name:rate:duration_s or name:c=N:duration_s")
        name, load, dur = parts
        kind = {"concurrency": int(load[2:])} if load.startswith("c=") else {"rate": float(load)}
        phases.append(Phase(name=name, duration_s=float(dur), **kind))
    return Schedule(phases=phases)


def load_schedule(path: str | Path) -> Schedule:
    """A YAML file ``phases: [{name, duration_s, rate | concurrency}, ...]``."""
    data = yaml.safe_load(Path(path).read_text())
    return Schedule.model_validate(data)


# -- arrivals -------------------------------------------------------------------------------------
class Arrival(BaseModel):
    index: int
    phase: int  # index into the schedule
    t_s: float  # scheduled send time, s from schedule start


def poisson_arrivals(schedule: Schedule, seed: int) -> list[Arrival]:
    """Arrival times of every open-loop phase (exponential gaps at the phase's rate), fixed seed.

    Each phase draws from its own stream (seed, phase index), so changing one phase leaves the
    others' arrivals as they were.
    """
    out: list[Arrival] = []
    for i, (p, start) in enumerate(zip(schedule.phases, schedule.starts(), strict=True)):
        if p.rate is None:
            continue
        rng = np.random.default_rng([seed, i])
        t = 0.0
        while True:
            t += float(rng.exponential(1.0 / p.rate))
            if t >= p.duration_s:
                break
            out.append(Arrival(index=0, phase=i, t_s=start + t))
    for n, a in enumerate(out):
        a.index = n
    return out


def prompt_for(index: int) -> str:
    return SEED_PROMPTS[index % len(SEED_PROMPTS)]


# -- one request ----------------------------------------------------------------------------------
class RequestRecord(BaseModel):
    index: int
    phase: int
    arrival_s: float  # scheduled (open loop) or actual send time (closed loop)
    sent_s: float | None = None  # after client-side admission
    token_s: list[float] = []  # time each token chunk arrived
    finished_s: float | None = None
    outcome: Outcome = "error"
    deferrals: int = 0
    error: str = ""

    @property
    def ttft_s(self) -> float | None:
        return self.token_s[0] - self.arrival_s if self.token_s else None

    def itl_s(self) -> list[tuple[float, float]]:
        """(time the gap ended, gap) for consecutive token chunks."""
        t = self.token_s
        return [(t[k], t[k] - t[k - 1]) for k in range(1, len(t))]


async def stream_one(client: httpx.AsyncClient, rec: RequestRecord, *, clock: Callable[[], float],
                     max_tokens: int, seed: int, admit: AdmitHook | None) -> None:
    """Send one streaming completion and fill ``rec`` in place (the caller bounds the time)."""
    if admit is not None:
        admitted, rec.deferrals = await admit()
        if not admitted:
            rec.outcome, rec.finished_s = "rejected", clock()
            rec.error = f"dropped by client-side admission after {rec.deferrals} deferrals"
            return
    body = {"prompt": prompt_for(rec.index), "max_tokens": max_tokens, "temperature": 0.7,
            "stream": True, "seed": seed * 100003 + rec.index}
    rec.sent_s = clock()
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            rec.outcome, rec.finished_s = "error", clock()
            rec.error = f"HTTP {resp.status_code}: {resp.text[:200]}"
            return
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                rec.outcome, rec.finished_s = "error", clock()
                rec.error = str(chunk["error"])[:200]
                return
            if chunk["choices"][0].get("finish_reason") is None:
                rec.token_s.append(clock())
    rec.outcome, rec.finished_s = "ok", clock()


async def _bounded(client: httpx.AsyncClient, rec: RequestRecord, *, clock: Callable[[], float],
                   timeout_s: float, **kw) -> RequestRecord:
    """``stream_one`` with its deadline at arrival + timeout_s; failures become outcomes."""
    try:
        async with asyncio.timeout(max(0.0, rec.arrival_s + timeout_s - clock())):
            await stream_one(client, rec, clock=clock, **kw)
    except TimeoutError:
        rec.outcome, rec.finished_s, rec.error = "timeout", clock(), f"no end within {timeout_s:g} s"
    except asyncio.CancelledError:
        rec.outcome, rec.finished_s, rec.error = "cancelled", clock(), "cancelled by the harness"
        raise
    except (httpx.HTTPError, json.JSONDecodeError, KeyError, IndexError) as e:
        rec.outcome, rec.finished_s, rec.error = "error", clock(), f"{type(e).__name__}: {e}"[:200]
    return rec


# -- a schedule -----------------------------------------------------------------------------------
EdgeHook = Callable[[int, float], None]  # (window number, t) at every window edge, 0..n
PhaseHook = Callable[[int], None]  # phase index, at the start of each phase
# polled at window edges with the records so far and the time: True ends the run early
StopCheck = Callable[[list["RequestRecord"], float], bool]


async def run_schedule(url: str, schedule: Schedule, *, seed: int = 0, max_tokens: int = 50,
                       timeout_s: float = 60.0, window_s: float = 10.0,
                       admit: AdmitHook | None = None, on_edge: EdgeHook | None = None,
                       on_phase: PhaseHook | None = None, stop: StopCheck | None = None,
                       drain: bool = True,
                       transport: httpx.AsyncBaseTransport | None = None) -> list[RequestRecord]:
    """Play ``schedule`` against ``url``; every request's record, in index order.

    ``on_edge`` runs at t = 0, window_s, 2 window_s, ... total (the harness samples the
    neighbour and the cgroups there); ``on_phase`` at each phase start, before that edge's
    sample and the phase's first request (the oracle row sets its allocation there). Phases
    must be whole windows. With ``drain`` the run waits for
    requests still in flight after the last phase (each ends by its own timeout); otherwise,
    or when ``stop()`` turns true, they are cancelled (outcome ``cancelled``).
    """
    schedule.check_windows(window_s)
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    def clock() -> float:
        return loop.time() - t0

    async def sleep_until(t: float) -> None:
        await asyncio.sleep(max(0.0, t - clock()))

    records: list[RequestRecord] = []
    tasks: set[asyncio.Task] = set()  # requests in flight
    clients: list[asyncio.Task] = []  # closed-loop phases' client groups
    arrivals = poisson_arrivals(schedule, seed)
    next_index = len(arrivals)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
    kw = {"clock": clock, "timeout_s": timeout_s, "max_tokens": max_tokens, "seed": seed, "admit": admit}
    stopped = False

    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, transport=transport) as client:

        def launch(rec: RequestRecord) -> asyncio.Task:
            records.append(rec)
            task = asyncio.create_task(_bounded(client, rec, **kw))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return task

        async def open_phase(i: int) -> None:
            for a in (a for a in arrivals if a.phase == i):
                await sleep_until(a.t_s)
                launch(RequestRecord(index=a.index, phase=i, arrival_s=a.t_s))

        async def closed_phase(i: int, end: float) -> None:
            async def client_loop() -> None:
                nonlocal next_index
                while clock() < end:
                    rec = RequestRecord(index=next_index, phase=i, arrival_s=clock())
                    next_index += 1
                    await launch(rec)

            await asyncio.gather(*(client_loop() for _ in range(schedule.phases[i].concurrency or 1)))

        async def phases() -> None:
            for i, (p, start) in enumerate(zip(schedule.phases, schedule.starts(), strict=True)):
                await sleep_until(start)
                if p.rate is not None:
                    await open_phase(i)
                else:  # closed-loop clients stop sending at the phase end; in-flight ones finish
                    clients.append(asyncio.create_task(closed_phase(i, start + p.duration_s)))

        async def edges() -> None:
            nonlocal stopped
            n = round(schedule.total_s / window_s)
            first_k = {round(s / window_s): i for i, s in enumerate(schedule.starts())}
            for k in range(n + 1):
                await sleep_until(k * window_s)
                if on_phase and k in first_k:  # before the sample: a window reads its own phase's setting
                    on_phase(first_k[k])
                if on_edge:
                    on_edge(k, clock())
                if stop and k < n and stop(records, clock()):
                    stopped = True
                    return

        driver = asyncio.create_task(phases())
        await edges()
        driver.cancel()
        if drain and not stopped:
            while tasks:  # closed-loop clients may still add their last request
                await asyncio.gather(*list(tasks), return_exceptions=True)
        for t in [*clients, *tasks]:
            t.cancel()
        await asyncio.gather(*clients, *list(tasks), return_exceptions=True)
    return sorted(records, key=lambda r: r.index)


def percentile(values: list[float], q: float) -> float | None:
    """numpy's linear percentile, but +inf (a failed request's TTFT) stays +inf instead of nan."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    if math.isinf(v[hi]) or math.isinf(v[lo]):
        return math.inf
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)
