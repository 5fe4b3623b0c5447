"""The kafka-python hooks against a real Kafka-protocol broker (Tansu).

Audit events are shipped to an audit topic on the broker and read back with a
plain KafkaConsumer + decode_batch (the collector is not needed for this).
"""
from __future__ import annotations

import collections
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata

from tracer import Tracer
from tracer.emitter import NullSink
from tracer.events import MSG_ID_HEADER, Event, decode_batch
from tracer.localsvc import free_port, wait_until

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
def audit(kafka_bootstrap, tmp_path):
    """A tracer shipping to a fresh audit topic on the session broker."""
    topic = new_topic(kafka_bootstrap, 1, "audit")
    t = Tracer(service="test-svc", bootstrap=kafka_bootstrap, audit_topic=topic, spool_dir=str(tmp_path / "spool"))
    yield t, topic
    t.close(timeout=5)


def test_1000_messages_exactly_five_stages(kafka_bootstrap, audit):
    t, audit_topic = audit
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

    def consume() -> bool:
        batch = consumer.poll(timeout_ms=500)
        for records in batch.values():
            for r in records:
                with t.processing(r):
                    seen.append(dict(r.headers)[MSG_ID_HEADER].decode())
        if batch:
            consumer.commit()
        return len(seen) >= n

    wait_until(consume, 90, f"{n} messages consumed")
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
        assert len(trace_ids) == 1 and None not in trace_ids  # one trace links producer and consumer
        assert s["received"].span_id == s["sent"].span_id


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
    """Events in a tracer's own spool (for NullSink tracers)."""
    import glob
    import os

    # segments are preallocated: each ends in a zero tail
    data = b"".join(open(p, "rb").read().rstrip(b"\0")
                    for p in sorted(glob.glob(os.path.join(t.stats["spool"], "seg-*"))))
    batch = decode_batch(data, check_header=False)
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
