"""The demo's services on Kafka with confluent-kafka (librdkafka); see :mod:`tracer.demo.apps`.

What the confluent adapter needs from an application, shown here as a payments team would write it:

* the clients are built with ``tracer.sdk.confluent.Producer`` / ``Consumer`` (confluent-kafka's
  classes with the same arguments): librdkafka keeps ``on_delivery`` / ``on_commit`` inside its C
  handle, so only the drop-in classes let msgtrace chain them. The red-packet group auto-commits:
  librdkafka reports those commits to ``on_commit`` alone, which the drop-in consumer relays;
* a short ``message.timeout.ms``: librdkafka retries a send until then, so a cut network shows as a
  failed delivery report (send_failed) after 3 s instead of never;
* the points group commits by hand, synchronously (``commit(asynchronous=False)``), a few seconds
  after its work.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tracer.demo.apps import (
    DLQ_TOPIC,
    ORDERS_DDL,
    POINTS_DDL,
    RED_PACKETS_DDL,
    RETRY_TOPIC,
    TOPIC,
    Faults,
    award_points,
    control,
    flushed,
    log,
    make_tracer,
    mark_paid,
    open_db,
    pay_red_packet,
    poison_reason,
)


def order_service(args: argparse.Namespace) -> None:
    from tracer.sdk import confluent

    db = open_db(args.db, ORDERS_DDL)
    tracer = make_tracer(args, "order-service")
    producer = tracer.wrap_producer(confluent.Producer({
        "bootstrap.servers": args.bootstrap, "acks": "all", "linger.ms": 0, "enable.idempotence": False,
        "message.timeout.ms": 3000, "socket.timeout.ms": 2000, "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 500}))
    stopping = threading.Event()

    def serve() -> None:  # librdkafka's delivery reports arrive only inside poll()/flush()
        while not stopping.is_set():
            producer.poll(0.1)

    threading.Thread(target=serve, name="delivery-reports", daemon=True).start()

    def report(err: Any, msg: Any) -> None:
        oid = msg.key().decode()
        if err is None:
            log("acked", order_id=oid, partition=msg.partition(), offset=msg.offset())
        else:
            log("send_error", order_id=oid, error=str(err))

    log("ready", pid=os.getpid())
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "pay":
            oid = cmd["order_id"]
            value = mark_paid(db, cmd)
            if cmd.get("crash_before_send"):
                os.kill(os.getpid(), signal.SIGKILL)  # the seeds' "crashed after the DB commit"
            try:
                producer.produce(TOPIC, value, key=oid.encode(), on_delivery=report, msg_id=f"{oid}:paid")
            except Exception as e:  # noqa: BLE001  BufferError, KafkaException: swallowed, as the seeds' service does
                log("send_error", order_id=oid, error=repr(e))
            log("published", order_id=oid)
        elif op == "flush":
            left = producer.flush(10)
            if left:
                log("flush_error", error=f"{left} messages still queued")
            flushed(tracer)
        elif op == "stop":
            break
    stopping.set()
    producer.flush(5)
    tracer.close(timeout=10)
    log("stopped")


def _consumer(args: argparse.Namespace, group: str, **overrides: Any) -> Any:
    from tracer.sdk import confluent

    conf = {"bootstrap.servers": args.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": 500, **overrides}
    return confluent.Consumer(conf)


def _poll_loop(consumer: Any, stopping: threading.Event) -> Iterator[Any]:
    """Until stopped: poll, log assignment changes (of order-paid), yield each message (or None)."""
    last = None
    log("ready", pid=os.getpid())
    while not stopping.is_set():
        m = consumer.poll(0.2)
        current = sorted(tp.partition for tp in consumer.assignment() if tp.topic == TOPIC)
        if current != last:
            last = current
            log("assigned", partitions=current)
        if m is not None and m.error() is not None:
            log("poll_error", error=str(m.error()))
            continue
        yield m


def _stopping(tracer: Any) -> threading.Event:
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    control(tracer, stopping)
    return stopping


def red_packet_service(args: argparse.Namespace) -> None:
    import confluent_kafka

    db = open_db(args.db, RED_PACKETS_DDL)
    faults = Faults(args.fault_dir)
    tracer = make_tracer(args, "red-packet-service")

    def commit_done(err: Any, partitions: Any) -> None:  # librdkafka's report of each auto-commit
        if err is not None:
            log("commit_error", error=str(err))
        else:
            log("auto_committed", offsets={str(tp.partition): tp.offset for tp in partitions
                                           if tp.topic == TOPIC and tp.error is None})

    consumer = tracer.wrap_consumer(_consumer(args, "red-packet", **{
        "enable.auto.commit": True, "auto.commit.interval.ms": 300, "on_commit": commit_done}))
    consumer.subscribe([TOPIC, RETRY_TOPIC])
    dlq = confluent_kafka.Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "linger.ms": 0})
    dlq_lock = threading.Lock()
    # The seeds' trap: work handed to threads while auto-commit keeps committing what poll() returned.
    pool = ThreadPoolExecutor(max_workers=4)
    stopping = _stopping(tracer)

    def dead_letter(m: Any) -> tuple[int, int]:
        """Park the message in the DLQ with its headers; where it went (partition, offset)."""
        got: list[Any] = []
        with dlq_lock:
            dlq.produce(DLQ_TOPIC, m.value(), key=m.key(), headers=m.headers(),
                        on_delivery=lambda err, md: got.append((err, md)))
            dlq.flush(10)
        if not got or got[0][0] is not None:
            raise RuntimeError(f"DLQ send failed: {got[0][0] if got else 'no delivery report'}")
        md = got[0][1]
        return md.partition(), md.offset()

    def handle(m: Any) -> None:
        order = json.loads(m.value())
        oid = order["order_id"]
        log("processing", order_id=oid, topic=m.topic(), partition=m.partition(), offset=m.offset())
        why = poison_reason(order)
        if why is not None:
            p, o = dead_letter(m)
            tracer.record("dead_lettered", m, dlq_topic=DLQ_TOPIC, dlq_partition=p, dlq_offset=o, error=why)
            log("dead_lettered", order_id=oid, topic=m.topic())
            return
        try:
            with tracer.processing(m):
                pay_red_packet(db, order, faults)
            log("paid", order_id=oid, topic=m.topic())
        except Exception as e:  # noqa: BLE001  swallowed: the offset is committed anyway
            log("handler_error", order_id=oid, topic=m.topic(), error=repr(e))

    for m in _poll_loop(consumer, stopping):
        if m is not None:
            pool.submit(handle, m)
    pool.shutdown(wait=True)
    consumer.close()  # the last auto-commit
    dlq.flush(5)
    tracer.close(timeout=10)
    log("stopped")


def points_service(args: argparse.Namespace) -> None:
    from confluent_kafka import KafkaException

    db = open_db(args.db, POINTS_DDL)
    tracer = make_tracer(args, "points-service")
    consumer = tracer.wrap_consumer(_consumer(args, "points", **{"enable.auto.commit": False}))
    consumer.subscribe([TOPIC, RETRY_TOPIC])
    stopping = _stopping(tracer)
    pending_since: float | None = None  # when the oldest uncommitted message was processed

    def commit() -> bool:
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as e:  # a network blip or a rebalance: keep the offsets, commit next round
            log("commit_error", error=str(e))
            return False
        log("committed")
        return True

    for m in _poll_loop(consumer, stopping):
        if m is not None:
            order = json.loads(m.value())
            with tracer.processing(m):
                fresh = award_points(db, order)
            log("points", order_id=order["order_id"], fresh=fresh, topic=m.topic(), partition=m.partition(),
                offset=m.offset())
            if pending_since is None:
                pending_since = time.monotonic()
        # commits by hand, a few seconds after the work: a crash in between means redelivery
        if pending_since is not None and time.monotonic() - pending_since > args.commit_every and commit():
            pending_since = None
    if pending_since is not None:
        commit()
    consumer.close()
    tracer.close(timeout=10)
    log("stopped")


ROLES = {"order": order_service, "red-packet": red_packet_service, "points": points_service}
