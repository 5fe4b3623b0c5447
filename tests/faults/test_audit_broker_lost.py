"""The audit broker restarted losing its log (Tansu is memory-only: acknowledged records are gone).

Real processes of the story in issue 18: an order service and a red-packet group traced through
the audit topic, a collector. Block A of orders is sent, processed, shipped and collected; block B
is sent, processed and shipped (the audit broker acknowledged it) but not yet collected when the
audit broker restarts empty; block C comes after the restart. One expected id was really never
sent; the expected ids carry the time each order was paid (the never-sent one long before block A).

Recovery is disabled here (``retention=0``: nothing shipped is kept, nothing can be shipped again),
so block B's events are gone for good: the audit reports its own gap (the missing seq numbers), the
delivered orders of block B are ``audit_gap`` (never a loss: issue 18), and the really never-sent
id, whose time is outside the gap, stays ``never_sent``. Automatic recovery and ``ship --repair``
are tests/test_audit_recovery.py. The test does not recreate the audit topic after the restart:
the emitters must (a memory broker restarted under a producer acknowledges writes to a topic it no
longer has, and nobody can read them).

The scenario runs once per engine (a module fixture); its tests check separate claims.
"""
from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass, field

import pytest
from faultkit import drain, integrity, names, now_us, unavailable, verdicts
from kafka import KafkaConsumer, KafkaProducer

from collectors.testing import create_topic
from tracer import Tracer
from tracer import verdicts as V
from tracer.analysis.expected import ExpectedSource
from tracer.localsvc import ServiceError, TansuBroker, wait_until
from tracer.store import Store

GROUP = "red-packet"
BLOCK = 30


@dataclass
class Run:
    url: str
    store: Store
    blocks: dict[str, list[str]]
    never: str
    recorded: dict[str, int]
    lost_seqs: dict[str, int]          # emitter -> events shipped in block B (lost with the broker)
    got: dict = field(default_factory=dict)
    res: object = None


def _block(tag: str, producer, consumer, tracer_red: Tracer, business: str, got: list,
           times: dict[str, float]) -> list[str]:
    ids = [f"order-{tag}-{i}:paid" for i in range(BLOCK)]
    for m in ids:
        times[m] = time.time()
        producer.send(business, b"paid", msg_id=m).get(timeout=30)
    want = len(got) + BLOCK
    deadline = time.monotonic() + 60
    while len(got) < want and time.monotonic() < deadline:
        recs = consumer.poll(timeout_ms=300)
        for batch in recs.values():
            for r in batch:
                with tracer_red.processing(r):
                    got.append(r)
        if recs:
            consumer.commit()
    assert len(got) >= want, f"block {tag}: consumed {len(got)} of {want}"
    return ids


def _expected(path, ids: list[str], times: dict[str, float]) -> ExpectedSource:
    path.write_text("msg_id,paid_at\n" + "".join(f"{m},{times[m]:.6f}\n" for m in ids), encoding="utf-8")
    return ExpectedSource(path=str(path), time_column="paid_at")


