"""msgtrace beside OpenTelemetry's pika instrumentation: one traceparent (OpenTelemetry's), no spans of
msgtrace's own even when asked for spans, the audit events carry OpenTelemetry's trace and send span
ids, and trace-msg prints the trace id."""
from __future__ import annotations

import orjson
import pika
import pytest
from click.testing import CliRunner
from opentelemetry.instrumentation.pika import PikaInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from test_rabbitmq_hooks import connect, drain

from tracer import Tracer
from tracer.cli.tracemsg import trace_msg


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from tracer.cli.util import out

    monkeypatch.setattr(out, "_width", 250)


def test_reuses_the_instrumentations_context(amqp_url, chdb_url, tmp_path):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    t = Tracer(service="otel", store=chdb_url, spool_dir=str(tmp_path / "spool"), otel_spans=provider,
               mq="rabbitmq")
    conn = connect(amqp_url)
    try:
        raw = conn.channel()
        PikaInstrumentor.instrument_channel(raw, tracer_provider=provider)
        ch = t.wrap_channel(raw)
        ch.queue_declare("red-packet")
        ch.confirm_delivery()
        ch.basic_publish("", "red-packet", b"paid", pika.BasicProperties(headers={"tenant": "a"}),
                         msg_id="order-1:paid")
        got = []

        def on_message(c, method, properties, body):
            with t.processing(method):
                got.append(dict(properties.headers))
            c.basic_ack(method.delivery_tag)

        ch.basic_consume("red-packet", on_message)
        drain(conn, lambda: got, 20, "the delivery")
    finally:
        conn.close()
    assert t.flush(30)
    [headers] = got
    assert sorted(headers) == ["msgtrace-id", "tenant", "traceparent"]  # the caller's header kept, one context
    spans = exporter.get_finished_spans()
    assert all(s.instrumentation_scope.name != "msgtrace" for s in spans), [s.name for s in spans]
    [send] = [s for s in spans if s.kind == SpanKind.PRODUCER]
    [recv] = [s for s in spans if s.kind == SpanKind.CONSUMER]
    assert headers["traceparent"][:52] == f"00-{send.context.trace_id:032x}-{send.context.span_id:016x}"
    assert recv.parent.span_id == send.context.span_id  # OpenTelemetry's own link, untouched
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
