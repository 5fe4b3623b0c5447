"""msgtrace replay on real runs: Tansu (the business Kafka), chDB (the store), SQLite (the outbox).

A red-packet consumer auto-commits ahead of its worker pool and loses three messages; three poison
messages go to a DLQ (one with its DLQ offset recorded, one whose DLQ copy keeps its headers, one
whose copy lost them, as the demo's does); one order never reaches the MQ (its outbox row exists).
``replay`` re-publishes exactly those seven to a retry topic (a dry run first: nothing written
anywhere), the group processes them, and the next reconcile finds them delivered. A second run
re-publishes nothing. Second test: a broker that lost its log cannot supply a message (its offset is
past the log end, or reused by another message); the outbox can.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import orjson
import pytest
from click.testing import CliRunner
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from test_hooks import new_topic

from tracer import verdicts as V
from tracer.cli import main
from tracer.localsvc import wait_until
from tracer.sdk.tracer import Tracer
from tracer.store import Store

GROUP = "red-packet"
LOST = ["lost-0", "lost-1", "lost-2"]
DLQ_AT, DLQ_HEADERS, DLQ_BARE = "dlq-at", "dlq-headers", "dlq-bare"
OK = [f"ok-{i}" for i in range(5)]
NEVER = "never-sent"


def mid(name: str) -> str:
    return f"order-{name}:paid"


def payload(name: str) -> bytes:
    return json.dumps({"order_id": name, "amount": "0" if name.startswith("dlq") else "8.88"}).encode()


def iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat()


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def end_offsets(bootstrap: str, *topics: str) -> dict[tuple[str, int], int]:
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(c.partitions_for_topic(t) or ())]
        return {(tp.topic, tp.partition): o for tp, o in c.end_offsets(tps).items()}
    finally:
        c.close()


def read_all(bootstrap: str, topic: str, n: int, timeout: float = 30) -> list:
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      auto_offset_reset="earliest")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        got: list = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=300).values():
                got.extend(recs)
        return got
    finally:
        c.close()


def outbox(path, names: list[str]) -> str:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE outbox (msg_id TEXT PRIMARY KEY, key TEXT, payload BLOB)")
    db.executemany("INSERT INTO outbox VALUES (?, ?, ?)", [(mid(n), n, payload(n)) for n in names])
    db.commit()
    db.close()
    return f"sqlite:///{path}"


SOURCE_SQL = "SELECT msg_id AS id, key, payload FROM outbox WHERE msg_id IN :ids"


def replay_events(store: Store, since_us: int) -> list[dict]:
    return store.query(
        "SELECT msg_id, stage, topic, consumer_group, attr_keys, attr_values, ts_us FROM "
        "(SELECT * FROM {db:Identifier}.trace_events LIMIT 1 BY event_id) WHERE ts_us >= {since:UInt64} "
        "ORDER BY ts_us", {"since": since_us})


def red_packet_consumer(t: Tracer, bootstrap: str, topic: str, dlq: str) -> None:
    """The seeds' red-packet service: auto-commit every 200 ms, work handed to a pool; the workers of
    the LOST messages hang and then die (no outcome recorded), after auto-commit covered them."""
    c = t.wrap_consumer(KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=True,
                                      auto_commit_interval_ms=200, auto_offset_reset="earliest",
                                      session_timeout_ms=6000, heartbeat_interval_ms=1000))
    dlq_producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    crash = threading.Event()
    pool = ThreadPoolExecutor(max_workers=4)

    def handle(r) -> None:
        name = json.loads(r.value)["order_id"]
        if name in LOST:
            with t.processing(r):
                crash.wait(60)
                raise SystemExit  # the worker dies mid-payment: no outcome is recorded
        if name == DLQ_AT:  # the DLQ copy keeps the headers and its offset is recorded
            md = dlq_producer.send(dlq, r.value, key=r.key, headers=r.headers).get(timeout=30)
            t.record("dead_lettered", r, dlq_topic=dlq, dlq_partition=md.partition, dlq_offset=md.offset,
                     error="invalid amount")
        elif name == DLQ_HEADERS:  # the copy keeps the headers; its offset is not recorded
            dlq_producer.send(dlq, r.value, key=r.key, headers=r.headers).get(timeout=30)
            t.record("dead_lettered", r, dlq_topic=dlq, error="invalid amount")
        elif name == DLQ_BARE:  # as the demo's red-packet service: no headers, the DLQ named by topic
            dlq_producer.send(dlq, r.value, key=r.key).get(timeout=30)
            t.record("dead_lettered", mid(name), topic=dlq, consumer_group=GROUP, error="invalid amount")
        else:
            with t.processing(r):
                pass  # the red packet is paid

    n = len(LOST) + 3 + len(OK)
    received = 0
    tps = [TopicPartition(topic, p) for p in range(2)]
    ends = end_offsets(bootstrap, topic)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                for r in recs:
                    pool.submit(handle, r)
                    received += 1
            if received >= n and all((c.committed(tp) or 0) >= ends[(topic, tp.partition)] for tp in tps):
                break  # auto-commit covered every message, the hung ones included
        assert received == n, f"received {received} of {n}"
    finally:
        crash.set()
        pool.shutdown(wait=True)
        c.close()
        dlq_producer.close()


def retry_consumer(t: Tracer, bootstrap: str, retry: str, want: int) -> list:
    """The same group reading its retry topic, committing after the work."""
    c = t.wrap_consumer(KafkaConsumer(retry, bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False,
                                      auto_offset_reset="earliest", session_timeout_ms=6000,
                                      heartbeat_interval_ms=1000))
    got: list = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < want and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=300).values():
                for r in recs:
                    with t.processing(r):
                        got.append(r)
                c.commit()
    finally:
        c.close()
    return got


@pytest.mark.timeout(300)
def test_replay_recovers_what_the_consumer_dropped_the_dlq_holds_and_the_outbox_has(kafka_bootstrap, chdb_url,
                                                                                     tmp_path):
    b = kafka_bootstrap
    topic, retry, dlq = new_topic(b, 2, "paid"), new_topic(b, 1, "retry"), new_topic(b, 1, "dlq")
    dsn = outbox(tmp_path / "orders.db", [*LOST, DLQ_AT, DLQ_HEADERS, DLQ_BARE, *OK, NEVER])
    store = Store(chdb_url)
    store.init_schema()
    t0 = time.time_ns() // 1000
    t = Tracer(service="red-packet-case", store=chdb_url, spool_dir=str(tmp_path / "spool"))
    producer = t.wrap_producer(KafkaProducer(bootstrap_servers=b, acks="all", linger_ms=0))
    acked = {}
    for name in [*LOST, DLQ_AT, DLQ_HEADERS, DLQ_BARE, *OK]:  # NEVER: the order service died before sending
        md = producer.send(topic, payload(name), key=name.encode(), msg_id=mid(name)).get(timeout=30)
        acked[mid(name)] = (md.partition, md.offset)
    producer.close(5)
    red_packet_consumer(t, b, topic, dlq)
    assert t.flush(timeout=60)
    t1 = time.time_ns() // 1000
    window = ["--from", iso(t0), "--to", iso(t1)]
    expected = ["--expected-sql", "SELECT msg_id FROM outbox", "--expected-dsn", dsn]

    r = cli("reconcile", *window, *expected, "--store", chdb_url, "--json")
    assert r.exit_code == 1, r.output
    first = orjson.loads(r.output)
    verdict = {(m["msg_id"]): m["verdict"] for m in first["messages"] if m["verdict"] != V.DELIVERED}
    lost = {mid(n) for n in [*LOST, DLQ_AT, DLQ_HEADERS, DLQ_BARE, NEVER]}
    assert verdict == {**{mid(n): V.LOST_IN_CONSUMER for n in LOST}, mid(NEVER): V.NEVER_SENT,
                       **{mid(n): V.DEAD_LETTERED for n in (DLQ_AT, DLQ_HEADERS, DLQ_BARE)}}

    args = ["replay", "--run", first["run_id"], "--bootstrap", b, "--to-topic", retry, "--source-sql", SOURCE_SQL,
            "--source-dsn", dsn, "--store", chdb_url, "--spool-dir", str(tmp_path / "spool-replay"), "--json"]
    # a dry run reads, plans and stores the run, and writes to no broker: every end offset unchanged
    before = end_offsets(b, topic, retry, dlq)
    r = cli(*args)
    assert r.exit_code == 1, r.output  # the seven are still lost
    dry = orjson.loads(r.output)
    assert dry["mode"] == "dry_run" and dry["counts"] == {"planned": 7, "published": 0, "skipped": 0, "failed": 0}
    src = {m["msg_id"]: (m["source"], m["from"]) for m in dry["messages"]}
    for n in LOST:
        p, o = acked[mid(n)]
        assert src[mid(n)] == ("business_topic", f"{topic}/{p}@{o}")
    assert {src[mid(n)][0] for n in (DLQ_AT, DLQ_HEADERS, DLQ_BARE)} == {"dlq"}
    assert all(src[mid(n)][1].startswith(f"the DLQ {dlq}/0@") for n in (DLQ_AT, DLQ_HEADERS, DLQ_BARE))
    assert src[mid(NEVER)] == ("source_of_truth", "the source of truth")
    assert end_offsets(b, topic, retry, dlq) == before
    with store.session():
        assert not [e for e in replay_events(store, t1) if "replay_run" in e["attr_keys"]]
        runs = store.query("SELECT mode, planned, published FROM {db:Identifier}.replay_runs")
    assert runs == [{"mode": "dry_run", "planned": 7, "published": 0}]

    started = time.time_ns() // 1000
    r = cli(*args, "--execute", "--rate", "50")
    assert r.exit_code == 0, r.output
    done = orjson.loads(r.output)
    assert done["counts"] == {"planned": 0, "published": 7, "skipped": 0, "failed": 0}
    assert done["audit_events_shipped"] is True
    assert end_offsets(b, topic, dlq) == {k: v for k, v in before.items() if k[0] != retry}
    on_retry = read_all(b, retry, 7)
    assert len(on_retry) == 7 and end_offsets(b, retry)[(retry, 0)] == before[(retry, 0)] + 7
    heads = [dict(rec.headers) for rec in on_retry]
    assert {h["msgtrace-id"].decode() for h in heads} == lost
    assert {h["msgtrace-replay"].decode() for h in heads} == {done["replay_run"]}
    assert {dict(rec.headers)["msgtrace-id"].decode(): rec.value for rec in on_retry} == \
        {mid(n): payload(n) for n in [*LOST, DLQ_AT, DLQ_HEADERS, DLQ_BARE, NEVER]}
    with store.session():
        own = [e for e in replay_events(store, started) if "replay_run" in e["attr_keys"]]
    runs_of = {(e["msg_id"], e["stage"]): dict(zip(e["attr_keys"], e["attr_values"]))["replay_run"] for e in own}
    assert set(runs_of) == {(m, s) for m in lost for s in ("sent", "broker_acked")}
    assert set(runs_of.values()) == {done["replay_run"]}

    # the group reads its retry topic and processes exactly the seven replays
    got = retry_consumer(t, b, retry, 7)
    assert {dict(rec.headers)["msgtrace-id"].decode() for rec in got} == lost
    assert t.close(timeout=60)
    with store.session():
        consumer_side = [e for e in replay_events(store, started) if e["consumer_group"] == GROUP]
    done_after = {e["msg_id"] for e in consumer_side if e["stage"] == "business_done" and e["topic"] == retry}
    assert done_after == lost  # the consumer's events of the replays, by msg_id and time

    r = cli("reconcile", *window, *expected, "--store", chdb_url, "--json")
    assert r.exit_code == 0, r.output  # nothing lost any more
    second = orjson.loads(r.output)
    listed = {m["msg_id"]: m for m in second["messages"]}
    for m in lost - {mid(NEVER)}:  # read from the business topic or the DLQ, re-published, processed
        assert listed[m]["verdict"] == V.DELIVERED and V.REPLAYED in listed[m]["flags"], listed[m]
        assert listed[m]["topic"] == topic, listed[m]  # the business topic; the retry topic is in the evidence
        assert f"to {retry}: sent, broker_acked" in listed[m]["evidence"], listed[m]
    # rebuilt from the outbox (never sent before): its replay's send is its send, processed: delivered
    assert listed[mid(NEVER)]["verdict"] == V.DELIVERED and V.REPLAYED in listed[mid(NEVER)]["flags"], \
        listed[mid(NEVER)]
    assert second["summary"][V.DELIVERED] >= len(OK) + len(lost)

    # a second run re-publishes nothing: each message was replayed already
    r = cli(*args, "--execute")
    assert r.exit_code == 0, r.output
    again = orjson.loads(r.output)
    assert again["counts"] == {"planned": 0, "published": 0, "skipped": 7, "failed": 0}
    assert again["skipped_by_reason"] == {"already_replayed": 7}
    assert end_offsets(b, retry)[(retry, 0)] == before[(retry, 0)] + 7
    # and judged afresh (--from/--to through the reconciler), nothing is left to replay
    r = cli("replay", *window, "--bootstrap", b, "--to-topic", retry, "--store", chdb_url, "--execute", "--json")
    assert r.exit_code == 0, r.output
    assert orjson.loads(r.output)["counts"]["published"] == 0
    with store.session():
        modes = store.query("SELECT mode, published, skipped FROM {db:Identifier}.replay_runs ORDER BY started_us")
        published = store.query("SELECT msg_id, source, target_topic FROM {db:Identifier}.replay_messages "
                                "WHERE result = 'published'")
    assert [m["mode"] for m in modes] == ["dry_run", "execute", "execute", "execute"]
    assert {p["msg_id"] for p in published} == lost and {p["target_topic"] for p in published} == {retry}


@pytest.mark.timeout(180)
def test_a_broker_that_lost_its_log_cannot_supply_the_message_and_the_outbox_can(tansu, chdb_url, tmp_path):
    """Offsets past the log end, and an offset reused by another message, after the broker lost its log."""
    b = tansu.bootstrap
    store = Store(chdb_url)
    store.init_schema()
    t = Tracer(service="red-packet-case", store=chdb_url, spool_dir=str(tmp_path / "spool"))
    topic = new_topic(b, 1, "paid")
    producer = t.wrap_producer(KafkaProducer(bootstrap_servers=b, acks="all", linger_ms=0))
    for n in ("a", "b", "c"):
        producer.send(topic, payload(n), key=n.encode(), msg_id=mid(n)).get(timeout=30)
    producer.close(5)
    c = t.wrap_consumer(KafkaConsumer(topic, bootstrap_servers=b, group_id=GROUP, enable_auto_commit=False,
                                      auto_offset_reset="earliest", session_timeout_ms=6000,
                                      heartbeat_interval_ms=1000))
    got: list = []
    wait_until(lambda: got.extend(r for rs in c.poll(timeout_ms=300).values() for r in rs) or len(got) >= 3, 60,
               "three records")
    c.commit()  # committed, never processed: lost in the consumer
    c.close(autocommit=False)
    tansu.restart()  # the broker loses its log; the next message reuses offset 0
    admin_topic(b, topic)
    producer = t.wrap_producer(KafkaProducer(bootstrap_servers=b, acks="all", linger_ms=0))
    assert producer.send(topic, payload("other"), msg_id=mid("other")).get(timeout=30).offset == 0
    producer.close(5)
    assert t.close(timeout=60)

    base = ["replay", "--id", mid("a"), "--id", mid("b"), "--id", mid("c"), "--bootstrap", b, "--store", chdb_url,
            "--json"]
    before = end_offsets(b, topic)
    r = cli(*base)
    assert r.exit_code == 1, r.output
    why = {m["msg_id"]: m["reason_code"] for m in orjson.loads(r.output)["messages"]}
    assert why == {mid("a"): "offset_reused", mid("b"): "beyond_log_end", mid("c"): "beyond_log_end"}
    dsn = outbox(tmp_path / "orders.db", ["a", "b"])
    r = cli(*base, "--source-sql", SOURCE_SQL, "--source-dsn", dsn)
    assert r.exit_code == 1, r.output  # c is still lost: neither the broker nor the outbox has it
    res = {m["msg_id"]: m for m in orjson.loads(r.output)["messages"]}
    assert res[mid("a")]["source"] == res[mid("b")]["source"] == "source_of_truth"
    assert "not from business_topic" in " ".join(res[mid("a")]["notes"])
    assert res[mid("c")]["result"] == "skipped" and res[mid("c")]["reason_code"] == "beyond_log_end"
    assert "no row for it" in res[mid("c")]["reason"]
    # a replay never creates a topic: --execute to a missing retry topic stops before publishing anything
    r = cli(*base, "--source-sql", SOURCE_SQL, "--source-dsn", dsn, "--to-topic", "no-such-retry", "--execute")
    assert r.exit_code == 2 and "--to-topic no-such-retry does not exist" in r.output, r.output
    assert end_offsets(b, topic) == before
    with Store(chdb_url) as s:
        assert s.query("SELECT count() AS n FROM {db:Identifier}.replay_messages WHERE result = 'published'") == \
            [{"n": 0}]
    c = KafkaConsumer(bootstrap_servers=b, group_id=None)
    try:
        assert "no-such-retry" not in c.topics()
    finally:
        c.close()


def admin_topic(bootstrap: str, name: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        admin.close()
