"""The verdicts and flags that need a real fault to appear, produced by real runs.

unacked (a producer SIGKILLed between send() and the ack), audit_gap (a producer's spool disk lost
with the process), ack_lost (the broker stored the message, its answer was lost on the network),
emitter_seq_gap (the audit spool overflowed while the audit broker was down). Everything goes
through the hooks, a real Tansu broker, the emitter and the store; nothing is inserted by hand.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from tracer import verdicts as V
from tracer.analysis.reconcile import reconcile
from tracer.demo.proxy import FaultProxy
from tracer.localsvc import TansuBroker, free_port, wait_until
from tracer.sdk.tracer import Tracer
from tracer.store import Store

TOPIC = "orders.paid"
GROUP = "red-packet"

_PRODUCER = textwrap.dedent("""
    import sys, time
    from kafka import KafkaProducer
    from tracer.sdk.emitter import NullSink
    from tracer.sdk.tracer import Tracer
    bootstrap, spool, msg_id, wait_ack = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "ack"
    t = Tracer(service="order-service", sink=NullSink(), spool_dir=spool)   # spool only: nothing shipped yet
    p = t.wrap_producer(KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=0,
                                      linger_ms=0 if wait_ack else 600_000, batch_size=1 << 20,
                                      delivery_timeout_ms=700_000))
    fut = p.send("orders.paid", b"paid", msg_id=msg_id)
    if wait_ack:
        fut.get(timeout=30)
        deadline = time.time() + 10
        while t.stats["recorded"] < 2 and time.time() < deadline:  # broker_acked spooled
            time.sleep(0.01)
    print("ready", flush=True)
    sys.stdin.readline()   # wait to be killed
