"""The confluent-kafka hooks against a real Kafka-protocol broker (Tansu): the same stages and fields as
kafka-python's (tests/test_hooks.py), through ``tracer.wrap_producer`` / ``tracer.wrap_consumer``.

librdkafka reports asynchronous and automatic commits only to an ``on_commit`` callback given at
construction, so the consumers that use them are built with ``tracer.sdk.confluent.Consumer`` (the same
arguments as ``confluent_kafka.Consumer``), which chains the application's own ``on_commit``.
"""
from __future__ import annotations

import collections
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from test_hooks import assert_gap_free, by_msg, new_topic, read_audit, spool_events

from tracer import Tracer
from tracer.events import MSG_ID_HEADER
from tracer.localsvc import free_port, wait_until
from tracer.sdk import confluent as ck
from tracer.sdk.emitter import NullSink

GROUP_CONF = {"auto.offset.reset": "earliest", "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}


def consumer_conf(bootstrap: str, group: str, **extra) -> dict:
    return {"bootstrap.servers": bootstrap, "group.id": group, **GROUP_CONF, **extra}


def poll_until(c, want: int, timeout: float = 60.0, on_msg=None) -> list:
    got: list = []

    def step() -> bool:
        for m in c.consume(num_messages=500, timeout=0.5):
            if m.error() is None:
                got.append(m)
                if on_msg is not None:
                    on_msg(m)
        return len(got) >= want

    wait_until(step, timeout, f"{want} messages (have {len(got)})", interval=0)
    return got


@pytest.fixture
def audit(kafka_bootstrap, tmp_path):
    topic = new_topic(kafka_bootstrap, 1, "audit")
    t = Tracer(service="test-svc", bootstrap=kafka_bootstrap, audit_topic=topic, spool_dir=str(tmp_path / "spool"))
    yield t, topic
    t.close(timeout=5)


def test_1000_messages_exactly_five_stages(kafka_bootstrap, audit):
    t, audit_topic = audit
    topic = new_topic(kafka_bootstrap, 3)
    group = f"g-{uuid.uuid4().hex[:6]}"
    n = 1000
    producer = t.wrap_producer(Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5, "acks": "all"}))
    reports: dict[str, list] = collections.defaultdict(list)

    def on_delivery(err, msg):  # the application's own report: still called, once, with librdkafka's arguments
        reports[msg.key().decode()].append((err, msg.topic(), msg.partition(), msg.offset()))

    for i in range(n):
        assert producer.produce(topic, b"paid %d" % i, key=b"k%d" % i, on_delivery=on_delivery,
                                msg_id=f"order-{i}:paid") is None
        if i % 100 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    assert len(reports) == n and all(len(r) == 1 and r[0][0] is None for r in reports.values())
    acked = {f"order-{i}:paid": reports[f"k{i}"][0][2:] for i in range(n)}

    consumer = t.wrap_consumer(Consumer(consumer_conf(kafka_bootstrap, group, **{"enable.auto.commit": False})))
    consumer.subscribe([topic])
    seen: list[str] = []

    def consume() -> bool:
        batch = consumer.consume(num_messages=200, timeout=0.5)
        for m in batch:
            assert m.error() is None
            with t.processing(m):
                seen.append(dict(m.headers())[MSG_ID_HEADER].decode())
        if batch:
            parts = consumer.commit(asynchronous=False)  # returns what the broker accepted
            assert all(p.error is None for p in parts)
        return len(seen) >= n

    wait_until(consume, 90, f"{n} messages consumed", interval=0)
    recorded = t.stats["recorded"]
    assert consumer.poll(0.3) is None  # an empty poll records nothing
    assert t.stats["recorded"] == recorded
    consumer.close()
    assert t.flush(30)

    events = read_audit(kafka_bootstrap, audit_topic, expect=5 * n)
    assert_gap_free(events)
    msgs = by_msg(events)
    assert set(msgs) == set(acked) == set(seen)
    for mid, evs in msgs.items():
        assert sorted(e.stage for e in evs) == sorted(["sent", "broker_acked", "received", "offset_committed",
                                                       "business_done"]), mid
        s = {e.stage: e for e in evs}
        part, off = acked[mid]
        assert all(e.mq == "kafka" and e.topic == topic for e in evs)
        assert (s["broker_acked"].partition, s["broker_acked"].offset) == (part, off)
        assert (s["received"].partition, s["received"].offset) == (part, off)
        assert (s["business_done"].partition, s["business_done"].offset) == (part, off)
        committed = s["offset_committed"]
        assert committed.partition == part and committed.offset > off
        assert committed.attrs["record_offset"] == str(off)
        for st in ("received", "offset_committed", "business_done"):
            assert s[st].consumer_group == group
        assert s["sent"].consumer_group is None and s["sent"].key == mid.replace("order-", "k").split(":")[0]
        assert len({e.trace_id for e in evs}) == 1


