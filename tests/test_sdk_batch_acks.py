"""broker_acked per produce batch: one callback on kafka-python's batch future serves all its sends.

Driven with kafka-python's own future classes (FutureProduceResult per batch, FutureRecordMetadata per
record, rebind() as the sender uses it when it splits a batch the broker found too large), so the
bookkeeping is checked on the objects production hands out; the full path runs against the broker
in test_hooks.py.
"""
from __future__ import annotations

import collections

from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from kafka.producer.future import FutureProduceResult, FutureRecordMetadata
from kafka.structs import TopicPartition
from test_hooks import spool_events

from tracer import Tracer
from tracer.sdk.emitter import NullSink

TP = TopicPartition("orders", 2)


class BatchingStub:
    """Hands out record futures the way kafka-python's accumulator does: ``per_batch`` per batch future."""

    def __init__(self, per_batch: int = 100) -> None:
        self.batches: list[FutureProduceResult] = []
        self.futures: list[FutureRecordMetadata] = []
        self.per_batch = per_batch
        self.before_return = None  # a hook run after the record is in its batch, before send() returns

    def send(self, topic, value=None, key=None, headers=None, partition=None, timestamp_ms=None):
        i = len(self.futures)
        if i % self.per_batch == 0:
            self.batches.append(FutureProduceResult(TP))
        f = FutureRecordMetadata(self.batches[-1], i % self.per_batch, 0, None, -1, 1, 20)
        self.futures.append(f)
        if self.before_return is not None:
            self.before_return(self.batches[-1], f)
        return f

    def flush(self, timeout=None):
        return None


def stages(t: Tracer) -> dict[str, list]:
    out = collections.defaultdict(list)
    for e in spool_events(t):
        out[e.msg_id].append(e)
    return out


def test_one_callback_per_batch_acks_fails_and_per_record_errors(tmp_path):
    t = Tracer(service="p", sink=NullSink(), spool_dir=str(tmp_path))
    stub = BatchingStub()
    p = t.wrap_producer(stub)
    futures = [p.send("orders", b"v", key=b"k", msg_id=f"m{i}") for i in range(250)]
    assert futures == stub.futures  # the application gets kafka-python's own futures
    ok, errs, down = stub.batches
    ok.success((1000, -1, None))
    errs.success((2000, -1, lambda idx: MessageSizeTooLargeError(f"record {idx}")))
    down.failure(KafkaTimeoutError("batch expired"))
    assert futures[7].value.offset == 1007 and futures[150].failed() and futures[240].failed()
    ev = stages(t)
    for i in range(100):
        acked = [e for e in ev[f"m{i}"] if e.stage == "broker_acked"]
        assert len(acked) == 1 and (acked[0].partition, acked[0].offset, acked[0].key) == (2, 1000 + i, "k")
    for i in range(100, 250):
        assert [e.stage for e in ev[f"m{i}"]] == ["sent", "send_failed"]
    assert ev["m150"][1].error == "MessageSizeTooLargeError: [Error 10] MessageSizeTooLargeError: record 50"
    assert ev["m240"][1].error.startswith("KafkaTimeoutError") and ev["m240"][1].attrs["error_type"] == "KafkaTimeoutError"
    assert p._batches == {} and t.stats["hook_errors"] == 0
    seqs = [e.seq for evs in ev.values() for e in evs]
    assert sorted(seqs) == list(range(1, 501))
    t.close(0)


def test_a_split_batch_is_acked_where_its_records_went(tmp_path):
    """kafka-python splits a batch the broker refused as too large: the records' futures are rebound to
    new batches and the old batch future never completes. flush() finds them and records their acks."""
    t = Tracer(service="p", sink=NullSink(), spool_dir=str(tmp_path))
    stub = BatchingStub(per_batch=10)
    p = t.wrap_producer(stub)
    futures = [p.send("orders", b"v", msg_id=f"m{i}") for i in range(10)]
    first, second = FutureProduceResult(TP), FutureProduceResult(TP)
    for i, f in enumerate(futures):  # what the sender does in split_and_reenqueue
        f.rebind(first if i < 5 else second, i % 5)
    first.success((500, -1, None))
    second.success((505, -1, None))
    assert [f.value.offset for f in futures] == list(range(500, 510))
    assert not any(e.stage == "broker_acked" for e in spool_events(t))  # the old batch never completed
    p.flush()
    ev = stages(t)
    assert {m: [(e.stage, e.offset) for e in evs if e.stage == "broker_acked"] for m, evs in ev.items()} == {
        f"m{i}": [("broker_acked", 500 + i)] for i in range(10)}
    assert p._batches == {}
    t.close(0)


def test_a_send_noted_after_its_batch_completed_is_acked_once(tmp_path):
    """The IO thread may complete a batch between kafka-python appending a record to it and the hook
    noting the send: that send gets a callback of its own (its future is complete: it fires at once)."""
    t = Tracer(service="p", sink=NullSink(), spool_dir=str(tmp_path))
    stub = BatchingStub()
    p = t.wrap_producer(stub)
    p.send("orders", b"v", msg_id="first")
    stub.before_return = lambda pf, f: pf.success((40, -1, None))  # the race, made certain
    p.send("orders", b"v", msg_id="raced")
    ev = stages(t)
    assert [(e.stage, e.offset) for e in ev["first"]] == [("sent", None), ("broker_acked", 40)]
    assert [(e.stage, e.offset) for e in ev["raced"]] == [("sent", None), ("broker_acked", 41)]
    t.close(0)
