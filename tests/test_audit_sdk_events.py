"""What the hooks put in the audit for a record re-published by ``msgtrace replay`` (its
``msgtrace-replay`` header becomes ``attrs.replay_run`` on every consumer-side event), for a
dead-lettered record (``record("dead_lettered", record, dlq_topic=..., dlq_partition=...,
dlq_offset=...)``), and what a shipper process says while the audit Kafka is down (one line of
ours, not kafka-python's connection log).

Real brokers: Tansu (kafka-python, confluent-kafka) and RabbitMQ (pika); the events are read back
from the spool exactly as the shipper would ship them.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pika
import pytest
from confluent_kafka import Consumer as CkConsumer
from confluent_kafka import Producer as CkProducer
from kafka import KafkaConsumer, KafkaProducer
from test_hooks import new_topic, spool_events

from tracer import Tracer
from tracer.events import MSG_ID_HEADER
from tracer.identity import REPLAY_HEADER
from tracer.localsvc import free_port, wait_until
from tracer.sdk.emitter import NullSink

RUN = "replay-run-7f3a"
CONSUMER_STAGES = {"received", "offset_committed", "business_done", "business_failed", "dead_lettered"}


def _check(events, replayed: str, plain: str, failed: str | None = None) -> None:
    by: dict[str, dict[str, object]] = {}
    for e in events:
        by.setdefault(e.msg_id, {})[e.stage] = e
    r = by[replayed]
    assert {"received", "offset_committed", "business_done", "dead_lettered"} <= set(r), sorted(r)
    for stage, e in r.items():
        assert e.attrs.get("replay_run") == RUN, (stage, e.attrs)  # type: ignore[attr-defined]
    dl = r["dead_lettered"]
    assert {k: dl.attrs[k] for k in ("dlq_topic", "dlq_partition", "dlq_offset")} == {  # type: ignore[attr-defined]
        "dlq_topic": "orders.dlq", "dlq_partition": "0", "dlq_offset": "42"}
    if failed is not None:
        assert by[failed]["business_failed"].attrs.get("replay_run") == RUN  # type: ignore[attr-defined]
    for stage, e in by[plain].items():
        assert "replay_run" not in e.attrs, (stage, e.attrs)  # type: ignore[attr-defined]


def _handle(t: Tracer, record, msg_id: str, replayed: str, failed: str) -> None:
    try:
        with t.processing(record):
            if msg_id == failed:
                raise ValueError("bad amount")
    except ValueError:
        pass
    if msg_id == replayed:
        t.record("dead_lettered", record, dlq_topic="orders.dlq", dlq_partition=0, dlq_offset=42)


@pytest.mark.kafka
def test_kafka_python_replayed_records_name_their_run(kafka_bootstrap, tmp_path):
    topic = new_topic(kafka_bootstrap, 1)
    ids = [f"m-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    replayed, plain, failed = ids
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for m in ids:
        hs = [(MSG_ID_HEADER, m.encode())] + ([(REPLAY_HEADER, RUN.encode())] if m != plain else [])
        p.send(topic, b"paid", headers=hs).get(30)
    p.close(5)
    t = Tracer(service="red-packet", sink=NullSink(), spool_dir=str(tmp_path))
    c = t.wrap_consumer(KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=f"g-{topic}",
                                      auto_offset_reset="earliest", enable_auto_commit=False,
                                      session_timeout_ms=6000, heartbeat_interval_ms=1000))
    seen: list[str] = []
    try:
        def step() -> bool:
            for batch in c.poll(timeout_ms=300).values():
                for r in batch:
                    m = dict(r.headers)[MSG_ID_HEADER].decode()
                    _handle(t, r, m, replayed, failed)
                    seen.append(m)
            if seen:
                c.commit()
            return len(seen) >= 3

        wait_until(step, 60, "the three records", interval=0)
    finally:
        c.close(autocommit=False)
    wait_until(lambda: {e.stage for e in spool_events(t) if e.msg_id == plain} >= {"offset_committed"}, 30,
               "the commit to be recorded")
    _check(spool_events(t), replayed, plain, failed)
    t.close(0)


@pytest.mark.kafka
def test_confluent_replayed_records_name_their_run(kafka_bootstrap, tmp_path):
    topic = new_topic(kafka_bootstrap, 1)
    ids = [f"m-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    replayed, plain, failed = ids
    p = CkProducer({"bootstrap.servers": kafka_bootstrap})
    for m in ids:
        hs = [(MSG_ID_HEADER, m.encode())] + ([(REPLAY_HEADER, RUN.encode())] if m != plain else [])
        p.produce(topic, b"paid", headers=hs)
    assert p.flush(30) == 0
    t = Tracer(service="red-packet", sink=NullSink(), spool_dir=str(tmp_path))
    c = t.wrap_consumer(CkConsumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{topic}",
                                    "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                    "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}))
    c.subscribe([topic])
    seen: list[str] = []
    try:
        def step() -> bool:
            for msg in c.consume(num_messages=10, timeout=0.5):
                if msg.error() is not None:
                    continue
                m = dict(msg.headers())[MSG_ID_HEADER].decode()
                _handle(t, msg, m, replayed, failed)
                seen.append(m)
                c.commit(message=msg, asynchronous=False)
            return len(seen) >= 3

        wait_until(step, 60, "the three messages", interval=0)
    finally:
        c.close()
    _check(spool_events(t), replayed, plain, failed)
    t.close(0)


def test_pika_replayed_deliveries_name_their_run(amqp_url, tmp_path):
    queue = f"q-{uuid.uuid4().hex[:6]}"
    ids = [f"m-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    replayed, plain, failed = ids
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    t = Tracer(service="red-packet", sink=NullSink(), spool_dir=str(tmp_path), mq="rabbitmq")
    try:
        raw = conn.channel()
        raw.queue_declare(queue)
        for m in ids:
            hs = {MSG_ID_HEADER: m, **({REPLAY_HEADER: RUN} if m != plain else {})}
            raw.basic_publish("", queue, b"paid", pika.BasicProperties(headers=hs))
        ch = t.wrap_channel(conn.channel())
        for _ in ids:
            method, props, _body = ch.basic_get(queue)
            assert method is not None
            m = props.headers[MSG_ID_HEADER]
            _handle(t, method, m, replayed, failed)
            ch.basic_ack(method.delivery_tag)
    finally:
        conn.close()
    _check(spool_events(t), replayed, plain, failed)
    t.close(0)


OWNER = textwrap.dedent("""
    import sys, time
    from tracer import Tracer
    t = Tracer(service="svc", bootstrap=sys.argv[1], audit_topic="audit", spool_dir=sys.argv[2])
    end = time.monotonic() + float(sys.argv[3])
    while time.monotonic() < end:
        t.record("sent", "m", topic="orders")
        time.sleep(0.01)
    t.close(1)
""")


@pytest.mark.kafka
def test_the_shipper_process_is_quiet_while_the_audit_kafka_is_down(tmp_path):
    """Before: kafka-python logged each failed connection attempt of the shipper process (several
    lines a second) on the business service's stderr. Now: a rate-limited line of msgtrace's."""
    dead = f"127.0.0.1:{free_port()}"
    # the pipe stays open until the orphaned shipper, still trying at close, gives up too (seconds)
    p = subprocess.run([sys.executable, "-c", OWNER, dead, str(tmp_path / "spool"), "8"], capture_output=True,
                       text=True, timeout=90)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert all("msgtrace:" in ln for ln in lines), lines[:20]  # nothing of kafka-python's (43 lines before)
    assert 1 <= len(lines) <= 4, lines
    assert any("shipping to kafka failed" in ln for ln in lines), lines
