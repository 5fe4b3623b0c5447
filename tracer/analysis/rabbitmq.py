"""Evidence about RabbitMQ pairs the audit left at ``pending_in_broker`` (no partitions, no offsets).

Kafka's broker evidence is positional (a later offset of the same partition); a RabbitMQ message has no
position, but a queue delivers its messages in order. So (``queue_delivered_later``): the queue (the
pair's group) delivered a message that was *sent after this one was broker_acked*, from the same host
(one clock: no skew between the two times) with the same exchange and routing key (so the same
bindings routed both to that queue), and never delivered this one: it had left the queue undelivered
-- a non-persistent message across a broker restart, a queue purged or deleted and declared again, a
message expired (TTL) or dropped by a length limit. The pair becomes ``lost_in_broker``.

A delivery is settled by its consumer (``basic_ack``, ``basic_nack``/``basic_reject``) or, unacked,
goes back to the queue when the consumer's channel closes, and is delivered again first
(``queue_never_redelivered``): an ``in_flight`` pair (received, neither acked nor done) whose queue
delivered other messages more than the grace period after it was taken, and that never came back, was
settled outside the hooks (an ack on an untraced channel, a reject) or is held unprocessed by a stuck
handler: either way the business effect did not happen, so the pair becomes ``lost_in_consumer``. A
queue that delivered nothing since stays ``in_flight`` (RabbitMQ will redeliver it to the next
consumer). The grace is the margin: it also absorbs the clock skew between consumer hosts.

Pairs with a partition (Kafka) are never looked at here: their evidence is in :mod:`tracer.analysis.broker`.

The same ordering of a queue shapes which queues are *expected* to get a message: an exchange routes
by routing key, so the queues expected for a message are those seen receiving messages of its
(exchange, routing key) in the window, not every queue of the exchange (:func:`drop_unrouted`; a
direct or topic exchange with several routing keys would otherwise leave every queue of the other
keys ``pending_in_broker`` for messages that were never routed to it). Kafka pairs are untouched.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from tracer import verdicts as V
from tracer.analysis.broker import EvidenceContext
from tracer.analysis.evidence import fmt_us
from tracer.analysis.result import Verdict
from tracer.analysis.rules import Evidence
from tracer.analysis.sql import render
from tracer.analysis.window import Window
from tracer.events import Event
from tracer.store import Store

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


def queue_never_redelivered(ctx: EvidenceContext, rows: list[Verdict], after: str) -> None:
    cands = [r for r in rows if r.verdict == V.IN_FLIGHT and r.consumer_group and r.facts is not None
             and not r.facts.located and r.facts.recv_ts > 0 and not r.decided_by]
    if not cands:
        return
    base = ctx.window.scan()
    grace_us = ctx.window.grace_s * 1_000_000
    holders: dict[tuple[str, str], dict[str, Any]] = {}
    ids = sorted({r.msg_id for r in cands})
    for i in range(0, len(ids), _BATCH):
        for row in ctx.store.query(render("reconcile_queue_holders"), {**base, "ids": ids[i:i + _BATCH]},
                                   small=True):
            holders[(row["msg_id"], row["consumer_group"])] = row
    if not holders:
        return
    latest = {q["consumer_group"]: q for q in ctx.store.query(render("reconcile_queue_activity"), {
        **base, "groups": sorted({r.consumer_group for r in cands})}, small=True)}
    for r in cands:
        h = holders.get((r.msg_id, r.consumer_group))
        q = latest.get(r.consumer_group)
        if h is None or q is None:
            continue
        taken = int(h["received_ts"])
        went_on = int(q["latest_received"])
        if went_on - taken <= grace_us or q["by_msg"] == r.msg_id:
            continue
        r.refine(after, Evidence.QUEUE_NEVER_REDELIVERED.value,
                 f"{r.evidence}; decided by {Evidence.QUEUE_NEVER_REDELIVERED.value}: taken by {h['holder_host']} "
                 f"(emitter {h['holder']}) at {fmt_us(taken)}, never acked nor received again, while queue "
                 f"{r.consumer_group!r} went on delivering (latest {q['by_msg']!r} at {fmt_us(went_on)}, "
                 f"{(went_on - taken) / 1e6:.0f} s later, past the {ctx.window.grace_s} s grace); RabbitMQ "
                 "requeues an unacked delivery when its channel closes, so the consumer settled it outside "
                 "the hooks (an untraced ack or reject) or its handler still holds it unprocessed")


# --- the queues expected for a message: its (exchange, routing key) ------------------------------------

@dataclass(frozen=True, slots=True)
class Route:
    """Where a RabbitMQ message was published: the exchange (our ``topic``) and its routing key."""

    exchange: str
    routing_key: str


def routes(store: Store, scan: dict[str, int], ids: Iterable[str]) -> dict[str, Route]:
    """The route of each RabbitMQ message among ``ids`` (others are left out), read by key."""
    out: dict[str, Route] = {}
    todo = sorted(set(ids))
    for i in range(0, len(todo), _BATCH):
        for r in store.query(render("reconcile_routes"), {**scan, "ids": todo[i:i + _BATCH]}, small=True):
            sent = bool(r["s_exchange"])  # its own publication names the route; else its receipts
            out[r["msg_id"]] = Route(r["s_exchange"] if sent else r["any_exchange"], r["s_rk"] if sent else r["r_rk"])
    return out


_ROUTE_STAGES = frozenset({"sent", "send_failed", "broker_acked", "received"})


def route_of(events: Iterable[Event]) -> Route | None:
    """The route of one message from its events (as :func:`routes` reads it); None unless RabbitMQ."""
    evs = [e for e in events if e.mq == "rabbitmq" and e.stage in _ROUTE_STAGES]
    if not evs:
        return None

    def rk(e: Event) -> str:
        return (e.attrs or {}).get("routing_key", e.key or "")

    own = [e for e in evs if e.stage != "received" and e.topic]
    if own:
        return Route(own[0].topic, rk(own[0]))
    return Route(next((e.topic for e in evs if e.topic), ""), rk(evs[0]))


def route_groups(store: Store, lo: int, hi: int, exchanges: Iterable[str]) -> dict[Route, set[str]]:
    """The queues seen receiving from each (exchange, routing key) of ``exchanges`` in [lo, hi)."""
    ex = sorted(set(exchanges))
    if not ex:
        return {}
    rows = store.query(render("reconcile_route_groups"), {"lo": lo, "hi": hi, "topics": ex}, small=True)
    return {Route(r["topic"], r["rk"]): set(r["gs"]) for r in rows}


def drop_unrouted(store: Store, window: Window, rows: list[Verdict]) -> list[Verdict]:
    """``rows`` without the pairs of RabbitMQ messages whose queue was expected only because it reads
    from the same exchange: it recorded nothing of the message and received no message of the
    message's (exchange, routing key) in the window. A message no queue recorded anything of keeps one
    pair, with no group, saying that no queue was seen for its routing key (unroutable, or no consumer
    ran).
    Call it when the groups were found, not named (``--group``: the SRE's groups are judged as asked)."""
    cands = [r for r in rows if r.consumer_group and r.facts is not None and r.facts.cmask == 0
             and not r.facts.located]
    if not cands:
        return rows
    found = routes(store, window.scan(), (r.msg_id for r in cands))
    if not found:
        return rows
    groups = route_groups(store, window.from_us, window.cut_us, (rt.exchange for rt in found.values()))
    dropped: dict[str, Verdict] = {}
    keep: list[Verdict] = []
    for r in rows:
        rt = found.get(r.msg_id)
        f = r.facts
        if rt is not None and f is not None and r.consumer_group and f.cmask == 0 and not f.located \
                and r.consumer_group not in groups.get(rt, set()):
            dropped.setdefault(r.msg_id, r)
        else:
            keep.append(r)
    left = {r.msg_id for r in keep}
    for m, r in dropped.items():
        if m in left or (r.facts is not None and r.facts.any_cmask):
            continue  # another pair of it stays (listed, or counted as plainly delivered)
        rt = found[m]
        assert r.facts is not None
        r.facts = replace(r.facts, consumer_group="")
        r.consumer_group = ""
        if r.verdict == V.PENDING_IN_BROKER:
            r.decided_by = "no queue for the routing key"
            r.evidence += (f"; no queue received a message published to exchange {rt.exchange!r} with routing "
                           f"key {rt.routing_key!r} in the window: unroutable (no binding), or no consumer ran "
                           "(name the queue with --group)")
        keep.append(r)
    return keep


__all__ = ["Route", "drop_unrouted", "queue_delivered_later", "queue_never_redelivered", "route_groups", "routes"]
