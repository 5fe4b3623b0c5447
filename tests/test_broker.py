"""The wire format through a real Kafka-protocol broker, and the broker fixture itself."""
from __future__ import annotations

import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from tracer.events import Event, decode_batch, encode_batch, record_headers


def test_audit_records_survive_the_broker(kafka_bootstrap):
    topic = f"audit-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    batches = [[Event(msg_id=f"订单-{b}-{i}", stage="sent", topic="order-paid", emitter_id="e", seq=b * 10 + i + 1)
                for i in range(10)] for b in range(5)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for batch in batches:
        producer.send(topic, encode_batch(batch), headers=record_headers())
    producer.flush(30)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=10_000)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    got = []
    for record in consumer:
        decoded = decode_batch(record.value, record.headers)
        assert decoded.bad == []
        got.append(decoded.events)
        if len(got) == len(batches):
            break
    consumer.close()
    assert got == batches


def test_restart_loses_the_log(tansu):
    """The demo's 'broker lost acknowledged messages' relies on this."""
    producer = KafkaProducer(bootstrap_servers=tansu.bootstrap, retries=0)
    meta = producer.send("lossy", b"x").get(timeout=30)
    producer.close()
    assert meta.offset == 0
    tansu.restart()
    producer = KafkaProducer(bootstrap_servers=tansu.bootstrap, retries=0)
    assert producer.send("lossy", b"y").get(timeout=30).offset == 0  # offsets start over
    producer.close()
