"""Traced vs plain kafka-python on the same Tansu broker, in one run.

    python benchmarks/bench_hooks.py [--messages 20000] [--repeats 5] [--write]

Producer: send N records then flush (the tracer spools sent + broker_acked and
ships them to an audit topic on the same broker in the background, so its
shipping competes for the GIL inside the timed region). Consumer: poll batches
and commit after each (the tracer records received + offset_committed), timed
from the first record to the last commit; a third variant also wraps each
record in ``processing()``. Plain and traced runs alternate within each repeat;
the table gives medians, spread (min-max) and traced/plain throughput ratios.

If ``opentelemetry-instrumentation-kafka-python`` is importable (e.g. installed
with ``pip install --target DIR`` and ``--otel-path DIR``), the per-send cost
with OpenTelemetry's instrumentation (SDK provider, batch span processor, a
no-op exporter) is measured in a subprocess for comparison.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import KafkaAdminClient, NewTopic  # noqa: E402

from tracer import Tracer  # noqa: E402
from tracer.localsvc import TansuBroker  # noqa: E402

VALUE = b"x" * 100


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> str:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    return name


def bench_send(bootstrap: str, n: int, tracer: Tracer | None, headers: bool = False) -> float:
    """Seconds for n sends + flush (``headers``: plain sends carrying two headers the size of msgtrace's)."""
    topic = create_topic(bootstrap, f"bench-p-{uuid.uuid4().hex[:8]}")
    raw = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    producer = tracer.wrap_producer(raw) if tracer else raw
    producer.send(topic, VALUE).get(30)  # metadata + connection outside the timing
    t0 = time.perf_counter()
    if headers:
        for i in range(n):
            producer.send(topic, VALUE, key=b"k%d" % (i & 63),
                          headers=[("traceparent", b"00-%032x-%016x-01" % (i, i)), ("msgtrace-id", b"%036d" % i)])
    else:
        for i in range(n):
            producer.send(topic, VALUE, key=b"k%d" % (i & 63))
    producer.flush(120)
    dt = time.perf_counter() - t0
    if tracer is not None:  # the audit of these sends shipped too: its full cost, not only the part that overlapped
        tracer.flush(120)
        SHIPPED_TOO.append(time.perf_counter() - t0)
    raw.close()
    return dt


#: traced runs' seconds including the wait until their audit events were shipped (last one per run)
SHIPPED_TOO: list[float] = []


def fill_topic(bootstrap: str, n: int, tracer: Tracer) -> str:
    """A topic with n traced records (headers msgtrace-id + traceparent), read by every consumer run."""
    topic = create_topic(bootstrap, f"bench-c-{uuid.uuid4().hex[:8]}")
    producer = tracer.wrap_producer(KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5))
    for i in range(n):
        producer.send(topic, VALUE, key=b"k%d" % (i & 63))
    producer.flush(120)
    producer.close()
    return topic


def bench_consume(bootstrap: str, topic: str, n: int, tracer: Tracer | None, processing: bool = False) -> float:
    """Seconds from the first record to n records polled and committed (batch commits)."""
    raw = KafkaConsumer(bootstrap_servers=bootstrap, group_id=f"bench-{uuid.uuid4().hex[:8]}",
                        enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=500)
    consumer = tracer.wrap_consumer(raw) if tracer else raw
    consumer.assign([TopicPartition(topic, 0)])
    got = 0
    t0 = None
    while got < n:
        batch = consumer.poll(timeout_ms=1000)
        if batch and t0 is None:
            t0 = time.perf_counter()
        for records in batch.values():
            if processing and tracer is not None:
                for r in records:
                    with tracer.processing(r):
                        pass
            got += len(records)
        if batch:
            consumer.commit()
    dt = time.perf_counter() - t0
    if tracer is not None:
        tracer.flush(120)
        SHIPPED_TOO.append(time.perf_counter() - t0)
    raw.close()
    return dt


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


