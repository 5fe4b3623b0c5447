"""msgtrace beside OpenTelemetry's confluent-kafka instrumentation: one traceparent (OpenTelemetry's), no
spans of msgtrace's own even when asked for spans, the audit events carry OpenTelemetry's trace and
send span ids, and trace-msg prints the trace id a Jaeger/Tempo user can open."""
from __future__ import annotations

import uuid

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from opentelemetry.instrumentation.confluent_kafka import ConfluentKafkaInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from test_confluent_hooks import consumer_conf, poll_until
from test_hooks import new_topic

from tracer import Tracer
from tracer.cli.tracemsg import trace_msg
from tracer.sdk import confluent as ck


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from tracer.cli.util import out

    monkeypatch.setattr(out, "_width", 250)


def test_reuses_the_instrumentations_context(kafka_bootstrap, chdb_url, tmp_path):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    t = Tracer(service="otel", store=chdb_url, spool_dir=str(tmp_path / "spool"), otel_spans=provider)
    topic = new_topic(kafka_bootstrap)
    inst = ConfluentKafkaInstrumentor()
    producer = t.wrap_producer(inst.instrument_producer(Producer({"bootstrap.servers": kafka_bootstrap}),
                                                        tracer_provider=provider))
    producer.produce(topic, b"paid", key=b"user-1", msg_id="order-1:paid")
    assert producer.flush(30) == 0
    consumer = t.wrap_consumer(inst.instrument_consumer(
        ck.Consumer(consumer_conf(kafka_bootstrap, f"g-{uuid.uuid4().hex[:6]}", **{"enable.auto.commit": False})),
        tracer_provider=provider))
    consumer.subscribe([topic])
    [m] = poll_until(consumer, 1)
    with t.processing(m):
        pass
    consumer.commit(asynchronous=False)
    consumer.close()
    assert t.flush(30)

    headers = m.headers()
    assert [k for k, _ in headers].count("traceparent") == 1
    assert sorted(k for k, _ in headers) == ["msgtrace-id", "traceparent"]
    spans = exporter.get_finished_spans()
    assert all(s.instrumentation_scope.name != "msgtrace" for s in spans), [s.name for s in spans]
    [send] = [s for s in spans if s.kind == SpanKind.PRODUCER]
    assert dict(headers)["traceparent"].decode()[:52] == f"00-{send.context.trace_id:032x}-{send.context.span_id:016x}"
    trace_id = f"{send.context.trace_id:032x}"
    t.close(10)

    r = CliRunner().invoke(trace_msg, ["order-1:paid", "--store", chdb_url, "--json"], catch_exceptions=False)
    doc = orjson.loads(r.stdout)
    by_stage = {e["stage"]: e for e in doc["events"]}
    assert set(by_stage) == {"sent", "broker_acked", "received", "offset_committed", "business_done"}
    assert {e["trace_id"] for e in doc["events"]} == {trace_id}
    assert by_stage["sent"]["span_id"] == by_stage["received"]["span_id"] == f"{send.context.span_id:016x}"
    r = CliRunner().invoke(trace_msg, ["order-1:paid", "--store", chdb_url], catch_exceptions=False)
    assert trace_id in r.stdout



def test_kafka_python_instrumentation_too(kafka_bootstrap, tmp_path):
    """The third client: OpenTelemetry's KafkaInstrumentor patches KafkaProducer.send (globally, undone
    here); msgtrace reuses its traceparent and records sent/broker_acked with its ids, no span of its own."""
    from kafka import KafkaProducer
    from opentelemetry.instrumentation.kafka import KafkaInstrumentor
    from test_hooks import spool_events

    from tracer.sdk.emitter import NullSink

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    inst = KafkaInstrumentor()
    inst.instrument(tracer_provider=provider)
    try:
        t = Tracer(service="otel", sink=NullSink(), spool_dir=str(tmp_path), otel_spans=provider)
        topic = new_topic(kafka_bootstrap)
        p = t.wrap_producer(KafkaProducer(bootstrap_servers=kafka_bootstrap))
        md = p.send(topic, b"paid", msg_id="order-1:paid").get(30)
        p.close()
    finally:
        inst.uninstrument()
    spans = exporter.get_finished_spans()
    assert all(s.instrumentation_scope.name != "msgtrace" for s in spans), [s.name for s in spans]
    [send] = [s for s in spans if s.kind == SpanKind.PRODUCER]
    evs = {e.stage: e for e in spool_events(t)}
    assert set(evs) == {"sent", "broker_acked"} and evs["broker_acked"].offset == md.offset
    assert {(e.trace_id, e.span_id) for e in evs.values()} == {
        (f"{send.context.trace_id:032x}", f"{send.context.span_id:016x}")}
    t.close(0)
