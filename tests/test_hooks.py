"""The kafka-python hooks against a real Kafka-protocol broker (Tansu).

Audit events are shipped to an audit topic on the broker and read back with a
plain KafkaConsumer + decode_batch (the collector is not needed for this).
"""
from __future__ import annotations

import asyncio
import collections
import uuid
from types import SimpleNamespace

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata

from tracer import Tracer
from tracer.events import MSG_ID_HEADER, Event, decode_batch
from tracer.localsvc import free_port, wait_until
from tracer.sdk.emitter import NullSink

GROUP_CFG = dict(session_timeout_ms=6000, heartbeat_interval_ms=1000, auto_offset_reset="earliest")


def new_topic(bootstrap: str, partitions: int = 1, prefix: str = "t") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    return name


def read_audit(bootstrap: str, topic: str, expect: int | None = None, timeout: float = 30) -> list[Event]:
    """Every event on the audit topic (all partitions, from the beginning); asserts nothing is malformed."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = wait_until(lambda: consumer.partitions_for_topic(topic), timeout, f"audit topic {topic}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        events: list[Event] = []

        def caught_up() -> bool:
            for recs in consumer.poll(timeout_ms=200).values():
                for r in recs:
                    batch = decode_batch(r.value, r.headers)
                    assert batch.bad == []
                    events.extend(batch.events)
            if expect is not None:
                return len(events) >= expect
            end = consumer.end_offsets(tps)
            return all(consumer.position(tp) >= end[tp] for tp in tps)

        wait_until(caught_up, timeout, f"{expect or 'all'} audit events on {topic} (have {len(events)})")
        return events
    finally:
        consumer.close()


def by_msg(events: list[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = collections.defaultdict(list)
    for e in {e.event_id: e for e in events}.values():
        out[e.msg_id].append(e)
    return out


def assert_gap_free(events: list[Event]) -> None:
    per_emitter = collections.defaultdict(set)
    for e in events:
        per_emitter[e.emitter_id].add(e.seq)
    for emitter, seqs in per_emitter.items():
        assert seqs == set(range(1, max(seqs) + 1)), f"seq gap in emitter {emitter}"


@pytest.fixture
def audit(kafka_bootstrap, tmp_path, request):
    """A tracer shipping to a fresh audit topic on the session broker (``trace_context`` by parameter)."""
    topic = new_topic(kafka_bootstrap, 1, "audit")
    t = Tracer(service="test-svc", bootstrap=kafka_bootstrap, audit_topic=topic, spool_dir=str(tmp_path / "spool"),
               trace_context=getattr(request, "param", False))
    yield t, topic
    t.close(timeout=5)


@pytest.mark.parametrize("audit", [False, True], ids=["one-header", "trace-context"], indirect=True)
def test_1000_messages_exactly_five_stages(kafka_bootstrap, audit):
    """Every message gets exactly its five stages. By default msgtrace adds one header (msgtrace-id) and
    records no trace ids; configured for trace context it adds a traceparent that links both sides."""
    t, audit_topic = audit
    trace_context = t.policy.trace_context
    topic = new_topic(kafka_bootstrap, 3)
    group = f"g-{uuid.uuid4().hex[:6]}"
    n = 1000
    producer = t.wrap_producer(KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5))
    futures = {f"order-{i}:paid": producer.send(topic, value=b"paid %d" % i, key=b"k%d" % (i % 7),
                                                 msg_id=f"order-{i}:paid")
               for i in range(n)}
    producer.flush(30)
    acked = {mid: f.get(0) for mid, f in futures.items()}
    producer.close()

    consumer = t.wrap_consumer(KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=group,
                                             enable_auto_commit=False, **GROUP_CFG))
    seen: list[str] = []
    header_names = set()

    def consume() -> bool:
        batch = consumer.poll(timeout_ms=500)
        for records in batch.values():
            for r in records:
                with t.processing(r):
                    seen.append(dict(r.headers)[MSG_ID_HEADER].decode())
                    header_names.add(tuple(k for k, _ in r.headers))
        if batch:
            consumer.commit()
        return len(seen) >= n

    wait_until(consume, 90, f"{n} messages consumed")
    assert header_names == {("traceparent", MSG_ID_HEADER) if trace_context else (MSG_ID_HEADER,)}
    recorded_before = t.stats["recorded"]
    assert consumer.poll(timeout_ms=300) == {}  # an empty poll records nothing
    assert t.stats["recorded"] == recorded_before
    consumer.close()
    assert t.flush(30)

    events = read_audit(kafka_bootstrap, audit_topic, expect=5 * n)
    assert_gap_free(events)
    msgs = by_msg(events)
    assert set(msgs) == set(futures)
    for mid, evs in msgs.items():
        stages = sorted(e.stage for e in evs)
        assert stages == sorted(["sent", "broker_acked", "received", "offset_committed", "business_done"]), mid
        s = {e.stage: e for e in evs}
        md = acked[mid]
        assert (s["broker_acked"].partition, s["broker_acked"].offset) == (md.partition, md.offset)
        assert (s["received"].partition, s["received"].offset) == (md.partition, md.offset)
        assert (s["business_done"].partition, s["business_done"].offset) == (md.partition, md.offset)
        committed = s["offset_committed"]
        assert committed.partition == md.partition and committed.offset > md.offset
        assert committed.attrs["record_offset"] == str(md.offset)
        for st in ("received", "offset_committed", "business_done"):
            assert s[st].consumer_group == group and s[st].topic == topic
        assert s["sent"].consumer_group is None and s["sent"].key is not None
        trace_ids = {e.trace_id for e in evs}
        if trace_context:
            assert len(trace_ids) == 1 and None not in trace_ids  # one trace links producer and consumer
            assert s["received"].span_id == s["sent"].span_id
        else:  # no trace context anywhere: no trace ids invented
            assert trace_ids == {None} and {e.span_id for e in evs} == {None}


def test_iteration_and_commit_async_count_once(kafka_bootstrap, tmp_path):
    """kafka-python's __next__ polls internally: still one received per record; every commit flavour counts."""
    t = Tracer(service="iter", sink=NullSink(), spool_dir=str(tmp_path))
    topic = new_topic(kafka_bootstrap, 1)
    group = f"g-{uuid.uuid4().hex[:6]}"
    producer = t.wrap_producer(KafkaProducer(bootstrap_servers=kafka_bootstrap))
    for i in range(30):
        producer.send(topic, value=b"v", msg_id=f"m{i}")
    producer.flush(30)
    producer.close()
    consumer = t.wrap_consumer(KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=group,
                                             enable_auto_commit=False, consumer_timeout_ms=20_000, **GROUP_CFG))
    callbacks = []
    got = []
    tp = TopicPartition(topic, 0)
    for r in consumer:
        got.append(r)
        if len(got) == 10:
            consumer.commit_async()
        elif len(got) == 20:
            consumer.commit_async(offsets={tp: OffsetAndMetadata(r.offset + 1, "", -1)},
                                  callback=lambda offsets, res: callbacks.append(res))
        elif len(got) == 30:
            break
    wait_until(lambda: callbacks or consumer.poll(timeout_ms=100) and False, 20, "commit_async callback")
    consumer.commit()
    consumer.close()
    assert not isinstance(callbacks[0], Exception)
    assert t.flush(0) is False  # NullSink: nothing ships, everything stays in the spool
    events = spool_events(t)
    counts = collections.Counter((e.msg_id, e.stage) for e in events)
    for i in range(30):
        assert counts[(f"m{i}", "received")] == 1
        assert counts[(f"m{i}", "offset_committed")] == 1
    committed = {e.msg_id: e.offset for e in events if e.stage == "offset_committed"}
    assert committed["m0"] == 10 and committed["m15"] == 20 and committed["m29"] == 30
    t.close(0)


