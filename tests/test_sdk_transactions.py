"""Kafka transactions through the kafka-python hooks, on the real broker (Tansu).

Tansu 0.6.0 implements the transactional producer's side (InitProducerId with a transactional id,
AddPartitionsToTxn, AddOffsetsToTxn / TxnOffsetCommit, EndTxn with commit or abort markers): these
tests run it for real. It does not filter aborted records for ``read_committed`` consumers (its
Fetch responses carry no aborted-transaction list, checked while writing these tests), so the
consumer side of an abort is not asserted here: on Apache Kafka such a message is never received,
and ``rolled_back`` is what tells the reconciler that this is by design.
"""
from __future__ import annotations

import collections
import time
import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata
from test_hooks import GROUP_CFG, new_topic, spool_events

from tracer import Tracer
from tracer import verdicts as V
from tracer.analysis.reconcile import reconcile
from tracer.localsvc import wait_until
from tracer.sdk.emitter import NullSink
from tracer.store import Store


def txn_producer(t: Tracer, bootstrap: str, tid: str):
    p = t.wrap_producer(KafkaProducer(bootstrap_servers=bootstrap, transactional_id=tid, max_block_ms=20_000))
    p.init_transactions()
    return p


def test_an_aborted_transaction_is_rolled_back_and_judged_so(kafka_bootstrap, chdb_url, tmp_path):
    store = Store(chdb_url)
    store.init_schema()
    t0 = time.time_ns() // 1000
    t = Tracer(service="orders", store=chdb_url, spool_dir=str(tmp_path / "spool"))
    topic = new_topic(kafka_bootstrap, 2)
    tid = f"tx-{uuid.uuid4().hex[:8]}"
    p = txn_producer(t, kafka_bootstrap, tid)
    p.begin_transaction()
    for i in range(3):
        p.send(topic, b"paid", key=b"k%d" % i, msg_id=f"committed-{i}")
    p.commit_transaction()
    p.begin_transaction()
    aborted = [p.send(topic, b"paid", key=b"k%d" % i, msg_id=f"aborted-{i}") for i in range(3)]
    p.flush(30)  # in the log and acked ...
    assert all(f.get(0).offset >= 0 for f in aborted)
    p.abort_transaction()  # ... and then aborted
    p.begin_transaction()
    p.send(topic, b"paid", msg_id="aborted-unflushed")  # aborted before it was even flushed
    p.abort_transaction()
    p.close()
    assert t.close(timeout=30)

    with store.session():
        evs = store.select_events("aborted-0") + store.select_events("committed-0") + \
            store.select_events("aborted-unflushed")
    by = collections.defaultdict(list)
    for e in evs:
        by[e.msg_id].append(e.stage)
    assert sorted(by["aborted-0"]) == ["broker_acked", "rolled_back", "sent"]
    assert sorted(by["committed-0"]) == ["broker_acked", "sent"]
    assert "rolled_back" in by["aborted-unflushed"]
    rb = [e for e in evs if e.stage == "rolled_back"]
    assert {e.attrs["transaction_id"] for e in rb} == {tid} and all(e.topic == topic for e in rb)

    now = time.time_ns() // 1000
    res = reconcile(store, t0, now + 1_000_000, grace_s=0, now_us=now + 2_000_000)
    verdicts = {r.msg_id: r.verdict for r in res.rows}
    for i in range(3):
        assert verdicts[f"aborted-{i}"] == V.ROLLED_BACK, res.rows
        assert verdicts.get(f"committed-{i}") != V.ROLLED_BACK
    assert verdicts["aborted-unflushed"] == V.ROLLED_BACK
    store.close()


def test_transactional_offsets_count_once_the_transaction_commits(kafka_bootstrap, tmp_path):
    """Consume-transform-produce: the input offsets given to send_offsets_to_transaction() become
    offset_committed for the wrapped consumer of that group when the transaction commits, and not at
    all when it aborts (the broker agrees: its committed offset moves only with the commit)."""
    t = Tracer(service="transform", sink=NullSink(), spool_dir=str(tmp_path))
    src, out = new_topic(kafka_bootstrap, 1), new_topic(kafka_bootstrap, 1)
    plain = t.wrap_producer(KafkaProducer(bootstrap_servers=kafka_bootstrap))
    for i in range(6):
        plain.send(src, b"in", msg_id=f"in-{i}")
    plain.flush(30)
    plain.close()
    group = f"g-{uuid.uuid4().hex[:6]}"
    c = t.wrap_consumer(KafkaConsumer(src, bootstrap_servers=kafka_bootstrap, group_id=group,
                                      enable_auto_commit=False, isolation_level="read_committed",
                                      max_poll_records=4, **GROUP_CFG))
    p = txn_producer(t, kafka_bootstrap, f"tx-{uuid.uuid4().hex[:8]}")
    tp = TopicPartition(src, 0)

    def round_trip(want: int, commit: bool) -> list:
        got: list = []

        def step() -> bool:
            for recs in c.poll(timeout_ms=300, max_records=want - len(got)).values():
                got.extend(recs)
            return len(got) >= want

        wait_until(step, 60, f"{want} input records")
        p.begin_transaction()
        for r in got:
            p.send(out, b"out", msg_id=f"out-of-{r.offset}")
        p.send_offsets_to_transaction({tp: OffsetAndMetadata(got[-1].offset + 1, "", -1)}, c.group_metadata())
        if commit:
            p.commit_transaction()
        else:
            p.abort_transaction()
        return got

    first = round_trip(4, commit=True)
    committed = collections.Counter(e.msg_id for e in spool_events(t) if e.stage == "offset_committed")
    assert committed == {f"in-{i}": 1 for i in range(4)}
    assert c.committed(tp) == first[-1].offset + 1 == 4  # the broker committed them with the transaction
    round_trip(2, commit=False)
    evs = spool_events(t)
    assert collections.Counter(e.msg_id for e in evs if e.stage == "offset_committed") == committed
    assert c.committed(tp) == 4
    assert {e.msg_id for e in evs if e.stage == "rolled_back"} == {"out-of-4", "out-of-5"}
    oc = [e for e in evs if e.stage == "offset_committed"]
    assert {(e.consumer_group, e.topic, e.partition, e.offset) for e in oc} == {(group, src, 0, 4)}
    p.close()
    c.close(autocommit=False)
    t.close(0)
