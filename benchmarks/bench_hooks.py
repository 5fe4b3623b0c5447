"""msgtrace's hooks against plain clients and OpenTelemetry's instrumentation, side by side in one run.

    python benchmarks/bench_hooks.py [--messages 20000] [--repeats 5] [--write] [--only p_plain,p_msgtrace,...]

One Tansu broker; every variant runs in a fresh worker process (OpenTelemetry's instrumentation
patches kafka-python's classes, and no variant should inherit another's threads or garbage); the
variants of one repeat run back to back in an order rotated every repeat, and each traced figure
is paired with the plain figure of its own repeat. Medians and spread (min-max) over the repeats.

Producer (N sends of 100 B, acks=all, linger 5 ms, timed from the first send to the end of flush()):
``p_plain`` kafka-python; ``p_hdr1`` kafka-python carrying one header the size of msgtrace's;
``p_msgtrace`` msgtrace's wrapped producer with the default sink (the audit topic on the same
broker, shipped by the shipper process), also timed until its audit events were shipped
(``shipped``); ``p_msgtrace_thread`` the same shipping from a thread of the business process;
``p_msgtrace_null`` the hooks alone (NullSink: spooled, not shipped); ``p_otel``
opentelemetry-instrumentation-kafka-python (SDK TracerProvider, BatchSpanProcessor, a no-op
exporter); ``p_confluent`` plain confluent-kafka and ``p_msgtrace_confluent`` msgtrace on it.

Consumer (N records carrying msgtrace's header, commit after every batch of up to 500, timed from
the first record to the last commit): ``c_plain`` / ``c_msgtrace`` / ``c_msgtrace_proc``
(``processing()`` around each record) with ``poll()``; ``ci_plain`` / ``ci_msgtrace`` /
``ci_otel`` iterating the consumer (OpenTelemetry instruments ``__next__`` only); ``c_confluent``
plain confluent-kafka ``consume()`` for reference.

``record()`` on the business thread is timed in the ``p_msgtrace`` worker (wall time per call).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VALUE = b"x" * 100
HDR_VALUE = b"%036d" % 0  # the size of a generated msgtrace-id
PRODUCERS = ["p_plain", "p_hdr1", "p_msgtrace", "p_msgtrace_thread", "p_msgtrace_null", "p_otel", "p_confluent",
             "p_msgtrace_confluent"]
CONSUMERS = ["c_plain", "c_msgtrace", "c_msgtrace_proc", "ci_plain", "ci_msgtrace", "ci_otel", "c_confluent"]
LABELS = {
    "p_plain": "kafka-python, plain", "p_hdr1": "kafka-python + one header of msgtrace's size",
    "p_msgtrace": "msgtrace (default: one header, audit topic, shipper process)",
    "p_msgtrace_thread": "msgtrace, shipping from a thread instead", "p_msgtrace_null": "msgtrace hooks only (NullSink)",
    "p_otel": "OpenTelemetry kafka-python instrumentation", "p_confluent": "confluent-kafka, plain",
    "p_msgtrace_confluent": "msgtrace on confluent-kafka (default)",
    "c_plain": "kafka-python poll+commit, plain", "c_msgtrace": "msgtrace poll+commit",
    "c_msgtrace_proc": "msgtrace poll+commit + processing() per record",
    "ci_plain": "kafka-python iteration+commit, plain", "ci_msgtrace": "msgtrace iteration+commit",
    "ci_otel": "OpenTelemetry instrumentation, iteration+commit", "c_confluent": "confluent-kafka consume+commit, plain",
}


# --- workers (run in a fresh process each) ------------------------------------------------------------

def _otel_provider() -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Null(SpanExporter):
        exported = 0

        def export(self, spans: Any) -> Any:
            Null.exported += len(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Null()))
    trace.set_tracer_provider(provider)
    from opentelemetry.instrumentation.kafka import KafkaInstrumentor

    KafkaInstrumentor().instrument()
    return provider, Null


def _tracer(variant: str, bootstrap: str, spool: str) -> Any:
    from tracer import Tracer
    from tracer.sdk.emitter import NullSink

    if variant.endswith("_null"):
        return Tracer(service="bench", sink=NullSink(), spool_dir=spool, adopt=False, max_spool_bytes=1 << 34)
    return Tracer(service="bench", bootstrap=bootstrap, audit_topic="msgtrace.audit", spool_dir=spool, adopt=False,
                  ship_process=not variant.endswith("_thread"))


def _shipper_cpu(t: Any) -> float:
    """CPU seconds the tracer's shipper process has used so far (0 without one)."""
    proc = getattr(t.emitter, "_proc", None)
    return _broker_cpu(proc.pid) if proc is not None and proc.poll() is None else 0.0