@pytest.fixture(scope="module", params=["chdb", pytest.param("clickhouse", marks=pytest.mark.clickhouse)])
def restarted_audit(request, kafka_bootstrap, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit-lost")
    if request.param == "chdb":
        url = f"chdb://{tmp / 'store'}"
    else:
        server = request.getfixturevalue("clickhouse_server")
        if server is None:
            pytest.skip("an external ClickHouse URL: this scenario needs the session's own server")
        url = server.url(f"t_{uuid.uuid4().hex[:12]}")
    try:
        audit = TansuBroker().start()
    except (ServiceError, TimeoutError, OSError) as e:
        unavailable("Tansu broker", e)
    topic, cgroup = names()
    business = f"orders-{topic[-8:]}"
    create_topic(kafka_bootstrap, business, 1)
    create_topic(audit.bootstrap, topic, 1)
    orders = Tracer(service="order-service", bootstrap=audit.bootstrap, audit_topic=topic,
                    spool_dir=str(tmp / "spool-orders"), retention=0)
    red = Tracer(service="red-packet", bootstrap=audit.bootstrap, audit_topic=topic, spool_dir=str(tmp / "spool-red"),
                 retention=0)
    producer = orders.wrap_producer(KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=0))
    consumer = red.wrap_consumer(KafkaConsumer(business, bootstrap_servers=kafka_bootstrap, group_id=GROUP,
                                               enable_auto_commit=False, auto_offset_reset="earliest",
                                               session_timeout_ms=6000, heartbeat_interval_ms=1000))
    got: list = []
    times: dict[str, float] = {}
    never = f"order-never-{topic[-8:]}:paid"
    try:
        t0 = now_us()
        times[never] = time.time() - 900  # due long before block A: outside any gap
        blocks = {"A": _block("A", producer, consumer, red, business, got, times)}
        assert orders.flush(60) and red.flush(60)
        drain(audit.bootstrap, topic, url, cgroup)
        before_b = {orders.stats["emitter_id"]: orders.stats["recorded"], red.stats["emitter_id"]: red.stats["recorded"]}
        blocks["B"] = _block("B", producer, consumer, red, business, got, times)
        assert orders.flush(60) and red.flush(60)  # shipped: the audit broker acknowledged block B
        after_b = {orders.stats["emitter_id"]: orders.stats["recorded"], red.stats["emitter_id"]: red.stats["recorded"]}
        audit.restart()  # ... and lost it, with the collector's offsets and the topic itself
        blocks["C"] = _block("C", producer, consumer, red, business, got, times)
        assert orders.flush(90) and red.flush(90), (orders.stats, red.stats)
        recorded = {orders.stats["emitter_id"]: orders.stats["recorded"], red.stats["emitter_id"]: red.stats["recorded"]}
        total_kept = sum(recorded.values()) - sum(after_b[e] - before_b[e] for e in recorded)

        def collected() -> bool:
            drain(audit.bootstrap, topic, url, cgroup)
            return integrity(url).distinct >= total_kept

        wait_until(collected, 90, "block C's events (shipped after the restart) to be collected", interval=1)
        store = Store(url)
        run = Run(url, store, blocks, never, recorded, {e: after_b[e] - before_b[e] for e in recorded})
        ids = [m for b in blocks.values() for m in b] + [run.never]
        run.got, run.res = verdicts(store, t0, groups=[GROUP], expected=_expected(tmp / "expected.csv", ids, times))
        yield run
        store.close()
    finally:
        try:
            consumer.close(autocommit=False)
        except Exception:  # noqa: BLE001, S110 (clean-up of a consumer whose broker may be gone)
            pass
        producer.close(5)
        orders.close(5)
        red.close(5)
        audit.stop()
        shutil.rmtree(audit.workdir, ignore_errors=True)


def _verdict(run: Run, msg_id: str) -> str:
    v = run.got.get((msg_id, GROUP))
    return v.verdict if v is not None else V.DELIVERED


@pytest.mark.kafka
@pytest.mark.timeout(240)
def test_the_audit_reports_its_own_gap(restarted_audit):
    run = restarted_audit
    stored = integrity(run.url)
    # what the broker lost is exactly block B's events: the rest is stored once, gap-free around it
    for emitter, n in run.recorded.items():
        s = stored.emitters[emitter]
        assert (s.lo, s.hi, s.missing) == (1, n, run.lost_seqs[emitter]), (emitter, s, run.lost_seqs)
    gaps = {g.emitter_id: g.missing for g in run.res.seq_gaps}
    assert gaps == run.lost_seqs, (gaps, run.lost_seqs)
    for m in run.blocks["A"] + run.blocks["C"]:
        assert _verdict(run, m) == V.DELIVERED, (m, run.got.get((m, GROUP)))
    never = run.got[(run.never, GROUP)]
    assert never.verdict == V.NEVER_SENT  # a real never-sent id outside the gap stays a loss


@pytest.mark.kafka
@pytest.mark.timeout(240)
def test_no_delivered_message_is_reported_lost(restarted_audit):
    run = restarted_audit
    wrong = {m: _verdict(run, m) for m in run.blocks["B"] if _verdict(run, m) in V.LOST}
    assert not wrong, f"{len(wrong)} delivered orders reported lost, e.g. {sorted(wrong.items())[:3]}"
    assert {_verdict(run, m) for m in run.blocks["B"]} <= {V.DELIVERED, V.AUDIT_GAP}
    assert run.res.audit_gaps == BLOCK and not run.res.audit_complete  # counted apart, never as lost
    assert run.res.lost == 1  # only the id that really was never sent