def spool_events(t: Tracer) -> list[Event]:
    """Events in a tracer's own spool (for NullSink tracers), as the shipper would ship them."""
    from tracer.sdk.spool import spooled_wire_lines

    batch = decode_batch(spooled_wire_lines(t.stats["spool"]), check_header=False)
    assert batch.bad == []
    return batch.events


def test_processing_failure_reraises_the_same_exception(tmp_path):
    t = Tracer(service="biz", sink=NullSink(), spool_dir=str(tmp_path))
    err = RuntimeError("red packet service down")
    with pytest.raises(RuntimeError) as info:
        with t.processing("order-9:paid", consumer_group="red-packet"):
            raise err
    assert info.value is err
    with t.processing("order-10:paid", consumer_group="red-packet"):
        pass
    t.record("dead_lettered", "order-9:paid", topic="order-paid", group="red-packet", dlq_topic="order-paid.DLT")
    t.record("not-a-stage", "x")  # never raises into the caller
    events = {(e.msg_id, e.stage): e for e in spool_events(t)}
    failed = events[("order-9:paid", "business_failed")]
    assert failed.error == "RuntimeError: red packet service down" and failed.consumer_group == "red-packet"
    assert events[("order-10:paid", "business_done")].attrs["duration_us"].isdigit()
    assert events[("order-9:paid", "dead_lettered")].attrs == {"dlq_topic": "order-paid.DLT"}
    assert t.stats["hook_errors"] == 1 and t.stats["recorded"] == 3
    t.close(0)


