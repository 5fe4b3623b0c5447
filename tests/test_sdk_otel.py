"""Optional OpenTelemetry spans (messaging semantic conventions) linked to the audit events."""
from __future__ import annotations

import uuid

from kafka import KafkaConsumer, KafkaProducer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from test_hooks import GROUP_CFG, new_topic, spool_events

from tracer import Tracer
from tracer.localsvc import wait_until
from tracer.sdk.emitter import NullSink


def test_send_and_process_spans(kafka_bootstrap, tmp_path):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    t = Tracer(service="otel", sink=NullSink(), spool_dir=str(tmp_path), otel_spans=provider)
    topic = new_topic(kafka_bootstrap)
    producer = t.wrap_producer(KafkaProducer(bootstrap_servers=kafka_bootstrap))
    md = producer.send(topic, b"paid", key=b"user-1", msg_id="order-1:paid").get(timeout=30)
    producer.close()
    consumer = t.wrap_consumer(KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=f"g-{uuid.uuid4().hex[:6]}",
                                             enable_auto_commit=False, **GROUP_CFG))
    got = []

    def one() -> bool:
        for records in consumer.poll(timeout_ms=500).values():
            for r in records:
                with t.processing(r):
                    got.append(r)
        return bool(got)

    wait_until(one, 60, "the message")
    consumer.close()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    send, process = spans[f"send {topic}"], spans[f"process {topic}"]
    assert send.kind == SpanKind.PRODUCER and process.kind == SpanKind.CONSUMER
    assert send.attributes["messaging.system"] == "kafka"
    assert send.attributes["messaging.kafka.offset"] == md.offset
    assert process.attributes["messaging.consumer.group.name"].startswith("g-")
    assert process.parent.span_id == send.context.span_id  # the consumer continues the producer's trace
    events = {e.stage: e for e in spool_events(t)}
    assert events["sent"].span_id == f"{send.context.span_id:016x}"
    assert events["business_done"].span_id == f"{process.context.span_id:016x}"
    assert len({e.trace_id for e in events.values()}) == 1
    t.close(0)
