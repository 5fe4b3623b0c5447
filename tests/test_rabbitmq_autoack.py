"""The seeds' premature settlement on RabbitMQ: an ``auto_ack=True`` consumer hands deliveries to a worker
thread, the broker forgets each message as it is delivered, and the consumer is SIGKILLed mid-payment.

A real consumer process (pika, BlockingConnection) spools received + offset_committed (auto_ack settles at
delivery) for every message and business_done for the five it finished; after the kill its spool is
shipped into chDB beside the producer's events and the reconciler names every unfinished message
lost_in_consumer.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pika

from tracer import Tracer
from tracer import verdicts as V
from tracer.analysis.reconcile import reconcile
from tracer.sdk.emitter import StoreSink, drain_spools
from tracer.store import Store

CONSUMER = textwrap.dedent("""
    import queue, sys, threading
    import pika
    from tracer import Tracer
    from tracer.sdk.emitter import NullSink

    url, spool, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    t = Tracer(service="red-packet", sink=NullSink(), spool_dir=spool, mq="rabbitmq")  # audit unreachable
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = t.wrap_channel(conn.channel())
    work = queue.Queue()
    say_lock = threading.Lock()

    def say(what):  # one whole line at a time: the worker thread and the main one both report
        with say_lock:
            sys.stdout.write(what + "\\n")
            sys.stdout.flush()

    def worker():
        done = 0
        while True:
            method = work.get()
            with t.processing(method):
                if done == 5:
                    say("STUCK")
                    threading.Event().wait()  # the red-packet call never returns
                done += 1

    threading.Thread(target=worker, daemon=True).start()
    received = 0

    def on_message(ch, method, properties, body):
        global received
        work.put(method)
        received += 1
        if received == n:
            say("SETTLED")  # auto_ack: the broker has forgotten all of them

    ch.basic_consume("red-packet", on_message, auto_ack=True)
    ch.start_consuming()
""")


def test_auto_ack_then_sigkill_is_lost_in_consumer(amqp_url, chdb_url, tmp_path):
    n = 20
    store = Store(chdb_url)
    store.init_schema()
    t0 = time.time_ns() // 1000
    with Tracer(service="order", store=chdb_url, spool_dir=str(tmp_path / "producer"), mq="rabbitmq") as t:
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        ch = t.wrap_channel(conn.channel())
        ch.queue_declare("red-packet", durable=True)
        ch.confirm_delivery()
        for i in range(n):
            ch.basic_publish("", "red-packet", b"paid", pika.BasicProperties(delivery_mode=2),
                             msg_id=f"order-{i}:paid")
        conn.close()
    spool = tmp_path / "consumer"
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    proc = subprocess.Popen([sys.executable, str(script), amqp_url, str(spool), str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = set()
        while lines != {"STUCK", "SETTLED"}:
            line = proc.stdout.readline()
            assert line, "consumer exited early"
            lines.add(line.strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:  # auto_ack: nothing comes back to the queue when the consumer dies
        assert conn.channel().queue_declare("red-packet", passive=True).method.message_count == 0
    finally:
        conn.close()

    sink = StoreSink(chdb_url)
    try:
        shipped = drain_spools(str(spool), sink, 60)
    finally:
        sink.close()
    assert shipped["events"] == 2 * n + 5  # received + offset_committed each, business_done for five
    now = time.time_ns() // 1000
    res = reconcile(store, t0, now + 1_000_000, grace_s=0, now_us=now + 2_000_000)
    store.close()
    lost = {r.msg_id for r in res.rows if r.verdict == V.LOST_IN_CONSUMER}
    assert len(lost) == n - 5, {r.msg_id: (r.verdict, r.evidence) for r in res.rows}
    assert res.summary == {V.DELIVERED: 5, V.LOST_IN_CONSUMER: n - 5}
    assert all(r.consumer_group == "red-packet" for r in res.rows)
