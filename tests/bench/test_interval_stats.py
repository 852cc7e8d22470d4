"""Intervals over seeds: the t interval of a mean, paired differences, and what they refuse."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import stats as st  # noqa: E402


def test_mean_and_t_interval():
    iv = st.mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2 df) x sd / sqrt(n)
    assert (iv.n, iv.mean) == (3, 2.0)
    assert iv.lo == pytest.approx(2.0 - half) and iv.hi == pytest.approx(2.0 + half)
    assert iv.text(2) == f"2.00 [{2 - half:.2f}, {2 + half:.2f}]"
    assert not iv.excludes(2.0) and iv.excludes(10.0)
    # more runs, same spread: a narrower interval (t falls, sqrt(n) grows)
    assert st.mean_ci([1.0, 2.0, 3.0] * 3).hi < iv.hi


def test_too_few_values_give_no_interval_and_gaps_are_left_out():
    one = st.mean_ci([0.7])
    assert (one.n, one.mean, one.lo, one.hi) == (1, 0.7, None, None)
    assert one.excludes(0.0) is None and one.text() == "0.70"
    assert st.mean_ci([]).mean is None and st.mean_ci([]).text() == "-"
    iv = st.mean_ci([1.0, None, math.inf, 3.0])
    assert iv.n == 2 and iv.mean == 2.0 and iv.values == [1.0, 3.0]
    same = st.mean_ci([5.0, 5.0, 5.0])
    assert same.lo == same.hi == 5.0


def test_paired_difference_over_common_seeds():
    a = {1: 0.97, 2: 0.99, 3: 0.98, 4: 0.5}
    b = {1: 0.95, 2: 0.96, 3: 0.96}
    pr = st.paired("learned", "rules", a, b)
    assert pr.seeds == [1, 2, 3] and pr.diff.n == 3
    assert pr.diff.mean == pytest.approx((0.02 + 0.03 + 0.02) / 3)
    assert pr.differs and pr.verdict() == "yes: learned higher"
    # a shared run-to-run swing cancels in the pairs (unpaired means would overlap)
    a = {1: 0.80, 2: 1.00, 3: 0.90}
    b = {1: 0.78, 2: 0.98, 3: 0.87}
    assert st.mean_ci(a.values()).lo < st.mean_ci(b.values()).hi  # the two intervals overlap
    assert st.paired("a", "b", a, b).differs  # but every seed has a above b
    # differences that change sign: within the interval
    pr = st.paired("a", "b", {1: 1.0, 2: 0.0, 3: 0.5}, {1: 0.5, 2: 0.5, 3: 0.5})
    assert pr.differs is False and pr.verdict().startswith("no")
    assert st.paired("a", "b", {1: 1.0}, {1: 0.5}).verdict() == "n < 2"


def test_paired_ratio_on_the_log_scale():
    pr = st.paired("autotune", "static", {1: 2.0, 2: 2.2, 3: 1.9}, {1: 4.0, 2: 4.4, 3: 3.8}, log=True)
    assert math.exp(pr.diff.mean) == pytest.approx(0.5) and pr.differs
    assert st.paired("a", "b", {1: 0.0, 2: 1.0}, {1: 1.0, 2: 1.0}, log=True).diff.n == 1  # no log of 0
