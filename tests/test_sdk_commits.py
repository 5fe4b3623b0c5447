"""The kafka-python commit hook on the path production takes, against a real broker (Tansu).

kafka-python 3 sends a commit as a coroutine on its IO thread and hands the broker's OffsetCommit
response to the coordinator; the hook reads the per-partition answer there. These tests drive real
commits and compare the audit with what the broker itself says it committed (``committed()``):

- accepted commits (sync, async with a callback, explicit offsets) give one ``offset_committed`` per
  covered message, at the broker's committed position;
- a commit the broker refuses for a partition (its topic deleted under the consumer) records nothing
  for that partition, and the partition it accepted in the same request is recorded;
- a member out of the group (its poll interval exceeded: kafka-python left the group) commits
  nothing; after it rejoined, the messages delivered again are committed once;
- the commit kafka-python makes before a rebalance (auto-commit on, a second member joins) and at
  ``close()`` are recorded like any other.

Tansu 0.6.0 accepts OffsetCommit from a member whose generation is stale or whose session expired
(checked while writing these tests), so a commit fenced by the broker's generation check cannot be
produced on it; the tests above cover the refusals it does make and kafka-python's own.
"""
from __future__ import annotations

import collections
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata
from test_hooks import GROUP_CFG, new_topic, spool_events

from tracer import Tracer
from tracer.localsvc import wait_until
from tracer.sdk.emitter import NullSink


def produce(t: Tracer, bootstrap: str, topic: str, n: int, prefix: str, partitions: int = 1) -> None:
    p = t.wrap_producer(KafkaProducer(bootstrap_servers=bootstrap))
    for i in range(n):
        p.send(topic, b"v", partition=i % partitions, msg_id=f"{prefix}{i}")
    p.flush(30)
    p.close()


def consume(c, want: int, timeout: float = 60) -> list:
    got: list = []

    def step() -> bool:
        for recs in c.poll(timeout_ms=300).values():
            got.extend(recs)
        return len(got) >= want

    wait_until(step, timeout, f"{want} records (have {len(got)})", interval=0)
    return got


def committed_events(t: Tracer) -> dict[str, list]:
    out = collections.defaultdict(list)
    for e in spool_events(t):
        if e.stage == "offset_committed":
            out[e.msg_id].append(e)
    return out


def test_accepted_commits_match_what_the_broker_committed(kafka_bootstrap, tmp_path):
    t = Tracer(service="c", sink=NullSink(), spool_dir=str(tmp_path))
    topic = new_topic(kafka_bootstrap, 2)
    produce(t, kafka_bootstrap, topic, 40, "m", partitions=2)
    group = f"g-{uuid.uuid4().hex[:6]}"
    c = t.wrap_consumer(KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=group,
                                      enable_auto_commit=False, max_poll_records=7, **GROUP_CFG))
    got = consume(c, 40)
    by_tp: dict = collections.defaultdict(list)
    for r in got:
        by_tp[TopicPartition(r.topic, r.partition)].append(r)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    # explicit offsets: only the first 5 of partition 0 are covered
    c.commit({tp0: OffsetAndMetadata(by_tp[tp0][5].offset, "", -1)})
    assert c.committed(tp0) == by_tp[tp0][5].offset
    done = []
    c.commit_async({tp1: OffsetAndMetadata(by_tp[tp1][-1].offset + 1, "", -1)},
                   callback=lambda offsets, res: done.append(res))
    wait_until(lambda: done or (c.poll(timeout_ms=50) and False), 20, "the async commit's answer")
    assert not isinstance(done[0], Exception)
    assert c.committed(tp1) == by_tp[tp1][-1].offset + 1
    ev = committed_events(t)
    covered = {r.headers[0][1].decode() for r in by_tp[tp0][:5]} | {r.headers[0][1].decode() for r in by_tp[tp1]}
    assert set(ev) == covered and all(len(v) == 1 for v in ev.values())
    for r in by_tp[tp0][:5]:
        [e] = ev[r.headers[0][1].decode()]
        assert (e.partition, e.offset, e.attrs["record_offset"]) == (0, c.committed(tp0), str(r.offset))
    c.commit()  # everything: the rest of partition 0 now, nothing twice
    ev = committed_events(t)
    assert len(ev) == 40 and all(len(v) == 1 for v in ev.values())
    assert {e.offset for r in by_tp[tp0][5:] for e in ev[r.headers[0][1].decode()]} == {c.committed(tp0)}
    c.close()
    t.close(0)