def test_send_failure_raised_is_recorded_and_reraised(tmp_path):
    """Unreachable broker: send() raises KafkaTimeoutError exactly as without the hook."""
    t = Tracer(service="prod", sink=NullSink(), spool_dir=str(tmp_path))
    port = free_port()  # nothing listens there
    cfg = dict(bootstrap_servers=f"127.0.0.1:{port}", api_version=(2, 5, 0), max_block_ms=300, retries=0)
    plain = KafkaProducer(**cfg)
    with pytest.raises(KafkaTimeoutError) as plain_err:
        plain.send("orders", b"x")
    plain.close(0)
    producer = t.wrap_producer(KafkaProducer(**cfg))
    with pytest.raises(KafkaTimeoutError) as hooked_err:
        producer.send("orders", b"x", msg_id="order-1:paid")
    with pytest.raises(ValueError) as bad_name:  # an invalid topic: kafka-python's own ValueError
        producer.send("no such topic!", b"x", msg_id="order-2:paid")
    producer.close(0)
    assert type(hooked_err.value) is type(plain_err.value)
    events = {(e.msg_id, e.stage): e for e in spool_events(t)}
    assert ("order-1:paid", "sent") in events
    assert events[("order-1:paid", "send_failed")].error == f"KafkaTimeoutError: {hooked_err.value}"
    assert events[("order-2:paid", "send_failed")].error.startswith("ValueError")
    assert str(bad_name.value) in events[("order-2:paid", "send_failed")].error
    t.close(0)


def test_send_failure_through_the_future(tansu, tmp_path):
    """The broker dies after the producer knew it: the future fails, send_failed has the same error."""
    t = Tracer(service="prod", sink=NullSink(), spool_dir=str(tmp_path))
    producer = t.wrap_producer(KafkaProducer(bootstrap_servers=tansu.bootstrap, retries=0, linger_ms=0,
                                             request_timeout_ms=1000, delivery_timeout_ms=2000,
                                             reconnect_backoff_max_ms=200))
    ok = producer.send("orders", b"x", msg_id="before").get(timeout=30)
    tansu.kill()
    future = producer.send("orders", b"x", msg_id="after")
    assert isinstance(future, FutureRecordMetadata)
    wait_until(lambda: future.is_done, 30, "the send future to fail")
    assert future.failed()
    producer.close(0)
    events = {(e.msg_id, e.stage): e for e in spool_events(t)}
    assert events[("before", "broker_acked")].offset == ok.offset
    failed = events[("after", "send_failed")]
    assert failed.error.startswith(type(future.exception).__name__)
    assert ("after", "broker_acked") not in events
    t.close(0)


