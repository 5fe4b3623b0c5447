"""The demo's two business services, as real processes with their own databases.

* ``order``: marks orders paid in its own database, then publishes ``order-paid``
  with a traced kafka-python producer. Driven by JSON lines on stdin.
* ``red-packet``: consumer group ``red-packet``; hands each message to a worker
  pool (auto-commit on, as in the seeds) and pays a red packet into its table.
* ``points``: consumer group ``points``; processes in the poll loop and commits
  by hand every few seconds; idempotent.

Each writes JSON log lines to stdout: that is all the orchestrator reads. The
apps behave like the seeds' services, bugs included: the order service commits
before it sends and swallows send errors; the red-packet service swallows
handler errors and lets auto-commit run ahead of its worker threads.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from typing import Any

TOPIC = "order-paid"
DLQ_TOPIC = "order-paid.dlq"
_out_lock = threading.Lock()


def log(event: str, **fields: Any) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps({"event": event, "ts": time.time(), **fields}) + "\n")
        sys.stdout.flush()


def open_db(path: str, ddl: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(ddl)
    return db


def make_tracer(args: argparse.Namespace, service: str):
    from tracer import Tracer

    return Tracer(service=service, bootstrap=args.audit_bootstrap or None, store=args.store or None,
                  spool_dir=args.spool_dir)


# --- order service -----------------------------------------------------------

def order_service(args: argparse.Namespace) -> None:
    from kafka import KafkaProducer

    db = open_db(args.db, "CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, user_id TEXT, "
                          "amount TEXT, status TEXT, paid_at REAL)")
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
            db.execute("INSERT OR REPLACE INTO orders VALUES (?, ?, ?, 'paid', ?)",
                       (oid, cmd["user_id"], cmd["amount"], time.time()))
            log("order_paid", order_id=oid)  # committed in the order database
            if cmd.get("crash_before_send"):
                os.kill(os.getpid(), signal.SIGKILL)  # the seeds' "crashed after the DB commit"
            value = json.dumps({"order_id": oid, "user_id": cmd["user_id"], "amount": cmd["amount"]}).encode()
            try:
                fut = producer.send(TOPIC, value=value, key=oid.encode(), msg_id=f"{oid}:paid")
                fut.add_callback(lambda md, oid=oid: log("acked", order_id=oid, partition=md.partition,
                                                         offset=md.offset))
                fut.add_errback(lambda exc, oid=oid: log("send_error", order_id=oid, error=repr(exc)))
            except Exception as e:  # swallowed, as the seeds' order service does
                log("send_error", order_id=oid, error=repr(e))
            log("published", order_id=oid)
        elif op == "flush":
            try:
                producer.flush(timeout=10)
            except Exception as e:
                log("flush_error", error=repr(e))
            log("flushed")
        elif op == "stop":
            break
    try:
        producer.close(timeout=5)
    except Exception:
        pass
    tracer.close(timeout=10)
    log("stopped")


# --- consumers -----------------------------------------------------------------

class PaymentRejected(Exception):
    pass


def _consumer(args: argparse.Namespace, group: str, **overrides: Any):
    from kafka import KafkaConsumer

    conf = dict(bootstrap_servers=args.bootstrap, group_id=group, auto_offset_reset="earliest",
                session_timeout_ms=6000, heartbeat_interval_ms=1000, max_poll_records=50,
                request_timeout_ms=10000, reconnect_backoff_ms=100, reconnect_backoff_max_ms=500)
    conf.update(overrides)
    return KafkaConsumer(**conf)


def _poll(consumer) -> dict:
    """poll() that survives a network blip (kafka-python raises on a reset connection)."""
    from kafka.errors import KafkaError

    try:
        return consumer.poll(timeout_ms=200)
    except KafkaError as e:
        log("poll_error", error=repr(e))
        time.sleep(0.2)  # back off, then poll again
        return {}


def _poll_loop(consumer, stopping: threading.Event):
    """Until SIGTERM: poll, log assignment changes, yield each poll's records (maybe none)."""
    last = None
    log("ready", pid=os.getpid())
    while not stopping.is_set():
        batch = _poll(consumer)
        current = sorted(tp.partition for tp in consumer.assignment())
        if current != last:
            last = current
            log("assigned", partitions=current)
        yield [record for records in batch.values() for record in records]


