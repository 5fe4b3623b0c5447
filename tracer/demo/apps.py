"""The demo's two business services, as real processes with their own databases (entry point).

``python -m tracer.demo.apps ROLE --mq kafka|rabbitmq --client kafka-python|confluent|pika ...``

* ``order``: marks orders paid in its own database, then publishes ``order-paid``. Driven by
  JSON lines on stdin (``pay``, ``flush``, ``stop``).
* ``red-packet``: consumer group (RabbitMQ: queue) ``red-packet``; pays a red packet into its table.
* ``points``: consumer group / queue ``points``; processes and commits (acks) by hand every few
  seconds; idempotent.

Each writes JSON log lines to stdout: that is all the orchestrator reads. The services behave like
the seeds' services, bugs included: the order service commits before it sends and swallows send
errors; the red-packet service swallows handler errors and settles messages before its work is
done (Kafka auto-commit ahead of a worker pool, RabbitMQ ``auto_ack``). One module per client holds
the client code (:mod:`tracer.demo.kafka_apps`, :mod:`tracer.demo.confluent_apps`,
:mod:`tracer.demo.rabbit_apps`); the business rules are here, once.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sqlite3
import sys
import threading
import time
from decimal import Decimal, InvalidOperation
from typing import Any

TOPIC = "order-paid"                # Kafka topic; RabbitMQ fanout exchange
DLQ_TOPIC = "order-paid.dlq"        # Kafka dead-letter topic; RabbitMQ dead-letter queue
RETRY_TOPIC = "order-paid.retry"    # Kafka: where `msgtrace replay` re-publishes; both groups read it
DLX = "order-paid.dlx"              # RabbitMQ dead-letter exchange of the red-packet queue
ROUTING_KEY = "order.paid"          # RabbitMQ routing key of every order-paid message
#: the fault the orchestrator switches on while it wants the payment API to hang (see Faults)
PAYMENT_API_HANGS = "payment-api-hangs"
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


def make_tracer(args: argparse.Namespace, service: str) -> Any:
    from tracer import Tracer

    return Tracer(service=service, bootstrap=args.audit_bootstrap or None, store=args.store or None,
                  spool_dir=args.spool_dir, mq=args.mq)


class Faults:
    """Faults the orchestrator switches on and off by name (a file in ``--fault-dir``)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on(self, name: str) -> bool:
        return bool(self.directory) and os.path.exists(os.path.join(self.directory, name))


def flushed(tracer: Any) -> None:
    """Ship what was recorded so far and say so, with the emitter's recovery counters: how many events
    the audit topic lost after acknowledging them, and how many were shipped again from the spool."""
    ok = bool(tracer.flush(20))
    s = tracer.stats
    log("flushed", ok=ok, audit_losses=int(s.get("audit_losses") or 0), reshipped=int(s.get("reshipped") or 0))


def control(tracer: Any, stopping: threading.Event) -> None:
    """The consumers' stdin, in a thread: ``flush`` ships the audit events recorded so far, ``stop`` (or
    the orchestrator going away) ends the service cleanly."""
    def run() -> None:
        for line in sys.stdin:
            try:
                op = json.loads(line).get("op")
            except ValueError:
                continue
            if op == "flush":
                flushed(tracer)
            elif op == "stop":
                break
        stopping.set()

    threading.Thread(target=run, name="control", daemon=True).start()


# --- the business rules, the same for every client ------------------------------------------------

ORDERS_DDL = ("CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, user_id TEXT, amount TEXT, "
              "status TEXT, paid_at REAL)")
RED_PACKETS_DDL = ("CREATE TABLE IF NOT EXISTS red_packets (order_id TEXT PRIMARY KEY, user_id TEXT, "
                   "amount TEXT, paid_at REAL)")
POINTS_DDL = "CREATE TABLE IF NOT EXISTS points (order_id TEXT PRIMARY KEY, user_id TEXT, points INTEGER, at REAL)"


class PaymentRejected(Exception):
    pass


def mark_paid(db: sqlite3.Connection, cmd: dict[str, Any]) -> bytes:
    """The order service's own transaction (committed before anything is sent); returns the message."""
    oid = cmd["order_id"]
    db.execute("INSERT OR REPLACE INTO orders VALUES (?, ?, ?, 'paid', ?)",
               (oid, cmd["user_id"], cmd["amount"], time.time()))
    log("order_paid", order_id=oid)
    return json.dumps({"order_id": oid, "user_id": cmd["user_id"], "amount": cmd["amount"]}).encode()


def poison_reason(order: dict[str, Any]) -> str | None:
    """Why a message cannot be processed at all (it goes to the dead-letter queue), or None."""
    try:
        amount = Decimal(order["amount"])
    except (InvalidOperation, ValueError, TypeError, KeyError):
        return f"invalid amount {order.get('amount')!r}"
    if not amount.is_finite() or amount <= 0:
        return f"invalid amount {order['amount']!r}"
    return None


def pay_red_packet(db: sqlite3.Connection, order: dict[str, Any], faults: Faults) -> None:
    """Pay the red packet; raises PaymentRejected for a frozen account; hangs while the payment API does."""
    oid = order["order_id"]
    if order["user_id"].startswith("slow-") and faults.on(PAYMENT_API_HANGS):
        log("slow_payment", order_id=oid)
        time.sleep(120)  # the payment API hangs; the process is killed meanwhile
    if order["user_id"].startswith("frozen-"):
        raise PaymentRejected(f"account {order['user_id']} is frozen")
    db.execute("INSERT OR IGNORE INTO red_packets VALUES (?, ?, ?, ?)",
               (oid, order["user_id"], order["amount"], time.time()))


def award_points(db: sqlite3.Connection, order: dict[str, Any]) -> bool:
    """Idempotent: True when the points were awarded now, False when this order had them already."""
    return bool(db.execute("INSERT OR IGNORE INTO points VALUES (?, ?, ?, ?)",
                           (order["order_id"], order["user_id"], 10, time.time())).rowcount)


CLIENT_MODULES = {("kafka", "kafka-python"): "tracer.demo.kafka_apps",
                  ("kafka", "confluent"): "tracer.demo.confluent_apps",
                  ("rabbitmq", "pika"): "tracer.demo.rabbit_apps"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tracer.demo.apps")
    ap.add_argument("role", choices=["order", "red-packet", "points"])
    ap.add_argument("--mq", choices=["kafka", "rabbitmq"], default="kafka")
    ap.add_argument("--client", choices=["kafka-python", "confluent", "pika"], default="kafka-python")
    ap.add_argument("--bootstrap", default="", help="business Kafka")
    ap.add_argument("--amqp-url", default="", help="business RabbitMQ")
    ap.add_argument("--audit-bootstrap", default="", help="audit Kafka (empty: direct store sink)")
    ap.add_argument("--store", default="", help="store URL for the direct sink")
    ap.add_argument("--spool-dir", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--fault-dir", default="")
    ap.add_argument("--commit-every", type=float, default=3.0)
    ap.add_argument("--ack", choices=["auto", "manual"], default="auto", help="RabbitMQ red-packet: auto_ack or not")
    args = ap.parse_args(argv)
    module = CLIENT_MODULES.get((args.mq, args.client))
    if module is None:
        ap.error(f"no {args.client} services for {args.mq}")
    roles = importlib.import_module(module).ROLES
    roles[args.role](args)


if __name__ == "__main__":
    main()