def test_proxies_forward_everything(kafka_bootstrap, tmp_path):
    t = Tracer(service="fwd", sink=NullSink(), spool_dir=str(tmp_path), id_fn=lambda topic, key, value: 1 / 0)
    topic = new_topic(kafka_bootstrap, 2)
    raw = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer = t.wrap_producer(raw)
    assert producer.partitions_for(topic) == {0, 1}
    assert producer.config is raw.config and producer.wrapped is raw
    headers = [("app", b"1")]
    producer.send(topic, b"v", headers=headers).get(timeout=30)  # id_fn raises: a UUID is used instead
    assert headers == [("app", b"1")]  # the caller's list is not changed
    producer.close()
    consumer = t.wrap_consumer(KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False))
    consumer.assign([TopicPartition(topic, 0)])
    assert consumer.assignment() == {TopicPartition(topic, 0)}
    consumer.close()
    sent = [e for e in spool_events(t) if e.stage == "sent"]
    assert len(sent) == 1 and len(sent[0].msg_id) == 36
    assert t.stats["hook_errors"] == 1
    t.close(0)


def test_traceparent_fast_path_agrees_with_the_regex():
    from tracer.identity import _TRACEPARENT_RE, parse_traceparent

    def slow(v):
        if isinstance(v, str):
            v = v.encode("ascii", "replace")
        m = _TRACEPARENT_RE.match(v.strip().lower())
        if m is None or m[1] == b"0" * 32 or m[2] == b"0" * 16:
            return None, None
        return m[1].decode(), m[2].decode()

    good = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    cases = [good, good.upper(), good.decode(), b" " + good, good[:-1], good + b"x",
             b"00-" + b"0" * 32 + b"-b7ad6b7169203331-01", b"00-0af7651916cd43dd8448eb211c80319c-" + b"0" * 16 + b"-01",
             b"00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01", b"00+0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
             b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333--01", b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"]
    for v in cases:
        assert parse_traceparent(v) == slow(v), v
    assert parse_traceparent(good) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert parse_traceparent(None) == parse_traceparent(b"") == (None, None)


def test_send_context_new_trace_or_the_active_otel_span(tmp_path):
    """Configured for trace context, a send without one starts a new trace, or continues the active
    OpenTelemetry span's trace (a new span id), and carries it in the traceparent it adds."""
    from opentelemetry.sdk.trace import TracerProvider

    from tracer.identity import parse_traceparent

    def send_context(rec):
        s = rec.sent("orders", msg_id="m")
        tp = dict(s.headers)["traceparent"]
        return s.trace_id, s.span_id, tp

    t = Tracer(service="ctx", sink=NullSink(), spool_dir=str(tmp_path), trace_context=True)
    rec = t.recorder()
    seen = set()
    for _ in range(200):
        trace_id, span_id, tp = send_context(rec)
        assert len(trace_id) == 32 and len(span_id) == 16 and int(trace_id, 16) and int(span_id, 16)
        assert parse_traceparent(tp) == (trace_id, span_id) and tp == f"00-{trace_id}-{span_id}-01".encode()
        seen.add(trace_id)
    assert len(seen) == 200  # a new trace per send
    otel = TracerProvider().get_tracer("test")
    with otel.start_as_current_span("checkout") as span:
        trace_id, span_id, tp = send_context(rec)
        assert trace_id == f"{span.get_span_context().trace_id:032x}"  # the business trace is continued
        assert span_id != f"{span.get_span_context().span_id:016x}"
    assert send_context(rec)[0] != trace_id  # context gone: a new trace again
    t.close(0)


def test_default_one_header_reuses_an_existing_trace_context(tmp_path):
    """The default adds only msgtrace-id; an active OpenTelemetry span or a traceparent the message
    already carries is reused for the events, never duplicated nor added."""
    from opentelemetry.sdk.trace import TracerProvider

    t = Tracer(service="ctx", sink=NullSink(), spool_dir=str(tmp_path))
    stub = _FutureProducer()
    p = t.wrap_producer(stub)
    p.send("orders", b"v", msg_id="plain")
    with TracerProvider().get_tracer("test").start_as_current_span("checkout") as span:
        p.send("orders", b"v", msg_id="in-span")
    theirs = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    mine = [("traceparent", theirs), ("app", b"1")]
    p.send("orders", b"v", msg_id="carried", headers=mine)
    p.send("orders", b"v", headers=[(MSG_ID_HEADER, b"from-header")])
    (_, h_plain), (_, h_span), (_, h_carried), (_, h_id) = stub.futures
    assert h_plain == [(MSG_ID_HEADER, b"plain")] and h_span == [(MSG_ID_HEADER, b"in-span")]
    assert h_carried == mine + [(MSG_ID_HEADER, b"carried")] and len(mine) == 2  # caller's list untouched
    assert h_id == [(MSG_ID_HEADER, b"from-header")]  # an id already there is the id, not added twice
    sent = {e.msg_id: e for e in spool_events(t) if e.stage == "sent"}
    assert (sent["plain"].trace_id, sent["plain"].span_id) == (None, None)
    sc = span.get_span_context()
    assert (sent["in-span"].trace_id, sent["in-span"].span_id) == (f"{sc.trace_id:032x}", f"{sc.span_id:016x}")
    assert (sent["carried"].trace_id, sent["carried"].span_id) == ("0af7651916cd43dd8448eb211c80319c",
                                                                   "b7ad6b7169203331")
    assert "from-header" in sent
    t.close(0)


