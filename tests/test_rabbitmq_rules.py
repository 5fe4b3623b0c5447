"""The reconciler's RabbitMQ broker evidence (``queue_delivered_later``) on both engines (chDB and
ClickHouse 18.16), from recorded histories: a queue that delivered a message sent after another one was
acked (same host, exchange and routing key) proves the other one left the queue undelivered."""
from __future__ import annotations

import time

from tracer import Tracer
from tracer import verdicts as V
from tracer.analysis.reconcile import judge_message, reconcile
from tracer.store import Store

S = 1_000_000


def test_queue_delivered_later_is_lost_in_broker(store_url, tmp_path):
    t0 = (time.time_ns() // 1000) - 600 * S
    t = Tracer(service="order", store=store_url, spool_dir=str(tmp_path / "spool"), mq="rabbitmq")

    def send(mid: str, at: int, key: str = "paid", acked: bool = True) -> None:
        t.record("sent", mid, topic="orders", key=key, ts_us=t0 + at * S)
        if acked:
            t.record("broker_acked", mid, topic="orders", key=key, ts_us=t0 + at * S + 1000)

    def consume(mid: str, at: int, key: str = "paid", queue: str = "red-packet") -> None:
        for i, stage in enumerate(("received", "business_done", "offset_committed")):
            t.record(stage, mid, topic="orders", key=key, consumer_group=queue, ts_us=t0 + at * S + i * 1000)

    send("m:lost", 1)
    send("m:other-key", 2, key="refund")  # another routing key: no queue of it delivered anything later
    send("m:delivered", 3)
    consume("m:delivered", 4)
    send("m:pending", 5)  # acked after the last message the queue delivered was sent
    send("m:refund-done", 0, key="refund")  # sent before m:other-key was acked: no evidence for it
    consume("m:refund-done", 6, key="refund", queue="refunds")
    assert t.close(30)

    store = Store(store_url)
    try:
        res = reconcile(store, t0 - S, t0 + 60 * S, grace_s=0, now_us=t0 + 120 * S, write=False)
        rows = {(r.msg_id, r.consumer_group): r for r in res.rows}
        got = {k: r.verdict for k, r in rows.items()}
        assert got == {
            ("m:lost", "red-packet"): V.LOST_IN_BROKER,
            ("m:pending", "red-packet"): V.PENDING_IN_BROKER,
            ("m:other-key", "refunds"): V.PENDING_IN_BROKER,
            # the queues expected for a message are those seen receiving its (exchange, routing key):
            # red-packet is never expected to get a refund, nor refunds a payment
            # (tests/test_rabbitmq_routing.py on a real RabbitMQ)
        }, {k: (r.verdict, r.evidence) for k, r in rows.items()}
        lost = rows[("m:lost", "red-packet")]
        assert lost.decided_by == "queue_delivered_later" and "'m:delivered'" in lost.evidence
        verdicts = {v.consumer_group: v.verdict for v in judge_message(store, "m:lost", groups=("red-packet",), now_us=t0 + 120 * S)}
        assert verdicts["red-packet"] == V.LOST_IN_BROKER
    finally:
        if store.engine == "clickhouse":
            store.command("DROP DATABASE IF EXISTS {db:Identifier}")
        store.close()