def test_every_commit_flavour_counts_once_and_the_apps_on_commit_still_runs(kafka_bootstrap, tmp_path):
    """Asynchronous commits of a message, of offsets, of everything; sync commits; auto-commit; the
    commit at close. Each message gets one offset_committed; the application's on_commit sees every commit."""
    t = Tracer(service="svc", sink=NullSink(), spool_dir=str(tmp_path))
    topic = new_topic(kafka_bootstrap, 1)
    producer = t.wrap_producer(Producer({"bootstrap.servers": kafka_bootstrap}))
    for i in range(8):
        producer.produce(topic, b"x", msg_id=f"m{i}")
    producer.flush(30)
    app_commits = []
    c = t.wrap_consumer(ck.Consumer(consumer_conf(kafka_bootstrap, f"g-{uuid.uuid4().hex[:6]}",
                                                  **{"enable.auto.commit": False,
                                                     "on_commit": lambda err, parts: app_commits.append(
                                                         (err, [(p.partition, p.offset) for p in parts]))})))
    c.subscribe([topic])
    msgs = poll_until(c, 8)
    c.commit(message=msgs[0])                                          # asynchronous, one message
    c.commit(offsets=[TopicPartition(topic, 0, msgs[2].offset() + 1)])  # asynchronous, offsets
    c.commit(message=msgs[3], asynchronous=False)                      # synchronous
    wait_until(lambda: (c.poll(0.1), len(app_commits) >= 2)[1], 20, "the asynchronous commits' reports")
    c.commit()                                                         # asynchronous, the whole assignment
    wait_until(lambda: (c.poll(0.1), len(app_commits) >= 3)[1], 20, "the third report")
    c.close()
    assert [e for e, _ in app_commits] == [None, None, None]
    assert app_commits[0][1] == [(0, msgs[0].offset() + 1)] and app_commits[2][1] == [(0, 8)]
    committed = collections.Counter(e.msg_id for e in spool_events(t) if e.stage == "offset_committed")
    assert committed == {f"m{i}": 1 for i in range(8)}
    t.close(0)

    # auto-commit (observed through on_commit) and the commit at close
    t2 = Tracer(service="svc", sink=NullSink(), spool_dir=str(tmp_path / "t2"))
    c = t2.wrap_consumer(ck.Consumer(consumer_conf(kafka_bootstrap, f"g-{uuid.uuid4().hex[:6]}",
                                                   **{"auto.commit.interval.ms": 200})))
    c.subscribe([topic])
    poll_until(c, 8)
    wait_until(lambda: (c.poll(0.1), sum(e.stage == "offset_committed" for e in spool_events(t2)) == 8)[1], 20,
               "auto-commit to cover all eight")
    c.close()
    assert collections.Counter(e.stage for e in spool_events(t2))["offset_committed"] == 8
    t2.close(0)