def test_header_free_mode_adds_nothing_and_ids_come_from_the_key(kafka_bootstrap, tmp_path):
    """headers=False: the records carry exactly the application's headers; both sides name the message
    by its key (or the id functions), so the audit still joins producer and consumer."""
    t = Tracer(service="free", sink=NullSink(), spool_dir=str(tmp_path), headers=False)
    topic = new_topic(kafka_bootstrap, 1)
    producer = t.wrap_producer(KafkaProducer(bootstrap_servers=kafka_bootstrap))
    producer.send(topic, b"v", key=b"order-1:paid").get(30)
    producer.send(topic, b"v", key=b"order-2:paid", headers=[("app", b"x")]).get(30)
    producer.close()
    consumer = t.wrap_consumer(KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap,
                                             group_id=f"g-{uuid.uuid4().hex[:6]}", enable_auto_commit=False,
                                             **GROUP_CFG))
    got = []

    def two() -> bool:
        for records in consumer.poll(timeout_ms=500).values():
            for r in records:
                with t.processing(r):
                    got.append(r)
        return len(got) >= 2

    wait_until(two, 60, "both records")
    consumer.commit()
    consumer.close()
    assert [r.headers for r in got] == [[], [("app", b"x")]]
    by = collections.defaultdict(set)
    for e in spool_events(t):
        by[e.msg_id].add(e.stage)
    assert dict(by) == {m: {"sent", "broker_acked", "received", "offset_committed", "business_done"}
                        for m in ("order-1:paid", "order-2:paid")}
    t.close(0)
    with pytest.raises(Exception, match="header-free"):
        Tracer(service="x", sink=NullSink(), spool_dir=str(tmp_path), headers=False, trace_context=True)


class _FutureProducer:
    """A stand-in producer handing out kafka-python Futures (resolved by the test)."""

    def __init__(self, done=None):
        from kafka.future import Future

        self.futures = []
        self._future, self._done = Future, done

    def send(self, topic, value=None, key=None, headers=None, partition=None, timestamp_ms=None):
        f = self._future()
        if self._done is not None:
            f.failure(self._done)
        self.futures.append((f, headers))
        return f


def test_one_callback_object_records_ack_or_failure(tmp_path):
    from kafka.producer.future import RecordMetadata

    t = Tracer(service="cb", sink=NullSink(), spool_dir=str(tmp_path), trace_context=True)
    stub = _FutureProducer()
    p = t.wrap_producer(stub)
    f1 = p.send("orders", b"v", key=b"k1", msg_id="m1")
    f2 = p.send("orders", b"v", key=None, msg_id="m2", partition=3)
    (fut1, h1), (fut2, h2) = stub.futures
    assert fut1 is f1 and fut2 is f2  # the caller gets kafka-python's own future
    assert [k for k, _ in h1] == ["traceparent", MSG_ID_HEADER] and dict(h1)[MSG_ID_HEADER] == b"m1"
    fut1.success(RecordMetadata("orders", 1, TopicPartition("orders", 1), 42, 0, None, 2, 1, 60))
    fut2.failure(KafkaTimeoutError("batch expired"))
    assert f2.exception.__class__ is KafkaTimeoutError  # unchanged for the caller
    failing = t.wrap_producer(_FutureProducer(done=KafkaTimeoutError("already failed")))
    failing.send("orders", b"v", msg_id="m3")  # a future already failed when the callbacks are added
    events = {(e.msg_id, e.stage): e for e in spool_events(t)}
    ack = events[("m1", "broker_acked")]
    assert (ack.partition, ack.offset, ack.key) == (1, 42, "k1")
    assert ack.trace_id == events[("m1", "sent")].trace_id == h1[0][1].decode()[3:35]
    fail = events[("m2", "send_failed")]
    assert fail.error == f"KafkaTimeoutError: {f2.exception}" and fail.partition == 3
    assert fail.attrs == {"error_type": "KafkaTimeoutError"}
    assert events[("m3", "send_failed")].error.endswith("already failed")
    assert ("m2", "broker_acked") not in events and t.stats["hook_errors"] == 0
    t.close(0)


