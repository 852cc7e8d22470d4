from __future__ import annotations

import base64
import random
from html.parser import HTMLParser

from autotune.review.report import build_html, objective_of, stories, violation_s, write_report
from autotune.audit.trail import AuditEvent
from autotune.detect.metrics import derive_metrics, gauges
from autotune.types import LatencyReading, PsiLine, PsiReading, ServiceReading, Snapshot

from .conftest import T0, make_events


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _snaps(since: float, until: float, lat_s: float = 0.3) -> list[Snapshot]:
    rnd = random.Random(0)
    out = []
    ts = since
    while ts <= until:
        line = PsiLine(avg10_pct=30 + rnd.random(), avg60_pct=30, avg300_pct=30, total_usec=0)
        out.append(Snapshot(ts=ts, psi={"cpu": PsiReading(some=line)}, services={
            "llm": ServiceReading(name="llm", latency=LatencyReading(source="t", ok=True, p95_s=lat_s))}))
        ts += 5
    return out


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    return p


def test_stories_group_by_action_and_take_the_final_outcome():
    acts = stories(make_events(8))
    assert [a.action_id for a in acts] == list(range(1, 9))
    assert [a.outcome for a in acts] == ["rolled_back" if i % 4 == 0 else "kept" for i in range(1, 9)]
    a4 = acts[3]
    assert a4.rollback_ts is not None and a4.objective_after == 0.31 and a4.apply_ts == T0 + 4 * 600 + 1


def test_report_html_structure_with_samples(filled, tmp_path):
    calls = []

    def window(since, until):
        calls.append((since, until))
        return _snaps(since, until)

    out = tmp_path / "r.html"
    n = write_report(filled, out, window=window, slos={"llm": 0.2})
    page = out.read_text()
    p = _parse(page)
    assert n == 12 and len(calls) == 12
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not any(t == "link" or (t == "script" and a.get("src")) for t, a in p.tags)  # self-contained
    imgs = [a for t, a in p.tags if t == "img"]
    assert len(imgs) == 12
    for a in imgs:
        assert a["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(a["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
        assert a["data-raw"] == "1"
    ids = {a.get("id") for t, a in p.tags}
    assert {"by-knob", "totals", "slo", "action-1", "action-12"} <= ids
    text = " ".join(p.text)
    assert "verified (40 events)" in text
    assert "rolled_back" in text and "mann_whitney_u" in text


def test_report_falls_back_to_event_objectives_without_samples(filled):
    page, n = build_html(filled, window=None)
    p = _parse(page)
    imgs = [a for t, a in p.tags if t == "img"]
    assert n == 12 and len(imgs) == 12 and all(a["data-raw"] == "0" for a in imgs)
    assert "Not available" in page  # no SLO table without samples


def test_report_summary_counts_and_escaping(trail):
    trail.append_many(make_events(4) + [
        AuditEvent(ts=T0 + 9000, kind="refusal", knob="sysctl", outcome="refused"),
        AuditEvent(ts=T0 + 9001, kind="apply", action_id=77, knob="<b>x</b>", outcome="failed"),
    ])
    page, n = build_html(trail)
    assert n == 5
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    p = _parse(page)
    # totals table: actions 5, rollbacks 1, refusals 1
    assert "helper refusals" in " ".join(p.text)
    import re

    totals = re.search(r"<table id='totals'>(.*?)</table>", page).group(1)
    assert re.findall(r"class='num'>(\d+)<", totals) == ["5", "1", "1"]


def test_report_flags_a_broken_chain(filled):
    filled.db.conn.execute("DROP TRIGGER audit_events_no_update")
    filled.db.conn.execute("UPDATE audit_events SET outcome='forged' WHERE id=10")
    page, _ = build_html(filled)
    assert "BROKEN at event 10" in page


def test_violation_seconds_counts_samples_above_slo():
    snaps = _snaps(0, 100, lat_s=0.3)
    assert violation_s(snaps, "llm", 0.2) == 100
    assert violation_s(snaps, "llm", 0.5) == 0
    assert violation_s(snaps, "other", 0.2) == 0


def test_objective_is_the_vocabulary_latency():
    s = _snaps(0, 0, lat_s=0.3)[0]
    two = s.model_copy(update={"services": {
        "batch": ServiceReading(name="batch", latency=LatencyReading(source="t", ok=False, p95_s=9.0)),
        **s.services}})
    m = derive_metrics([two])
    assert m == gauges(two)
    assert objective_of(m, "llm") == m["svc.llm.latency.p95_s"] == 0.3
    assert objective_of(m, None) == 0.3  # the first service *reporting* one (batch's source failed)
    assert objective_of(m, "batch") is None


def test_report_plots_only_the_latest_actions_but_counts_all(filled):
    page, n = build_html(filled, max_plots=3)
    assert n == 12 and page.count("<img ") == 3
    assert "id='action-12'" in page and "id='action-9'" not in page
    assert "latest 3 of 12" in page


def test_report_rounds_long_floats(trail):
    trail.append(AuditEvent(ts=T0, kind="verify", action_id=1, knob="thp", outcome="kept",
                            test={"p_value": 0.5762732440843475},
                            detail={"symptoms": [{"name": "cpu_pressure", "value": 63.66779906571064}]}))
    page, _ = build_html(trail)
    assert "p_value=0.5763" in page and "cpu_pressure=63.67" in page


def test_objective_shown_in_its_own_unit():
    from autotune.review.report import format_objective

    assert format_objective("psi", 19.9) == "19.9 % (PSI)"
    assert format_objective("latency_p95", 0.25) == "250.0 ms"
    assert format_objective(None, 1.5) == "1500.0 ms"
    assert format_objective("throughput", 0.5) == "0.5 (throughput)"
    assert format_objective("psi", None) == "–"
