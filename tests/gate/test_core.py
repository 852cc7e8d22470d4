"""Gate as a library (no HTTP) and its pressure source."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from autotune.errors import ConfigError
from autotune.gate.core import Gate, GateRejected, GateSettings
from autotune.gate.pressure import PressureSource, pressure_path
from autotune.host import Host
from autotune.sensors.psi import parse_psi

PSI = "some avg10={:.2f} avg60=1.00 avg300=1.00 total=1\n"


def gate(**kw) -> Gate:
    kw.setdefault("adaptive", False)
    kw.setdefault("threshold_pct", None)
    pressure = kw.pop("pressure", None)
    return Gate(GateSettings(**kw), pressure, poll_interval_s=0.02)


def test_admit_limits_concurrency_in_process():
    g = gate(limit=2, max_queue=10)
    running = 0
    peak = 0

    async def work():
        nonlocal running, peak
        async with g.admit():
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            running -= 1

    async def main():
        await asyncio.gather(*(work() for _ in range(7)))

    asyncio.run(main())
    assert peak == 2
    st = g.status()
    assert st.admitted == 7 and st.deferred == 5 and st.inflight == 0 and st.queue_length == 0


def test_queue_full_and_timeout_raise_gate_rejected():
    g = gate(limit=1, max_queue=1, queue_timeout_s=0.05, retry_after_s=2)

    async def main():
        t = await g.acquire()
        waiter = asyncio.ensure_future(g.acquire())
        await asyncio.sleep(0)
        with pytest.raises(GateRejected) as full:
            await g.acquire()
        assert full.value.reason == "queue_full" and full.value.retry_after_s == 2
        with pytest.raises(GateRejected) as late:
            await waiter
        assert late.value.reason == "timeout"
        t.release()
        t.release()  # idempotent
        assert g.inflight == 0

    asyncio.run(main())
    assert g.status().rejected == 2


def test_cancelled_waiter_leaves_no_slot_behind():
    g = gate(limit=1, max_queue=4, queue_timeout_s=5)

    async def main():
        t = await g.acquire()
        waiter = asyncio.ensure_future(g.acquire())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        t.release()
        assert g.inflight == 0 and g.status().queue_length == 0
        t2 = await asyncio.wait_for(g.acquire(), 1)  # next one admitted at once
        t2.release()

    asyncio.run(main())


def test_pressure_hold_in_process(tmp_path):
    f = tmp_path / "proc/pressure/cpu"
    f.parent.mkdir(parents=True)
    f.write_text(PSI.format(70))
    src = PressureSource(Host(tmp_path), min_interval_s=0.0)
    g = gate(limit=4, threshold_pct=50, pressure=src, queue_timeout_s=5, min_inflight=0)

    async def main():
        waiter = asyncio.ensure_future(g.acquire())
        await asyncio.sleep(0.1)
        assert not waiter.done() and g.status().queue_length == 1
        f.write_text(PSI.format(49.99))
        t = await asyncio.wait_for(waiter, 1)
        t.release()

    asyncio.run(main())
    assert g.status().deferred == 1


class FixedPressure:
    """A pressure source stuck at one value (percent): no files, no clock."""

    path, error = "fixed", None

    def __init__(self, pct: float | None) -> None:
        self.pct = pct

    def read(self) -> float | None:
        return self.pct


@pytest.mark.parametrize("floor", [0, 1, 2])
def test_min_inflight_floor_admits_despite_pressure(floor):
    """Pressure above the threshold holds nothing until ``min_inflight`` of ours are in flight:
    otherwise a neighbour's pressure alone would starve the service forever."""
    g = gate(limit=4, threshold_pct=50, pressure=FixedPressure(95.0), queue_timeout_s=5, min_inflight=floor)

    async def main():
        tickets = [await asyncio.wait_for(g.acquire(), 1) for _ in range(floor)]  # never held
        assert g.deferred == 0 and g.inflight == floor
        held = asyncio.ensure_future(g.acquire())
        await asyncio.sleep(0.05)  # several poll intervals: still blocked by pressure
        assert not held.done() and g.status().queue_length == 1
        if floor:
            tickets.pop().release()  # back under the floor -> the waiter goes in
            tickets.append(await asyncio.wait_for(held, 1))
        else:
            held.cancel()
        for t in tickets:
            t.release()

    asyncio.run(main())
    assert g.inflight == 0 and g.status().deferred == 1