def test_consumer_batch_events_from_stub_records(tmp_path):
    """received per polled record and offset_committed per committed one, encoded once per batch:
    the fields survive odd ids and keys, legacy records get the id function, nothing for empty polls."""
    from kafka.consumer.fetcher import ConsumerRecord

    class Coord:  # kafka-python 3's shape: the request coroutine hands the broker's answer to a handler
        async def _send_offset_commit_request(self, offsets, *a, **kw):
            topics = {}
            for tp in offsets:
                topics.setdefault(tp.topic, []).append((tp.partition, 0))  # error code 0: accepted
            self._handle_offset_commit_response(offsets, 0.0, SimpleNamespace(topics=list(topics.items())))
            return "sent"

        def _handle_offset_commit_response(self, offsets, send_time, response):
            return None

    class Stub:
        def __init__(self, batches):
            self.config = {"group_id": "grp"}
            self._coordinator = Coord()
            self._batches = batches

        def poll(self, timeout_ms=0, max_records=None, update_offsets=True):
            return self._batches.pop(0) if self._batches else {}

    tp = TopicPartition("orders", 4)
    tpc = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    recs = [ConsumerRecord("orders", 4, None, 7, 0, 0, "ключ\"\n".encode(), b"v",
                           [("traceparent", tpc), (MSG_ID_HEADER, b'order "7"\n')], None, 1, 1, 1),
            ConsumerRecord("orders", 4, None, 8, 0, 0, None, b"v", [], None, -1, 1, 0),
            ConsumerRecord("orders", 4, None, 9, 0, 0, b"k", b"v", [("traceparent", b"garbage")], None, 1, 1, 1)]
    t = Tracer(service="c", sink=NullSink(), spool_dir=str(tmp_path),
               consumer_id_fn=lambda r: f"legacy-{r.offset}")
    c = t.wrap_consumer(Stub([{tp: recs}]))
    assert c.poll() == {tp: recs}
    assert c.poll() == {}  # empty: nothing recorded
    coord = c._consumer._coordinator
    assert asyncio.run(coord._send_offset_commit_request({tp: OffsetAndMetadata(9, "", -1)})) == "sent"
    assert asyncio.run(coord._send_offset_commit_request({tp: OffsetAndMetadata(9, "", -1)})) == "sent"  # nothing new
    with t.processing(recs[0]):
        pass
    evs = spool_events(t)
    assert [(e.stage, e.msg_id) for e in evs] == [
        ("received", 'order "7"\n'), ("received", "legacy-8"), ("received", "legacy-9"),
        ("offset_committed", 'order "7"\n'), ("offset_committed", "legacy-8"), ("business_done", 'order "7"\n')]
    r0, r1, r2, c0, c1, done = evs
    assert (r0.topic, r0.partition, r0.offset, r0.consumer_group, r0.key) == ("orders", 4, 7, "grp", "ключ\"\n")
    assert (r0.trace_id, r0.span_id) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert r1.key is None and r1.trace_id is None and r2.trace_id is None and r2.key == "k"
    assert (c0.offset, c0.attrs, c0.trace_id, c0.consumer_group) == (9, {"record_offset": "7"}, r0.trace_id, "grp")
    assert (c1.offset, c1.attrs) == (9, {"record_offset": "8"})
    assert done.trace_id == r0.trace_id and done.offset == 7
    assert [e.seq for e in evs] == list(range(1, 7))
    t.close(0)


