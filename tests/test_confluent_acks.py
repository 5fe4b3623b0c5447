"""confluent-kafka's delivery reports, gathered and spooled per client call (tracer.sdk.core.Recorder.flush_acks).

librdkafka runs delivery reports inside ``poll()`` / ``flush()`` on the business thread; msgtrace's report
appends one row per success and the wrapped call spools them in one frame before it returns. These tests
check, on a real broker, that the promise every other event keeps still holds: a report is in the spool
(on disk, read without the tracer's help) when the call that ran it returns, with the report's own time,
also when the application's callback raises out of that call, and when one call runs more reports than
one frame takes.
"""
from __future__ import annotations

import collections

import pytest
from confluent_kafka import Producer
from test_hooks import assert_gap_free, new_topic, spool_events

from tracer import Tracer
from tracer.sdk.core import ACKS_FLUSH_AT
from tracer.sdk.emitter import NullSink


def stages_by_id(t: Tracer) -> dict[str, list]:
    out: dict[str, list] = collections.defaultdict(list)
    for e in spool_events(t):
        out[e.msg_id].append(e)
    return out


def test_reports_are_in_the_spool_when_flush_returns(kafka_bootstrap, tmp_path):
    t = Tracer(service="svc", sink=NullSink(), spool_dir=str(tmp_path))
    topic = new_topic(kafka_bootstrap, 2)
    p = t.wrap_producer(Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5}))
    n = 3 * ACKS_FLUSH_AT + 7  # more reports in one flush() than one frame takes
    reports = {}

    def on_delivery(err, msg):
        reports[msg.key().decode()] = (err, msg.partition(), msg.offset())

    for i in range(n):
        p.produce(topic, b"v", key=b"k%d" % i, msg_id=f"m-{i}", on_delivery=on_delivery)
    assert p.flush(30) == 0
    assert t.recorder("kafka").acks == []  # nothing left waiting in memory
    by_id = stages_by_id(t)  # read from the spool files, as a shipper (or a successor) would
    assert len(reports) == n
    for i in range(n):
        evs = by_id[f"m-{i}"]
        assert [e.stage for e in evs] == ["sent", "broker_acked"], evs
        sent, acked = evs
        err, partition, offset = reports[f"k{i}"]
        assert err is None
        assert (acked.partition, acked.offset, acked.key, acked.topic) == (partition, offset, f"k{i}", topic)
        assert sent.key == f"k{i}" and sent.partition is None
        assert acked.ts_us >= sent.ts_us  # the report's own time, not the send's
    assert_gap_free(spool_events(t))
    t.close(0)


def test_an_application_callback_that_raises_keeps_the_reports_before_it(kafka_bootstrap, tmp_path):
    """confluent-kafka re-raises a delivery callback's exception from poll()/flush(); the reports run
    before it in that call are spooled all the same, and the rest come with the next call."""
    t = Tracer(service="svc", sink=NullSink(), spool_dir=str(tmp_path))
    topic = new_topic(kafka_bootstrap, 1)
    p = t.wrap_producer(Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 50}))
    calls = []

    def on_delivery(err, msg):
        calls.append(msg.key())
        if msg.key() == b"k5":
            raise RuntimeError("the application's callback failed")

    for i in range(10):
        p.produce(topic, b"v", key=b"k%d" % i, msg_id=f"m-{i}", on_delivery=on_delivery)
    with pytest.raises(RuntimeError, match="callback failed"):
        p.flush(30)
    done = len(calls)
    assert 6 <= done <= 10 and calls[5] == b"k5"
    by_id = stages_by_id(t)
    assert [i for i in range(10) if [e.stage for e in by_id[f"m-{i}"]] == ["sent", "broker_acked"]] == \
        list(range(done))
    assert p.flush(30) == 0
    by_id = stages_by_id(t)
    assert all([e.stage for e in by_id[f"m-{i}"]] == ["sent", "broker_acked"] for i in range(10))
    assert len(calls) == 10  # each report ran the application's callback once
    t.close(0)


def test_reports_of_a_raw_poll_are_spooled_by_the_tracer_at_the_latest(kafka_bootstrap, tmp_path):
    """Reports run by a poll() msgtrace did not wrap (the application polls the raw producer) wait in
    memory until the next wrapped call or the tracer's flush()/close(): they are not lost."""
    t = Tracer(service="svc", sink=NullSink(), spool_dir=str(tmp_path))
    topic = new_topic(kafka_bootstrap, 1)
    raw = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    p = t.wrap_producer(raw)
    p.produce(topic, b"v", key=b"k", msg_id="m-raw")
    assert raw.flush(30) == 0  # the unwrapped client ran the report
    assert [e.stage for e in stages_by_id(t)["m-raw"]] == ["sent"]
    assert len(t.recorder("kafka").acks) == 1
    t.flush(0)
    assert [e.stage for e in stages_by_id(t)["m-raw"]] == ["sent", "broker_acked"]
    t.close(0)
