"""SLO fields and what each latency source can measure: the one capability table.

A target an operator writes under ``[service.slo]`` means something only when the service's
declared latency source (``[service.latency]``) can measure it. llama.cpp's metrics page has
counters and no histograms, so it gives a window mean time per token and no percentile; an
active probe samples one short streamed request at a time. A target the declared source
cannot measure does not count: the service is not SLO-controlled for it, ``slo.targets``
(autotune/detect/metrics.py) leaves it out and the PSI-driven rules stay on when none is left.
``config check``, ``status`` and the agent's log say which fields count, one line each.

Pure: no I/O. ``detected`` is the page flavor the scraper recognised (``LatencyReading.flavor``)
when the config says ``flavor = "auto"``; until the first scrape it is unknown and a declared
target is given the benefit of the doubt (counted, "decided at the first scrape").
"""

from __future__ import annotations

from typing import Any, NamedTuple


class SloField(NamedTuple):
    metric: str  # the latency metric compared with the target (``svc.<s>.`` + metric)
    ratio: str  # its ratio metric (latency / target)
    what: str  # for people


# config.SLO's fields, in the order slack is computed
FIELDS: dict[str, SloField] = {
    "p95_latency_s": SloField("latency.p95_s", "slo.p95_ratio", "end-to-end request latency p95"),
    "p99_latency_s": SloField("latency.p99_s", "slo.p99_ratio", "end-to-end request latency p99"),
    "ttft_p95_s": SloField("latency.ttft_p95_s", "slo.ttft_p95_ratio", "time to first token p95"),
    "itl_p95_s": SloField("latency.itl_p95_s", "slo.itl_p95_ratio", "inter-token latency p95"),
    "itl_mean_s": SloField("latency.itl_mean_s", "slo.itl_mean_ratio", "mean time per generated token"),
}


class Source(NamedTuple):
    label: str  # "a llama.cpp metrics page"
    measures: dict[str, str]  # SLO field -> the metric counting the observations behind it
    cannot: str  # why the other fields are out of its reach


_E2E = {"p95_latency_s": "latency.requests", "p99_latency_s": "latency.requests"}
_PROBE = "latency.probe.samples"

SOURCES: dict[str, Source] = {
    "vllm": Source("a vLLM metrics page", {**_E2E, "ttft_p95_s": "latency.ttft_samples",
                   "itl_p95_s": "latency.itl_samples", "itl_mean_s": "latency.itl_samples"}, ""),
    "autotune": Source("the autotune workload's metrics page (vLLM names)", {
        **_E2E, "ttft_p95_s": "latency.ttft_samples", "itl_p95_s": "latency.itl_samples",
        "itl_mean_s": "latency.itl_samples"}, ""),
    # TGI's per-token histogram holds one mean per request (its "inter-token latency")
    "tgi": Source("a TGI metrics page", {**_E2E, "itl_p95_s": "latency.itl_samples",
                  "itl_mean_s": "latency.itl_samples"}, "no time-to-first-token histogram"),
    # counters only: seconds and tokens of the requests that finished in the window
    "llamacpp": Source("a llama.cpp metrics page", {"itl_mean_s": "latency.tokens"}, "no histograms"),
    # one short streamed request every probe_interval_s: a sample of one request, not of every
    # request; its token gaps are the server's decode steps, which every running request shares
    "probe": Source("the active probe", {f: _PROBE for f in FIELDS}, ""),
}
PAGE_FLAVORS = ("vllm", "tgi", "llamacpp", "autotune")


class Assessment(NamedTuple):
    """One declared SLO field of one service, against its declared source."""

    service: str
    field: str
    target: float
    source: str | None  # the SOURCES key that measures it; None when none of the declared can
    counted: bool
    pending: bool  # flavor auto, not scraped yet: counted until the first scrape says
    line: str


def page_flavor(latency: Any, detected: str | None = None) -> str | None:
    """The page's flavor: declared, else the one detected (None: no page, or not scraped yet)."""
    if latency is None or not getattr(latency, "metrics_url", None):
        return None
    declared = getattr(latency, "flavor", "auto")
    return declared if declared != "auto" else detected