def _broker_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _time_record(t: Any, n: int) -> tuple[float, float]:
    """(wall, thread CPU) us per ``record()`` call on this thread."""
    rec = t.record
    t0, c0 = time.perf_counter(), time.thread_time()
    for i in range(n):
        rec("dead_lettered", f"order-{i}:paid", topic="orders", consumer_group="red-packet", dlq_topic="orders.dlq")
    return (time.perf_counter() - t0) / n * 1e6, (time.thread_time() - c0) / n * 1e6


def worker_producer(variant: str, bootstrap: str, topic: str, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    spool = tempfile.mkdtemp(prefix="msgtrace-bench-")
    keys = [b"k%d" % (i & 63) for i in range(n)]
    if variant in ("p_confluent", "p_msgtrace_confluent"):
        from confluent_kafka import Producer

        raw = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
        t = _tracer(variant, bootstrap, spool) if variant == "p_msgtrace_confluent" else None
        p = t.wrap_producer(raw) if t is not None else raw
        p.produce(topic, b"warm")
        p.flush(30)
        if t is not None:
            t.flush(60)
        produce = p.produce
        s0 = _shipper_cpu(t) if t is not None else 0.0
        c0 = time.process_time()
        t0 = time.perf_counter()
        for i in range(n):
            produce(topic, VALUE, key=keys[i])
            if i & 1023 == 0:
                p.poll(0)
        p.flush(120)
    else:
        provider = None
        if variant == "p_otel":
            provider, null = _otel_provider()
        from kafka import KafkaProducer

        raw = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
        t = _tracer(variant, bootstrap, spool) if variant.startswith("p_msgtrace") else None
        p = t.wrap_producer(raw) if t is not None else raw
        p.send(topic, b"warm").get(30)  # metadata and connection outside the timing
        if t is not None:
            t.flush(60)
        send = p.send
        s0 = _shipper_cpu(t) if t is not None else 0.0
        c0 = time.process_time()
        t0 = time.perf_counter()
        if variant == "p_hdr1":
            for i in range(n):
                send(topic, VALUE, key=keys[i], headers=[("msgtrace-id", HDR_VALUE)])
        else:
            for i in range(n):
                send(topic, VALUE, key=keys[i])
        p.flush(120)
    out["seconds"] = time.perf_counter() - t0
    out["cpu_s"] = time.process_time() - c0
    if t is not None:
        t.flush(120)
        out["seconds_shipped"] = time.perf_counter() - t0
        out["cpu_shipped_s"] = time.process_time() - c0
        out["shipper_cpu_s"] = _shipper_cpu(t) - s0 if s0 else 0.0
        if variant == "p_msgtrace":
            out["record_us"], out["record_cpu_us"] = _time_record(t, n)
            t.flush(120)
        s = t.stats
        out.update({k: s[k] for k in ("recorded", "shipped", "dropped", "ship_failures", "shipper")})
        t.close(30)
    if variant == "p_otel":
        provider.force_flush()
        out["spans_exported"] = null.exported
    raw.close() if hasattr(raw, "close") else None
    return out


def worker_consumer(variant: str, bootstrap: str, topic: str, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    spool = tempfile.mkdtemp(prefix="msgtrace-bench-")
    group = f"bench-{uuid.uuid4().hex[:8]}"
    if variant == "c_confluent":
        from confluent_kafka import Consumer
        from confluent_kafka import TopicPartition as CTP

        c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                      "auto.offset.reset": "earliest"})
        c.assign([CTP(topic, 0, 0)])
        got, t0 = 0, None
        while got < n:
            msgs = c.consume(num_messages=500, timeout=1.0)
            if msgs and t0 is None:
                t0 = time.perf_counter()
            got += len(msgs)
            if msgs:
                c.commit(asynchronous=False)
        out["seconds"] = time.perf_counter() - t0
        c.close()
        return out
    provider = None
    if variant == "ci_otel":
        provider, null = _otel_provider()
    from kafka import KafkaConsumer, TopicPartition

    raw = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                        auto_offset_reset="earliest", max_poll_records=500)
    t = _tracer(variant, bootstrap, spool) if "msgtrace" in variant else None
    if t is not None:  # the shipper started and connected before the timing, as in a running service
        t.record("sent", "bench-warm-up", topic=topic)
        t.flush(60)
    c = t.wrap_consumer(raw) if t is not None else raw
    c.assign([TopicPartition(topic, 0)])
    got, t0 = 0, None
    s0 = _shipper_cpu(t) if t is not None else 0.0
    c0 = time.process_time()
    if variant.startswith("ci_"):
        for _r in c:
            if t0 is None:
                t0 = time.perf_counter()
            got += 1
            if got % 500 == 0 or got == n:
                c.commit()
            if got >= n:
                break
    else:
        proc = variant.endswith("_proc")
        processing = t.processing if t is not None else None
        while got < n:
            batch = c.poll(timeout_ms=1000)
            if batch and t0 is None:
                t0 = time.perf_counter()
            for records in batch.values():
                if proc:
                    for r in records:
                        with processing(r):  # type: ignore[misc]
                            pass
                got += len(records)
            if batch:
                c.commit()
    out["seconds"] = time.perf_counter() - t0
    out["cpu_s"] = time.process_time() - c0  # includes the wait for the first record (idle: little CPU)
    if t is not None:
        t.flush(120)
        out["seconds_shipped"] = time.perf_counter() - t0
        out["cpu_shipped_s"] = time.process_time() - c0
        out["shipper_cpu_s"] = _shipper_cpu(t) - s0 if s0 else 0.0
        s = t.stats
        out.update({k: s[k] for k in ("recorded", "shipped", "dropped", "ship_failures", "shipper")})
        t.close(30)
    if provider is not None:
        provider.force_flush()
        out["spans_exported"] = null.exported
    raw.close()
    return out


