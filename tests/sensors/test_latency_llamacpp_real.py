"""The latency sensor on pages captured from a real llama-server (tests/fixtures/metrics/
llamacpp_real_{1,2,3}.prom, see the README there): what the page supports, a window gives.

Between pages 1 and 2 four 50-token requests finished (200 tokens, 11.199 s of generation
summed over requests) while three long ones were in flight: 2 processing, 1 deferred. Between
pages 2 and 3 those three finished (300 tokens). llama.cpp adds a request's tokens and time to
its counters when the request ends, so the requests in flight at page 2 count in window 2->3.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.sensors.latency import LatencyScraper, _missing_required, compute_window, detect_flavor, parse_page

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "metrics"


def page(n: int):
    return parse_page((FIXTURES / f"llamacpp_real_{n}.prom").read_text())


def test_a_real_page_is_recognised_and_complete():
    for n in (1, 2, 3):
        p = page(n)
        assert detect_flavor(p) == "llamacpp"
        assert _missing_required("llamacpp", p) == []
        assert p.histograms == {}  # llama-server exports no histogram at all


def test_window_mean_time_per_token_and_gauges():
    w = compute_window("llamacpp", page(1), page(2), window_s=10.0)
    assert w.tokens == 200
    assert w.itl_mean_s == pytest.approx((16.5517 - 5.35231) / 200)  # 56 ms per token
    assert (w.running, w.waiting) == (2, 1)
    later = compute_window("llamacpp", page(2), page(3), window_s=10.0)
    assert later.tokens == 300 and later.itl_mean_s == pytest.approx((32.3149 - 16.5517) / 300)
    assert (later.running, later.waiting) == (0, 0)


def test_what_the_page_cannot_give_stays_unset_and_is_named():
    w = compute_window("llamacpp", page(1), page(2), window_s=10.0)
    assert (w.p50_s, w.p95_s, w.p99_s, w.ttft_p50_s, w.ttft_p95_s, w.itl_p50_s, w.itl_p95_s) == (None,) * 7
    assert w.requests is None and w.hist == {}
    assert set(w.unavailable) == {"e2e percentiles", "ttft percentiles", "per-token percentiles", "request count"}


def test_first_scrape_has_no_window():
    w = compute_window("llamacpp", None, page(1))
    assert w.tokens is None and w.itl_mean_s is None and (w.running, w.waiting) == (0, 0)


def test_the_scraper_reads_the_real_pages_in_turn():
    from tests.sensors.test_latency import Pages

    pages = Pages(*((FIXTURES / f"llamacpp_real_{n}.prom").read_text() for n in (1, 2, 3)))
    scraper = LatencyScraper("http://llama:8080/metrics", "auto", fetch=pages)
    first = scraper.sample(now=100.0)
    assert first.ok and first.source == "llamacpp:http://llama:8080/metrics" and first.itl_mean_s is None
    second = scraper.sample(now=110.0)
    assert second.ok and second.tokens == 200 and second.itl_mean_s == pytest.approx(0.0559970, rel=1e-5)
    assert (second.running, second.waiting) == (2, 1) and second.p95_s is None
    third = scraper.sample(now=120.0)
    assert third.tokens == 300 and third.itl_mean_s == pytest.approx(0.0525440, rel=1e-5)
