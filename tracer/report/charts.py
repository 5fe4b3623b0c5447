"""The report's charts, drawn server-side as SVG by pygal (a maintained pure-Python charting library:
no JavaScript, no network, no numpy; see tracer/report/__init__.py for the choice).

Each function returns one ``<svg>`` element as text, ready to inline in the page. pygal is told not to
reference its tooltip script (``js=[]``: the page must open with no network), its hover values become
native SVG ``<title>`` tooltips, and coordinates are rounded to one decimal (pygal writes six), which
keeps a day's charts in tens of kilobytes. Long series are merged into at most :data:`MAX_POINTS`
points: counts add up exactly; a latency point is the worst (highest) quantile of the buckets merged,
and the chart's title says so.
"""
from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pygal
from pygal.style import Style

from tracer.analysis.bursts import Burst
from tracer.analysis.funnel import PATH, FunnelRow
from tracer.verdicts import LOST

#: most points per series in a chart (a day at one point per 4 minutes)
MAX_POINTS = 360
_US = 1_000_000
_ATTR_RE = re.compile(r'(\s(?:d|x|y|cx|cy|r|rx|ry|width|height|points|transform|x1|x2|y1|y2)=")([^"]*)"')
_NUM_RE = re.compile(r"(-?\d+\.\d)\d+")
_DESC_RE = re.compile(r'<desc class="value">([^<]*)</desc>')
_SCRIPT_RE = re.compile(r"<script[^>]*>.*?</script>", re.DOTALL)
_COMMENT_RE = re.compile(r"<!--.*?-->", re.DOTALL)
_ID_RE = re.compile(r'id="chart-([0-9a-f-]{36})"')
_ids = itertools.count(1)

#: series colours (colour-blind friendly; the funnel's stages in pipeline order)
PALETTE = ("#4477aa", "#66ccee", "#228833", "#ccbb44", "#ee6677", "#aa3377", "#bbbbbb", "#000000")


def _style() -> Any:
    return Style(background="white", plot_background="white", foreground="#333", foreground_strong="#111",
                 foreground_subtle="#999", opacity=".9", opacity_hover="1", colors=PALETTE,
                 font_family="sans-serif", label_font_size=11, major_label_font_size=11,
                 legend_font_size=11, title_font_size=13, value_font_size=10, tooltip_font_size=11)


def _config(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"js": [], "disable_xml_declaration": True, "style": _style(), "width": 960,
                            "height": 300, "explicit_size": True, "legend_at_bottom": True, "legend_box_size": 10,
                            "margin": 10, "truncate_legend": -1, "truncate_label": -1, "show_minor_x_labels": False,
                            "x_labels_major_count": 12, "print_values": False, "no_data_text": "no data",
                            "allow_interruptions": True}
    base.update(kw)
    return base


def finish(svg: str) -> str:
    """Make pygal's SVG fit the page: drop the configuration script it embeds for its tooltip
    library (not loaded: ``js=[]``) and its comments, shorten the chart's id (its stylesheet repeats
    it ~100 times), round coordinates to one decimal, and turn the hover values into native tooltips."""
    svg = _SCRIPT_RE.sub("", _COMMENT_RE.sub("", svg))
    m = _ID_RE.search(svg)
    if m:
        svg = svg.replace(m.group(1), f"{next(_ids)}")
    svg = _ATTR_RE.sub(lambda m: m.group(1) + _NUM_RE.sub(r"\1", m.group(2)) + '"', svg)
    return _DESC_RE.sub(r"<title>\1</title>", svg)


def hhmm(us: int) -> str:
    return datetime.fromtimestamp(us / _US, tz=UTC).strftime("%H:%M")


def hhmmss(us: int) -> str:
    return datetime.fromtimestamp(us / _US, tz=UTC).strftime("%H:%M:%S")


@dataclass(slots=True)
class Series:
    """Buckets of one (topic, group), gaps filled, merged to at most MAX_POINTS."""

    starts: list[int]
    step_s: int
    merged: int  # buckets per point
    rows: list[list[FunnelRow]]  # the buckets behind each point (maybe none)


