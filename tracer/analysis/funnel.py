"""The stage funnel over time: how many messages of each (topic, consumer group) reached each stage,
per bucket of their time, where those counts part, and how long each hop took.

One query (``queries/incident_timeline.sql``) reads the window's events once and returns every
bucket plus the totals (bucket 0), keyed by the hashes of topic and group names (named back here);
Python only turns its few aggregated rows (buckets x topics x groups) into typed values and finds
the partings: the buckets where fewer messages reached a stage than the one before it, beyond what
is still on its way at the window's end.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracer.analysis import rules as R
from tracer.analysis.facts import NO_GROUP
from tracer.analysis.sql import render
from tracer.analysis.window import Window
from tracer.events import Stage
from tracer.store import Store

#: The main path of a message, in order: the funnel's columns and its hops.
PATH: tuple[Stage, ...] = (Stage.SENT, Stage.BROKER_ACKED, Stage.RECEIVED, Stage.OFFSET_COMMITTED,
                           Stage.BUSINESS_DONE)
#: Hop latencies measured (name -> (from stage, to stage)), as in the query's lat_<name> columns.
HOPS: dict[str, tuple[Stage, Stage]] = {
    "sent_acked": (Stage.SENT, Stage.BROKER_ACKED),
    "acked_received": (Stage.BROKER_ACKED, Stage.RECEIVED),
    "received_done": (Stage.RECEIVED, Stage.BUSINESS_DONE),
    "sent_done": (Stage.SENT, Stage.BUSINESS_DONE),
}
QUANTILES = ("p50", "p90", "p99")
#: the chart-friendly bucket: one minute, unless the window would then have more than this many
MAX_BUCKETS = 1440
_US = 1_000_000


def bucket_seconds(window_s: float, wanted_s: int = 60, most: int = MAX_BUCKETS) -> int:
    """``wanted_s`` (a minute), coarsened to whole minutes when the window would have more than
    ``most`` buckets (a week: 7 minutes)."""
    b = max(1, int(wanted_s))
    if window_s / b > most:
        b = int(-(-window_s // (most * 60)) * 60)
    return b


@dataclass(slots=True)
class Latency:
    """Quantiles of one hop in microseconds (None: no message made that hop)."""

    p50: int | None = None
    p90: int | None = None
    p99: int | None = None

    @classmethod
    def of(cls, q: Sequence[float]) -> Latency:
        vals = [None if math.isnan(v) else round(v) for v in q]  # NaN: no value
        return cls(*vals[:3]) if len(vals) >= 3 else cls()

    def to_json(self) -> dict[str, int | None]:
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99}


@dataclass(slots=True)
class FunnelRow:
    """One (topic, group, bucket) of the funnel; ``bucket_us`` 0 is the whole window."""

    topic: str
    consumer_group: str
    bucket_us: int
    messages: int
    reached: dict[str, int]  # stage name -> messages reaching it
    redelivered: int
    duplicate_processing: int
    latency: dict[str, Latency]  # hop name -> quantiles

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> FunnelRow:
        return cls(row["topic"], row["consumer_group"], int(row["bucket_us"]), int(row["messages"]),
                   {s.value: int(row[s.value]) for s in Stage}, int(row["redelivered"]),
                   int(row["duplicate_processing"]), {h: Latency.of(row[f"lat_{h}"]) for h in HOPS})

    @property
    def redelivery_rate(self) -> float:
        recv = self.reached[Stage.RECEIVED.value]
        return self.redelivered / recv if recv else 0.0

    @property
    def duplicate_rate(self) -> float:
        done = self.reached[Stage.BUSINESS_DONE.value]
        return self.duplicate_processing / done if done else 0.0

    def to_json(self) -> dict[str, Any]:
        """The shape ``msgtrace incident --json`` printed before buckets existed (``funnel``), plus rates."""
        d: dict[str, Any] = {"topic": self.topic, "consumer_group": self.consumer_group, "messages": self.messages}
        d.update(self.reached)
        d.update(redelivered=self.redelivered, duplicate_processing=self.duplicate_processing,
                 redelivery_rate=round(self.redelivery_rate, 6), duplicate_rate=round(self.duplicate_rate, 6))
        for h, q in self.latency.items():
            d[f"latency_{h}_us"] = q.to_json()
        return d


@dataclass(slots=True)
class Parting:
    """Where the funnel's counts part: in ``buckets`` (start µs) of (topic, group), ``missing``
    messages reached ``before`` but not ``after``."""

    topic: str
    consumer_group: str
    before: str
    after: str
    first_us: int
    last_us: int
    missing: int
    buckets: int

    def to_json(self) -> dict[str, Any]:
        from tracer.analysis.evidence import fmt_us

        return {"topic": self.topic, "consumer_group": self.consumer_group, "hop": f"{self.before}->{self.after}",
                "from": fmt_us(self.first_us), "to": fmt_us(self.last_us), "missing": self.missing,
                "buckets": self.buckets}


@dataclass(slots=True)
class Funnel:
    """The funnel of a window: totals per (topic, group), every bucket, and where counts part."""

    bucket_s: int
    totals: list[FunnelRow] = field(default_factory=list)
    buckets: list[FunnelRow] = field(default_factory=list)
    partings: list[Parting] = field(default_factory=list)

    def series(self, topic: str, group: str) -> list[FunnelRow]:
        return [r for r in self.buckets if r.topic == topic and r.consumer_group == group]

    def to_json(self) -> dict[str, Any]:
        from tracer.analysis.evidence import fmt_us

        return {"bucket_s": self.bucket_s,
                "buckets": [{"bucket": fmt_us(r.bucket_us), **r.to_json()} for r in self.buckets],
                "partings": [p.to_json() for p in self.partings]}


def timeline_sql() -> str:
    counts = ", ".join(f"countIf(bitAnd({'pmask' if s in R.PRODUCER_STAGES else 'cm'}, {R.bit(s)}) != 0) AS {s.value}"
                       for s in Stage)
    return render("incident_timeline", stage_counts=counts, stage_bit=R.stage_bit_sql(),
                  producer_stages=R.stage_list_sql(R.PRODUCER_STAGES))


def measure(store: Store, window: Window, topic_groups: Mapping[str, Iterable[str]], bucket_s: int = 60) -> Funnel:
    """The funnel of the window's messages, each counted for the groups it was seen by and those
    expected on its topic (``topic_groups``: topic -> groups)."""
    topics = sorted(topic_groups)
    names = sorted(set(topics) | {g for gs in topic_groups.values() for g in gs} | {""})
    h = {r["name"]: int(r["h"]) for r in store.query(render("incident_name_hashes"), {"names": names}, small=True)}
    params = {**window.params(), "bucket_us": bucket_s * _US, "topic_hashes": [h[t] for t in topics] or [h[""]],
              "group_hashes": [sorted(h[""] if g == NO_GROUP else h[g] for g in topic_groups[t]) for t in topics]
              or [[]]}
    topic_of = {v: k for k, v in h.items() if k in topic_groups or k == ""}
    group_of = {v: k for k, v in h.items() if k}
    group_of[h[""]] = NO_GROUP  # a consumer stage without a group
    group_of[0] = ""  # the producer side only: no group received or was expected
    raw = store.query(timeline_sql(), params)
    unnamed = sorted({int(r["th"]) for r in raw if int(r["th"]) not in topic_of})
    if unnamed:  # a topic the reconcile did not name (only messages of other windows' pairs): ask for it
        topic_of.update({int(r["h"]): r["topic"] for r in store.query(render("incident_topic_names"), {
            **window.scan(), "hashes": unnamed}, small=True)})
    rows = []
    for r in raw:
        r["topic"] = topic_of.get(int(r["th"]), f"#{r['th']}")
        r["consumer_group"] = group_of.get(int(r["gh"]), f"#{r['gh']}")
        rows.append(FunnelRow.from_row(r))
    f = Funnel(bucket_s, [r for r in rows if r.bucket_us == 0], [r for r in rows if r.bucket_us != 0])
    f.partings = partings(f, window.cut_us)
    return f


def partings(f: Funnel, cut_us: int, settle_us: int = 0) -> list[Parting]:
    """Per (topic, group) and hop of :data:`PATH`, the runs of buckets where fewer messages reached
    the next stage. Buckets whose messages may still be on their way (less than the hop's p99 plus a
    bucket before the cut, or ``settle_us``) are left out: that is lag, not a parting."""
    out: list[Parting] = []
    keys = sorted({(r.topic, r.consumer_group) for r in f.buckets})
    totals = {(r.topic, r.consumer_group): r for r in f.totals}
    for topic, group in keys:
        rows = f.series(topic, group)
        tot = totals.get((topic, group))
        p99 = (tot.latency["sent_done"].p99 if tot else None) or 0
        settle = max(settle_us, p99 + f.bucket_s * _US)
        for before, after in itertools.pairwise(PATH):
            if group == "" and after in (Stage.RECEIVED, Stage.OFFSET_COMMITTED, Stage.BUSINESS_DONE):
                break  # no group: consumer stages are not expected
            run: list[tuple[int, int]] = []
            for r in [*rows, None]:
                gap = 0
                if r is not None and r.bucket_us + f.bucket_s * _US + settle <= cut_us:
                    gap = r.reached[before.value] - r.reached[after.value]
                if gap > 0 and r is not None:
                    run.append((r.bucket_us, gap))
                    continue
                if run:
                    out.append(Parting(topic, group, before.value, after.value, run[0][0],
                                       run[-1][0] + f.bucket_s * _US, sum(g for _, g in run), len(run)))
                    run = []
    out.sort(key=lambda p: (-p.missing, p.first_us))
    return out