""")


def create_topic(bootstrap: str, name: str = TOPIC) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1)])
    except TopicAlreadyExistsError:
        pass  # a client's metadata request auto-created it first
    finally:
        admin.close()


def run_and_kill(bootstrap: str, spool: str, msg_id: str, wait_ack: bool) -> None:
    """A producer process that is SIGKILLed once its send is spooled (and acked, if asked)."""
    p = subprocess.Popen([sys.executable, "-c", _PRODUCER, bootstrap, spool, msg_id, "ack" if wait_ack else "-"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
    finally:
        p.kill()
        p.wait(10)


def consume_all(t: Tracer, bootstrap: str, want: int, timeout: float = 60) -> list:
    c = t.wrap_consumer(KafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False,
                                      auto_offset_reset="earliest", session_timeout_ms=6000,
                                      heartbeat_interval_ms=1000))
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=300).values():
            for r in recs:
                with t.processing(r):
                    got.append(r)
        c.commit()
    c.close(autocommit=False)
    assert len(got) >= want, f"received {len(got)} of {want}"
    return got


def judge(store: Store, t0: int, groups=None) -> dict:
    now = time.time_ns() // 1000
    res = reconcile(store, t0, now + 1_000_000, grace_s=0, now_us=now + 2_000_000, groups=groups, write=False)
    return {(r.msg_id, r.consumer_group): r for r in res.rows}, res


@pytest.mark.timeout(240)
def test_unacked_and_audit_gap_from_killed_producers(tansu, chdb_url, tmp_path):
    store = Store(chdb_url)
    store.init_schema()
    t0 = time.time_ns() // 1000
    create_topic(tansu.bootstrap)
    # unacked: the record sits in the client's buffer (long linger) when the process is killed
    run_and_kill(tansu.bootstrap, str(tmp_path / "spool-a"), "order:unacked", wait_ack=False)
    ship = subprocess.run([sys.executable, "-m", "tracer", "ship", "--spool", str(tmp_path / "spool-a"),
                           "--store", chdb_url, "--json"], capture_output=True, text=True, timeout=120)
    assert ship.returncode == 0, ship.stderr
    # audit_gap: acked and consumed, but the producer's spool died with its disk before shipping
    run_and_kill(tansu.bootstrap, str(tmp_path / "spool-b"), "order:audit-gap", wait_ack=True)
    shutil.rmtree(tmp_path / "spool-b")
    consumer_tracer = Tracer(service="red-packet", store=chdb_url, spool_dir=str(tmp_path / "spool-c"))
    consume_all(consumer_tracer, tansu.bootstrap, 1)
    assert consumer_tracer.close(timeout=30)

    got, _ = judge(store, t0)
    assert got[("order:unacked", GROUP)].verdict == V.UNACKED
    assert got[("order:audit-gap", GROUP)].verdict == V.AUDIT_GAP
    assert [e.stage for e in store.select_events("order:unacked")] == ["sent"]
    assert "sent" not in {e.stage for e in store.select_events("order:audit-gap")}


@pytest.mark.timeout(240)
def test_ack_lost_when_the_broker_answer_is_lost(chdb_url, tmp_path):
    store = Store(chdb_url)
    store.init_schema()
    port = free_port()
    broker = TansuBroker(advertised_port=port).start()
    proxy = FaultProxy(broker.port, port=port)
    t = Tracer(service="order-service", store=chdb_url, spool_dir=str(tmp_path / "spool"))
    try:
        t0 = time.time_ns() // 1000
        create_topic(proxy.address)
        p = t.wrap_producer(KafkaProducer(bootstrap_servers=proxy.address, acks="all", retries=0,
                                          enable_idempotence=False, request_timeout_ms=1500,
                                          delivery_timeout_ms=3000, linger_ms=0))
        p.send(TOPIC, b"paid", msg_id="order:warm").get(timeout=30)
        proxy.drop_responses()
        with pytest.raises(KafkaError):
            p.send(TOPIC, b"paid", msg_id="order:ack-lost").get(timeout=30)
        proxy.heal()
        p.close(5)
        consume_all(t, proxy.address, 2)  # the broker had stored it: the consumer gets it
        assert t.close(timeout=30)
        got, res = judge(store, t0)
        r = got[("order:ack-lost", GROUP)]
        assert r.verdict == V.DELIVERED and V.ACK_LOST in r.flags, (r.verdict, r.flags, r.evidence)
        assert ("order:warm", GROUP) not in got  # plainly delivered
    finally:
        proxy.close()
        broker.stop()


@pytest.mark.timeout(300)
def test_emitter_seq_gap_when_the_audit_spool_overflows(tansu, chdb_url, tmp_path):
    from collectors import run_collector

    store = Store(chdb_url)
    store.init_schema()
    audit_port = free_port()  # the audit broker is down at first
    t = Tracer(service="order-service", bootstrap=f"127.0.0.1:{audit_port}", spool_dir=str(tmp_path / "spool"),
               max_spool_bytes=16 * 1024)
    audit = None
    try:
        t0 = time.time_ns() // 1000
        create_topic(tansu.bootstrap)
        p = t.wrap_producer(KafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all", linger_ms=0))
        for i in range(100):
            p.send(TOPIC, b"paid", msg_id=f"order:{i}").get(timeout=30)
        wait_until(lambda: t.stats["dropped"] > 0, 30, "the full spool to drop events")
        audit = TansuBroker(port=audit_port).start()
        create_topic(audit.bootstrap, "msgtrace.audit")
        assert t.flush(timeout=60)  # the spool drained: what is recorded from now on fits again
        dropped = t.stats["dropped"]
        for i in range(100, 105):  # events after the gap make it visible
            p.send(TOPIC, b"paid", msg_id=f"order:{i}").get(timeout=30)
        p.close(5)
        assert t.flush(timeout=60)
        stats = run_collector(audit.bootstrap, "msgtrace.audit", chdb_url, until_idle=True)
        assert stats.to_dict()["stored"] > 0
        got, res = judge(store, t0, groups=[GROUP])
        assert sum(g.missing for g in res.seq_gaps) == dropped, res.seq_gaps
        flagged = [r for r in got.values() if V.EMITTER_SEQ_GAP in r.flags]
        assert flagged and all(r.verdict != V.DELIVERED for r in flagged)
    finally:
        t.close(timeout=10)
        if audit:
            audit.stop()


@pytest.mark.timeout(240)
def test_lost_in_consumer_when_the_commit_answer_is_lost(chdb_url, tmp_path):
    """A consumer commits before its business work (the seeds' mistake), the commit reaches the broker,
    its answer is lost and the process dies: no offset_committed names the message, so the audit alone
    says in_flight; Kafka's live committed offset (--bootstrap) shows the group will never redeliver
    it: lost_in_consumer, decided by live_committed_offset."""
    from kafka.structs import TopicPartition

    from tracer.analysis.reconcile import live_committed

    store = Store(chdb_url)
    store.init_schema()
    port = free_port()
    broker = TansuBroker(advertised_port=port).start()
    proxy = FaultProxy(broker.port, port=port)
    t = Tracer(service="red-packet", store=chdb_url, spool_dir=str(tmp_path / "spool"))
    c = None
    try:
        t0 = time.time_ns() // 1000
        create_topic(proxy.address)
        p = t.wrap_producer(KafkaProducer(bootstrap_servers=proxy.address, acks="all", linger_ms=0))
        p.send(TOPIC, b"paid", msg_id="order:commit-lost").get(timeout=30)
        p.close(5)
        c = t.wrap_consumer(KafkaConsumer(TOPIC, bootstrap_servers=proxy.address, group_id=GROUP,
                                          enable_auto_commit=False, auto_offset_reset="earliest",
                                          session_timeout_ms=6000, heartbeat_interval_ms=1000))
        got: list = []
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=300).values():
                got.extend(recs)
        assert got, "the consumer received nothing"
        proxy.drop_responses()
        c.commit_async()  # reaches the broker; its answer never comes back
        wait_until(lambda: proxy.dropped_bytes > 0, 30, "the broker's answer to be swallowed")
        proxy.cut()  # the consumer process dies here, before any business outcome
        proxy.heal()
        tp = TopicPartition(TOPIC, 0)
        # the group coordinator is reached through the proxy (the broker advertises its port)
        wait_until(lambda: live_committed(proxy.address, GROUP, TOPIC, 0, timeout_s=3) == 1, 60,
                   "the broker to report the commit")
        assert t.flush(timeout=30)
        stages = [e.stage for e in store.select_events("order:commit-lost")]
        assert "received" in stages and "offset_committed" not in stages, stages
        got_v, _ = judge(store, t0, groups=[GROUP])
        assert got_v[("order:commit-lost", GROUP)].verdict == V.IN_FLIGHT  # what the audit alone shows
        now = time.time_ns() // 1000
        res = reconcile(store, t0, now + 1_000_000, grace_s=0, now_us=now + 2_000_000, groups=[GROUP],
                        bootstrap=proxy.address, write=False)
        r = {(v.msg_id, v.consumer_group): v for v in res.rows}[("order:commit-lost", GROUP)]
        assert (r.verdict, r.decided_by) == (V.LOST_IN_CONSUMER, "live_committed_offset"), r.evidence
        assert "committed offset 1 on partition 0 (live)" in r.evidence and tp.partition == 0
    finally:
        proxy.heal()
        if c is not None:
            try:
                c.close(autocommit=False)
            except Exception:
                pass
        t.close(timeout=5)
        proxy.close()
        broker.stop()


@pytest.mark.timeout(240)
def test_expired_in_broker_reads_the_log_start_live(tansu, chdb_url, tmp_path):
    """expired_in_broker needs the partition's log start past the message's offset. Tansu (0.6,
    memory storage) answers ListOffsets(earliest) but not DeleteRecords (its storage panics with "not
    yet implemented" and drops the connection) and has no retention, so on Tansu this test checks the
    live read and that a log starting at 0 expires nothing; on a Kafka that deletes records
    (MSGTRACE_TEST_KAFKA_BOOTSTRAP pointing at a real one would need this test to use it) the
    deleted messages must come out expired_in_broker, decided by log_start_passed."""
    from kafka.structs import TopicPartition

    from tracer.analysis.broker import LiveKafka

    store = Store(chdb_url)
    store.init_schema()
    t = Tracer(service="order-service", store=chdb_url, spool_dir=str(tmp_path / "spool"))
    try:
        t0 = time.time_ns() // 1000
        create_topic(tansu.bootstrap)
        p = t.wrap_producer(KafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all", linger_ms=0))
        for i in range(3):
            p.send(TOPIC, b"paid", msg_id=f"order:exp-{i}").get(timeout=30)
        p.close(5)
        assert t.flush(timeout=30)
        admin = KafkaAdminClient(bootstrap_servers=tansu.bootstrap, request_timeout_ms=5000)
        try:
            admin.delete_records({TopicPartition(TOPIC, 0): 2})
            deleted = True
        except KafkaError:  # Tansu: connection reset by the broker (DeleteRecords not implemented)
            deleted = False
        finally:
            admin.close()
        live = LiveKafka(tansu.bootstrap, timeout_s=5)
        assert live.log_start(TOPIC, 0) == (2 if deleted else 0)  # a real ListOffsets(earliest) answer
        got, _ = judge(store, t0, groups=[GROUP])
        now = time.time_ns() // 1000
        res = reconcile(store, t0, now + 1_000_000, grace_s=0, now_us=now + 2_000_000, groups=[GROUP],
                        bootstrap=tansu.bootstrap, write=False)
        rows = {v.msg_id: v for v in res.rows}
        for i in range(3):
            r = rows[f"order:exp-{i}"]
            assert got[(f"order:exp-{i}", GROUP)].verdict == V.PENDING_IN_BROKER  # the audit alone
            if deleted and i < 2:
                assert (r.verdict, r.decided_by) == (V.EXPIRED_IN_BROKER, "log_start_passed"), r.evidence
            else:
                assert (r.verdict, r.decided_by) == (V.PENDING_IN_BROKER, "no_evidence_of_passing"), r.evidence
    finally:
        t.close(timeout=10)
