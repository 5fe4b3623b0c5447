"""The demo's services on RabbitMQ with pika (see :mod:`tracer.demo.apps` for what they do).

Topology (declared by every service through its wrapped channel, so msgtrace learns the red-packet
queue's dead-letter exchange from the declaration): a fanout exchange ``order-paid`` bound to one
durable queue per group (``red-packet``, ``points``), so every queue gets every message; the
red-packet queue dead-letters to the fanout exchange ``order-paid.dlx`` and its queue
``order-paid.dlq``.

* ``order``: publisher confirms, ``mandatory=True``; persistent messages unless the order asks for
  the "fast lane" (``delivery_mode=1``: the broker keeps it in memory only). Connections are made on
  demand: a publish on a connection that broke raises (a send failure, swallowed), the next order
  connects again.
* ``red-packet --ack auto``: the seeds' version, ``auto_ack=True`` with a worker pool (the broker
  forgets each message as it delivers it); ``--ack manual``: the fixed version, acks in the callback
  after the work, through the channel the callback was handed, and rejects poison messages
  (``requeue=False``: dead-lettered). Handler errors are swallowed and acked in both.
* ``points``: manual acks every few seconds (``multiple=True``), idempotent.
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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tracer.demo.apps import (
    DLQ_TOPIC,
    DLX,
    ORDERS_DDL,
    POINTS_DDL,
    RED_PACKETS_DDL,
    ROUTING_KEY,
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

QUEUE_ARGS = {"red-packet": {"x-dead-letter-exchange": DLX}, "points": None}


def declare(ch: Any) -> None:
    """The topology, idempotent (the orchestrator declares the same before any service runs)."""
    ch.exchange_declare(TOPIC, "fanout", durable=True)
    ch.exchange_declare(DLX, "fanout", durable=True)
    ch.queue_declare(DLQ_TOPIC, durable=True)
    ch.queue_bind(DLQ_TOPIC, DLX)
    for queue, arguments in QUEUE_ARGS.items():
        ch.queue_declare(queue, durable=True, arguments=arguments)
        ch.queue_bind(queue, TOPIC)


def connect(url: str) -> Any:
    import pika

    params = pika.URLParameters(url)
    params.heartbeat = 0  # the order service idles between orders without doing I/O
    params.connection_attempts, params.retry_delay, params.socket_timeout = 1, 0, 3
    return pika.BlockingConnection(params)


def order_service(args: argparse.Namespace) -> None:
    import pika

    db = open_db(args.db, ORDERS_DDL)
    tracer = make_tracer(args, "order-service")
    conn: Any = None
    ch: Any = None

    def channel() -> Any:
        nonlocal conn, ch
        if ch is None:
            deadline = time.monotonic() + 30
            while True:
                try:
                    conn = connect(args.amqp_url)
                    break
                except Exception as e:  # the broker or the network is away: try again for a while
                    if time.monotonic() > deadline:
                        raise
                    log("connect_error", error=repr(e))
                    time.sleep(0.3)
            ch = tracer.wrap_channel(conn.channel())
            declare(ch)
            ch.confirm_delivery()
        return ch

    channel()
    log("ready", pid=os.getpid())
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "pay":
            oid = cmd["order_id"]
            value = mark_paid(db, cmd)
            if cmd.get("crash_before_send"):
                os.kill(os.getpid(), signal.SIGKILL)  # the seeds' "crashed after the DB commit"
            props = pika.BasicProperties(content_type="application/json",
                                         delivery_mode=1 if cmd.get("transient") else 2)
            try:
                channel().basic_publish(TOPIC, ROUTING_KEY, value, props, mandatory=True, msg_id=f"{oid}:paid")
                log("acked", order_id=oid)  # confirm mode: the broker acknowledged it
            except Exception as e:  # noqa: BLE001  swallowed, as the seeds' order service does
                log("send_error", order_id=oid, error=repr(e))
                if not (conn is not None and conn.is_open and ch is not None and ch.is_open):
                    conn = ch = None  # connect again for the next order
            log("published", order_id=oid)
        elif op == "flush":
            flushed(tracer)
        elif op == "stop":
            break
    with contextlib.suppress(Exception):  # the connection may be broken already
        if conn is not None and conn.is_open:
            conn.close()
    tracer.close(timeout=10)
    log("stopped")


def _consume(args: argparse.Namespace, tracer: Any, queue: str, on_message: Any, auto_ack: bool,
             prefetch: int) -> tuple[Any, Any, threading.Event]:
    conn = connect(args.amqp_url)
    ch = tracer.wrap_channel(conn.channel())
    declare(ch)  # through the wrapped channel: msgtrace learns the dead-letter exchange
    ch.basic_qos(prefetch_count=prefetch)
    ch.basic_consume(queue, on_message, auto_ack=auto_ack)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    control(tracer, stopping)
    log("ready", pid=os.getpid())
    return conn, ch, stopping


def red_packet_service(args: argparse.Namespace) -> None:
    db = open_db(args.db, RED_PACKETS_DDL)
    faults = Faults(args.fault_dir)
    tracer = make_tracer(args, "red-packet-service")
    auto = args.ack == "auto"
    pool = ThreadPoolExecutor(max_workers=4)

    def work(method: Any, order: dict[str, Any]) -> bool:
        """Pay it; False when the handler failed (the error is swallowed)."""
        oid = order["order_id"]
        try:
            with tracer.processing(method):
                why = poison_reason(order)
                if why is not None:
                    raise ValueError(why)
                pay_red_packet(db, order, faults)
            log("paid", order_id=oid)
            return True
        except Exception as e:  # noqa: BLE001  swallowed: acked all the same (the seeds' bug)
            log("handler_error", order_id=oid, error=repr(e))
            return False

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        order = json.loads(body)
        oid = order["order_id"]
        log("processing", order_id=oid, redelivered=bool(method.redelivered), tag=method.delivery_tag)
        if auto:  # the seeds' trap: the broker forgot the message when it delivered it
            pool.submit(work, method, order)
            return
        why = poison_reason(order)
        if why is not None:
            ch.basic_reject(method.delivery_tag, requeue=False)  # to the dead-letter exchange
            log("dead_lettered", order_id=oid, error=why)
            return
        work(method, order)
        ch.basic_ack(method.delivery_tag)  # acked after the work, also when it failed (swallowed)

    conn, _ch, stopping = _consume(args, tracer, "red-packet", on_message, auto_ack=auto, prefetch=20)
    while not stopping.is_set():
        conn.process_data_events(time_limit=0.2)
    pool.shutdown(wait=True)
    conn.close()
    tracer.close(timeout=10)
    log("stopped")


def points_service(args: argparse.Namespace) -> None:
    db = open_db(args.db, POINTS_DDL)
    tracer = make_tracer(args, "points-service")
    state: dict[str, Any] = {"last_tag": 0, "processed": 0, "acked": 0, "since": None}

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        order = json.loads(body)
        with tracer.processing(method):
            fresh = award_points(db, order)
        state["processed"] += 1
        state["last_tag"] = method.delivery_tag
        if state["since"] is None:
            state["since"] = time.monotonic()
        log("points", order_id=order["order_id"], fresh=fresh, redelivered=bool(method.redelivered),
            tag=method.delivery_tag, processed=state["processed"])

    def ack(ch: Any) -> None:  # every delivery up to the last processed one
        ch.basic_ack(state["last_tag"], multiple=True)
        state["acked"], state["since"] = state["processed"], None
        log("acked", total=state["acked"])

    conn, ch, stopping = _consume(args, tracer, "points", on_message, auto_ack=False, prefetch=50)
    while not stopping.is_set():
        conn.process_data_events(time_limit=0.2)
        # acks by hand, a few seconds after the work: a crash in between means redelivery
        if state["since"] is not None and time.monotonic() - state["since"] > args.commit_every:
            ack(ch)
    if state["since"] is not None:
        ack(ch)
    conn.close()
    tracer.close(timeout=10)
    log("stopped")


ROLES = {"order": order_service, "red-packet": red_packet_service, "points": points_service}