def test_a_commit_the_broker_rejects_is_not_recorded(tansu, tmp_path):
    """A member that exceeded max.poll.interval.ms is out of the group: the broker answers UNKNOWN_MEMBER_ID
    to its commits (sync and asynchronous); neither gives offset_committed. After it rejoins, the same
    messages are delivered again (redelivered) and that commit counts."""
    t = Tracer(service="svc", sink=NullSink(), spool_dir=str(tmp_path))
    topic = new_topic(tansu.bootstrap, 1)
    p = t.wrap_producer(Producer({"bootstrap.servers": tansu.bootstrap}))
    for i in range(3):
        p.produce(topic, b"x", msg_id=f"m{i}")
    p.flush(30)
    reports = []
    c = t.wrap_consumer(ck.Consumer(consumer_conf(
        tansu.bootstrap, "g", **{"enable.auto.commit": False, "session.timeout.ms": 1500,
                                 "heartbeat.interval.ms": 300, "max.poll.interval.ms": 1500,
                                 "on_commit": lambda err, parts: reports.append(err)})))
    c.subscribe([topic])
    first = poll_until(c, 3)
    time.sleep(2.5)  # the fault itself: the application stalls past max.poll.interval.ms
    with pytest.raises(KafkaException, match="UNKNOWN_MEMBER_ID|Unknown member"):
        c.commit(message=first[-1], asynchronous=False)
    c.commit(message=first[-1])
    wait_until(lambda: (c.poll(0.1), reports)[1], 20, "the asynchronous commit's answer")
    assert reports[0] is not None
    assert not [e for e in spool_events(t) if e.stage == "offset_committed"]
    again = poll_until(c, 3)  # rejoined: delivered again
    assert [m.offset() for m in again] == [m.offset() for m in first]
    assert c.commit(message=again[-1], asynchronous=False)[0].error is None
    c.close()
    evs = spool_events(t)
    assert collections.Counter(e.msg_id for e in evs if e.stage == "offset_committed") == {"m0": 1, "m1": 1, "m2": 1}
    assert collections.Counter(e.msg_id for e in evs if e.stage == "received") == {"m0": 2, "m1": 2, "m2": 2}
    t.close(0)


def test_send_failures_delivery_report_and_buffer_error(tmp_path):
    t = Tracer(service="svc", sink=NullSink(), spool_dir=str(tmp_path))
    dead = f"127.0.0.1:{free_port()}"
    p = t.wrap_producer(Producer({"bootstrap.servers": dead, "message.timeout.ms": 500, "log_level": 0}))
    calls = []
    p.produce("orders", b"x", msg_id="m-timeout", callback=lambda err, msg: calls.append((err, msg)))
    p.produce("orders", b"y", msg_id="m-timeout-no-callback")
    p.produce("orders", b"z", None, 0, None, None, 1_700_000_000_000, msg_id="m-positional")  # partition, timestamp
    assert p.flush(10) == 0
    assert len(calls) == 1 and calls[0][0] is not None and calls[0][1].value() == b"x"
    full = t.wrap_producer(Producer({"bootstrap.servers": dead, "queue.buffering.max.messages": 1, "log_level": 0}))
    full.produce("orders", b"1", msg_id="m-queued")
    with pytest.raises(BufferError) as exc:
        full.produce("orders", b"2", msg_id="m-full")
    assert "Queue full" in str(exc.value)
    full.purge()
    full.flush(5)
    evs = spool_events(t)
    stages = collections.defaultdict(list)
    for e in evs:
        stages[e.msg_id].append((e.stage, e.error))
    assert [s for s, _ in stages["m-timeout"]] == ["sent", "send_failed"]
    assert "timed out" in stages["m-timeout"][1][1]
    assert [s for s, _ in stages["m-timeout-no-callback"]] == ["sent", "send_failed"]
    assert [s for s, _ in stages["m-positional"]] == ["sent", "send_failed"]
    assert [e.partition for e in evs if e.msg_id == "m-positional"] == [0, 0]
    assert [s for s, _ in stages["m-full"]] == ["sent", "send_failed"]
    assert stages["m-full"][1][1].startswith("BufferError")
    assert [s for s, _ in stages["m-queued"]] == ["sent", "send_failed"]  # purged: it never left
    t.close(0)


