"""Verdicts from real runs: the hooks (Tracer, wrap_producer, wrap_consumer, processing, record), a real
Tansu broker (restarted to lose its log) and the embedded chDB store the tracer writes to directly.

One run injects the losses one after another; the reconciler must name each.
"""
from __future__ import annotations

import time

import pytest

kafka = pytest.importorskip("kafka")
from kafka import KafkaConsumer, KafkaProducer  # noqa: E402
from kafka.admin import KafkaAdminClient, NewTopic  # noqa: E402
from kafka.errors import KafkaTimeoutError  # noqa: E402
from kafka.structs import OffsetAndMetadata, TopicPartition  # noqa: E402

from tracer import verdicts as V  # noqa: E402
from tracer.analysis.expected import ExpectedSource  # noqa: E402
from tracer.analysis.reconcile import judge_message, reconcile  # noqa: E402
from tracer.localsvc import free_port, wait_until  # noqa: E402
from tracer.sdk.tracer import Tracer  # noqa: E402
from tracer.store import Store  # noqa: E402

TOPIC = "orders.paid"
GROUP = "red-packet"


def create_topic(bootstrap: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(TOPIC, 1, 1)])
    finally:
        admin.close()


def consumer(t: Tracer, bootstrap: str):
    return t.wrap_consumer(KafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=GROUP,
                                         enable_auto_commit=False, auto_offset_reset="earliest",
                                         session_timeout_ms=6000, heartbeat_interval_ms=1000))


def poll_until(c, want: int, timeout: float = 60.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=500).values():
            got.extend(recs)
    assert len(got) >= want, f"received {len(got)} of {want}"
    return got


def mid(record) -> str:
    return dict(record.headers)["msgtrace-id"].decode()


@pytest.mark.timeout(240)
def test_losses_injected_through_the_hooks_are_named(tansu, chdb_url, tmp_path):
    store = Store(chdb_url)
    store.init_schema()
    t0 = time.time_ns() // 1000
    t = Tracer(service="red-packet-case", store=chdb_url, spool_dir=str(tmp_path / "spool"))
    create_topic(tansu.bootstrap)
    producer = t.wrap_producer(KafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all", linger_ms=0))
    for m in ("delivered", "lost-consumer", "failed-committed", "dead-lettered", "in-flight"):
        producer.send(TOPIC, b"paid", msg_id=f"order:{m}").get(timeout=30)

    c = consumer(t, tansu.bootstrap)
    for r in poll_until(c, 5):
        m = mid(r)
        if m == "order:delivered":
            with t.processing(r):
                pass  # the red packet is paid
        elif m == "order:failed-committed":
            try:
                with t.processing(r):
                    raise RuntimeError("payment gateway said no")
            except RuntimeError:
                pass  # swallowed: the error is logged and the offset committed anyway
        elif m == "order:dead-lettered":
            t.record("dead_lettered", r, error="poison message", dlq_topic="orders.paid.DLT")
        elif m == "order:in-flight":
            break  # received; the consumer stops before committing it or finishing the work
        # order:lost-consumer: offset committed (as auto-commit would) and no business work at all
        c.commit({TopicPartition(r.topic, r.partition): OffsetAndMetadata(r.offset + 1, "", -1)})
    c.close(autocommit=False)

    # producer -> unreachable broker: the client raises, the hook records send_failed
    dead = t.wrap_producer(KafkaProducer(bootstrap_servers=f"127.0.0.1:{free_port()}", api_version=(2, 5, 0),
                                         max_block_ms=300, retries=0))
    with pytest.raises(KafkaTimeoutError):
        dead.send(TOPIC, b"paid", msg_id="order:send-failed")
    dead.close(0)

    # acked, then the broker loses its log (memory broker restarted); the next message is acked at
    # offset 0 again and the group receives and processes it: the first one was lost in the broker
    lost_md = producer.send(TOPIC, b"paid", msg_id="order:lost-broker").get(timeout=30)
    producer.close(5)
    tansu.restart()
    create_topic(tansu.bootstrap)
    producer = t.wrap_producer(KafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all", linger_ms=0))
    after_md = producer.send(TOPIC, b"paid", msg_id="order:after-restart").get(timeout=30)
    assert after_md.offset <= lost_md.offset  # offsets reused
    c = consumer(t, tansu.bootstrap)
    for r in poll_until(c, 1):
        with t.processing(r):
            pass
        c.commit()
    c.close(autocommit=False)
    # acked after everything the group read: nobody has got there yet
    producer.send(TOPIC, b"paid", msg_id="order:pending").get(timeout=30)
    producer.close(5)
    assert t.close(timeout=30)

    expected = tmp_path / "expected.txt"
    expected.write_text("order:delivered\norder:never-sent\n", encoding="utf-8")
    now = time.time_ns() // 1000
    with store.session():
        wait_until(lambda: store.query("SELECT uniqExact(msg_id) AS n FROM {db:Identifier}.trace_events")[0]["n"]
                   >= 9, 30, "the tracer's events in the store")
    res = reconcile(store, t0, now + 1_000_000, grace_s=0, now_us=now + 2_000_000,
                    expected=ExpectedSource(path=str(expected)))
    got = {r.msg_id: r for r in res.rows if r.consumer_group in (GROUP, "")}
    want = {
        "order:lost-consumer": V.LOST_IN_CONSUMER,
        "order:failed-committed": V.FAILED_AND_COMMITTED,
        "order:dead-lettered": V.DEAD_LETTERED,
        "order:in-flight": V.IN_FLIGHT,
        "order:send-failed": V.SEND_FAILED,
        "order:lost-broker": V.LOST_IN_BROKER,
        "order:pending": V.PENDING_IN_BROKER,
        "order:never-sent": V.NEVER_SENT,
    }
    assert {m: got[m].verdict for m in want if m in got} == want, {m: (r.verdict, r.evidence) for m, r in got.items()}
    assert "order:delivered" not in got and "order:after-restart" not in got
    assert res.summary[V.DELIVERED] == 2
    assert "offsets reused" in got["order:lost-broker"].evidence
    assert "payment gateway said no" in got["order:failed-committed"].evidence
    # trace-msg's judge agrees on the real data
    with store.session():
        for m, v in want.items():
            if v != V.NEVER_SENT:
                assert [x.verdict for x in judge_message(store, m) if x.consumer_group == GROUP] == [v], m
