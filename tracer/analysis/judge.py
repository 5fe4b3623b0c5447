"""The one-message judge behind ``trace-msg``: every group of one message, no window, no grace.

The facts come from the message's few events in Python (:func:`tracer.analysis.facts.pairs_from_events`),
the verdict from the same rules table as the reconciler's SQL, and the outside evidence (broker,
consumer, emitter gaps) from the same checks, over a range ``lookback_s`` before the message.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from tracer import verdicts as V
from tracer.analysis.broker import EvidenceContext, LiveKafka
from tracer.analysis.facts import PairFacts, pairs_from_events
from tracer.analysis.gaps import flag_seq_gaps
from tracer.analysis.refine import refine
from tracer.analysis.result import Verdict
from tracer.analysis.sql import render
from tracer.analysis.window import LOOKBACK_S, Window
from tracer.events import Event
from tracer.store import Store

#: seq gaps are looked for this long before the message (its emitters' neighbouring events)
GAP_LOOKBACK_S = 3600


def judge_events(msg_id: str, events: Sequence[Event], groups: Iterable[str] = (), now_us: int = 0) -> list[Verdict]:
    """The rules' verdicts of one message from its events, before any outside evidence."""
    return [Verdict.judge(f) for f in pairs_from_events(msg_id, events, groups, now_us)]


def groups_around(store: Store, events: Sequence[Event], window_s: int) -> set[str]:
    """Groups seen receiving from the message's topic within ``window_s`` of it (the expected ones); for a
    RabbitMQ message, the queues seen receiving its (exchange, routing key) (tracer.analysis.rabbitmq)."""
    from tracer.analysis.rabbitmq import route_groups, route_of

    topic = next((e.topic for e in events if e.topic), "")
    if not topic:
        return set()
    t = min(e.ts_us for e in events)
    lo, hi = max(0, t - window_s * 1_000_000), t + window_s * 1_000_000
    rt = route_of(events)
    if rt is not None:
        return route_groups(store, lo, hi, [rt.exchange]).get(rt, set())
    rows = store.query(render("trace_msg_topic_groups"), {"topic": topic, "lo": lo, "hi": hi}, small=True)
    return set(rows[0]["gs"]) if rows else set()


def judge_message(store: Store, msg_id: str, groups: Iterable[str] = (), bootstrap: str | None = None,
                  now_us: int | None = None, events: Sequence[Event] | None = None,
                  topic_groups_window_s: int = 0, lookback_s: int = LOOKBACK_S) -> list[Verdict]:
    """Verdicts of one message for every group seen for it, every group a reconcile run judged it
    for, ``groups``, and (``topic_groups_window_s`` > 0; a scan, slower on big stores) every group
    receiving from its topic within that many seconds of it."""
    now = now_us if now_us is not None else time.time_ns() // 1000
    if events is None:
        events = store.select_events(msg_id)
    if not events:
        return []
    wanted = set(groups) | {r["consumer_group"] for r in store.query(
        render("trace_msg_stored_groups"), {"msg_id": msg_id}, small=True)}
    if topic_groups_window_s:
        wanted |= groups_around(store, events, topic_groups_window_s)
    out = judge_events(msg_id, events, wanted, now)
    broker = LiveKafka(bootstrap) if bootstrap else None
    open_ = [v.facts for v in out if v.facts is not None and v.verdict in (V.PENDING_IN_BROKER, V.IN_FLIGHT)]
    if open_:
        ts = min(_evidence_ts(f) for f in open_)
        refine(EvidenceContext(store, Window.around(ts, now, lookback_s), broker), out)
    if any(v.verdict != V.DELIVERED for v in out):
        first = min((v.facts.msg_time for v in out if v.facts is not None), default=0)
        flag_seq_gaps(store, out, Window.around(first, now, GAP_LOOKBACK_S))
    out.sort(key=lambda v: v.consumer_group)
    return out


def _evidence_ts(f: PairFacts) -> int:
    return f.recv_ts or f.cand_ts
