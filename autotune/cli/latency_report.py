"""Each service's latency source and the SLO fields it can measure, for `status` and `config check`.

The source is what the config declares (a metrics page with its flavor, an active probe, or
both); its last reading is the running agent's (the newest sample in the state DB), else one
scrape of the page made here (never a probe: status does not put load on the server). Which SLO
fields count comes from autotune/slo.py, one line each.
"""

from __future__ import annotations

import time
from typing import Any

from autotune import slo

STALE_S = 300.0  # an agent reading older than this is shown with its age, not as current


def _stored(cfg) -> tuple[float | None, dict[str, Any]]:
    """(ts, {service: LatencyReading}) of the newest stored sample; nothing without a state DB."""
    path = cfg.state_path()
    if not path.exists():
        return None, {}
    try:
        from autotune.store.db import open_db
        from autotune.store.samples import SampleStore

        snap = SampleStore(open_db(path, read_only=True)).latest()
    except Exception:  # noqa: BLE001 - status must print; the agent part is simply absent
        return None, {}
    if snap is None:
        return None, {}
    return snap.ts, {n: s.latency for n, s in snap.services.items() if s.latency is not None}


def _scrape_once(svc) -> Any:
    from autotune.sensors.latency import LatencyScraper

    s = LatencyScraper(svc.latency.metrics_url, svc.latency.flavor, svc.latency.timeout_s)
    try:
        return s.sample()
    finally:
        s.close()


def describe_source(latency) -> str:
    """'llama.cpp metrics page URL (flavor auto) + probe URL (4-token ... every 10 s)'."""
    if latency is None or not (latency.metrics_url or latency.probe_url):
        return "none declared"
    parts = []
    if latency.metrics_url:
        parts.append(f"metrics page {latency.metrics_url} (flavor {latency.flavor})")
    if latency.probe_url:
        parts.append(f"probe {latency.probe_url} ({latency.probe_max_tokens}-token streamed completion every "
                     f"{latency.probe_interval_s:g} s)")
    return " + ".join(parts)


def latency_report(cfg, *, scrape: bool = True) -> dict[str, dict[str, Any]]:
    """Per service that declares a latency source or an SLO: the source, its last reading and
    the SLO fields it can and cannot measure (``scrape``: read the page once when no agent has)."""
    ts, stored = _stored(cfg)
    out: dict[str, dict[str, Any]] = {}
    for svc in cfg.services:
        lat = svc.latency
        if lat is None and not any(svc.slo.model_dump().values()):
            continue
        reading, origin = stored.get(svc.name), "agent"
        if reading is None and scrape and lat is not None and lat.metrics_url:
            reading, origin = _scrape_once(svc), "status (one scrape)"
        last = None
        if reading is not None:
            age = None if origin != "agent" or ts is None else max(0.0, time.time() - ts)
            last = {"from": origin, "age_s": age, "ok": reading.ok, "error": reading.error,
                    "source": reading.source}
        detected = reading.flavor if reading is not None else None
        out[svc.name] = {
            "source": describe_source(lat),
            "metrics_url": lat.metrics_url if lat else None,
            "flavor": lat.flavor if lat else None,
            "page_flavor": detected,  # declared, or detected by the last reading
            "probe_url": lat.probe_url if lat else None,
            "last_reading": last,
            "slo": [a._asdict() for a in slo.assess(svc, detected)],
        }
    return out


def report_lines(report: dict[str, dict[str, Any]]) -> list[str]:
    """Human lines: one for each service's source and last reading, one per SLO field."""
    lines = []
    for name, e in report.items():
        last = e["last_reading"]
        if last is None:
            state = "no reading yet" + (" (status does not probe)" if e["probe_url"] else "")
        else:
            when = f", {last['age_s']:.0f} s ago" if last["age_s"] is not None else ""
            stale = " (agent not sampling?)" if (last["age_s"] or 0.0) > STALE_S else ""
            state = (f"last reading ok ({last['from']}{when}){stale}" if last["ok"] and not last["error"] else
                     f"last reading ok, partly: {last['error']} ({last['from']}{when})" if last["ok"] else
                     f"last reading failed: {last['error']} ({last['from']}{when}){stale}")
        flavor = f"; detected {e['page_flavor']}" if e["page_flavor"] and e["flavor"] == "auto" else ""
        lines.append(f"latency source of {name}: {e['source']}{flavor}; {state}")
        lines.extend(a["line"] for a in e["slo"])
    return lines