# --- orchestration ------------------------------------------------------------------------------------

def create_topic(bootstrap: str, name: str, partitions: int = 1) -> str:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    return name


def fill_topic(bootstrap: str, n: int) -> str:
    """A topic with n records as msgtrace's producer writes them (one msgtrace-id header), for every consumer."""
    from kafka import KafkaProducer

    from tracer import Tracer
    from tracer.sdk.emitter import NullSink

    topic = create_topic(bootstrap, f"bench-c-{uuid.uuid4().hex[:8]}")
    spool = tempfile.mkdtemp(prefix="msgtrace-bench-fill-")
    with Tracer(service="fill", sink=NullSink(), spool_dir=spool, max_spool_bytes=1 << 34) as t:
        p = t.wrap_producer(KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5))
        for i in range(n):
            p.send(topic, VALUE, key=b"k%d" % (i & 63))
        p.flush(120)
        p.close()
    import shutil

    shutil.rmtree(spool, ignore_errors=True)
    return topic


def run_worker(kind: str, variant: str, bootstrap: str, topic: str, n: int, broker_pid: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", kind, variant, bootstrap, topic, str(n)]
    b0 = _broker_cpu(broker_pid)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=str(ROOT))
    if p.returncode != 0:
        raise SystemExit(f"worker {variant} failed:\n{p.stderr[-4000:]}")
    out: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    out["broker_cpu_s"] = _broker_cpu(broker_pid) - b0  # over the worker's whole run (set-up included)
    return out


def med(xs: list[float], fmt: str = "{:,.1f}") -> str:
    if not xs:
        return "-"
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