def series(rows: Sequence[FunnelRow], from_us: int, to_us: int, bucket_s: int) -> Series:
    step = bucket_s * _US
    first = from_us - from_us % step
    n = max(1, -(-(to_us - first) // step))
    k = max(1, -(-n // MAX_POINTS))
    by = {r.bucket_us: r for r in rows}
    starts, groups = [], []
    for i in range(0, n, k):
        starts.append(first + i * step)
        groups.append([by[b] for b in (first + j * step for j in range(i, min(n, i + k))) if b in by])
    return Series(starts, bucket_s * k, k, groups)


def funnel_chart(s: Series, title: str) -> str:
    """Messages reaching each stage of the main path, per point of time."""
    c = pygal.Line(**_config(title=title, show_dots=len(s.starts) <= 60, dots_size=2, fill=False,
                             y_title="messages", stroke_style={"width": 1.5}))
    c.x_labels = [hhmm(t) for t in s.starts]
    for stage in PATH:
        c.add(stage.value, [sum(r.reached[stage.value] for r in rows) if rows else 0 for rows in s.rows])
    return finish(c.render(is_unicode=True))


def latency_chart(s: Series, title: str,
                  hops: Iterable[str] = ("sent_acked", "acked_received", "received_done")) -> str:
    """p50 and p99 of each hop in milliseconds (log scale, labelled 1-2-5 per decade), per point of time."""
    worst = " (worst bucket of each point)" if s.merged > 1 else ""
    lines: list[tuple[str, list[float | None]]] = []
    for hop in hops:
        for q in ("p50", "p99"):
            vals: list[float | None] = []
            for rows in s.rows:
                got = [getattr(r.latency[hop], q) for r in rows]
                got = [g for g in got if g is not None and g > 0]
                vals.append(max(got) / 1000 if got else None)
            lines.append((f"{hop.replace('_', '→')} {q}", vals))
    seen = [v for _, vals in lines for v in vals if v]
    labels: list[float] = []
    if seen:
        lo, hi = math.floor(math.log10(min(seen))), math.ceil(math.log10(max(seen)))
        labels = [m * 10.0 ** k for k in range(lo, hi + 1) for m in (1, 2, 5) if m * 10.0 ** k <= 10.0 ** hi]
    c = pygal.Line(**_config(title=title + worst, logarithmic=True, show_dots=len(s.starts) <= 60, dots_size=2,
                             y_title="ms (log)", value_formatter=_ms, stroke_style={"width": 1.5},
                             y_labels=labels or None, y_labels_major=[x for x in labels if f"{x:g}"[0] == "1"] or None))
    c.x_labels = [hhmm(t) for t in s.starts]
    for name, vals in lines:
        c.add(name, vals)
    return finish(c.render(is_unicode=True))


def _ms(v: float) -> str:
    return f"{v:g} ms" if v >= 1 else f"{v:.2g} ms"


def rates_chart(s: Series, title: str) -> str:
    """Redelivered and duplicate-processed share of the messages received / done, in percent."""
    c = pygal.Line(**_config(title=title, height=220, show_dots=len(s.starts) <= 60, dots_size=2,
                             y_title="%", value_formatter=lambda v: f"{v:.2f} %"))
    c.x_labels = [hhmm(t) for t in s.starts]
    red, dup = [], []
    for rows in s.rows:
        recv = sum(r.reached["received"] for r in rows)
        done = sum(r.reached["business_done"] for r in rows)
        red.append(100 * sum(r.redelivered for r in rows) / recv if recv else None)
        dup.append(100 * sum(r.duplicate_processing for r in rows) / done if done else None)
    c.add("redelivered", red)
    c.add("duplicate processing", dup)
    return finish(c.render(is_unicode=True))


def bursts_chart(bursts: Sequence[Burst], from_us: int, to_us: int, title: str = "loss bursts") -> str:
    """Each burst as a bar from its start to its end (a dot when instant), one row per burst; red for
    lost messages, yellow for the rest (parked, not yet, unknown)."""
    timed = [(i, b) for i, b in enumerate(bursts, 1) if b.start_us]  # numbered as the page lists them
    height = max(170, 90 + 24 * len(timed))
    span = max(1, to_us - from_us)
    fmt = hhmmss if span < 20 * 60 * _US else hhmm
    style = _style()
    c = pygal.XY(**_config(title=title, height=height, show_dots=True, dots_size=5, legend_at_bottom=True,
                           style=Style(**{**style.to_dict(), "colors": (PALETTE[4], PALETTE[3])}),
                           stroke_style={"width": 9, "linecap": "round"},
                           x_value_formatter=lambda x: fmt(int(from_us + x * 60 * _US)),
                           range=(0, max(1, len(timed)) + 1), include_x_axis=False, show_minor_x_labels=True,
                           x_labels_major_count=None, show_y_guides=False, show_x_guides=True,
                           y_value_formatter=lambda y: ""))
    c.y_labels = [{"label": f"{i}. {b.verdict}", "value": y} for y, (i, b) in enumerate(timed, 1)]
    ticks = 8
    c.x_labels = [span / 60 / _US * t / ticks for t in range(ticks + 1)]
    rows: dict[bool, list[Any]] = {True: [], False: []}
    for y, (i, b) in enumerate(timed, 1):
        label = f"{i}. {b.verdict}: {b.messages} messages, {hhmmss(b.start_us)}..{hhmmss(b.end_us)}"
        pts = rows[b.verdict in LOST]
        if pts:
            pts.append(None)
        for t in (b.start_us, b.end_us):
            pts.append({"value": ((t - from_us) / 60 / _US, y), "label": label})
    c.add("lost", rows[True] or [None])
    c.add("parked, not yet or unknown", rows[False] or [None])
    return finish(c.render(is_unicode=True))
