"""Evidence about RabbitMQ pairs the audit left at ``pending_in_broker`` (no partitions, no offsets).

Kafka's broker evidence is positional (a later offset of the same partition); a RabbitMQ message has no
position, but a queue delivers its messages in order. So (``queue_delivered_later``): the queue (the
pair's group) delivered a message that was *sent after this one was broker_acked*, from the same host
(one clock: no skew between the two times) with the same exchange and routing key (so the same
bindings routed both to that queue), and never delivered this one: it had left the queue undelivered
-- a non-persistent message across a broker restart, a queue purged or deleted and declared again, a
message expired (TTL) or dropped by a length limit. The pair becomes ``lost_in_broker``.

Pairs with a partition (Kafka) are never looked at here: their evidence is in :mod:`tracer.analysis.broker`.
"""
from __future__ import annotations

from dataclasses import dataclass

from tracer import verdicts as V
from tracer.analysis.broker import EvidenceContext
from tracer.analysis.evidence import fmt_us
from tracer.analysis.result import Verdict
from tracer.analysis.rules import Evidence
from tracer.analysis.sql import render

#: candidates asked for their sends in one query at most
_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class QueueFrontier:
    latest_sent: int
    by_msg: str


def _pending(rows: list[Verdict]) -> list[Verdict]:
    return [r for r in rows if r.verdict == V.PENDING_IN_BROKER and r.consumer_group and r.facts is not None
            and not r.facts.located and r.facts.ack_ts > 0 and not r.decided_by]


def queue_delivered_later(ctx: EvidenceContext, rows: list[Verdict], after: str) -> None:
    cands = _pending(rows)
    if not cands:
        return
    base = ctx.window.scan()
    sends: dict[str, tuple[str, str, str]] = {}
    ids = sorted({r.msg_id for r in cands})
    for i in range(0, len(ids), _BATCH):
        for s in ctx.store.query(render("reconcile_queue_sends"), {**base, "ids": ids[i:i + _BATCH]}, small=True):
            sends[s["msg_id"]] = (s["s_topic"], s["s_key"], s["s_host"])
    topics = sorted({t for t, _, _ in sends.values()})
    if not topics:
        return
    frontier = {(q["consumer_group"], q["topic"], q["key"], q["host"]): QueueFrontier(q["latest_sent"], q["by_msg"])
                for q in ctx.store.query(render("reconcile_queue_order"), {
                    **base, "topics": topics, "groups": sorted({r.consumer_group for r in cands})}, small=True)}
    for r in cands:
        sent = sends.get(r.msg_id)
        f = r.facts
        if sent is None or f is None:
            continue
        topic, key, host = sent
        q = frontier.get((r.consumer_group, topic, key, host))
        if q is not None and q.latest_sent > f.ack_ts:
            r.refine(after, Evidence.QUEUE_DELIVERED_LATER.value,
                     f"{r.evidence}; decided by {Evidence.QUEUE_DELIVERED_LATER.value}: the queue delivered "
                     f"{q.by_msg!r}, sent at {fmt_us(q.latest_sent)} from the same host ({host}) to the same "
                     f"exchange and routing key ({topic!r}, {key!r}) after this message was acked at "
                     f"{fmt_us(f.ack_ts)}; a queue delivers in order, so this one had left it undelivered")


__all__ = ["queue_delivered_later"]