def test_one_tracer_two_groups_attributes_processing_to_the_receiving_consumer(tmp_path):
    """Two consumers of different groups, one Tracer, the same record position: processing(record)
    names the group of the consumer that returned that record object, and forgets only its entry."""
    from kafka.consumer.fetcher import ConsumerRecord

    class Coord:  # kafka-python 3's shape: the request coroutine hands the broker's answer to a handler
        async def _send_offset_commit_request(self, offsets, *a, **kw):
            topics = {}
            for tp in offsets:
                topics.setdefault(tp.topic, []).append((tp.partition, 0))  # error code 0: accepted
            self._handle_offset_commit_response(offsets, 0.0, SimpleNamespace(topics=list(topics.items())))
            return "sent"

        def _handle_offset_commit_response(self, offsets, send_time, response):
            return None

    class Stub:
        def __init__(self, group, batches):
            self.config = {"group_id": group}
            self._coordinator = Coord()
            self._batches = batches

        def poll(self, timeout_ms=0, max_records=None, update_offsets=True):
            return self._batches.pop(0) if self._batches else {}

    tp = TopicPartition("orders", 0)

    def rec():  # each consumer gets its own record object for the same position
        return ConsumerRecord("orders", 0, None, 5, 0, 0, None, b"v", [(MSG_ID_HEADER, b"order-5")], None, 1, 1, 1)

    ra, rb = rec(), rec()
    t = Tracer(service="c", sink=NullSink(), spool_dir=str(tmp_path))
    a = t.wrap_consumer(Stub("red-packet", [{tp: [ra]}]))
    b = t.wrap_consumer(Stub("points", [{tp: [rb]}]))
    a.poll()
    b.poll()
    with t.processing(ra):
        pass
    with t.processing(rb):
        pass
    with t.processing(rec()):  # an unknown object at a known position: still the message's identity
        pass
    done = [e for e in spool_events(t) if e.stage == "business_done"]
    assert [(e.msg_id, e.consumer_group) for e in done[:2]] == [("order-5", "red-packet"), ("order-5", "points")]
    assert done[2].msg_id == "order-5"
    t.close(0)


def test_an_oversized_msg_id_is_capped_the_same_everywhere(tmp_path):
    """A 2 MB id (a payload passed as the id) would make an audit line no record can carry and block
    shipping for good: producer header, consumer side and every event carry the same capped id."""
    from kafka.consumer.fetcher import ConsumerRecord

    from tracer.events import MAX_MSG_ID_CHARS, cap_msg_id

    huge = "order-" + "x" * 2_000_000
    capped = cap_msg_id(huge)
    assert len(capped) <= MAX_MSG_ID_CHARS and capped.startswith("order-xxx") and cap_msg_id(capped) == capped
    assert cap_msg_id(huge + "y") != capped  # the hash covers the whole id
    sent_headers = []

    class Fut:
        def add_callback(self, fn):
            pass

        def add_errback(self, fn):
            pass

    class Prod:
        config: dict = {}

        def send(self, topic, value=None, key=None, headers=None, partition=None, timestamp_ms=None):
            sent_headers.append(dict(headers))
            return Fut()

    t = Tracer(service="c", sink=NullSink(), spool_dir=str(tmp_path))
    p = t.wrap_producer(Prod())
    p.send("orders", b"v", msg_id=huge)
    assert sent_headers[0][MSG_ID_HEADER] == capped.encode()
    rec = ConsumerRecord("orders", 0, None, 1, 0, 0, None, b"v", [(MSG_ID_HEADER, huge.encode())], None, 1, 1, 1)

    class Cons:
        config = {"group_id": "g"}

        def poll(self, timeout_ms=0, max_records=None, update_offsets=True):
            return {TopicPartition("orders", 0): [rec]}

    t.wrap_consumer(Cons()).poll()
    t.record("dead_lettered", huge, topic="orders")
    evs = spool_events(t)
    assert {e.msg_id for e in evs} == {capped} and {e.stage for e in evs} >= {"sent", "received", "dead_lettered"}
    t.close(0)