def test_a_partition_the_broker_refuses_records_nothing(kafka_bootstrap, tmp_path):
    """One commit request for two topics; the broker refuses the partition whose topic was deleted
    (UNKNOWN_TOPIC_OR_PARTITION, on every retry) and accepts the other: only the accepted one counts."""
    t = Tracer(service="c", sink=NullSink(), spool_dir=str(tmp_path))
    keep, gone = new_topic(kafka_bootstrap, 1), new_topic(kafka_bootstrap, 1)
    produce(t, kafka_bootstrap, keep, 5, "keep-")
    produce(t, kafka_bootstrap, gone, 5, "gone-")
    c = t.wrap_consumer(KafkaConsumer(keep, gone, bootstrap_servers=kafka_bootstrap,
                                      group_id=f"g-{uuid.uuid4().hex[:6]}", enable_auto_commit=False,
                                      retry_backoff_ms=100, **GROUP_CFG))
    consume(c, 10)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_topics([gone])
    finally:
        admin.close()
    with pytest.raises(KafkaError):
        c.commit(timeout_ms=3000)
    assert c.committed(TopicPartition(keep, 0)) == 5  # the broker did commit this one
    ev = committed_events(t)
    assert set(ev) == {f"keep-{i}" for i in range(5)} and all(len(v) == 1 for v in ev.values())
    assert t.stats["hook_errors"] == 0
    c.close(autocommit=False)
    t.close(0)


def test_a_member_out_of_the_group_commits_nothing_until_it_rejoined(kafka_bootstrap, tmp_path):
    t = Tracer(service="c", sink=NullSink(), spool_dir=str(tmp_path))
    topic = new_topic(kafka_bootstrap, 1)
    produce(t, kafka_bootstrap, topic, 3, "m")
    c = t.wrap_consumer(KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=f"g-{uuid.uuid4().hex[:6]}",
                                      enable_auto_commit=False, max_poll_interval_ms=6000, **GROUP_CFG))
    first = consume(c, 3)
    coord = c.wrapped._coordinator
    # the application stalls past max_poll_interval_ms: kafka-python's heartbeat thread leaves the group
    wait_until(lambda: coord.generation_if_stable() is None, 30, "the consumer to leave the group")
    with pytest.raises(CommitFailedError):
        c.commit()
    assert committed_events(t) == {}
    again = consume(c, 3)  # rejoined: nothing was committed, so the same messages come again
    assert [r.offset for r in again] == [r.offset for r in first]
    c.commit()
    ev = committed_events(t)
    assert {m: len(v) for m, v in ev.items()} == {"m0": 1, "m1": 1, "m2": 1}
    received = collections.Counter(e.msg_id for e in spool_events(t) if e.stage == "received")
    assert received == {"m0": 2, "m1": 2, "m2": 2}
    c.close()
    t.close(0)


def test_commits_before_a_rebalance_and_at_close(kafka_bootstrap, tmp_path):
    """Auto-commit on, its interval far away: the only commits are the one kafka-python makes before
    rejoining when a second member arrives, and the one at close()."""
    t = Tracer(service="c", sink=NullSink(), spool_dir=str(tmp_path))
    topic = new_topic(kafka_bootstrap, 2)
    produce(t, kafka_bootstrap, topic, 20, "m", partitions=2)
    group = f"g-{uuid.uuid4().hex[:6]}"
    cfg = dict(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=True,
               auto_commit_interval_ms=600_000, **GROUP_CFG)
    a = t.wrap_consumer(KafkaConsumer(topic, **cfg))
    consume(a, 20)
    assert committed_events(t) == {}
    b = t.wrap_consumer(KafkaConsumer(topic, **cfg))

    def rebalanced() -> bool:  # one member at a time: b joins while a keeps polling (and rejoins)
        a.poll(timeout_ms=100)
        b.poll(timeout_ms=100)
        return bool(a.assignment()) and bool(b.assignment())

    try:
        wait_until(rebalanced, 30, "the rebalance to give each member a partition", interval=0)
    except TimeoutError:
        # Tansu can wedge a group whose membership changes mid-rebalance: b leaves, a settles alone,
        # and a new member joins once more (a's commit before each rejoin covers nothing new)
        b.close()
        wait_until(lambda: a.poll(timeout_ms=100) is not None and sorted(p.partition for p in a.assignment())
                   == [0, 1], 60, "the first member to own both partitions again", interval=0)
        b = t.wrap_consumer(KafkaConsumer(topic, **cfg))
        wait_until(rebalanced, 60, "the rebalance to give each member a partition", interval=0)
    ev = committed_events(t)  # a committed what it had consumed before giving partitions up
    assert len(ev) == 20 and all(len(v) == 1 and v[0].consumer_group == group for v in ev.values())
    assert {(e.partition, e.offset) for v in ev.values() for e in v} == {(0, 10), (1, 10)}
    probe = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    assert [probe.committed(TopicPartition(topic, p)) for p in (0, 1)] == [10, 10]
    probe.close()
    b.close()
    a.close()

    # at close(): a new topic, consumed and closed without any explicit commit
    topic2 = new_topic(kafka_bootstrap, 1)
    produce(t, kafka_bootstrap, topic2, 5, "c")
    c = t.wrap_consumer(KafkaConsumer(topic2, **{**cfg, "group_id": f"{group}-close"}))
    consume(c, 5)
    assert not any(m.startswith("c") for m in committed_events(t))
    c.close()
    ev = committed_events(t)
    assert {m for m in ev if m.startswith("c")} == {f"c{i}" for i in range(5)}
    assert {e.offset for m, v in ev.items() if m.startswith("c") for e in v} == {5}
    t.close(0)