def test_transactions_aborted_messages_are_rolled_back(kafka_bootstrap, tmp_path):
    """The sends of an aborted transaction: rolled_back (the broker acked them; no read_committed consumer
    will see them). Tansu accepts init/begin/abort/commit but does not hide aborted records from
    read_committed consumers, so that half is not asserted here (it is the broker's part)."""
    t = Tracer(service="svc", sink=NullSink(), spool_dir=str(tmp_path))
    topic = new_topic(kafka_bootstrap, 1)
    txid = f"tx-{uuid.uuid4().hex[:6]}"
    p = t.wrap_producer(ck.Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": txid}))
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(3):
        p.produce(topic, b"x", msg_id=f"aborted-{i}")
    p.flush(30)
    p.abort_transaction(30)
    p.begin_transaction()
    p.produce(topic, b"x", msg_id="committed-0")
    p.commit_transaction(30)
    events = spool_events(t)
    stages = collections.defaultdict(list)
    for e in events:
        stages[e.msg_id].append(e.stage)
    for i in range(3):
        assert sorted(stages[f"aborted-{i}"]) == ["broker_acked", "rolled_back", "sent"], stages[f"aborted-{i}"]
    assert sorted(stages["committed-0"]) == ["broker_acked", "sent"]
    rb = [e for e in events if e.stage == "rolled_back"]
    assert {e.attrs.get("transaction_id") for e in rb} == {txid} and all(e.topic == topic for e in rb)
    t.close(0)


def test_redelivery_and_swallowed_handler_error_verdicts(kafka_bootstrap, chdb_url, tmp_path):
    """A consumer that closes without committing: the next member gets the message again (redelivered,
    then delivered); a handler error swallowed and committed: failed_and_committed."""
    from tracer import verdicts as V
    from tracer.analysis.reconcile import reconcile
    from tracer.store import Store

    store = Store(chdb_url)
    store.init_schema()
    t0 = time.time_ns() // 1000
    t = Tracer(service="red-packet", store=chdb_url, spool_dir=str(tmp_path / "spool"))
    topic = new_topic(kafka_bootstrap, 1)
    group = f"g-{uuid.uuid4().hex[:6]}"
    p = t.wrap_producer(Producer({"bootstrap.servers": kafka_bootstrap}))
    for m in ("order:redelivered", "order:failed-committed", "order:delivered"):
        p.produce(topic, b"paid", msg_id=m)
    p.flush(30)
    conf = consumer_conf(kafka_bootstrap, group, **{"enable.auto.commit": False})
    c = t.wrap_consumer(Consumer(conf))
    c.subscribe([topic])
    poll_until(c, 3)
    c.close()  # nothing processed, nothing committed
    c = t.wrap_consumer(Consumer(conf))
    c.subscribe([topic])
    for m in poll_until(c, 3):
        try:
            with t.processing(m):
                if dict(m.headers())[MSG_ID_HEADER] == b"order:failed-committed":
                    raise RuntimeError("payment gateway said no")
        except RuntimeError:
            pass  # swallowed
    c.commit(asynchronous=False)
    c.close()
    assert t.flush(30)
    now = time.time_ns() // 1000
    res = reconcile(store, t0, now + 1_000_000, grace_s=0, now_us=now + 2_000_000)
    store.close()
    t.close(5)
    got = {r.msg_id: r for r in res.rows}
    assert got["order:failed-committed"].verdict == V.FAILED_AND_COMMITTED
    assert "payment gateway said no" in got["order:failed-committed"].evidence
    assert got["order:redelivered"].verdict == V.DELIVERED and "redelivered" in got["order:redelivered"].flags
    assert res.summary == {V.DELIVERED: 2, V.FAILED_AND_COMMITTED: 1}


def test_a_configured_on_delivery_is_chained_never_replaced(tmp_path):
    """librdkafka's per-message callback replaces the producer's configured on_delivery. Built with
    tracer.sdk.confluent.Producer, msgtrace knows it and calls it (once); a plain Producer configured with
    callbacks msgtrace cannot read keeps its reports untouched and records only sent; a plain one without
    any callback gets msgtrace's."""
    t = Tracer(service="svc", sink=NullSink(), spool_dir=str(tmp_path))
    dead = f"127.0.0.1:{free_port()}"
    conf = {"bootstrap.servers": dead, "message.timeout.ms": 300, "log_level": 0}
    reports = []
    p = t.wrap_producer(ck.Producer({**conf, "on_delivery": lambda err, msg: reports.append(("known", err))}))
    p.produce("orders", b"x", msg_id="m-known")
    assert p.flush(10) == 0
    unknown = []
    p = t.wrap_producer(Producer({**conf, "on_delivery": lambda err, msg: unknown.append(err)}))
    p.produce("orders", b"x", msg_id="m-unknown")
    assert p.flush(10) == 0
    p = t.wrap_producer(Producer(conf))
    p.produce("orders", b"x", msg_id="m-plain")
    assert p.flush(10) == 0
    assert [k for k, _ in reports] == ["known"] and len(unknown) == 1  # each app callback ran exactly once
    stages = collections.defaultdict(list)
    for e in spool_events(t):
        stages[e.msg_id].append(e.stage)
    assert stages == {"m-known": ["sent", "send_failed"], "m-unknown": ["sent"], "m-plain": ["sent", "send_failed"]}
    t.close(0)
