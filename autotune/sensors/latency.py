"""Inference latency from a server's Prometheus page (vLLM, TGI, llama.cpp, ours) or a probe.

Histograms are cumulative since the server started, so one scrape says nothing about *now*:
``LatencyScraper`` keeps the previous scrape and turns the bucket deltas into windowed
p50/p95/p99 by linear interpolation inside buckets, as Prometheus' ``histogram_quantile`` does.
Each figure comes with the number of observations behind it in the window (``*_samples``) and
the tokens generated, so callers can tell a dense window from three lucky requests. All
latencies are seconds.

What each flavor gives (``FLAVORS`` is the one table of names; where a server renamed a metric
the current name is listed first and read first, the older one is the fallback):
- vLLM (and our workload server, which exports both names): e2e, TTFT and inter-token latency
  histograms (``vllm:inter_token_latency_seconds``, before that
  ``vllm:time_per_output_token_seconds``), running / waiting gauges, a request counter and a
  generated-token counter.
- TGI: e2e (``tgi_request_duration``) and per-request mean time per token
  (``tgi_request_mean_time_per_token_duration``, one observation per request, TGI's "inter-token
  latency") histograms, generated tokens per request (``tgi_request_generated_tokens``, whose
  sum counts tokens), batch size / queue gauges and a success counter; no TTFT histogram.
- llama.cpp server (``--metrics``): no latency histograms at all, so no percentiles; only the
  window mean time per generated token (delta of ``tokens_predicted_seconds_total`` over delta
  of ``tokens_predicted_total``), the token count, and the processing / deferred gauges.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Literal

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict

from autotune.histogram import from_cumulative, quantile
from autotune.types import Buckets, LatencyReading

Flavor = Literal["vllm", "tgi", "llamacpp"]


class FlavorMetrics(BaseModel):
    """Metric names of one server flavor. Histograms by base name; counters without _total.

    Tuples list a metric's names newest first: the first one present on a page is read.
    """

    model_config = ConfigDict(frozen=True)

    prefix: str  # how auto-detection recognises the flavor
    e2e_hist: tuple[str, ...] = ()
    ttft_hist: tuple[str, ...] = ()
    itl_hist: tuple[str, ...] = ()  # inter-token latency (per gap, or per-request mean for TGI)
    running: str | None = None
    waiting: str | None = None
    requests: str | None = None  # completed requests counter
    tokens: str | None = None  # generated tokens counter
    tokens_hist: str | None = None  # generated tokens per request histogram (its sum counts)
    tokens_seconds: str | None = None  # seconds spent generating ``tokens`` (llama.cpp)


FLAVORS: dict[str, FlavorMetrics] = {
    "vllm": FlavorMetrics(
        prefix="vllm:",
        e2e_hist=("vllm:e2e_request_latency_seconds",),
        ttft_hist=("vllm:time_to_first_token_seconds",),
        itl_hist=("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        running="vllm:num_requests_running",
        waiting="vllm:num_requests_waiting",
        requests="vllm:request_success",
        tokens="vllm:generation_tokens",
    ),
    "tgi": FlavorMetrics(
        prefix="tgi_",
        e2e_hist=("tgi_request_duration",),
        itl_hist=("tgi_request_mean_time_per_token_duration",),
        running="tgi_batch_current_size",
        waiting="tgi_queue_size",
        requests="tgi_request_success",
        tokens_hist="tgi_request_generated_tokens",
    ),
    "llamacpp": FlavorMetrics(
        prefix="llamacpp:",
        running="llamacpp:requests_processing",
        waiting="llamacpp:requests_deferred",
        tokens="llamacpp:tokens_predicted",
        tokens_seconds="llamacpp:tokens_predicted_seconds",
    ),
}


# -- parsing ------------------------------------------------------------------------------------
class Histogram(BaseModel):
    """Cumulative bucket counts summed over label sets: sorted (le, count), last le = +Inf."""

    model_config = ConfigDict(frozen=True)

    buckets: tuple[tuple[float, float], ...]
    sum: float = 0.0
    count: float = 0.0


class Page(BaseModel):
    """The parts of one scrape that latency needs: samples by name, labels summed away."""

    model_config = ConfigDict(frozen=True)

    scalars: dict[str, float] = {}  # sample name -> value summed over labels
    histograms: dict[str, Histogram] = {}

    def scalar(self, name: str | None) -> float | None:
        if name is None:
            return None
        for candidate in (name, name + "_total"):
            if candidate in self.scalars:
                return self.scalars[candidate]
        return None


def parse_page(text: str) -> Page:
    """Parse Prometheus text exposition. ValueError names the problem for garbage pages."""
    if not text.strip():
        raise ValueError("empty metrics page")
    head = text.lstrip()[:200].lower()
    if head.startswith("<") or "<html" in head:
        raise ValueError("got an HTML page, not Prometheus text (wrong URL? try .../metrics)")
    scalars: dict[str, float] = defaultdict(float)
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if not math.isfinite(s.value):
                    continue  # NaN/+-Inf (legal in the format): no reading, never a figure
                if s.name.endswith("_bucket") and "le" in s.labels:
                    base = s.name[: -len("_bucket")]
                    buckets[base][float(s.labels["le"])] += s.value
                elif s.name.endswith("_sum") and family.type == "histogram":
                    sums[s.name[:-4]] += s.value
                elif s.name.endswith("_count") and family.type == "histogram":
                    counts[s.name[:-6]] += s.value
                else:
                    scalars[s.name] += s.value
    except ValueError as err:
        raise ValueError(f"not a valid Prometheus text page: {err}") from err
    hists = {}
    for base, by_le in buckets.items():
        hists[base] = Histogram(
            buckets=tuple(sorted(by_le.items())), sum=sums.get(base, 0.0), count=counts.get(base, 0.0)
        )
    return Page(scalars=dict(scalars), histograms=hists)


def detect_flavor(page: Page) -> Flavor | None:
    names = list(page.scalars) + list(page.histograms)
    for flavor, spec in FLAVORS.items():
        if any(n.startswith(spec.prefix) for n in names):
            return flavor  # type: ignore[return-value]
    return None


# -- histogram arithmetic -----------------------------------------------------------------------
def histogram_delta(prev: Histogram | None, cur: Histogram) -> Histogram:
    """Observations between two scrapes. A counter reset (any bucket fell, the count fell, or the
    bucket layout changed: the server restarted) makes the current histogram the whole window."""
    if prev is None:
        return cur
    if [le for le, _ in prev.buckets] != [le for le, _ in cur.buckets]:
        return cur
    if cur.count < prev.count or any(c < p for (_, c), (_, p) in zip(cur.buckets, prev.buckets)):
        return cur
    return Histogram(
        buckets=tuple((le, c - p) for (le, c), (_, p) in zip(cur.buckets, prev.buckets)),
        sum=cur.sum - prev.sum,
        count=cur.count - prev.count,
    )


def histogram_quantile(q: float, hist: Histogram) -> float | None:
    """Prometheus ``histogram_quantile`` on cumulative buckets (autotune/histogram.py's rule);
    None for an empty window or a histogram without a +Inf bucket."""
    return quantile(q, to_buckets(hist))


def to_buckets(hist: Histogram | None) -> Buckets | None:
    """A (delta) histogram as per-bucket counts, the form snapshots keep."""
    return None if hist is None else from_cumulative(hist.buckets, hist.sum)


# -- windowed result ----------------------------------------------------------------------------
class LatencyWindow(BaseModel):
    """Everything one window yields (``LatencyReading`` carries the same figures)."""

    model_config = ConfigDict(frozen=True)

    flavor: str
    window_s: float | None = None
    p50_s: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    ttft_samples: float | None = None  # first tokens observed in the window
    itl_p50_s: float | None = None
    itl_p95_s: float | None = None
    itl_mean_s: float | None = None  # mean seconds per generated token in the window
    itl_samples: float | None = None  # observations behind the itl quantiles
    itl_metric: str | None = None  # which name the itl figures came from
    tokens: float | None = None  # tokens generated in the window
    requests: float | None = None
    running: float | None = None
    waiting: float | None = None
    unavailable: tuple[str, ...] = ()  # figures this flavor cannot provide
    hist: dict[str, Buckets] = {}  # the window's histograms by kind: e2e, ttft, itl


def _counter_delta(prev: float | None, cur: float | None) -> float | None:
    if cur is None:
        return None
    if prev is None:
        return None
    return cur if cur < prev else cur - prev  # reset: the counter restarted from zero


def _first_present(names: tuple[str, ...], page: Page) -> str | None:
    return next((n for n in names if n in page.histograms), None)


def compute_window(flavor: Flavor, prev: Page | None, cur: Page, *, window_s: float | None = None) -> LatencyWindow:
    """Pure: windowed figures between two parsed pages (prev None = first scrape, no window)."""
    spec = FLAVORS[flavor]

    def delta(names: tuple[str, ...]) -> tuple[str | None, Histogram | None]:
        name = _first_present(names, cur)
        if name is None or prev is None:
            return name, None
        return name, histogram_delta(prev.histograms.get(name), cur.histograms[name])

    def quantiles(d: Histogram | None, qs: tuple[float, ...]) -> tuple[float | None, ...]:
        return tuple(None if d is None else histogram_quantile(q, d) for q in qs)

    _, e2e = delta(spec.e2e_hist)
    _, ttft = delta(spec.ttft_hist)
    itl_name, itl = delta(spec.itl_hist)
    p50, p95, p99 = quantiles(e2e, (0.5, 0.95, 0.99))
    t50, t95 = quantiles(ttft, (0.5, 0.95))
    k50, k95 = quantiles(itl, (0.5, 0.95))
    itl_mean = None
    tokens = None
    if prev is not None:
        if spec.tokens:
            tokens = _counter_delta(prev.scalar(spec.tokens), cur.scalar(spec.tokens))
        elif spec.tokens_hist and spec.tokens_hist in cur.histograms:
            tokens = histogram_delta(prev.histograms.get(spec.tokens_hist), cur.histograms[spec.tokens_hist]).sum
        if spec.tokens_seconds:
            dsec = _counter_delta(prev.scalar(spec.tokens_seconds), cur.scalar(spec.tokens_seconds))
            if tokens and dsec is not None:
                itl_mean = dsec / tokens
        elif itl is not None and itl.count > 0:
            itl_mean = itl.sum / itl.count
    requests = None
    if prev is not None:
        requests = _counter_delta(prev.scalar(spec.requests), cur.scalar(spec.requests))
        if requests is None and e2e is not None:
            requests = e2e.count
    unavailable = tuple(
        label for label, names in (("e2e percentiles", spec.e2e_hist), ("ttft percentiles", spec.ttft_hist),
                                   ("per-token percentiles", spec.itl_hist))
        if not names
    ) + (("request count",) if spec.requests is None else ())
    hist = {kind: b for kind, h in (("e2e", e2e), ("ttft", ttft), ("itl", itl))
            if (b := to_buckets(h)) is not None}
    return LatencyWindow(
        hist=hist, flavor=flavor, window_s=window_s, p50_s=p50, p95_s=p95, p99_s=p99, ttft_p50_s=t50, ttft_p95_s=t95,
        ttft_samples=None if ttft is None else ttft.count, itl_p50_s=k50, itl_p95_s=k95, itl_mean_s=itl_mean,
        itl_samples=None if itl is None else itl.count, itl_metric=itl_name, tokens=tokens, requests=requests,
        running=cur.scalar(spec.running), waiting=cur.scalar(spec.waiting), unavailable=unavailable,
    )


def _missing_required(flavor: Flavor, page: Page) -> list[str]:
    spec = FLAVORS[flavor]
    if spec.e2e_hist:
        return [] if _first_present(spec.e2e_hist, page) else [spec.e2e_hist[0]]
    needed = [n for n in (spec.tokens, spec.tokens_seconds) if n]
    return [n for n in needed if page.scalar(n) is None]


# -- the scraper --------------------------------------------------------------------------------
class LatencyScraper:
    """Scrape a metrics URL; each ``sample(now)`` reports the window since the previous one.

    Never raises out of ``sample``: connection errors, garbage pages and missing metrics give
    ``LatencyReading(ok=False, error=...)``. The first good scrape has no window (quantiles None).
    """

    def __init__(self, url: str, flavor: Flavor | Literal["auto"] = "auto", timeout: float = 2.0,
                 *, client: httpx.Client | None = None) -> None:
        if flavor != "auto" and flavor not in FLAVORS:
            raise ValueError(f"unknown metrics flavor {flavor!r}; use auto, {', '.join(FLAVORS)}")
        self.url = url
        self.flavor = flavor
        self.timeout = timeout
        self._client = client
        self._own = client is None  # ours to close
        self._prev: tuple[float, Page] | None = None
        self.last_window: LatencyWindow | None = None

    def _fetch(self) -> str:
        # One client for the scraper's life: a new httpx.Client per scrape builds an SSL context
        # and a connection each time, which was half the agent's CPU at a 0.2-s sample period.
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout)
        resp = self._client.get(self.url, timeout=self.timeout)
        resp.raise_for_status()
        return resp.text

    def close(self) -> None:
        """Close the connection (the agent calls it on stop)."""
        if self._own and self._client is not None:
            self._client.close()
            self._client = None

    def _fail(self, msg: str) -> LatencyReading:
        self.last_window = None
        return LatencyReading(source=self.url, ok=False, error=msg)

    def sample(self, now: float | None = None) -> LatencyReading:
        now = time.time() if now is None else now
        try:
            text = self._fetch()
        except httpx.HTTPStatusError as err:
            return self._fail(f"{self.url}: HTTP {err.response.status_code}")
        except httpx.HTTPError as err:
            return self._fail(f"{self.url}: cannot scrape ({type(err).__name__}: {err or 'no detail'})")
        try:
            page = parse_page(text)
        except ValueError as err:
            return self._fail(f"{self.url}: {err}")
        flavor = self.flavor if self.flavor != "auto" else detect_flavor(page)
        if flavor is None:
            return self._fail(f"{self.url}: no vLLM/TGI/llama.cpp metrics on the page "
                              f"(prefixes {', '.join(s.prefix for s in FLAVORS.values())})")
        missing = _missing_required(flavor, page)
        if missing:
            return self._fail(f"{self.url}: {flavor} page lacks {', '.join(missing)}")
        prev = self._prev
        window_s = None if prev is None else now - prev[0]
        win = compute_window(flavor, None if prev is None else prev[1], page, window_s=window_s)
        self._prev = (now, page)
        self.last_window = win
        return LatencyReading(
            source=f"{flavor}:{self.url}", ok=True, p50_s=win.p50_s, p95_s=win.p95_s, p99_s=win.p99_s,
            ttft_p95_s=win.ttft_p95_s, ttft_samples=win.ttft_samples, itl_p50_s=win.itl_p50_s,
            itl_p95_s=win.itl_p95_s, itl_mean_s=win.itl_mean_s, itl_samples=win.itl_samples,
            tokens=win.tokens, requests=win.requests, running=win.running, waiting=win.waiting,
            hist=win.hist,
        )


class ActiveProbe:
    """Send a tiny completion (max_tokens 1..4) every ``interval_s`` and report its latency.

    For servers without a metrics page. ``sample(now)`` probes when the interval has passed and
    otherwise returns the last reading. p50 = p95 = p99 = the probe's own latency (one request).
    """

    def __init__(self, base_url: str, interval_s: float = 10.0, *, model: str | None = None,
                 max_tokens: int = 1, timeout: float = 30.0, client: httpx.Client | None = None,
                 clock=time.monotonic) -> None:
        if not 1 <= max_tokens <= 4:
            raise ValueError(f"probe max_tokens must be 1..4 (keep the probe tiny), got {max_tokens}")
        self.base_url = base_url.rstrip("/")
        self.interval_s = interval_s
        self.model = model
        self.max_tokens = max_tokens
        self.timeout = timeout
        self._client = client or httpx.Client(timeout=timeout)
        self._clock = clock
        self._last: tuple[float, LatencyReading] | None = None

    def _model(self) -> str:
        if self.model is None:
            resp = self._client.get(f"{self.base_url}/v1/models", timeout=self.timeout)
            resp.raise_for_status()
            data = resp.json().get("data") or []
            self.model = data[0]["id"] if data else "default"
        return self.model

    def probe(self) -> LatencyReading:
        source = f"probe:{self.base_url}"
        try:
            body = {"model": self._model(), "prompt": "Hi", "max_tokens": self.max_tokens, "temperature": 0}
            t0 = self._clock()
            resp = self._client.post(f"{self.base_url}/v1/completions", json=body, timeout=self.timeout)
            elapsed = self._clock() - t0
            resp.raise_for_status()
        except httpx.HTTPStatusError as err:
            return LatencyReading(source=source, ok=False, error=f"{source}: HTTP {err.response.status_code}")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as err:
            return LatencyReading(source=source, ok=False, error=f"{source}: probe failed ({type(err).__name__}: {err})")
        return LatencyReading(source=source, ok=True, p50_s=elapsed, p95_s=elapsed, p99_s=elapsed, requests=1)

    def sample(self, now: float | None = None) -> LatencyReading:
        now = self._clock() if now is None else now
        if self._last is not None and now - self._last[0] < self.interval_s:
            return self._last[1]
        reading = self.probe()
        self._last = (now, reading)
        return reading

    def close(self) -> None:
        self._client.close()


class BackgroundProbe:
    """An ``ActiveProbe`` on its own daemon thread: a slow or hung server never stalls sampling.

    ``sample()`` returns the latest finished probe; the same reading object is returned until the
    next probe finishes, and verification counts a repeated reading once.
    """

    def __init__(self, probe: ActiveProbe) -> None:
        import threading

        self.probe = probe
        self._latest = LatencyReading(source=f"probe:{probe.base_url}", ok=False, error="no probe finished yet")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"probe {probe.base_url}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self._latest = self.probe.probe()
            self._stop.wait(max(0.0, self.probe.interval_s - (time.monotonic() - t0)))

    def sample(self, now: float | None = None) -> LatencyReading:
        return self._latest

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.probe.timeout + 1)
        self.probe.close()


def scrapers_for(services) -> dict[str, LatencyScraper | BackgroundProbe]:
    """One latency source per configured service (config ``Service``) that declares one: its
    metrics page when it has one, else an active probe on its own thread, so a slow answer
    (the very thing it measures) stalls nothing: the probe waits up to 30 s rather than the
    scrape timeout."""
    out: dict[str, LatencyScraper | BackgroundProbe] = {}
    for svc in services:
        lat = svc.latency
        if lat is not None and lat.metrics_url:
            out[svc.name] = LatencyScraper(lat.metrics_url, lat.flavor, lat.timeout_s)
        elif lat is not None and lat.probe_url:
            out[svc.name] = BackgroundProbe(ActiveProbe(lat.probe_url, lat.probe_interval_s))
    return out