def red_packet_service(args: argparse.Namespace) -> None:
    from kafka import KafkaProducer

    db = open_db(args.db, "CREATE TABLE IF NOT EXISTS red_packets (order_id TEXT PRIMARY KEY, "
                          "user_id TEXT, amount TEXT, paid_at REAL)")
    tracer = make_tracer(args, "red-packet-service")
    def commit_done(offsets, result) -> None:  # kafka-python calls this after each auto-commit
        if isinstance(result, Exception):
            log("commit_error", error=repr(result))
        else:
            log("auto_committed", offsets={str(tp.partition): om.offset for tp, om in offsets.items()})

    consumer = tracer.wrap_consumer(_consumer(args, "red-packet", enable_auto_commit=True,
                                              auto_commit_interval_ms=300,
                                              default_offset_commit_callback=commit_done))
    consumer.subscribe([TOPIC])
    dlq = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    # The seeds' trap: work handed to threads while auto-commit keeps committing.
    pool = ThreadPoolExecutor(max_workers=4)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())

    def handle(record) -> None:
        order = json.loads(record.value)
        oid = order["order_id"]
        log("processing", order_id=oid, partition=record.partition, offset=record.offset)
        try:
            amount = Decimal(order["amount"])
            if not amount.is_finite() or amount <= 0:
                raise InvalidOperation(order["amount"])
        except (InvalidOperation, ValueError):
            dlq.send(DLQ_TOPIC, record.value, key=record.key).get(timeout=10)
            tracer.record("dead_lettered", f"{oid}:paid", topic=DLQ_TOPIC, consumer_group="red-packet",
                          error=f"invalid amount {order['amount']!r}")
            log("dead_lettered", order_id=oid)
            return
        try:
            with tracer.processing(record):
                if order["user_id"].startswith("slow-"):
                    log("slow_payment", order_id=oid)
                    time.sleep(120)  # the payment API hangs; the process is killed meanwhile
                if order["user_id"].startswith("frozen-"):
                    raise PaymentRejected(f"account {order['user_id']} is frozen")
                db.execute("INSERT OR IGNORE INTO red_packets VALUES (?, ?, ?, ?)",
                           (oid, order["user_id"], order["amount"], time.time()))
            log("paid", order_id=oid)
        except Exception as e:  # swallowed: the offset is committed anyway
            log("handler_error", order_id=oid, error=repr(e))

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

    db = open_db(args.db, "CREATE TABLE IF NOT EXISTS points (order_id TEXT PRIMARY KEY, user_id TEXT, "
                          "points INTEGER, at REAL)")
    tracer = make_tracer(args, "points-service")
    consumer = tracer.wrap_consumer(_consumer(args, "points", enable_auto_commit=False))
    consumer.subscribe([TOPIC])
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    pending_since: float | None = None  # when the oldest uncommitted message was processed
    for records in _poll_loop(consumer, stopping):
        for record in records:
            order = json.loads(record.value)
            oid = order["order_id"]
            with tracer.processing(record):
                fresh = db.execute("INSERT OR IGNORE INTO points VALUES (?, ?, ?, ?)",
                                   (oid, order["user_id"], 10, time.time())).rowcount
            log("points", order_id=oid, fresh=bool(fresh), partition=record.partition, offset=record.offset)
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tracer.demo.apps")
    ap.add_argument("role", choices=["order", "red-packet", "points"])
    ap.add_argument("--bootstrap", required=True, help="business Kafka")
    ap.add_argument("--audit-bootstrap", default="", help="audit Kafka (empty: direct store sink)")
    ap.add_argument("--store", default="", help="store URL for the direct sink")
    ap.add_argument("--spool-dir", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--commit-every", type=float, default=3.0)
    args = ap.parse_args(argv)
    {"order": order_service, "red-packet": red_packet_service, "points": points_service}[args.role](args)


if __name__ == "__main__":
    main()
