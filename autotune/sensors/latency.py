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
- llama.cpp server (``--metrics``): counters and gauges, no latency histograms, so no
  percentiles. The window mean time per generated token is delta ``tokens_predicted_seconds_total``
  / delta ``tokens_predicted_total``. llama.cpp adds a request's generation time and tokens to
  these counters when the request ends, each slot its own wall time: with several parallel
  slots the seconds add up per request, so the mean is the time per token as each request saw
  it (its decode step time), not wall time over throughput, and a window in which no request
  ended has no figure. Also prompt tokens and seconds (prompt throughput), and the
  ``requests_processing`` / ``requests_deferred`` gauges (running / waiting).

For TTFT and percentiles where the page has none (llama.cpp), or for a server with no metrics
page at all, an active probe (``ActiveProbe``) sends one short streamed completion every
``interval_s`` and records its time to first token, its token gaps and its end-to-end time:
a sample of one request, kept apart from the page's figures (``LatencyReading.probes``). Which
SLO field each source can measure is autotune/slo.py's table.
"""

from __future__ import annotations

import http.client
import json
import math
import time
import urllib.parse
from collections import defaultdict, deque
from typing import TYPE_CHECKING, Literal, Protocol

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict

from autotune.histogram import from_cumulative, quantile
from autotune.types import Buckets, LatencyReading, ProbeSample

if TYPE_CHECKING:
    import httpx

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
    prompt_tokens: str | None = None  # prompt tokens processed (llama.cpp)
    prompt_seconds: str | None = None  # seconds spent processing them (llama.cpp)


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
        prompt_tokens="llamacpp:prompt_tokens",
        prompt_seconds="llamacpp:prompt_seconds",
    ),
}
FLAVORS["autotune"] = FLAVORS["vllm"]  # our workload server exports vLLM's names (detected as vllm)


def flavor_names(flavor: str, page: Page | None = None) -> frozenset[str]:
    """The metric (family) names ``flavor`` reads: what a scrape of a known flavor parses. With
    ``page``: of the names a histogram goes by (newest first), only the one that page has."""
    spec = FLAVORS[flavor]
    single = [v for k, v in spec if k != "prefix" and isinstance(v, str)]  # every one-name metric
    hists = [spec.e2e_hist, spec.ttft_hist, spec.itl_hist]
    if page is not None:
        hists = [(_first_present(h, page),) if _first_present(h, page) else h for h in hists]
    return frozenset([*(n for h in hists for n in h), *(n for n in single if n)])


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


_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def _family(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _name_of(line: str) -> str:
    """The metric name a sample line starts with."""
    end = len(line)
    for sep in ("{", " ", "\t"):
        i = line.find(sep)
        if 0 <= i < end:
            end = i
    return line[:end]


Part = tuple[str, str, float]  # (bucket | sum | count | scalar, histogram base or sample name, le)


def _part(name: str, labels: dict[str, str], family_type: str) -> Part:
    """Where one sample goes in a Page: label sets are summed away, histograms by base name."""
    if name.endswith("_bucket") and "le" in labels:
        return "bucket", name[: -len("_bucket")], float(labels["le"])
    if name.endswith("_sum") and family_type == "histogram":
        return "sum", name[:-4], 0.0
    if name.endswith("_count") and family_type == "histogram":
        return "count", name[:-6], 0.0
    return "scalar", name, 0.0


class PageParser:
    """Parse a server's Prometheus text pages into ``Page``s, one page after another.

    prometheus_client's parser reads each line character by character: a page of ~150
    histogram lines took ~8 ms, the largest part of the agent's own CPU at one scrape a second.
    Here each series (a line up to its value: name and labels) is parsed by the library the
    first time it is seen, and remembered; a line of a known series costs a dictionary look-up
    and a float(). ``names``: the only families read (``flavor_names``), None for all; lines of
    other families are not parsed at all (a server's page is mostly other metrics).
    ValueError names the problem for a garbage page."""

    MAX_SERIES = 20_000  # lines with timestamps never repeat: forget them rather than grow

    def __init__(self, names: frozenset[str] | None = None) -> None:
        self.names = names
        self._series: dict[str, Part] = {}

    def _wanted(self, name: str) -> bool:
        return self.names is None or name in self.names or _family(name) in self.names

    def parse(self, text: str) -> Page:
        if not text.strip():
            raise ValueError("empty metrics page")
        head = text.lstrip()[:200].lower()
        if head.startswith("<") or "<html" in head:
            raise ValueError("got an HTML page, not Prometheus text (wrong URL? try .../metrics)")
        if len(self._series) > self.MAX_SERIES:
            self._series.clear()
        parts: list[tuple[Part, float]] = []
        types: dict[str, str] = {}  # metric name -> its "# TYPE" line, for lines parsed anew
        new: list[str] = []
        for line in text.splitlines():
            if not line or line[0] == "#":
                if line.startswith("# TYPE"):
                    fields = line.split(None, 3)
                    if len(fields) > 2 and self._wanted(fields[2]):
                        types[fields[2]] = line
                continue
            key, _, value = line.rpartition(" ")
            known = self._series.get(key)
            if known is not None:
                try:
                    parts.append((known, float(value)))
                    continue
                except ValueError:
                    pass  # the library says what is wrong with it
            if self._wanted(_name_of(line)):
                new.append(line)
        for line in new:
            name = _name_of(line)
            typ = types.get(name) or types.get(_family(name))
            try:
                families = list(text_string_to_metric_families(f"{typ}\n{line}\n" if typ else line + "\n"))
            except ValueError as err:
                raise ValueError(f"not a valid Prometheus text page: {err}") from err
            samples = [(sample, f.type) for f in families for sample in f.samples]
            for sample, family_type in samples:
                try:
                    part = _part(sample.name, sample.labels, family_type)
                except ValueError as err:
                    raise ValueError(f"not a valid Prometheus text page: bad le in {line[:80]!r}") from err
                parts.append((part, sample.value))
                if len(samples) == 1:
                    self._series[line.rpartition(" ")[0]] = part
        return _page(parts)


def _page(parts: list[tuple[Part, float]]) -> Page:
    scalars: dict[str, float] = defaultdict(float)
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    for (kind, name, le), value in parts:
        if not math.isfinite(value):
            continue  # NaN/+-Inf (legal in the format): no reading, never a figure
        if kind == "bucket":
            buckets[name][le] += value
        elif kind == "sum":
            sums[name] += value
        elif kind == "count":
            counts[name] += value
        else:
            scalars[name] += value
    hists = {base: Histogram(buckets=tuple(sorted(by_le.items())), sum=sums.get(base, 0.0),
                             count=counts.get(base, 0.0)) for base, by_le in buckets.items()}
    return Page(scalars=dict(scalars), histograms=hists)


def parse_page(text: str, names: frozenset[str] | None = None) -> Page:
    """Parse one Prometheus text page: every family, or only ``names`` (see ``PageParser``)."""
    return PageParser(names).parse(text)


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
    token_seconds: float | None = None  # seconds those tokens took, per request (llama.cpp)
    prompt_tokens: float | None = None
    prompt_seconds: float | None = None
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
    tokens = dsec = ptok = psec = None
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
        ptok = _counter_delta(prev.scalar(spec.prompt_tokens), cur.scalar(spec.prompt_tokens))
        psec = _counter_delta(prev.scalar(spec.prompt_seconds), cur.scalar(spec.prompt_seconds))
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
        token_seconds=dsec, prompt_tokens=ptok, prompt_seconds=psec,
        running=cur.scalar(spec.running), waiting=cur.scalar(spec.waiting), unavailable=unavailable,
    )


def _missing_required(flavor: Flavor, page: Page) -> list[str]:
    spec = FLAVORS[flavor]
    if spec.e2e_hist:
        return [] if _first_present(spec.e2e_hist, page) else [spec.e2e_hist[0]]
    needed = [n for n in (spec.tokens, spec.tokens_seconds) if n]
    return [n for n in needed if page.scalar(n) is None]


# -- the scraper --------------------------------------------------------------------------------
MAX_PAGE_BYTES = 16 << 20  # a metrics page is tens of KB; a wrong URL must not fill the agent's memory


class Fetch(Protocol):
    """How a scraper gets its page: (HTTP status, body); raises OSError when it cannot."""

    def __call__(self) -> tuple[int, str]: ...

    def close(self) -> None: ...


class HttpGet:
    """GET one URL over one kept-alive connection, with the standard library's http.client (the
    agent's own metrics exporter loads it anyway; httpx and what it imports cost the agent ~9 MB
    resident). A connection the server closed while idle is reopened once."""

    def __init__(self, url: str, timeout: float) -> None:
        u = urllib.parse.urlsplit(url)
        # a bad URL is every scrape's error, not the agent's start's
        self._bad = None if u.scheme in ("http", "https") and u.hostname else "not an http(s)://host[:port]/path URL"
        self._conn_args = (u.hostname or "", u.port)
        self._https = u.scheme == "https"
        self._target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def __call__(self) -> tuple[int, str]:
        if self._bad:
            raise ValueError(self._bad)
        for attempt in (0, 1):
            fresh = self._conn is None
            if self._conn is None:
                cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
                self._conn = cls(*self._conn_args, timeout=self.timeout)
            try:
                self._conn.request("GET", self._target, headers={"Accept": "text/plain"})
                resp = self._conn.getresponse()
                body = resp.read(MAX_PAGE_BYTES + 1)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if fresh or attempt:
                    raise
                continue  # the kept connection was closed by the server: once more, on a new one
            except (OSError, http.client.HTTPException):
                self.close()
                raise
            if len(body) > MAX_PAGE_BYTES:
                self.close()
                raise ValueError(f"page larger than {MAX_PAGE_BYTES >> 20} MiB")
            if resp.will_close:
                self.close()
            return resp.status, body.decode(resp.headers.get_content_charset() or "utf-8", "replace")
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class LatencyScraper:
    """Scrape a metrics URL; each ``sample(now)`` reports the window since the previous one.

    Never raises out of ``sample``: connection errors, garbage pages and missing metrics give
    ``LatencyReading(ok=False, error=...)``. The first good scrape has no window (quantiles None).
    Every reading names the page's flavor (declared, or detected at the last good scrape), so
    what the page can measure (autotune/slo.py) stays known while it is down. Once the flavor
    is known, only its metrics are parsed. ``fetch``: how the page is got (tests); an
    ``HttpGet`` of ``url`` by default.
    """

    def __init__(self, url: str, flavor: Flavor | Literal["auto", "autotune"] = "auto", timeout: float = 2.0,
                 *, fetch: Fetch | None = None) -> None:
        if flavor != "auto" and flavor not in FLAVORS:
            raise ValueError(f"unknown metrics flavor {flavor!r}; use auto, {', '.join(FLAVORS)}")
        self.url = url
        self.flavor = flavor
        self.timeout = timeout
        self._fetch = fetch or HttpGet(url, timeout)
        self._prev: tuple[float, Page] | None = None
        self._parser = PageParser(None if flavor == "auto" else flavor_names(flavor))
        self._known: Flavor | None = None if flavor == "auto" else flavor
        self.last_window: LatencyWindow | None = None
        self.detected: str | None = None  # flavor recognised at the last good scrape (auto)

    @property
    def page_flavor(self) -> str | None:
        return self.flavor if self.flavor != "auto" else self.detected

    def close(self) -> None:
        """Close the connection (the agent calls it on stop); the next sample opens a new one."""
        self._fetch.close()

    def _fail(self, msg: str) -> LatencyReading:
        self.last_window = None
        if self._known is not None:  # read the whole page again: the server may have changed
            self._known = None if self.flavor == "auto" else self._known
            self._parser = PageParser(None if self._known is None else flavor_names(self._known))
        return LatencyReading(source=self.url, ok=False, error=msg, flavor=self.page_flavor)

    def sample(self, now: float | None = None) -> LatencyReading:
        now = time.time() if now is None else now
        try:
            status, text = self._fetch()
        except (OSError, ValueError, http.client.HTTPException) as err:
            return self._fail(f"{self.url}: cannot scrape ({type(err).__name__}: {err or 'no detail'})")
        if not 200 <= status < 300:
            return self._fail(f"{self.url}: HTTP {status}")
        try:
            page = self._parser.parse(text)
        except ValueError as err:
            return self._fail(f"{self.url}: {err}")
        flavor = self._known or detect_flavor(page)
        if flavor is None:
            return self._fail(f"{self.url}: no vLLM/TGI/llama.cpp metrics on the page "
                              f"(prefixes {', '.join(sorted({s.prefix for s in FLAVORS.values()}))})")
        missing = _missing_required(flavor, page)  # type: ignore[arg-type]
        if missing:
            return self._fail(f"{self.url}: {flavor} page lacks {', '.join(missing)}")
        if self.flavor == "auto":
            self.detected = flavor
        if self._known is None or self._parser.names != flavor_names(flavor, page):
            self._known = flavor  # from now on only the names this page showed are parsed
            self._parser = PageParser(flavor_names(flavor, page))
        prev = self._prev
        window_s = None if prev is None else now - prev[0]
        win = compute_window(flavor, None if prev is None else prev[1], page, window_s=window_s)  # type: ignore[arg-type]
        self._prev = (now, page)
        self.last_window = win
        return LatencyReading(
            source=f"{flavor}:{self.url}", ok=True, flavor=flavor, p50_s=win.p50_s, p95_s=win.p95_s,
            p99_s=win.p99_s, ttft_p95_s=win.ttft_p95_s, ttft_samples=win.ttft_samples, itl_p50_s=win.itl_p50_s,
            itl_p95_s=win.itl_p95_s, itl_mean_s=win.itl_mean_s, itl_samples=win.itl_samples,
            tokens=win.tokens, token_seconds=win.token_seconds, prompt_tokens=win.prompt_tokens,
            prompt_seconds=win.prompt_seconds, requests=win.requests, running=win.running, waiting=win.waiting,
            hist=win.hist,
        )


# -- the active probe ---------------------------------------------------------------------------
PROBE_PROMPT = "Hi"
MAX_PROBE_TOKENS = 16  # a probe is a short request: its cost must stay small next to the load
_KEPT = 64  # probe outcomes waiting for a reading (a sampler that stopped reading loses the oldest)


def _chunk_text(chunk: object) -> str | None:
    """The text a streamed completion chunk carries ('' for none); None when it has no choice
    (a usage-only chunk). Completions (``text``) and chat (``delta.content``) alike."""
    if not isinstance(chunk, dict) or not chunk.get("choices"):
        return None
    choice = chunk["choices"][0]
    if not isinstance(choice, dict):
        return None
    text = choice.get("text")
    if text is None:
        text = (choice.get("delta") or {}).get("content")
    return text if isinstance(text, str) else ""


class ActiveProbe:
    """One short streamed completion per ``probe()``: its time to first token, the gaps between
    its tokens and its end-to-end time. A sample of one request, not of every request.

    Bounded cost: a one-word prompt and at most ``max_tokens`` (1..16) generated tokens per
    probe; ``sample(now)`` probes at most once per ``interval_s``, and ``BackgroundProbe`` never
    has two probes in flight. Each outcome goes into exactly one reading (``take``), so a
    window of snapshots holds each probe once.
    """

    def __init__(self, base_url: str, interval_s: float = 10.0, *, model: str | None = None,
                 max_tokens: int = 4, timeout: float = 30.0, client: httpx.Client | None = None,
                 clock=time.monotonic) -> None:
        if not 1 <= max_tokens <= MAX_PROBE_TOKENS:
            raise ValueError(f"probe max_tokens must be 1..{MAX_PROBE_TOKENS} (keep the probe small), "
                             f"got {max_tokens}")
        import threading

        import httpx  # here: an agent that only scrapes pages never loads it

        self.base_url = base_url.rstrip("/")
        self.interval_s = interval_s
        self.model = model
        self.max_tokens = max_tokens
        self.timeout = timeout
        self._client = client or httpx.Client(timeout=timeout)
        self._clock = clock
        self._due: float | None = None
        self._lock = threading.Lock()
        self._new: deque[ProbeSample | str] = deque(maxlen=_KEPT)
        self._last: ProbeSample | str = "no probe finished yet"

    @property
    def source(self) -> str:
        return f"probe:{self.base_url}"

    def describe(self) -> str:
        return f"{self.max_tokens}-token streamed completion every {self.interval_s:g} s"

    def _model(self) -> str:
        if self.model is None:
            resp = self._client.get(f"{self.base_url}/v1/models", timeout=self.timeout)
            resp.raise_for_status()
            data = resp.json().get("data") or []
            self.model = data[0]["id"] if data else "default"
        return self.model

    def probe(self) -> ProbeSample | str:
        """One probe: its sample, or a one-line error naming the probe."""
        import httpx

        src = self.source
        try:
            body = {"model": self._model(), "prompt": PROBE_PROMPT, "max_tokens": self.max_tokens,
                    "temperature": 0, "stream": True}
            t0 = self._clock()
            with self._client.stream("POST", f"{self.base_url}/v1/completions", json=body,
                                     timeout=self.timeout) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    return f"{src}: HTTP {resp.status_code}"
                if "text/event-stream" not in resp.headers.get("content-type", ""):
                    resp.read()  # the server answered in one piece: no TTFT, no gaps
                    resp.json()
                    return ProbeSample(e2e_s=self._clock() - t0)
                texts: list[float] = []
                chunks: list[float] = []
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if isinstance(chunk, dict) and chunk.get("error"):
                        return f"{src}: error in the stream: {str(chunk['error'])[:200]}"
                    text = _chunk_text(chunk)
                    if text is not None:
                        stamp = self._clock() - t0
                        chunks.append(stamp)
                        if text:
                            texts.append(stamp)
                e2e = self._clock() - t0
        except httpx.HTTPStatusError as err:
            return f"{src}: HTTP {err.response.status_code}"
        except (httpx.HTTPError, ValueError, KeyError, TypeError, IndexError) as err:
            return f"{src}: probe failed ({type(err).__name__}: {err or 'no detail'})"
        stamps = texts or chunks  # tokens that decode to no text still mark a decode step
        return ProbeSample(e2e_s=e2e, ttft_s=stamps[0] if stamps else None,
                           gaps_s=tuple(b - a for a, b in zip(stamps, stamps[1:])))

    def record(self, outcome: ProbeSample | str) -> None:
        with self._lock:
            self._new.append(outcome)
            self._last = outcome

    def take(self) -> LatencyReading:
        """The probes finished since the last ``take``: ok with their samples; else the last
        outcome's state (ok with none new, or its error)."""
        with self._lock:
            items, last = list(self._new), self._last
            self._new.clear()
        samples = tuple(o for o in items if isinstance(o, ProbeSample))
        errors = [o for o in items if isinstance(o, str)]
        if samples:
            return LatencyReading(source=self.source, ok=True, probes=samples, error=errors[-1] if errors else None)
        if errors:
            return LatencyReading(source=self.source, ok=False, error=errors[-1])
        if isinstance(last, str):
            return LatencyReading(source=self.source, ok=False, error=last)
        return LatencyReading(source=self.source, ok=True)

    def sample(self, now: float | None = None) -> LatencyReading:
        """Probe here and now when ``interval_s`` has passed since the last probe."""
        now = self._clock() if now is None else now
        if self._due is None or now >= self._due:
            self._due = now + self.interval_s
            self.record(self.probe())
        return self.take()

    def close(self) -> None:
        self._client.close()