OTEL_CHILD = r"""
import sys, time, uuid, json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
class Null(SpanExporter):
    exported = 0
    def export(self, spans):
        Null.exported += len(spans); return SpanExportResult.SUCCESS
provider = TracerProvider(); provider.add_span_processor(BatchSpanProcessor(Null())); trace.set_tracer_provider(provider)
from opentelemetry.instrumentation.kafka import KafkaInstrumentor
KafkaInstrumentor().instrument()
from kafka import KafkaProducer
bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
p.send(topic, b"x").get(30)
t0 = time.perf_counter()
for i in range(n):
    p.send(topic, b"x" * 100, key=b"k%d" % (i & 63))
p.flush(120)
dt = time.perf_counter() - t0
provider.force_flush(); p.close()
print(json.dumps({"seconds": dt, "spans_exported": Null.exported}))
"""


def bench_otel(bootstrap: str, n: int, otel_path: str | None) -> dict | None:
    env = dict(os.environ)
    if otel_path:
        env["PYTHONPATH"] = otel_path + os.pathsep + env.get("PYTHONPATH", "")
    probe = subprocess.run([sys.executable, "-c", "import opentelemetry.instrumentation.kafka"], env=env,
                           capture_output=True)
    if probe.returncode != 0:
        return None
    topic = create_topic(bootstrap, f"bench-o-{uuid.uuid4().hex[:8]}")
    out = subprocess.run([sys.executable, "-c", OTEL_CHILD, bootstrap, topic, str(n)], env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--otel-path", default=os.environ.get("MSGTRACE_BENCH_OTEL_PATH"),
                    help="extra sys.path entry holding opentelemetry-instrumentation-kafka-python")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/hooks.md")
    args = ap.parse_args()
    n = args.messages
    import logging

    logging.basicConfig(level=logging.CRITICAL)
    broker = TansuBroker().start()
    spool = tempfile.mkdtemp(prefix="msgtrace-bench-spool-")
    res: dict[str, list[float]] = {k: [] for k in ("p_plain", "p_hdr", "p_traced", "p_traced_shipped", "c_plain",
                                                   "c_traced", "c_traced_shipped", "c_proc", "o_otel")}
    otel_spans = []
    try:
        tracer = Tracer(service="bench", bootstrap=broker.bootstrap, audit_topic="msgtrace.audit", spool_dir=spool)
        topic = fill_topic(broker.bootstrap, n, tracer)
        tracer.flush(120)
        bench_send(broker.bootstrap, 2000, tracer)  # warm-up
        bench_send(broker.bootstrap, 2000, None)
        for r in range(args.repeats):
            order = [("p_plain", None, False), ("p_hdr", None, True), ("p_traced", tracer, False)]
            for key, t, hdr in (order if r % 2 == 0 else order[::-1]):
                res[key].append(n / bench_send(broker.bootstrap, n, t, hdr))
                if t is not None:
                    res["p_traced_shipped"].append(n / SHIPPED_TOO[-1])
                tracer.flush(120)
            for t, key, proc in ([(None, "c_plain", False), (tracer, "c_traced", False), (tracer, "c_proc", True)]
                                 if r % 2 == 0 else
                                 [(tracer, "c_proc", True), (tracer, "c_traced", False), (None, "c_plain", False)]):
                res[key].append(n / bench_consume(broker.bootstrap, topic, n, t, proc))
                if key == "c_traced":
                    res["c_traced_shipped"].append(n / SHIPPED_TOO[-1])
                tracer.flush(120)
            print(f"repeat {r + 1}: " + ", ".join(f"{k}={v[-1]:,.0f}/s" for k, v in res.items() if v), flush=True)
        for r in range(3):
            o = bench_otel(broker.bootstrap, n, args.otel_path)
            if o is None:
                break
            res["o_otel"].append(o["seconds"] * 1e6 / n)
            otel_spans.append(o["spans_exported"])
        stats = tracer.stats
        tracer.close(30)
    finally:
        broker.stop()

    ratio = lambda a, b: [x / y for x, y in zip(res[a], res[b])]  # noqa: E731  (paired per repeat)
    lines = [
        "# Hooks benchmark: traced vs plain kafka-python (same Tansu broker, one run)",
        "",
        f"`python benchmarks/bench_hooks.py --messages {n} --repeats {args.repeats}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{os.cpu_count()} cores shared with other work, so the spread is wide. Median (min-max) of {args.repeats} repeats; "
        "ratios are paired per repeat (traced/plain throughput).",
        "",
        "| loop | plain msg/s | traced msg/s | ratio traced/plain |",
        "|---|---|---|---|",
        f"| producer send+flush ({n} x 100 B) | {summary(res['p_plain'])} | {summary(res['p_traced'])} | "
        f"{statistics.median(ratio('p_traced', 'p_plain')):.2f} ({min(ratio('p_traced', 'p_plain')):.2f}-{max(ratio('p_traced', 'p_plain')):.2f}) |",
        f"| producer, plain with 2 headers of msgtrace's size (header cost alone) | {summary(res['p_plain'])} | {summary(res['p_hdr'])} | "
        f"{statistics.median(ratio('p_hdr', 'p_plain')):.2f} ({min(ratio('p_hdr', 'p_plain')):.2f}-{max(ratio('p_hdr', 'p_plain')):.2f}) |",
        f"| producer, traced timed until its audit events were shipped too | {summary(res['p_plain'])} | {summary(res['p_traced_shipped'])} | "
        f"{statistics.median(ratio('p_traced_shipped', 'p_plain')):.2f} ({min(ratio('p_traced_shipped', 'p_plain')):.2f}-{max(ratio('p_traced_shipped', 'p_plain')):.2f}) |",
        f"| consumer poll+commit per batch | {summary(res['c_plain'])} | {summary(res['c_traced'])} | "
        f"{statistics.median(ratio('c_traced', 'c_plain')):.2f} ({min(ratio('c_traced', 'c_plain')):.2f}-{max(ratio('c_traced', 'c_plain')):.2f}) |",
        f"| consumer, traced timed until its audit events were shipped too | {summary(res['c_plain'])} | {summary(res['c_traced_shipped'])} | "
        f"{statistics.median(ratio('c_traced_shipped', 'c_plain')):.2f} ({min(ratio('c_traced_shipped', 'c_plain')):.2f}-{max(ratio('c_traced_shipped', 'c_plain')):.2f}) |",
        f"| consumer + `processing()` per record | {summary(res['c_plain'])} | {summary(res['c_proc'])} | "
        f"{statistics.median(ratio('c_proc', 'c_plain')):.2f} ({min(ratio('c_proc', 'c_plain')):.2f}-{max(ratio('c_proc', 'c_plain')):.2f}) |",
        "",
        "Per-send cost (send+flush time / messages):",
        "",
        f"- plain kafka-python: {statistics.median([1e6 / x for x in res['p_plain']]):.1f} us",
        f"- plain kafka-python with two headers (traceparent + msgtrace-id sized): "
        f"{statistics.median([1e6 / x for x in res['p_hdr']]):.1f} us",
        f"- msgtrace (sent + broker_acked spooled, shipped in the background): "
        f"{statistics.median([1e6 / x for x in res['p_traced']]):.1f} us",
    ]
    if res["o_otel"]:
        lines.append(f"- OpenTelemetry kafka-python instrumentation (SDK, batch processor, no-op exporter): "
                     f"{statistics.median(res['o_otel']):.1f} us ({min(res['o_otel']):.1f}-{max(res['o_otel']):.1f}); "
                     f"spans exported {otel_spans} of {n} sends each")
    else:
        lines.append("- OpenTelemetry instrumentation: not measured (opentelemetry-instrumentation-kafka-python not importable)")
    lines += ["", f"Tracer counters after the run: recorded {stats['recorded']}, shipped {stats['shipped']}, "
              f"dropped {stats['dropped']}, ship failures {stats['ship_failures']}.", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        out = Path(__file__).resolve().parent / "results" / "hooks.md"
        old = out.read_text() if out.exists() else ""
        if "\n## " in old:  # keep the hand-written sections (A/B figures, reading) below the table
            text += old[old.index("\n## "):]
        out.parent.mkdir(exist_ok=True)
        out.write_text(text)


if __name__ == "__main__":
    main()