def report(res: dict[str, list[dict[str, Any]]], n: int, repeats: int, started: str) -> str:
    def us(v: str, key: str = "seconds") -> list[float]:
        return [r[key] / n * 1e6 for r in res.get(v, []) if key in r]

    def ratio(v: str, base: str, key: str = "seconds") -> list[float]:  # throughput ratio, paired per repeat
        return [b["seconds"] / r[key] for r, b in zip(res.get(v, []), res.get(base, [])) if key in r]

    def added(v: str, base: str, key: str = "seconds") -> list[float]:
        return [(r[key] - b["seconds"]) / n * 1e6 for r, b in zip(res.get(v, []), res.get(base, [])) if key in r]

    lines = [
        "# Hooks benchmark: msgtrace vs plain clients vs OpenTelemetry (same Tansu broker, one run)",
        "",
        f"`python benchmarks/bench_hooks.py --messages {n} --repeats {repeats}`; {started}; {os.cpu_count()} cores "
        "shared with other work. Each variant in a fresh process, variants of a repeat back to back in an order "
        f"rotated every repeat; median (min-max) of {repeats} repeats; ratios and added us paired per repeat "
        "with the plain client of the same repeat (throughput ratio = plain time / variant time).",
        "",
        f"## Producer: send + flush of {n} x 100 B (acks=all, linger 5 ms)",
        "",
        "| variant | us per message | added us per message | throughput vs plain |",
        "|---|---|---|---|",
    ]
    for v in PRODUCERS:
        if v not in res:
            continue
        base = "p_confluent" if "confluent" in v else "p_plain"
        lines.append(f"| {LABELS[v]} | {med(us(v))} | {med(added(v, base)) if v != base else '-'} | "
                     f"{med(ratio(v, base), '{:.2f}') if v != base else '1'} |")
        if "seconds_shipped" in (res[v][0] if res[v] else {}) and not v.endswith("_null"):
            lines.append(f"| {LABELS[v]}, timed until its audit events were shipped too | "
                         f"{med(us(v, 'seconds_shipped'))} | {med(added(v, base, 'seconds_shipped'))} | "
                         f"{med(ratio(v, base, 'seconds_shipped'), '{:.2f}')} |")
    lines += ["", f"## Consumer: {n} records carrying msgtrace's header, commit per batch of up to 500", "",
              "| variant | us per message | added us per message | throughput vs plain |", "|---|---|---|---|"]
    for v in CONSUMERS:
        if v not in res:
            continue
        base = "ci_plain" if v.startswith("ci_") else ("c_confluent" if v == "c_confluent" else "c_plain")
        lines.append(f"| {LABELS[v]} | {med(us(v))} | {med(added(v, base)) if v != base else '-'} | "
                     f"{med(ratio(v, base), '{:.2f}') if v != base else '1'} |")
        if "seconds_shipped" in (res[v][0] if res[v] else {}):
            lines.append(f"| {LABELS[v]}, timed until its audit events were shipped too | "
                         f"{med(us(v, 'seconds_shipped'))} | {med(added(v, base, 'seconds_shipped'))} | "
                         f"{med(ratio(v, base, 'seconds_shipped'), '{:.2f}')} |")
    lines += ["", "## CPU per message (load-independent: what the machine pays, whichever process pays it)", "",
              "Business process (all its threads) during the timed loop, then until its audit events were shipped; "
              "the shipper process over the same time; the broker over the worker's whole run (its set-up "
              "included: a few us per message); us per message, median (min-max).", "",
              "| variant | business process | + shipping to the end | shipper process | broker | total |",
              "|---|---|---|---|---|---|"]
    for v in PRODUCERS + CONSUMERS:
        rows = res.get(v, [])
        if not rows or "cpu_s" not in rows[0]:
            continue
        biz = [r["cpu_s"] / n * 1e6 for r in rows]
        shipped = [r.get("cpu_shipped_s", r["cpu_s"]) / n * 1e6 for r in rows]
        shipper = [r.get("shipper_cpu_s", 0.0) / n * 1e6 for r in rows]
        broker = [r["broker_cpu_s"] / n * 1e6 for r in rows]
        total = [a + b + c for a, b, c in zip(shipped, shipper, broker)]
        lines.append(f"| {LABELS[v]} | {med(biz)} | {med(shipped)} | {med(shipper)} | {med(broker)} | {med(total)} |")
    rec = [r["record_us"] for r in res.get("p_msgtrace", []) if "record_us" in r]
    rec_cpu = [r["record_cpu_us"] for r in res.get("p_msgtrace", []) if "record_cpu_us" in r]
    counters = [(v, r) for v in res for r in res[v] if "recorded" in r]
    lines += ["", f"`record()` on the business thread ({n} calls per repeat): wall {med(rec, '{:.2f}')} us, "
              f"thread CPU {med(rec_cpu, '{:.2f}')} us per call.",
              "", "Tracer counters over every msgtrace worker of the run: recorded "
              f"{sum(r['recorded'] for _, r in counters):,}, shipped {sum(r['shipped'] for _, r in counters):,}, "
              f"dropped {sum(r['dropped'] for _, r in counters)}, ship failures {sum(r['ship_failures'] for _, r in counters)}"
              " (NullSink workers ship nothing by design)."]
    spans = [r.get("spans_exported") for v in ("p_otel", "ci_otel") for r in res.get(v, [])]
    if any(s is not None for s in spans):
        lines.append(f"OpenTelemetry spans exported per worker (of {n}): {spans}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated variants (default: all)")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/hooks.md (keeps its '## Reading' part)")
    ap.add_argument("--json", help="also dump the raw results here")
    ap.add_argument("--worker", nargs=5, metavar=("KIND", "VARIANT", "BOOTSTRAP", "TOPIC", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import logging

        logging.basicConfig(level=logging.CRITICAL)
        import shutil

        kind, variant, bootstrap, topic, n = args.worker
        fn = worker_producer if kind == "p" else worker_consumer
        tempfile.tempdir = tempfile.mkdtemp(prefix="msgtrace-bench-")  # every spool of this worker in here
        try:
            print(json.dumps(fn(variant, bootstrap, topic, int(n))))
        finally:
            shutil.rmtree(tempfile.tempdir, ignore_errors=True)
        return
    from tracer.localsvc import TansuBroker

    only = [v for v in args.only.split(",") if v]
    producers = [v for v in PRODUCERS if not only or v in only]
    consumers = [v for v in CONSUMERS if not only or v in only]
    n = args.messages
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    broker = TansuBroker().start()
    res: dict[str, list[dict[str, Any]]] = {}
    bpid = broker.proc.pid
    try:
        ctopic = fill_topic(broker.bootstrap, n)
        for v in producers:  # one unrecorded round: the broker and the page cache warm for every variant
            run_worker("p", v, broker.bootstrap, create_topic(broker.bootstrap, f"bench-w-{uuid.uuid4().hex[:8]}"),
                       min(n, 5000), bpid)
        for v in consumers:
            run_worker("c", v, broker.bootstrap, ctopic, min(n, 5000), bpid)
        for r in range(args.repeats):
            k = r % max(1, len(producers))
            order = producers[k:] + producers[:k]
            for v in order:
                topic = create_topic(broker.bootstrap, f"bench-p-{uuid.uuid4().hex[:8]}")
                res.setdefault(v, []).append(run_worker("p", v, broker.bootstrap, topic, n, bpid))
            k = r % max(1, len(consumers))
            for v in consumers[k:] + consumers[:k]:
                res.setdefault(v, []).append(run_worker("c", v, broker.bootstrap, ctopic, n, bpid))
            print(f"repeat {r + 1}: " + ", ".join(f"{v}={res[v][-1]['seconds'] / n * 1e6:.1f}us" for v in res),
                  flush=True)
    finally:
        broker.stop()
    text = report(res, n, args.repeats, started)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    if args.write:
        out = ROOT / "benchmarks" / "results" / "hooks.md"
        old = out.read_text() if out.exists() else ""
        keep = old[old.index("\n## Reading"):] if "\n## Reading" in old else ""
        out.write_text(text + keep)


if __name__ == "__main__":
    main()
