"""The HTML report (incident --html, reconcile --out x.html) opened in Debian's headless Chromium: the
charts rendered (non-empty SVG with drawn series), no console error, no request but the file itself;
a control page that does reference the network is caught by the same checks (so they can fail)."""
from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.test_incident_bursts import WINDOW, Story
from tests.test_reconcile_cli import run, wide_console  # noqa: F401 (fixture)
from tracer.localsvc import Chromium, ServiceError, chromium_binary
from tracer.store import Store


@pytest.fixture(scope="module")
def chromium(tmp_path_factory) -> Iterator[Chromium]:
    try:
        chromium_binary()
        c = Chromium(str(tmp_path_factory.mktemp("chromium"))).start()
    except ServiceError as e:
        unavailable("chromium", e)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def story_store(chdb_url) -> Iterator[Store]:
    s = Store(chdb_url)
    s.init_schema()
    s.insert_events(Story().build().events)
    yield s
    s.close()


_CHARTS_JS = """
Array.from(document.querySelectorAll('svg.pygal-chart')).map(svg => {
  const r = svg.getBoundingClientRect();
  const lines = Array.from(svg.querySelectorAll('.series path.line'));
  return {w: r.width, h: r.height, title: (svg.querySelector('title') || {}).textContent || '',
          drawn: lines.filter(p => (p.getAttribute('d') || '').length > 20 && p.getBBox().width > 0).length,
          dots: svg.querySelectorAll('.series .dot').length};
})
"""


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _open(chromium: Chromium, path: Path, shot: Path):
    page = chromium.page()
    try:
        page.open(path.resolve().as_uri())
        charts = page.evaluate(_CHARTS_JS)
        text = page.evaluate("document.body.innerText")
        png = page.screenshot(shot)
        return page.log, charts, text, png
    finally:
        page.close()


def test_incident_report_renders_offline(story_store, chromium, tmp_path):
    report = tmp_path / "incident.html"
    r = run(story_store, "incident", *WINDOW, "--html", str(report))
    assert r.exit_code == 1, r.stderr
    html = report.read_text()
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") \
        and "https://" not in html
    log, charts, text, png = _open(chromium, report, tmp_path / "incident.png")
    assert log.errors == [] and log.failed == []
    assert log.requests == [report.resolve().as_uri()]  # the page itself, nothing else
    titles = [c["title"] for c in charts]
    assert titles[0].startswith("loss bursts on a timeline")
    assert any("messages reaching each stage" in t for t in titles)
    assert any("hop latencies" in t for t in titles)
    assert any("redelivery" in t for t in titles)  # the takeover redelivered 12 records
    for c in charts:
        assert c["w"] > 300 and c["h"] > 100, c
        assert c["drawn"] > 0 or c["dots"] > 0, c
    funnel = next(c for c in charts if "messages reaching each stage" in c["title"])
    assert funnel["drawn"] == 5  # sent, acked, received, committed, done
    bursts = charts[0]
    assert bursts["dots"] >= 2 * 5  # each of the five bursts: a start and an end
    assert "the broker lost acknowledged messages" in text and "trace-msg m1-300 --group red-packet" in text
    assert "Instances whose events stop" in text and "cons-2/12" in text
    w, h = _png_size(png)
    assert w >= 900 and h > 2000 and len(png) > 50_000


def test_reconcile_out_html_uses_the_same_renderer(story_store, chromium, tmp_path):
    report = tmp_path / "reconcile.html"
    r = run(story_store, "reconcile", *WINDOW, "--out", str(report), "--no-write")
    assert r.exit_code == 1, r.stderr
    log, charts, text, _ = _open(chromium, report, tmp_path / "reconcile.png")
    assert log.errors == [] and log.requests == [report.resolve().as_uri()]
    assert text.startswith("msgtrace reconcile") and "Loss bursts" in text and "Stage funnel over time" in text
    assert len(charts) >= 3 and all(c["drawn"] or c["dots"] for c in charts)


def test_the_checks_catch_a_page_that_uses_the_network(chromium, tmp_path):
    """Control: the same checks see a request and a console error when a page has them."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><body><svg class='pygal-chart'></svg>"
                   "<img src='http://127.0.0.1:9/chart.png'><script>console.error('boom')</script></body></html>")
    log, charts, _, _ = _open(chromium, bad, tmp_path / "bad.png")
    assert "http://127.0.0.1:9/chart.png" in log.requests
    assert any("boom" in e for e in log.errors)
    assert charts and charts[0]["drawn"] == 0 and charts[0]["dots"] == 0
