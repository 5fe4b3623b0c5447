"""RabbitMQ's broker-side loss, judged with RabbitMQ's evidence (no partitions, no offsets).

A real node of the test's own (``rabbitmq_server``) acks a non-persistent message into a durable queue
and is restarted: the message is gone. A message published later by the same host with the same
exchange and routing key is delivered by that queue, which delivers in order, so the reconciler names
the first one ``lost_in_broker`` (a persistent message published before the restart survives and is
delivered; one published after everything, never consumed, stays ``pending_in_broker``). trace-msg's
one-message judge agrees.
"""
from __future__ import annotations

import time

import pika
from test_rabbitmq_hooks import EXCHANGE, QUEUE, ROUTE, connect, declare, drain

from tracer import Tracer
from tracer import verdicts as V
from tracer.analysis.reconcile import judge_message, reconcile
from tracer.store import Store


def test_non_persistent_message_lost_in_a_restart(rabbitmq_server, chdb_url, tmp_path):
    url = rabbitmq_server.url()
    store = Store(chdb_url)
    store.init_schema()
    t0 = time.time_ns() // 1000
    t = Tracer(service="order", store=chdb_url, spool_dir=str(tmp_path / "spool"), mq="rabbitmq")

    def publish(*msgs: tuple[str, int]) -> None:
        conn = connect(url)
        try:
            ch = t.wrap_channel(conn.channel())
            declare(ch)
            ch.confirm_delivery()
            for mid, mode in msgs:
                ch.basic_publish(EXCHANGE, ROUTE, b"paid", pika.BasicProperties(delivery_mode=mode), msg_id=mid)
        finally:
            conn.close()

    publish(("order:persistent", 2), ("order:lost-broker", 1))  # both acked (confirm mode)
    rabbitmq_server.restart()  # the durable queue survives, the transient message does not
    publish(("order:after-restart", 2))
    conn = connect(url)
    got: list[str] = []
    try:
        ch = t.wrap_channel(conn.channel())

        def on_message(c, method, properties, body):
            with t.processing(method):
                got.append(properties.headers["msgtrace-id"])
            c.basic_ack(method.delivery_tag)

        ch.basic_consume(QUEUE, on_message)
        drain(conn, lambda: len(got) >= 2, 30, "the two surviving messages")
        conn.process_data_events(time_limit=0.3)
        assert got == ["order:persistent", "order:after-restart"]
    finally:
        conn.close()
    publish(("order:pending", 2))  # acked after everything the queue delivered: nobody got there yet
    assert t.close(30)

    now = time.time_ns() // 1000
    res = reconcile(store, t0, now + 1_000_000, grace_s=0, now_us=now + 2_000_000)
    rows = {r.msg_id: r for r in res.rows}
    assert {m: (r.verdict, r.consumer_group) for m, r in rows.items()} == {
        "order:lost-broker": (V.LOST_IN_BROKER, QUEUE),
        "order:pending": (V.PENDING_IN_BROKER, QUEUE),
    }, {m: (r.verdict, r.evidence) for m, r in rows.items()}
    lost = rows["order:lost-broker"]
    assert "order:after-restart" in lost.evidence and "in order" in lost.evidence
    assert res.summary == {V.DELIVERED: 2, V.LOST_IN_BROKER: 1, V.PENDING_IN_BROKER: 1}
    [one] = judge_message(store, "order:lost-broker")  # trace-msg's judge: the same verdict
    assert (one.verdict, one.consumer_group) == (V.LOST_IN_BROKER, QUEUE)
    store.close()
