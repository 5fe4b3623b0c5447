"""The demo's services on Kafka with kafka-python (see :mod:`tracer.demo.apps` for what they do).

The consumers read ``order-paid`` and ``order-paid.retry`` (where ``msgtrace replay`` re-publishes
what was lost) with the same code.
"""
from __future__ import annotations

import argparse
import contextlib
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
    from kafka import KafkaProducer

    db = open_db(args.db, ORDERS_DDL)
    tracer = make_tracer(args, "order-service")
    # retries=0 and a short delivery timeout: a cut connection fails the send
    # visibly instead of being retried forever behind the app's back.
    producer = tracer.wrap_producer(KafkaProducer(
        bootstrap_servers=args.bootstrap, acks="all", retries=0, enable_idempotence=False,
        request_timeout_ms=2000, delivery_timeout_ms=3000, max_block_ms=5000, linger_ms=0,
        reconnect_backoff_ms=100, reconnect_backoff_max_ms=500))
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
                fut = producer.send(TOPIC, value=value, key=oid.encode(), msg_id=f"{oid}:paid")
                fut.add_callback(lambda md, oid=oid: log("acked", order_id=oid, partition=md.partition,
                                                         offset=md.offset))
                fut.add_errback(lambda exc, oid=oid: log("send_error", order_id=oid, error=repr(exc)))
            except Exception as e:  # noqa: BLE001  swallowed, as the seeds' order service does
                log("send_error", order_id=oid, error=repr(e))
            log("published", order_id=oid)
        elif op == "flush":
            try:
                producer.flush(timeout=10)
            except Exception as e:  # noqa: BLE001  reported, then the audit is flushed all the same
                log("flush_error", error=repr(e))
            flushed(tracer)
        elif op == "stop":
            break
    with contextlib.suppress(Exception):  # the broker may be gone at the end of the story
        producer.close(timeout=5)
    tracer.close(timeout=10)
    log("stopped")


def _consumer(args: argparse.Namespace, group: str, **overrides: Any) -> Any:
    from kafka import KafkaConsumer

    conf: dict[str, Any] = {"bootstrap_servers": args.bootstrap, "group_id": group, "auto_offset_reset": "earliest",
                            "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_records": 50,
                            "request_timeout_ms": 10000, "reconnect_backoff_ms": 100,
                            "reconnect_backoff_max_ms": 500}
    conf.update(overrides)
    return KafkaConsumer(**conf)


def _poll(consumer: Any) -> dict[Any, Any]:
    """poll() that survives a network blip (kafka-python raises on a reset connection)."""
    from kafka.errors import KafkaError

    try:
        batch: dict[Any, Any] = consumer.poll(timeout_ms=200)
        return batch
    except KafkaError as e:
        log("poll_error", error=repr(e))
        time.sleep(0.2)  # back off, then poll again
        return {}


def _poll_loop(consumer: Any, stopping: threading.Event) -> Iterator[list[Any]]:
    """Until stopped: poll, log assignment changes (of order-paid), yield each poll's records (maybe none)."""
    last = None
    log("ready", pid=os.getpid())
    while not stopping.is_set():
        batch = _poll(consumer)
        current = sorted(tp.partition for tp in consumer.assignment() if tp.topic == TOPIC)
        if current != last:
            last = current
            log("assigned", partitions=current)
        yield [record for records in batch.values() for record in records]


def _stopping(tracer: Any) -> threading.Event:
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    control(tracer, stopping)
    return stopping


def red_packet_service(args: argparse.Namespace) -> None:
    from kafka import KafkaProducer

    db = open_db(args.db, RED_PACKETS_DDL)
    faults = Faults(args.fault_dir)
    tracer = make_tracer(args, "red-packet-service")

    def commit_done(offsets: Any, result: Any) -> None:  # kafka-python calls this after each auto-commit
        if isinstance(result, Exception):
            log("commit_error", error=repr(result))
        else:
            log("auto_committed", offsets={str(tp.partition): om.offset for tp, om in offsets.items()
                                           if tp.topic == TOPIC})

    consumer = tracer.wrap_consumer(_consumer(args, "red-packet", enable_auto_commit=True,
                                              auto_commit_interval_ms=300,
                                              default_offset_commit_callback=commit_done))
    consumer.subscribe([TOPIC, RETRY_TOPIC])
    dlq = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    # The seeds' trap: work handed to threads while auto-commit keeps committing.
    pool = ThreadPoolExecutor(max_workers=4)
    stopping = _stopping(tracer)

    def handle(record: Any) -> None:
        order = json.loads(record.value)
        oid = order["order_id"]
        log("processing", order_id=oid, topic=record.topic, partition=record.partition, offset=record.offset)
        why = poison_reason(order)
        if why is not None:  # parked in the DLQ with its headers; the event says where
            md = dlq.send(DLQ_TOPIC, record.value, key=record.key, headers=record.headers).get(timeout=10)
            tracer.record("dead_lettered", record, dlq_topic=DLQ_TOPIC, dlq_partition=md.partition,
                          dlq_offset=md.offset, error=why)
            log("dead_lettered", order_id=oid, topic=record.topic)
            return
        try:
            with tracer.processing(record):
                pay_red_packet(db, order, faults)
            log("paid", order_id=oid, topic=record.topic)
        except Exception as e:  # noqa: BLE001  swallowed: the offset is committed anyway
            log("handler_error", order_id=oid, topic=record.topic, error=repr(e))

    for records in _poll_loop(consumer, stopping):
        for record in records:
            pool.submit(handle, record)
    pool.shutdown(wait=True)
    consumer.close()
    dlq.close()
    tracer.close(timeout=10)
    log("stopped")


def points_service(args: argparse.Namespace) -> None:
    from kafka.errors import KafkaError

    db = open_db(args.db, POINTS_DDL)
    tracer = make_tracer(args, "points-service")
    consumer = tracer.wrap_consumer(_consumer(args, "points", enable_auto_commit=False))
    consumer.subscribe([TOPIC, RETRY_TOPIC])
    stopping = _stopping(tracer)
    pending_since: float | None = None  # when the oldest uncommitted message was processed
    for records in _poll_loop(consumer, stopping):
        for record in records:
            order = json.loads(record.value)
            with tracer.processing(record):
                fresh = award_points(db, order)
            log("points", order_id=order["order_id"], fresh=fresh, topic=record.topic, partition=record.partition,
                offset=record.offset)
            if pending_since is None:
                pending_since = time.monotonic()
        # commits by hand, a few seconds after the work: a crash in between means redelivery
        if pending_since is not None and time.monotonic() - pending_since > args.commit_every:
            try:
                consumer.commit()
            except KafkaError as e:  # a network blip: keep the offsets, commit next round
                log("commit_error", error=repr(e))
                continue
            pending_since = None
            log("committed")
    if pending_since is not None:
        consumer.commit()
    consumer.close()
    tracer.close(timeout=10)
    log("stopped")


ROLES = {"order": order_service, "red-packet": red_packet_service, "points": points_service}
