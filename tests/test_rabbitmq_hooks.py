"""The pika hooks (``tracer.wrap_channel``) against a real RabbitMQ (Debian's rabbitmq-server), each test
in a vhost of its own; audit events shipped through a real audit topic (Tansu) or written to chDB.

Mapping under test (DESIGN.md, "Clients", RabbitMQ): topic = the exchange (the routing key for the
default exchange), consumer_group = the queue, no partition/offset; publisher confirms give
broker_acked / send_failed, returns of unroutable mandatory messages send_failed, deliveries received
(redelivered flag), basic_ack (multiple too) and auto_ack offset_committed, nack/reject without requeue
dead_lettered on a queue with a dead-letter exchange, else a settlement of a dropped message.
"""
from __future__ import annotations

import collections

import pika
import pytest
from pika.exceptions import NackError, UnroutableError
from test_hooks import assert_gap_free, by_msg, new_topic, read_audit

from tracer import Tracer
from tracer.events import MSG_ID_HEADER
from tracer.localsvc import wait_until

EXCHANGE, QUEUE, ROUTE = "orders", "red-packet", "paid"


def connect(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def declare(ch, queue: str = QUEUE, exchange: str = EXCHANGE, **arguments) -> None:
    ch.exchange_declare(exchange, "direct", durable=True)
    ch.queue_declare(queue, durable=True, arguments=arguments or None)
    ch.queue_bind(queue, exchange, ROUTE)


def drain(conn: pika.BlockingConnection, done, timeout: float = 60, what: str = "deliveries") -> None:
    """Dispatch deliveries until ``done()`` (callbacks run inside process_data_events)."""
    def step() -> bool:
        conn.process_data_events(time_limit=0.1)
        return bool(done())

    wait_until(step, timeout, what, interval=0)


@pytest.fixture
def audit(kafka_bootstrap, tmp_path):
    topic = new_topic(kafka_bootstrap, 1, "audit")
    t = Tracer(service="test-svc", bootstrap=kafka_bootstrap, audit_topic=topic, spool_dir=str(tmp_path / "spool"),
               mq="rabbitmq")
    yield t, topic
    t.close(timeout=5)


def test_1000_messages_exactly_five_stages(kafka_bootstrap, amqp_url, audit):
    t, audit_topic = audit
    n = 1000
    pconn, cconn = connect(amqp_url), connect(amqp_url)
    try:
        pub = t.wrap_channel(pconn.channel())
        declare(pub)
        pub.confirm_delivery()
        for i in range(n):
            # confirm mode: basic_publish returns once the broker acked (pika raises otherwise)
            assert pub.basic_publish(EXCHANGE, ROUTE, b"paid %d" % i, pika.BasicProperties(delivery_mode=2),
                                     msg_id=f"order-{i}:paid") is None

        sub = t.wrap_channel(cconn.channel())
        sub.basic_qos(prefetch_count=50)
        seen: list[str] = []
        tags: dict[str, int] = {}

        def on_message(ch, method, properties, body):
            assert ch is sub  # the application acks through the channel it was handed: the traced one
            with t.processing(method):
                seen.append(properties.headers[MSG_ID_HEADER])
                tags[seen[-1]] = method.delivery_tag
            if len(seen) % 10 == 0:
                ch.basic_ack(method.delivery_tag, multiple=True)  # one ack settles the last ten
            elif len(seen) > n - 10:
                ch.basic_ack(method.delivery_tag)

        sub.basic_consume(QUEUE, on_message)
        drain(cconn, lambda: len(seen) >= n, what=f"{n} deliveries")
        recorded = t.stats["recorded"]
        cconn.process_data_events(time_limit=0.3)  # nothing more to deliver: nothing recorded
        assert t.stats["recorded"] == recorded
        assert sub.queue_declare(QUEUE, passive=True).method.message_count == 0
    finally:
        pconn.close()
        cconn.close()
    assert t.flush(30)

    events = read_audit(kafka_bootstrap, audit_topic, expect=5 * n)
    assert_gap_free(events)
    msgs = by_msg(events)
    assert set(msgs) == {f"order-{i}:paid" for i in range(n)} == set(seen)
    for mid, evs in msgs.items():
        assert sorted(e.stage for e in evs) == sorted(["sent", "broker_acked", "received", "offset_committed",
                                                       "business_done"]), mid
        s = {e.stage: e for e in evs}
        assert all(e.mq == "rabbitmq" and e.topic == EXCHANGE for e in evs)
        assert all(e.partition is None and e.offset is None for e in evs)
        assert s["sent"].key == ROUTE and s["sent"].consumer_group is None
        assert s["broker_acked"].consumer_group is None
        for st in ("received", "offset_committed", "business_done"):
            assert s[st].consumer_group == QUEUE, (mid, st)
        r = s["received"]
        assert r.attrs["delivery_tag"] == str(tags[mid]) and r.attrs["redelivered"] == "false"
        assert r.attrs["routing_key"] == ROUTE
        assert s["offset_committed"].attrs["delivery_tag"] == str(tags[mid])
        assert len({e.trace_id for e in evs}) == 1  # one trace id (or none at all) on both sides


def test_basic_get_auto_ack_and_the_default_exchange(amqp_url, chdb_url, tmp_path):
    """basic_get deliveries are received; auto_ack settles them at delivery; the default exchange names the queue."""
    t = Tracer(service="svc", store=chdb_url, spool_dir=str(tmp_path / "spool"), mq="rabbitmq")
    conn = connect(amqp_url)
    try:
        ch = t.wrap_channel(conn.channel())
        ch.queue_declare("jobs")
        ch.confirm_delivery()
        ch.basic_publish("", "jobs", b"a", msg_id="job-a")
        ch.basic_publish("", "jobs", b"b", msg_id="job-b")
        m, props, body = ch.basic_get("jobs", auto_ack=True)
        assert body == b"a" and props.headers[MSG_ID_HEADER] == "job-a"
        with t.processing(m):
            pass
        m, props, body = ch.basic_get("jobs")
        assert body == b"b"
        with t.processing(m):
            pass
        ch.basic_ack(m.delivery_tag)
        assert ch.basic_get("jobs") == (None, None, None)  # an empty get records nothing
    finally:
        conn.close()
    assert t.close(30)
    from tracer.store import Store

    with Store(chdb_url) as store:
        events = {m: store.select_events(m) for m in ("job-a", "job-b")}
    for m, evs in events.items():
        assert sorted(e.stage for e in evs) == sorted(["sent", "broker_acked", "received", "offset_committed",
                                                       "business_done"]), m
        assert all(e.topic == "jobs" for e in evs)
        assert all(e.consumer_group == "jobs" for e in evs if e.stage in ("received", "offset_committed",
                                                                            "business_done"))
    [auto] = [e for e in events["job-a"] if e.stage == "offset_committed"]
    assert auto.attrs.get("auto_ack") == "true"
    [manual] = [e for e in events["job-b"] if e.stage == "offset_committed"]
    assert "auto_ack" not in manual.attrs


def test_publish_failures_are_send_failed_and_reraised(amqp_url, chdb_url, tmp_path):
    """Unroutable mandatory (returned, then acked), a nack (queue full with reject-publish), a channel
    closed by the broker (no such exchange), and a return without confirms: each one send_failed."""
    t = Tracer(service="svc", store=chdb_url, spool_dir=str(tmp_path / "spool"), mq="rabbitmq")
    conn = connect(amqp_url)
    try:
        ch = t.wrap_channel(conn.channel())
        ch.confirm_delivery()
        declare(ch)
        with pytest.raises(UnroutableError):
            ch.basic_publish(EXCHANGE, "no-such-route", b"x", mandatory=True, msg_id="m-unroutable")
        ch.basic_publish(EXCHANGE, "no-such-route", b"x", msg_id="m-dropped-by-exchange")  # no mandatory: acked
        ch.queue_declare("tiny", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        ch.basic_publish("", "tiny", b"1", msg_id="m-fits")
        with pytest.raises(NackError):
            ch.basic_publish("", "tiny", b"2", msg_id="m-nacked")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            ch.basic_publish("no-such-exchange", ROUTE, b"x", msg_id="m-channel-closed")

        ch2 = t.wrap_channel(conn.channel())  # no confirms: the return comes later, as an event
        returned = []
        ch2.add_on_return_callback(lambda c, method, props, body: returned.append(props.headers[MSG_ID_HEADER]))
        ch2.basic_publish(EXCHANGE, "no-such-route", b"x", mandatory=True, msg_id="m-returned-late")
        drain(conn, lambda: returned, 10, "the basic.return")
        assert returned == ["m-returned-late"]  # the application's own return callback still runs
    finally:
        conn.close()
    assert t.close(30)
    from tracer.store import Store

    got = collections.defaultdict(dict)
    with Store(chdb_url) as store:
        for m in ("m-unroutable", "m-dropped-by-exchange", "m-fits", "m-nacked", "m-channel-closed",
                  "m-returned-late"):
            for e in store.select_events(m):
                got[m][e.stage] = e.error
    assert set(got["m-unroutable"]) == {"sent", "send_failed"} and "NO_ROUTE" in got["m-unroutable"]["send_failed"]
    assert set(got["m-dropped-by-exchange"]) == {"sent", "broker_acked"}
    assert set(got["m-fits"]) == {"sent", "broker_acked"}
    assert set(got["m-nacked"]) == {"sent", "send_failed"} and "Nack" in got["m-nacked"]["send_failed"]
    assert set(got["m-channel-closed"]) == {"sent", "send_failed"}
    assert "404" in got["m-channel-closed"]["send_failed"]
    assert set(got["m-returned-late"]) == {"sent", "send_failed"}
    assert "NO_ROUTE" in got["m-returned-late"]["send_failed"]


def test_verdicts_from_a_real_run(amqp_url, chdb_url, tmp_path):
    """Swallowed handler error -> failed_and_committed; unacked then the channel closed, delivered again ->
    delivered + redelivered; nack to a dead-letter exchange -> dead_lettered; a rejected message on a queue
    without one -> judged as the business dropping it; received and never settled -> in_flight."""
    import time

    from tracer import verdicts as V
    from tracer.analysis.reconcile import reconcile
    from tracer.store import Store

    store = Store(chdb_url)
    store.init_schema()
    t0 = time.time_ns() // 1000
    t = Tracer(service="red-packet", store=chdb_url, spool_dir=str(tmp_path / "spool"), mq="rabbitmq")
    cases = ["delivered", "failed-committed", "redelivered", "dead-lettered", "rejected-after-failure",
             "rejected-unprocessed", "in-flight"]
    pconn, c1, c2 = connect(amqp_url), connect(amqp_url), connect(amqp_url)
    try:
        pub = t.wrap_channel(pconn.channel())
        pub.exchange_declare("orders.dlx", "fanout")
        pub.queue_declare("orders.dlq")
        pub.queue_bind("orders.dlq", "orders.dlx")
        declare(pub, QUEUE, **{"x-dead-letter-exchange": "orders.dlx"})  # the wrapper learns the DLX here
        pub.exchange_declare("orders.nodlx", "direct")  # its own exchange: one queue per topic here
        pub.queue_declare("no-dlx", durable=True)
        pub.queue_bind("no-dlx", "orders.nodlx", ROUTE)
        pub.confirm_delivery()
        for c in cases:
            pub.basic_publish("orders.nodlx" if c.startswith("rejected") else EXCHANGE, ROUTE, b"paid",
                              pika.BasicProperties(delivery_mode=2), msg_id=f"order:{c}")

        first = t.wrap_channel(c1.channel())
        first.basic_qos(prefetch_count=1)
        got = []

        def handler(ch, method, props, body):
            m = props.headers[MSG_ID_HEADER]
            got.append(m)
            if m == "order:redelivered" and not method.redelivered:
                return  # received, then this consumer goes away before acking: RabbitMQ requeues it
            if m == "order:in-flight":
                return  # received and never settled
            if m in ("order:failed-committed", "order:rejected-after-failure"):
                try:
                    with t.processing(method):
                        raise RuntimeError("payment gateway said no")
                except RuntimeError:
                    pass  # swallowed
                if m == "order:failed-committed":
                    ch.basic_ack(method.delivery_tag)
                else:
                    ch.basic_reject(method.delivery_tag, requeue=False)
                return
            if m == "order:rejected-unprocessed":
                ch.basic_nack(method.delivery_tag, requeue=False)
                return
            if m == "order:dead-lettered":
                ch.basic_nack(method.delivery_tag, requeue=False)  # poison: parked in orders.dlq
                return
            with t.processing(method):
                pass
            ch.basic_ack(method.delivery_tag)

        first.basic_consume(QUEUE, handler)
        drain(c1, lambda: "order:redelivered" in got, 30, "the first delivery of order:redelivered")
        c1.close()  # unacked: requeued
        second = t.wrap_channel(c2.channel())
        second.basic_consume(QUEUE, handler)
        second.basic_consume("no-dlx", handler)
        drain(c2, lambda: len(got) >= len(cases) + 1, 30, "every delivery")
        assert got.count("order:redelivered") == 2
        # the broker dead-letters asynchronously after the nack: wait for it, then nothing is left in no-dlx
        wait_until(lambda: second.queue_declare("orders.dlq", passive=True).method.message_count == 1, 10,
                   "the poison message in orders.dlq")
        assert second.queue_declare("no-dlx", passive=True).method.message_count == 0
        assert t.flush(30)
        now = time.time_ns() // 1000
        res = reconcile(store, t0, now + 1_000_000, grace_s=0, now_us=now + 2_000_000)
    finally:
        pconn.close()
        c2.close()
        t.close(10)
    verdicts = {r.msg_id: r for r in res.rows}
    want = {
        "order:failed-committed": V.FAILED_AND_COMMITTED,
        "order:dead-lettered": V.DEAD_LETTERED,
        "order:rejected-after-failure": V.FAILED_AND_COMMITTED,
        "order:rejected-unprocessed": V.LOST_IN_CONSUMER,
        "order:in-flight": V.IN_FLIGHT,
        "order:redelivered": V.DELIVERED,
    }
    assert {m: verdicts[m].verdict for m in want if m in verdicts} == want, \
        {m: (r.verdict, r.evidence) for m, r in verdicts.items()}
    assert "redelivered" in verdicts["order:redelivered"].flags
    assert "order:delivered" not in verdicts  # plainly delivered
    assert res.summary[V.DELIVERED] == 2
    store.close()


def test_select_connection_channel(amqp_url, tmp_path):
    """pika's asynchronous channel (SelectConnection): confirms arrive as Basic.Ack frames (possibly
    multiple), a mandatory message nobody is bound for is returned before its ack, deliveries come to the
    basic_consume callback and are acked with multiple=True."""
    from test_hooks import spool_events

    from tracer.sdk.emitter import NullSink

    t = Tracer(service="svc", sink=NullSink(), spool_dir=str(tmp_path), mq="rabbitmq")
    n = 20
    state = {"confirms": 0, "got": [], "error": None}

    def on_open(conn):
        conn.channel(on_open_callback=on_channel)

    def on_channel(raw):
        ch = t.wrap_channel(raw)
        state["ch"] = ch

        def declared(_frame):
            ch.confirm_delivery(lambda frame: state.__setitem__("confirms", state["confirms"] + 1),
                                callback=lambda _f: publish(ch))

        ch.queue_declare("async-q", callback=declared)

    def publish(ch):
        for i in range(n):
            ch.basic_publish("", "async-q", b"x", msg_id=f"a-{i}")
        ch.basic_publish("amq.direct", "nobody", b"x", mandatory=True, msg_id="a-unroutable")

        def on_message(c, method, properties, body):
            assert c is ch
            with t.processing(method):
                state["got"].append(properties.headers[MSG_ID_HEADER])
            if len(state["got"]) % 5 == 0:
                c.basic_ack(method.delivery_tag, multiple=True)
            if len(state["got"]) == n:
                c.connection.ioloop.call_later(0.3, c.connection.close)

        ch.basic_consume("async-q", on_message)

    conn = pika.SelectConnection(pika.URLParameters(amqp_url), on_open_callback=on_open,
                                 on_open_error_callback=lambda c, e: state.__setitem__("error", e),
                                 on_close_callback=lambda c, e: c.ioloop.stop())
    timer = conn.ioloop.call_later(30, conn.ioloop.stop)
    conn.ioloop.start()
    conn.ioloop.remove_timeout(timer)
    assert state["error"] is None and len(state["got"]) == n
    stages = collections.defaultdict(list)
    for e in spool_events(t):
        stages[e.msg_id].append(e.stage)
    for i in range(n):
        assert sorted(stages[f"a-{i}"]) == sorted(["sent", "broker_acked", "received", "offset_committed",
                                                   "business_done"]), (i, stages[f"a-{i}"])
    assert stages["a-unroutable"] == ["sent", "send_failed"]
    t.close(0)