def test_min_inflight_never_overrides_the_limit():
    g = gate(limit=1, threshold_pct=50, pressure=FixedPressure(95.0), min_inflight=3)
    assert g._blocked_by() is None
    g.inflight = 1
    assert g._blocked_by() == "limit"
    g.settings.limit = 4
    assert g._blocked_by() is None  # 1 < floor 3: pressure ignored
    g.inflight = 3
    assert g._blocked_by() == "pressure"
    g.configure(min_inflight=0)
    assert g.status().min_inflight == 0
    with pytest.raises(ValueError):
        g.configure(min_inflight=-1)


def test_configure_is_atomic_and_validated():
    g = gate(limit=3)
    with pytest.raises(ValueError):
        g.configure(limit=5, max_limit=4)
    assert g.settings.limit == 3 and g.settings.limiter.max_limit == 64
    st = g.configure(threshold_pct=None, limit=8, max_queue=2)
    assert st.threshold_pct is None and st.limit == 8 and st.max_queue == 2
    st = g.configure(max_limit=5)  # lowering the bound clamps the current limit
    assert st.limit == 5


# -- pressure source ----------------------------------------------------------------------------
def _source(tmp_path, text: str) -> PressureSource:
    f = tmp_path / "proc/pressure/cpu"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(text)
    return PressureSource(Host(tmp_path), min_interval_s=0)


def test_pressure_reading_is_the_sensors_parse_of_the_same_file(tmp_path):
    text = "some avg10=12.34 avg60=0.50 avg300=0.10 total=9\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=0\n"
    assert _source(tmp_path, text).read() == parse_psi(text, "cpu").some.avg10_pct == 12.34


def test_unparsable_pressure_file_is_unknown_with_a_reason(tmp_path):
    for text, why in (("garbage\n", "expected 'some' or 'full'"),
                      ("some avg10=abc avg60=0 avg300=0 total=0\n", "non-numeric"),
                      ("some avg10=1\n", "missing avg60, avg300, total"),
                      ("full avg10=1.00 avg60=0.00 avg300=0.00 total=0\n", "no 'some' line")):
        src = _source(tmp_path, text)
        assert src.read() is None, text
        assert "/proc/pressure/cpu" in src.error and why in src.error, src.error


def test_pressure_source_caches_for_min_interval(tmp_path):
    f = tmp_path / "proc/pressure/cpu"
    f.parent.mkdir(parents=True)
    f.write_text(PSI.format(10))
    now = [0.0]
    src = PressureSource(Host(tmp_path), min_interval_s=0.5, clock=lambda: now[0])
    assert src.read() == 10
    f.write_text(PSI.format(90))
    now[0] = 0.4
    assert src.read() == 10  # cached
    now[0] = 0.6
    assert src.read() == 90
    f.write_text("junk")
    now[0] = 2.0
    assert src.read() is None and "expected 'some' or 'full'" in src.error


def test_cgroup_pressure_path_on_hybrid_and_v1_hosts(tmp_path):
    hybrid = tmp_path / "h"
    (hybrid / "sys/fs/cgroup/unified").mkdir(parents=True)
    (hybrid / "sys/fs/cgroup/unified/cgroup.procs").write_text("")
    assert pressure_path(Host(hybrid), "cgroup:/autotune/llm") == "/sys/fs/cgroup/unified/autotune/llm/cpu.pressure"
    v1only = tmp_path / "v1"
    (v1only / "sys/fs/cgroup/cpu").mkdir(parents=True)
    (v1only / "sys/fs/cgroup/cpu/cgroup.procs").write_text("")
    with pytest.raises(ConfigError, match="no cgroup v2 tree"):
        pressure_path(Host(v1only), "cgroup:/x")
    with pytest.raises(ConfigError):
        pressure_path(Host(v1only), "bogus")


@pytest.mark.realkernel
def test_real_cgroup_cpu_pressure_is_readable():
    host = Host("/")
    mount = host.cgroup.v2_mount
    if os.geteuid() != 0 or not mount or not host.exists(f"{mount}/cpu.pressure"):
        pytest.skip("needs root and a cgroup v2 tree with PSI files")
    name = f"autotune-gate-test-{uuid.uuid4().hex[:8]}"
    local = host.path(f"{mount}/{name}")
    local.mkdir()
    try:
        src = PressureSource(host, f"cgroup:/{name}")
        value = src.read()
        assert value is not None and 0 <= value <= 100, src.error
    finally:
        local.rmdir()