def declared_sources(latency: Any, detected: str | None = None) -> list[str]:
    """SOURCES keys of the service's declared latency source, the page first (it sees every
    request; the probe fills in what the page cannot give)."""
    out = []
    flavor = page_flavor(latency, detected)
    if flavor in SOURCES:
        out.append(flavor)
    if latency is not None and getattr(latency, "probe_url", None):
        out.append("probe")
    return out


def source_for(field: str, latency: Any, detected: str | None = None) -> str | None:
    """Which declared source measures ``field`` (the page before the probe); None: none."""
    return next((s for s in declared_sources(latency, detected) if field in SOURCES[s].measures), None)


def _alternatives(field: str, latency: Any, detected: str | None) -> str:
    """What would measure it: another field the declared source gives, or a probe."""
    srcs = declared_sources(latency, detected)
    fields = [f for f in FIELDS if f != field and any(f in SOURCES[s].measures for s in srcs)]
    # a sibling of the same kind first (itl_p95_s -> itl_mean_s)
    fields.sort(key=lambda f: (f.split("_")[0] != field.split("_")[0], list(FIELDS).index(f)))
    options = fields[:1]
    if "probe" not in srcs and field in SOURCES["probe"].measures:
        options.append("probe_url")
    return f"; {' or '.join(options)} can" if options else ""


def assess(service: Any, detected: str | None = None) -> list[Assessment]:
    """Each SLO field ``service`` (config ``Service``) declares, and whether it counts."""
    slo, latency = getattr(service, "slo", None), getattr(service, "latency", None)
    name = getattr(service, "name", "?")
    out = []
    for field in FIELDS:
        target = getattr(slo, field, None)
        if not target:
            continue
        what = FIELDS[field].what
        if latency is None or not (latency.metrics_url or latency.probe_url):
            out.append(Assessment(name, field, target, None, False, False,
                                  f"{name}: {field} ({what}) has no latency source to measure it: not "
                                  "counted; set [service.latency] metrics_url or probe_url"))
            continue
        src = source_for(field, latency, detected)
        unknown = latency.metrics_url and page_flavor(latency, detected) is None
        if src is not None:
            extra = (" (a sample of its own short requests, not of every request)" if src == "probe" else "")
            out.append(Assessment(name, field, target, src, True, False,
                                  f"{name}: {field} ({what}) measured from {SOURCES[src].label}{extra}: counted"))
        elif unknown:
            can = [f for f in PAGE_FLAVORS[:3] if field in SOURCES[f].measures]
            cannot = [f for f in PAGE_FLAVORS[:3] if f not in can]
            out.append(Assessment(name, field, target, None, True, True,
                                  f"{name}: {field} ({what}): counted until the first scrape tells the page's "
                                  f"flavor (flavor auto): {'/'.join(can)} pages can measure it"
                                  + (f", {'/'.join(cannot)} cannot" if cannot else "")))
        else:
            flavor = page_flavor(latency, detected)
            label = SOURCES[flavor].label if flavor in SOURCES else "the active probe"
            why = SOURCES[flavor].cannot if flavor in SOURCES else ""
            out.append(Assessment(name, field, target, None, False, False,
                                  f"{name}: {field} cannot be measured from {label}"
                                  f"{f' ({why})' if why else ''}: not counted"
                                  f"{_alternatives(field, latency, detected)}"))
    return out


def counted(service: Any, detected: str | None = None) -> list[str]:
    """The SLO fields of ``service`` that count (its declared source can measure them, or flavor
    auto before the first scrape): ``assess``'s verdicts without their lines, as every derivation
    of the SLO metrics asks."""
    slo, latency = getattr(service, "slo", None), getattr(service, "latency", None)
    if latency is None or not (latency.metrics_url or latency.probe_url):
        return []
    pending = bool(latency.metrics_url) and page_flavor(latency, detected) is None
    return [f for f in FIELDS if getattr(slo, f, None) and (pending or source_for(f, latency, detected))]


def observations_metric(field: str, latency: Any, detected: str | None = None) -> str | None:
    """The metric counting the observations behind ``field``'s figure (verification's "how
    much data"), from the source that measures it."""
    src = source_for(field, latency, detected)
    return SOURCES[src].measures[field] if src is not None else None
