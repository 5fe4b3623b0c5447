"""A/B: two versions of msgtrace's hooks against plain kafka-python, interleaved on one broker.

    git worktree add /tmp/before <old-commit>      # or: git archive <old-commit> tracer | tar -x -C /tmp/before
    python benchmarks/ab_hooks.py --a /tmp/before --b . [--messages 20000] [--repeats 3]

Each repeat runs one fresh worker process per version (A, then B; the order alternates per repeat)
against the same Tansu broker. A worker imports ``tracer`` from its version's directory and times,
in this order, plain send+flush, traced send+flush, plain poll+commit, traced poll+commit and traced
poll+commit + ``processing()``, then confluent-kafka's produce+flush plain and traced (the traced
one also until its audit events were shipped), and ``record()`` on the business thread (the loops
are defined here, identical for both versions; both use only the public API: ``Tracer(...)``,
``wrap_producer``, ``wrap_consumer``, ``processing``, ``record``, ``flush``), so each traced figure
has a plain figure from the same minute. Prints medians, spreads and paired traced/plain ratios per
version, and µs added per message (wall, and CPU of the business process: all its threads).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, logging, sys, tempfile, shutil, time, uuid
root, bootstrap, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, root)
logging.basicConfig(level=logging.CRITICAL)
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from tracer import Tracer
V = b"x" * 100

def topic():
    name = f"ab-{uuid.uuid4().hex[:8]}"
    a = KafkaAdminClient(bootstrap_servers=bootstrap); a.create_topics([NewTopic(name, 1, 1)]); a.close()
    return name

def send(t, n):
    tp = topic()
    raw = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    p = t.wrap_producer(raw) if t else raw
    p.send(tp, b"warm").get(30)
    if t: t.flush(60)
    t0 = time.perf_counter()
    for i in range(n):
        p.send(tp, V, key=b"k%d" % (i & 63))
    p.flush(120)
    dt = time.perf_counter() - t0
    raw.close()
    return dt, tp

def consume(t, tp, n, proc=False):
    raw = KafkaConsumer(bootstrap_servers=bootstrap, group_id=f"ab-{uuid.uuid4().hex[:8]}", enable_auto_commit=False,
                        auto_offset_reset="earliest", max_poll_records=500)
    c = t.wrap_consumer(raw) if t else raw
    c.assign([TopicPartition(tp, 0)])
    got, t0 = 0, None
    while got < n:
        batch = c.poll(timeout_ms=1000)
        if batch and t0 is None:
            t0 = time.perf_counter()
        for recs in batch.values():
            if proc:
                for r in recs:
                    with t.processing(r):
                        pass
            got += len(recs)
        if batch:
            c.commit()
    dt = time.perf_counter() - t0
    raw.close()
    return dt

def ck(t, tp, n):
    # confluent-kafka produce+flush: (client us/msg, us/msg until shipped, business CPU us/msg)
    from confluent_kafka import Producer
    raw = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    p = t.wrap_producer(raw) if t else raw
    p.produce(tp, b"warm"); p.flush(30)
    if t: t.flush(60)
    c0 = time.process_time(); t0 = time.perf_counter()
    for i in range(n):
        try:
            p.produce(tp, V, key=b"k%d" % (i & 63))
        except BufferError:
            p.poll(0.05)
            p.produce(tp, V, key=b"k%d" % (i & 63))
        if i & 1023 == 0:
            p.poll(0)
    p.flush(120)
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    shipped = dt
    if t:
        t.flush(120)
        shipped = time.perf_counter() - t0
    return dt * 1e6 / n, shipped * 1e6 / n, cpu * 1e6 / n

def record(t, n):
    # record() on the business thread: (median wall us, median thread CPU us) over blocks of 1000 calls
    walls, cpus = [], []
    rec = t.record
    for _ in range(n // 1000):
        c0 = time.thread_time(); t0 = time.perf_counter()
        for _ in range(1000):
            rec("dead_lettered", "0b5e1f2a-1111-4000-8000-000000000001", topic="bench", consumer_group="g",
                dlq_topic="bench.dlq")
        walls.append((time.perf_counter() - t0) * 1e3); cpus.append((time.thread_time() - c0) * 1e3)
    walls.sort(); cpus.sort()
    return walls[len(walls) // 2], cpus[len(cpus) // 2]

spool = tempfile.mkdtemp(prefix="msgtrace-ab-")
t = Tracer(service="ab", bootstrap=bootstrap, audit_topic="msgtrace.audit.ab", spool_dir=spool, adopt=False)
send(t, 1000); send(None, 1000)
out = {}
dt, _ = send(None, n); out["p_plain"] = n / dt
dt, traced_topic = send(t, n); out["p_traced"] = n / dt; t.flush(120)
out["c_plain"] = n / consume(None, traced_topic, n)
out["c_traced"] = n / consume(t, traced_topic, n); t.flush(120)
out["c_proc"] = n / consume(t, traced_topic, n, True); t.flush(120)
ck_topic = topic()
ck(None, ck_topic, 2000); ck(t, ck_topic, 2000); t.flush(60)
out["ck_plain_us"], _, out["ck_plain_cpu"] = ck(None, ck_topic, n * 2)
out["ck_traced_us"], out["ck_shipped_us"], out["ck_traced_cpu"] = ck(t, ck_topic, n * 2)
out["record_wall_us"], out["record_cpu_us"] = record(t, n)
t.flush(120)
s = t.stats
out["dropped"] = s["dropped"]
out["recorded"] = s["recorded"]
out["shipped"] = s["shipped"]
t.close(30)
shutil.rmtree(spool, ignore_errors=True)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="directory holding version A (its tracer/ package)")
    ap.add_argument("--b", required=True, help="directory holding version B")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tracer.localsvc import TansuBroker

    versions = {"A": os.path.abspath(args.a), "B": os.path.abspath(args.b)}
    res: dict[str, dict[str, list[float]]] = {v: {} for v in versions}
    broker = TansuBroker().start()
    try:
        for r in range(args.repeats):
            for v in (("A", "B") if r % 2 == 0 else ("B", "A")):
                p = subprocess.run([sys.executable, "-c", WORKER, versions[v], broker.bootstrap, str(args.messages)],
                                   capture_output=True, text=True, timeout=1800, cwd=versions[v])
                if p.returncode != 0:
                    sys.exit(f"worker {v} failed:\n{p.stderr[-3000:]}")
                row = json.loads(p.stdout.strip().splitlines()[-1])
                for k, x in row.items():
                    res[v].setdefault(k, []).append(x)
                print(f"repeat {r + 1} {v}: " + ", ".join(f"{k}={x:,.2f}" for k, x in row.items()), flush=True)
    finally:
        broker.stop()

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):,.0f} ({min(xs):,.0f}-{max(xs):,.0f})"

    def medf(xs: list[float]) -> str:
        return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"

    print(f"\n{args.messages} messages x {args.repeats} repeats; msg/s median (min-max); ratio paired per worker run")
    print("| version | loop | plain msg/s | traced msg/s | ratio traced/plain |")
    print("|---|---|---|---|---|")
    for v, path in versions.items():
        d = res[v]
        for name, plain, traced in (("producer send+flush", "p_plain", "p_traced"),
                                    ("consumer poll+commit", "c_plain", "c_traced"),
                                    ("consumer + processing()", "c_plain", "c_proc")):
            ratios = [t / p for t, p in zip(d[traced], d[plain])]
            print(f"| {v} ({path}) | {name} | {med(d[plain])} | {med(d[traced])} | "
                  f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")
        print(f"| {v} | events dropped | {sum(d['dropped'])} (recorded {sum(d['recorded']):,}, "
              f"shipped {sum(d['shipped']):,}) | | |")
    print("\nconfluent-kafka produce+flush (2 x messages per run), us per message, median (min-max); added paired per run")
    print("| version | plain | traced (client) | traced, until shipped | added (client) | added (until shipped) "
          "| business CPU plain | business CPU traced | CPU added |")
    print("|---|---|---|---|---|---|---|---|---|")
    for v in versions:
        d = res[v]
        add_c = [a - b for a, b in zip(d["ck_traced_us"], d["ck_plain_us"])]
        add_s = [a - b for a, b in zip(d["ck_shipped_us"], d["ck_plain_us"])]
        add_cpu = [a - b for a, b in zip(d["ck_traced_cpu"], d["ck_plain_cpu"])]
        print(f"| {v} | {medf(d['ck_plain_us'])} | {medf(d['ck_traced_us'])} | {medf(d['ck_shipped_us'])} "
              f"| {medf(add_c)} | {medf(add_s)} | {medf(d['ck_plain_cpu'])} | {medf(d['ck_traced_cpu'])} "
              f"| {medf(add_cpu)} |")
    print("\nrecord() on the business thread, us per call (median of 1000-call blocks per run), median (min-max) over runs")
    print("| version | wall | thread CPU |")
    print("|---|---|---|")
    for v in versions:
        d = res[v]
        print(f"| {v} | {medf(d['record_wall_us'])} | {medf(d['record_cpu_us'])} |")


if __name__ == "__main__":
    main()
