"""The seeds' premature commit with confluent-kafka: librdkafka auto-commits what poll() returned while a
worker thread still processes it, then the consumer is SIGKILLed mid-payment.

A real consumer process (``enable.auto.commit``, 200 ms interval, work handed to a thread) spools
received and offset_committed (seen through the ``on_commit`` report that
``tracer.sdk.confluent.Consumer`` chains) for every message and business_done for the five it finished.
After the kill its spool goes into chDB beside the producer's events, and the reconciler names every
unfinished message lost_in_consumer.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from confluent_kafka import Producer
from test_hooks import new_topic

from tracer import Tracer
from tracer import verdicts as V
from tracer.analysis.reconcile import reconcile
from tracer.sdk.emitter import StoreSink, drain_spools
from tracer.store import Store

CONSUMER = textwrap.dedent("""
    import queue, sys, threading
    from tracer import Tracer
    from tracer.sdk import confluent
    from tracer.sdk.emitter import NullSink

    bootstrap, topic, spool, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    t = Tracer(service="red-packet", sink=NullSink(), spool_dir=spool)  # audit Kafka unreachable: spool only
    commits = []
    c = t.wrap_consumer(confluent.Consumer({
        "bootstrap.servers": bootstrap, "group.id": "red-packet", "auto.offset.reset": "earliest",
        "enable.auto.commit": True, "auto.commit.interval.ms": 200, "session.timeout.ms": 6000,
        "on_commit": lambda err, parts: commits.append(sum(p.offset for p in parts) if err is None else -1)}))
    c.subscribe([topic])
    work = queue.Queue()
    say_lock = threading.Lock()

    def say(what):  # one whole line at a time: the worker thread and the main one both report
        with say_lock:
            sys.stdout.write(what + "\\n")
            sys.stdout.flush()

    def worker():
        done = 0
        while True:
            m = work.get()
            with t.processing(m):
                if done == 5:
                    say("STUCK")
                    threading.Event().wait()  # the red-packet call never returns
                done += 1

    threading.Thread(target=worker, daemon=True).start()
    received, told = 0, False
    while True:
        m = c.poll(0.2)
        if m is not None and m.error() is None:
            work.put(m)
            received += 1
        if not told and received >= n and n in commits:
            say("COMMITTED")  # auto-commit covered every message (the app's on_commit saw it)
            told = True
""")


def test_autocommit_then_sigkill_is_lost_in_consumer(kafka_bootstrap, chdb_url, tmp_path):
    n = 20
    topic = new_topic(kafka_bootstrap, 1)
    store = Store(chdb_url)
    store.init_schema()
    t0 = time.time_ns() // 1000
    with Tracer(service="order", store=chdb_url, spool_dir=str(tmp_path / "producer")) as t:
        p = t.wrap_producer(Producer({"bootstrap.servers": kafka_bootstrap}))
        for i in range(n):
            p.produce(topic, b"paid", msg_id=f"order-{i}:paid")
        assert p.flush(30) == 0
    spool = tmp_path / "consumer"
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    proc = subprocess.Popen([sys.executable, str(script), kafka_bootstrap, topic, str(spool), str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = set()
        while lines != {"STUCK", "COMMITTED"}:
            line = proc.stdout.readline()
            assert line, "consumer exited early"
            lines.add(line.strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL

    sink = StoreSink(chdb_url)
    try:
        shipped = drain_spools(str(spool), sink, 60)
    finally:
        sink.close()
    assert shipped["events"] == 2 * n + 5
    now = time.time_ns() // 1000
    res = reconcile(store, t0, now + 1_000_000, grace_s=0, now_us=now + 2_000_000)
    store.close()
    assert res.summary == {V.DELIVERED: 5, V.LOST_IN_CONSUMER: n - 5}, \
        {r.msg_id: (r.verdict, r.evidence) for r in res.rows}
    assert {r.consumer_group for r in res.rows} == {"red-packet"}
