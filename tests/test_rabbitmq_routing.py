"""RabbitMQ: the queues expected to get a message are those bound to its (exchange, routing key), not
every queue of the exchange. A real RabbitMQ (``amqp_url``: a vhost of its own), pika through
``wrap_channel``, both store engines.

A direct exchange routes ``paid`` to red-packet and ``refund`` to refunds; a topic exchange routes
``#`` to audit-all and ``order.paid`` to paid-only. Everything routed is consumed, except one refund
left in its queue; one message is published with a routing key no queue is bound to (confirmed by the
broker, then dropped). Only those two are listed: the refund pending in refunds, the unroutable one
with no queue (no pair for a queue that reads the exchange but was never routed the message).
"""
from __future__ import annotations

import time

import pika
from test_rabbitmq_hooks import connect

from tracer import Tracer
from tracer import verdicts as V
from tracer.analysis.judge import judge_message
from tracer.analysis.reconcile import reconcile
from tracer.store import Store

ROUTES = {("orders", "direct"): {"red-packet": "paid", "refunds": "refund"},
          ("events", "topic"): {"audit-all": "#", "paid-only": "order.paid"}}
SENDS = [("p1", "orders", "paid"), ("p2", "orders", "paid"), ("r1", "orders", "refund"), ("r2", "orders", "refund"),
         ("u1", "orders", "nobody"), ("e1", "events", "order.paid"), ("e2", "events", "order.refund")]
TAKE = {"red-packet": 2, "refunds": 1, "audit-all": 2, "paid-only": 1}  # r2 stays in refunds


def test_expected_queues_follow_the_routing_key(amqp_url, store_url, tmp_path):
    store = Store(store_url)
    store.init_schema()
    t0 = time.time_ns() // 1000
    t = Tracer(service="order", store=store_url, spool_dir=str(tmp_path / "spool"), mq="rabbitmq")
    conn = connect(amqp_url)
    try:
        ch = t.wrap_channel(conn.channel())
        for (ex, kind), queues in ROUTES.items():
            ch.exchange_declare(ex, kind)
            for q, key in queues.items():
                ch.queue_declare(q)
                ch.queue_bind(q, ex, key)
        ch.confirm_delivery()
        for mid, ex, key in SENDS:  # each confirmed by the broker (u1 too: unroutable, not mandatory)
            ch.basic_publish(ex, key, mid.encode(), pika.BasicProperties(delivery_mode=2), msg_id=mid)
        got: dict[str, list[str]] = {}
        for q, n in TAKE.items():
            for _ in range(n):
                method, props, body = ch.basic_get(q)
                assert method is not None, q
                with t.processing(method):
                    got.setdefault(q, []).append(body.decode())
                ch.basic_ack(method.delivery_tag)
        assert got == {"red-packet": ["p1", "p2"], "refunds": ["r1"], "audit-all": ["e1", "e2"], "paid-only": ["e1"]}
        assert ch.queue_declare("refunds", passive=True).method.message_count == 1  # r2 waits
    finally:
        conn.close()
    assert t.close(30)
    now = time.time_ns() // 1000
    try:
        res = reconcile(store, t0, now + 1_000_000, grace_s=0, now_us=now + 2_000_000, write=False)
        rows = {(r.msg_id, r.consumer_group): r for r in res.rows}
        assert {k: r.verdict for k, r in rows.items()} == {("r2", "refunds"): V.PENDING_IN_BROKER,
                                                           ("u1", ""): V.PENDING_IN_BROKER}, \
            {k: (r.verdict, r.evidence) for k, r in rows.items()}
        assert "routing key 'nobody'" in rows[("u1", "")].evidence and "unroutable" in rows[("u1", "")].evidence
        assert res.summary == {V.DELIVERED: 6, V.PENDING_IN_BROKER: 2}  # red-packet 2, refunds 1, audit-all 2, paid-only 1
        # trace-msg with --topic-groups: the queues of the message's routing key only
        for mid, want in (("p1", {"red-packet": V.DELIVERED}), ("r2", {"refunds": V.PENDING_IN_BROKER}),
                          ("e2", {"audit-all": V.DELIVERED}),
                          ("e1", {"audit-all": V.DELIVERED, "paid-only": V.DELIVERED})):
            got_v = {v.consumer_group: v.verdict for v in judge_message(store, mid, topic_groups_window_s=3600)}
            assert got_v == want, (mid, got_v)
        # groups named by the SRE are judged as asked, routed or not
        named = reconcile(store, t0, now + 1_000_000, grace_s=0, now_us=now + 2_000_000, write=False,
                          groups=["refunds"])
        assert {(r.msg_id, r.verdict) for r in named.rows} >= {("p1", V.PENDING_IN_BROKER), ("r2", V.PENDING_IN_BROKER)}
    finally:
        if store.engine == "clickhouse":
            store.command("DROP DATABASE IF EXISTS {db:Identifier}")
        store.close()
