"""The seeds' premature commit: auto-commit covers messages still being processed, then the consumer dies.

A real consumer process (kafka-python, auto-commit every 200 ms, work handed to a
thread as in the seeds) is SIGKILLed mid-processing. Its spool holds received
and offset_committed for every message; `msgtrace ship` takes them to the store,
where the unprocessed ones have no business outcome.
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap

from kafka import KafkaProducer
from test_hooks import new_topic

from tracer import Tracer
from tracer.sdk.emitter import NullSink
from tracer.store import Store

CONSUMER = textwrap.dedent("""
    import queue, sys, threading
    from kafka import KafkaConsumer
    from tracer import Tracer
    from tracer.sdk.emitter import NullSink

    bootstrap, topic, group, spool, n = sys.argv[1:6]
    t = Tracer(service="red-packet", sink=NullSink(), spool_dir=spool)  # audit Kafka unreachable: spool only
    c = t.wrap_consumer(KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=True,
                                      auto_commit_interval_ms=200, session_timeout_ms=6000,
                                      heartbeat_interval_ms=1000, auto_offset_reset="earliest"))
    work = queue.Queue()

    def worker():
        done = 0
        while True:
            record = work.get()
            with t.processing(record):
                if done == 5:
                    print("STUCK", flush=True)
                    threading.Event().wait()  # the red-packet call never returns
                done += 1

    threading.Thread(target=worker, daemon=True).start()
    received, told = 0, False
    while True:
        for records in c.poll(timeout_ms=200).values():
            for r in records:
                work.put(r)
                received += 1
        if not told and received >= int(n) and c.inflight.uncommitted() == 0:
            print("COMMITTED", flush=True)  # auto-commit covered every message
            told = True
""")


def test_autocommit_then_sigkill_is_visible(kafka_bootstrap, chdb_url, tmp_path):
    topic = new_topic(kafka_bootstrap, 1)
    group = "red-packet"
    spool = tmp_path / "spool"
    n = 20
    with Tracer(service="order", sink=NullSink(), spool_dir=str(tmp_path / "producer")) as t:
        producer = t.wrap_producer(KafkaProducer(bootstrap_servers=kafka_bootstrap))
        for i in range(n):
            producer.send(topic, b"paid", msg_id=f"order-{i}:paid")
        producer.flush(30)
        producer.close()
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    proc = subprocess.Popen([sys.executable, str(script), kafka_bootstrap, topic, group, str(spool), str(n)],
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

    env = {k: v for k, v in os.environ.items() if k != "MSGTRACE_KAFKA_BOOTSTRAP"}
    ship = subprocess.run([sys.executable, "-m", "tracer", "ship", "--spool", str(spool), "--store", chdb_url],
                          capture_output=True, text=True, timeout=120, env=env)
    assert ship.returncode == 0, ship.stderr
    with Store(chdb_url) as store:
        rows = store.query("SELECT msg_id, stage, consumer_group, count() AS n FROM "
                           "(SELECT * FROM {db:Identifier}.trace_events LIMIT 1 BY event_id) "
                           "GROUP BY msg_id, stage, consumer_group")
    stages = collections.defaultdict(dict)
    for r in rows:
        assert r["consumer_group"] == group
        stages[r["msg_id"]][r["stage"]] = r["n"]
    assert len(stages) == n
    done = [m for m, s in stages.items() if "business_done" in s]
    assert len(done) == 5
    for m, s in stages.items():
        assert s["received"] == 1 and s["offset_committed"] == 1, (m, s)
        if m not in done:  # committed, never processed: lost in the consumer
            assert set(s) == {"received", "offset_committed"}, (m, s)