class BackgroundProbe:
    """An ``ActiveProbe`` on its own daemon thread: a slow or hung server never stalls sampling.

    One probe at a time, started every ``interval_s`` (or as soon as a slower one returns);
    ``sample()`` returns the probes finished since the previous call.
    """

    def __init__(self, probe: ActiveProbe) -> None:
        import threading

        self.probe = probe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"probe {probe.base_url}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.probe.record(self.probe.probe())
            self._stop.wait(max(0.0, self.probe.interval_s - (time.monotonic() - t0)))

    def sample(self, now: float | None = None) -> LatencyReading:
        return self.probe.take()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.probe.timeout + 1)
        self.probe.close()


class PageAndProbe:
    """A metrics page and a probe for one service (llama.cpp: counters from the page, TTFT and
    percentiles from the probe): the page's reading with the probe's samples in ``probes``.
    Ok when either read; ``error`` names the one that failed."""

    def __init__(self, page: LatencyScraper, probe: BackgroundProbe | ActiveProbe) -> None:
        self.page = page
        self.probe = probe

    def sample(self, now: float | None = None) -> LatencyReading:
        r = self.page.sample(now)
        p = self.probe.sample(now)
        errors = [x.error for x in (r, p) if x.error]
        return r.model_copy(update={"ok": r.ok or p.ok, "source": f"{r.source} + {p.source}",
                                    "probes": p.probes, "error": "; ".join(errors) or None})

    def close(self) -> None:
        self.page.close()
        self.probe.close()


LatencySourceT = LatencyScraper | BackgroundProbe | PageAndProbe


def scrapers_for(services) -> dict[str, LatencySourceT]:
    """One latency source per configured service (config ``Service``) that declares one: its
    metrics page, an active probe on its own thread (a slow answer, the very thing it measures,
    stalls nothing: the probe waits up to 30 s rather than the scrape timeout), or both."""
    out: dict[str, LatencySourceT] = {}
    for svc in services:
        lat = svc.latency
        if lat is None:
            continue
        page = LatencyScraper(lat.metrics_url, lat.flavor, lat.timeout_s) if lat.metrics_url else None
        probe = (BackgroundProbe(ActiveProbe(lat.probe_url, lat.probe_interval_s, max_tokens=lat.probe_max_tokens))
                 if lat.probe_url else None)
        if page is not None and probe is not None:
            out[svc.name] = PageAndProbe(page, probe)
        elif page is not None or probe is not None:
            out[svc.name] = page or probe  # type: ignore[assignment]
    return out
