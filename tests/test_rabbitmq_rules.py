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


def test_a_delivery_its_queue_never_gave_again_is_lost_in_consumer(store_url, tmp_path):
    """RabbitMQ requeues an unacked delivery when its consumer's channel closes and delivers it again
    first. A delivery neither acked nor seen again while its queue went on delivering for longer than the
    grace was settled outside the hooks (or is held by a stuck handler): lost_in_consumer. Within the
    grace, or when the queue delivered nothing since, it stays in_flight."""
    t0 = (time.time_ns() // 1000) - 3600 * S
    grace = 300
    t = Tracer(service="red-packet", store=store_url, spool_dir=str(tmp_path / "spool"), mq="rabbitmq")

    def publish(mid: str, at: int) -> None:
        t.record("sent", mid, topic="orders", key="paid", ts_us=t0 + at * S)
        t.record("broker_acked", mid, topic="orders", key="paid", ts_us=t0 + at * S + 1000)

    def deliver(mid: str, at: int, queue: str, settled: bool = True) -> None:
        stages = ("received", "business_done", "offset_committed") if settled else ("received",)
        for i, stage in enumerate(stages):
            t.record(stage, mid, topic="orders", key="paid", consumer_group=queue, ts_us=t0 + at * S + i * 1000)

    publish("m:dropped", 1)
    deliver("m:dropped", 2, "red-packet", settled=False)  # taken, never acked, never again
    publish("m:recent", 10)
    deliver("m:recent", 2 + grace, "red-packet", settled=False)  # taken just before the queue's last delivery
    publish("m:later", 20)
    deliver("m:later", 2 + grace + 60, "red-packet")  # the queue went on, past the grace after m:dropped
    publish("m:idle", 30)
    deliver("m:idle", 31, "points", settled=False)  # its queue delivered nothing since: RabbitMQ will
    publish("m:points-before", 25)
    deliver("m:points-before", 30, "points")
    assert t.close(30)

    store = Store(store_url)
    try:
        now = t0 + 3000 * S
        res = reconcile(store, t0 - S, t0 + 1200 * S, grace_s=grace, now_us=now, write=False,
                        groups=("red-packet", "points"))
        rows = {(r.msg_id, r.consumer_group): r for r in res.rows}
        got = {k: r.verdict for k, r in rows.items()}
        assert got[("m:dropped", "red-packet")] == V.LOST_IN_CONSUMER, rows[("m:dropped", "red-packet")].evidence
        assert got[("m:recent", "red-packet")] == V.IN_FLIGHT  # only 60 s before the queue's latest delivery
        assert got[("m:idle", "points")] == V.IN_FLIGHT
        lost = rows[("m:dropped", "red-packet")]
        assert lost.decided_by == "queue_never_redelivered"
        assert "never acked nor received again" in lost.evidence and "'m:later'" in lost.evidence
        [v] = [v for v in judge_message(store, "m:dropped", groups=("red-packet",), now_us=now)
               if v.consumer_group == "red-packet"]
        assert v.verdict == V.LOST_IN_CONSUMER
    finally:
        if store.engine == "clickhouse":
            store.command("DROP DATABASE IF EXISTS {db:Identifier}")
        store.close()
