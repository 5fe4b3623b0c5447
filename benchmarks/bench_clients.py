"""confluent-kafka and pika: plain vs msgtrace vs OpenTelemetry's instrumentation, same servers, one run.

    python benchmarks/bench_clients.py [--messages 50000] [--pika-messages 5000] [--repeats 5] [--write]

Every variant runs in a fresh process (OpenTelemetry's instrumentation and the tracer's shipping thread
must not leak into the next variant), the variants of one repeat in a rotated order, so that drift of
this noisy 2-core machine hits all of them alike; ratios and differences are paired per repeat.

- confluent-kafka producer (Tansu): produce N x 100 B with a key, then flush. ``traced`` is
  ``tracer.wrap_producer`` with the default sink (audit topic on the same broker); its time runs until
  the tracer has shipped both events of every message (sent + broker_acked), so shipping is included.
  ``otel`` is ``ConfluentKafkaInstrumentor.instrument_producer`` with the SDK provider, a batch span
  processor and an exporter that drops spans.
- confluent-kafka consumer: consume() batches of 500 + a synchronous commit per batch, from the first
  message to the last commit (``traced``: received + offset_committed, shipped before the clock stops);
  and poll() one message at a time with an asynchronous commit every 500 (OpenTelemetry's
  instrumentation makes one span per consume() batch but one per poll()).
- pika (RabbitMQ, BlockingConnection): basic_publish N x 100 B to a queue (no confirms: the fastest
  publish, where added cost shows most), and a consumer with basic_consume + basic_ack per message.
  ``otel`` is ``PikaInstrumentor.instrument_channel``.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VALUE = b"x" * 100
VARIANTS = ("plain", "traced", "otel")


# --- children: one variant, one measurement, one JSON line -----------------------------------
def _otel_provider():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Drop(SpanExporter):
        exported = 0

        def export(self, spans):  # type: ignore[no-untyped-def]
            Drop.exported += len(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return provider, Drop


def _tracer(bootstrap: str, spool: str, mq: str = "kafka"):
    from tracer import Tracer

    return Tracer(service="bench", bootstrap=bootstrap, audit_topic="msgtrace.audit", spool_dir=spool, mq=mq)


def child_ck_produce(variant: str, bootstrap: str, topic: str, n: int, spool: str) -> dict:
    from confluent_kafka import Producer

    raw = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    tracer = provider = drop = None
    p = raw
    if variant == "traced":
        tracer = _tracer(bootstrap, spool)
        p = tracer.wrap_producer(raw)
    elif variant == "otel":
        from opentelemetry.instrumentation.confluent_kafka import (
            ConfluentKafkaInstrumentor,
        )

        provider, drop = _otel_provider()
        p = ConfluentKafkaInstrumentor.instrument_producer(raw, tracer_provider=provider)
    p.produce(topic, VALUE)  # metadata and connection outside the clock
    p.flush(30)
    if tracer is not None:
        tracer.flush(60)
    t0 = time.perf_counter()
    for i in range(n):
        try:
            p.produce(topic, VALUE, key=b"k%d" % (i & 63))
        except BufferError:
            p.poll(0.05)
            p.produce(topic, VALUE, key=b"k%d" % (i & 63))
        if i & 1023 == 0:
            p.poll(0)
    p.flush(120)
    dt_client = time.perf_counter() - t0
    out: dict = {"us": dt_client * 1e6 / n}
    if tracer is not None:
        tracer.flush(120)
        out["us"] = (time.perf_counter() - t0) * 1e6 / n  # shipping included
        out["us_client"] = dt_client * 1e6 / n
        out["stats"] = {k: tracer.stats.get(k) for k in ("recorded", "shipped", "dropped", "ship_failures")}
        tracer.close(30)
    if provider is not None:
        provider.force_flush()
        out["spans"] = drop.exported
    return out


def child_ck_poll(variant: str, bootstrap: str, topic: str, n: int, spool: str) -> dict:
    return child_ck_consume(variant, bootstrap, topic, n, spool, one_by_one=True)


def child_ck_consume(variant: str, bootstrap: str, topic: str, n: int, spool: str, one_by_one: bool = False) -> dict:
    from confluent_kafka import Consumer, KafkaError, KafkaException

    conf = {"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "auto.offset.reset": "earliest"}
    tracer = provider = drop = None
    if variant == "traced":
        from tracer.sdk import confluent

        tracer = _tracer(bootstrap, spool)
        c = tracer.wrap_consumer(confluent.Consumer(conf))
    elif variant == "otel":
        from opentelemetry.instrumentation.confluent_kafka import (
            ConfluentKafkaInstrumentor,
        )

        provider, drop = _otel_provider()
        c = ConfluentKafkaInstrumentor.instrument_consumer(Consumer(conf), tracer_provider=provider)
    else:
        c = Consumer(conf)
    c.subscribe([topic])  # OpenTelemetry's proxy forwards subscribe, not assign
    got, t0 = 0, None
    if one_by_one:  # poll() per message, an asynchronous commit every 500, a synchronous one at the end
        while got < n:
            m = c.poll(1.0)
            if m is None or m.error() is not None:
                continue
            if t0 is None:
                t0 = time.perf_counter()
            got += 1
            if got % 500 == 0:
                c.commit(asynchronous=True)
        try:
            c.commit(asynchronous=False)
        except KafkaException as e:  # the last asynchronous commit already covered everything
            if e.args[0].code() != KafkaError._NO_OFFSET:
                raise
    while got < n:
        batch = c.consume(num_messages=500, timeout=1.0)
        if batch and t0 is None:
            t0 = time.perf_counter()
        got += sum(1 for m in batch if m.error() is None)
        if batch:
            c.commit(asynchronous=False)
    dt_client = time.perf_counter() - t0
    out: dict = {"us": dt_client * 1e6 / n}
    if tracer is not None:
        tracer.flush(120)
        out["us"] = (time.perf_counter() - t0) * 1e6 / n
        out["us_client"] = dt_client * 1e6 / n
        out["stats"] = {k: tracer.stats.get(k) for k in ("recorded", "shipped", "dropped", "ship_failures")}
    c.close()
    if tracer is not None:
        tracer.close(30)
    if provider is not None:
        provider.force_flush()
        out["spans"] = drop.exported
    return out


def _channel(variant: str, url: str, bootstrap: str, spool: str):
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    raw = conn.channel()
    tracer = provider = drop = None
    ch = raw
    if variant == "traced":
        tracer = _tracer(bootstrap, spool, mq="rabbitmq")
        ch = tracer.wrap_channel(raw)
    elif variant == "otel":
        from opentelemetry.instrumentation.pika import PikaInstrumentor

        provider, drop = _otel_provider()
        PikaInstrumentor.instrument_channel(raw, tracer_provider=provider)
    return conn, ch, tracer, provider, drop


def _finish(out: dict, t0: float, dt_client: float, n: int, tracer, provider, drop) -> dict:
    out["us"] = dt_client * 1e6 / n
    if tracer is not None:
        tracer.flush(120)
        out["us"] = (time.perf_counter() - t0) * 1e6 / n
        out["us_client"] = dt_client * 1e6 / n
        out["stats"] = {k: tracer.stats.get(k) for k in ("recorded", "shipped", "dropped", "ship_failures")}
        tracer.close(30)
    if provider is not None:
        provider.force_flush()
        out["spans"] = drop.exported
    return out


def child_pika_publish(variant: str, url: str, queue: str, n: int, spool: str, bootstrap: str) -> dict:
    conn, ch, tracer, provider, drop = _channel(variant, url, bootstrap, spool)
    ch.basic_publish("", queue, VALUE)
    t0 = time.perf_counter()
    for _ in range(n):
        ch.basic_publish("", queue, VALUE)
    dt = time.perf_counter() - t0
    out = _finish({}, t0, dt, n, tracer, provider, drop)
    ch.queue_purge(queue)
    conn.close()
    return out


def child_pika_consume(variant: str, url: str, queue: str, n: int, spool: str, bootstrap: str) -> dict:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))  # fill the queue with traced-size messages
    fill = conn.channel()
    fill.queue_purge(queue)
    props = pika.BasicProperties(headers={"msgtrace-id": "0" * 36})
    for _ in range(n):
        fill.basic_publish("", queue, VALUE, props)
    conn.close()
    conn, ch, tracer, provider, drop = _channel(variant, url, bootstrap, spool)
    ch.basic_qos(prefetch_count=500)
    state = {"got": 0, "t0": 0.0}

    def on_message(c, method, properties, body):
        if state["got"] == 0:
            state["t0"] = time.perf_counter()
        c.basic_ack(method.delivery_tag)
        state["got"] += 1
        if state["got"] >= n:
            c.stop_consuming()

    ch.basic_consume(queue, on_message)
    ch.start_consuming()
    dt = time.perf_counter() - state["t0"]
    out = _finish({}, state["t0"], dt, n, tracer, provider, drop)
    conn.close()
    return out


CHILDREN = {"ck_produce": child_ck_produce, "ck_consume": child_ck_consume, "ck_poll": child_ck_poll, "pika_publish": child_pika_publish,
            "pika_consume": child_pika_consume}


def breakdown(n: int, repeats: int) -> None:
    """Where msgtrace's confluent-kafka producer time goes: five variants interleaved in one process."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from tracer import Tracer
    from tracer.localsvc import TansuBroker
    from tracer.sdk.emitter import NullSink

    broker = TansuBroker().start()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        for f in admin.create_topics([NewTopic("o", 1, 1), NewTopic("msgtrace.audit", 1, 1)]).values():
            f.result(30)

        def run(kind: str) -> float:
            raw = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
            raw.produce("o", b"x")
            raw.flush(10)
            tracer = None
            p = raw
            if kind == "hdr":
                def dr(err, msg):  # type: ignore[no-untyped-def]
                    msg.partition()
                    msg.offset()

                t0 = time.perf_counter()
                for i in range(n):
                    raw.produce("o", VALUE, key=b"k%d" % (i & 63), callback=dr,
                                headers=[("msgtrace-id", b"%036d" % i)])
                    if i & 1023 == 0:
                        raw.poll(0)
                raw.flush(60)
                return (time.perf_counter() - t0) * 1e6 / n
            if kind != "plain":
                kw = {"bootstrap": broker.bootstrap} if kind == "shipped" else {"sink": NullSink()}
                tracer = Tracer(service="bench", spool_dir=tempfile.mkdtemp(prefix="msgtrace-bench-"), **kw)
                p = tracer.wrap_producer(raw)
            t0 = time.perf_counter()
            for i in range(n):
                p.produce("o", VALUE, key=b"k%d" % (i & 63))
                if i & 1023 == 0:
                    p.poll(0)
            p.flush(60)
            if tracer is not None and kind == "shipped":
                tracer.flush(120)
            dt = (time.perf_counter() - t0) * 1e6 / n
            if tracer is not None:
                tracer.close(5)
            return dt

        names = {"plain": "plain produce + flush",
                 "hdr": "plain, one 36-byte header and a per-message delivery callback",
                 "spool": "msgtrace, events spooled only (NullSink: adapter + core + spool append)",
                 "shipped": "msgtrace, default sink (audit topic), until every event was shipped"}
        res: dict[str, list[float]] = {k: [] for k in names}
        for r in range(repeats):
            for k in (list(names) if r % 2 == 0 else list(names)[::-1]):
                res[k].append(run(k))
        print("| variant | us/msg |\n|---|---|")
        for k, label in names.items():
            v = res[k]
            print(f"| {label} | {statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f}) |")
    finally:
        broker.stop()


# --- parent ------------------------------------------------------------------------------------
def run_child(kind: str, variant: str, *args: str) -> dict:
    spool = tempfile.mkdtemp(prefix="msgtrace-bench-")
    p = subprocess.run([sys.executable, __file__, "--child", kind, variant, *args, spool], capture_output=True,
                       text=True, timeout=900, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{kind}/{variant} failed: {p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=50000, help="confluent-kafka messages per run")
    ap.add_argument("--pika-messages", type=int, default=5000, help="pika messages per run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", choices=["confluent", "pika"], default=None)
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/clients.md")
    ap.add_argument("--breakdown", action="store_true",
                    help="only the confluent-kafka producer breakdown (client header+callback, spool, shipping)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.breakdown:
        breakdown(args.messages, args.repeats)
        return
    if args.child:
        kind, variant, *rest = args.child
        fn = CHILDREN[kind]
        if kind.startswith("ck"):
            bootstrap, topic, n, spool = rest
            res = fn(variant, bootstrap, topic, int(n), spool)
        else:
            url, queue, n, bootstrap, spool = rest
            res = fn(variant, url, queue, int(n), spool, bootstrap)
        print(json.dumps(res))
        return

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from tracer.localsvc import TansuBroker
    from tracer.localsvc.rabbitmq import find_rabbitmq

    broker = TansuBroker().start()
    rabbit = find_rabbitmq() if args.only != "confluent" else None
    results: dict[tuple[str, str], list[dict]] = {}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        kinds: list[tuple[str, list[str]]] = []
        if args.only != "pika":
            t_in = f"bench-c-{uuid.uuid4().hex[:8]}"
            t_out = f"bench-p-{uuid.uuid4().hex[:8]}"
            for f in admin.create_topics([NewTopic(t_in, 1, 1), NewTopic(t_out, 1, 1),
                                          NewTopic("msgtrace.audit", 1, 1)]).values():
                f.result(30)
            fill = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
            for i in range(args.messages):  # the consumers' input carries a msgtrace-id header, as traced traffic
                while True:
                    try:
                        fill.produce(t_in, VALUE, key=b"k%d" % (i & 63), headers=[("msgtrace-id", b"%036d" % i)])
                        break
                    except BufferError:
                        fill.poll(0.05)
            fill.flush(60)
            kinds += [("ck_produce", [broker.bootstrap, t_out, str(args.messages)]),
                      ("ck_consume", [broker.bootstrap, t_in, str(args.messages)]),
                      ("ck_poll", [broker.bootstrap, t_in, str(args.messages)])]
        vhost = None
        if rabbit is not None:
            vhost = rabbit.new_vhost()
            import pika

            conn = pika.BlockingConnection(pika.URLParameters(vhost.url()))
            conn.channel().queue_declare("bench")
            conn.close()
            kinds += [("pika_publish", [vhost.url(), "bench", str(args.pika_messages), broker.bootstrap]),
                      ("pika_consume", [vhost.url(), "bench", str(args.pika_messages), broker.bootstrap])]
        for kind, a in kinds:  # warm-up (imports, page cache), not counted
            run_child(kind, "plain", *[x if x != str(args.messages) else "2000" for x in a])
        for r in range(args.repeats):
            for kind, a in kinds:
                order = list(VARIANTS[r % 3:] + VARIANTS[:r % 3])
                for v in order:
                    results.setdefault((kind, v), []).append(run_child(kind, v, *a))
                print(f"repeat {r + 1} {kind}: " + ", ".join(
                    f"{v}={results[(kind, v)][-1]['us']:.2f}us" for v in VARIANTS), flush=True)
        if vhost is not None:
            rabbit.delete_vhost(vhost)
    finally:
        broker.stop()
        if rabbit is not None:
            rabbit.close()

    names = {"ck_produce": f"confluent-kafka producer: produce + flush ({args.messages} x 100 B)",
             "ck_consume": f"confluent-kafka consumer: consume(500) + sync commit per batch ({args.messages})",
             "ck_poll": f"confluent-kafka consumer: poll() per message, async commit per 500 ({args.messages})",
             "pika_publish": f"pika publish, no confirms ({args.pika_messages} x 100 B)",
             "pika_consume": f"pika consume: basic_consume + basic_ack per message ({args.pika_messages})"}
    lines = ["# Client benchmark: confluent-kafka and pika, plain vs msgtrace vs OpenTelemetry (one run)", "",
             f"`python benchmarks/bench_clients.py --messages {args.messages} --pika-messages {args.pika_messages} "
             f"--repeats {args.repeats}`; {started}; {os.cpu_count()} cores shared with other work. Each variant "
             "in a fresh process, the variants of a repeat in rotated order; median (min-max) over repeats; "
             "added us and ratios paired per repeat. msgtrace's times include shipping both events of every "
             "message to the audit topic (the clock stops when the tracer has shipped them).", "",
             "| loop | plain us/msg | msgtrace us/msg | OpenTelemetry us/msg | msgtrace added us | OTel added us "
             "| throughput msgtrace/plain |", "|---|---|---|---|---|---|---|"]
    for kind in names:
        if (kind, "plain") not in results:
            continue
        p, t, o = ([x["us"] for x in results[(kind, v)]] for v in VARIANTS)
        added_t = [b - a for a, b in zip(p, t)]
        added_o = [b - a for a, b in zip(p, o)]
        ratio = [a / b for a, b in zip(p, t)]
        lines.append(f"| {names[kind]} | {med(p)} | {med(t)} | {med(o)} | {med(added_t)} | {med(added_o)} "
                     f"| {med(ratio)} |")
    lines += ["", "Tracer counters per msgtrace run (recorded / shipped / dropped / ship failures):", ""]
    for kind in names:
        if (kind, "traced") in results:
            st = [x.get("stats", {}) for x in results[(kind, "traced")]]
            client = [x["us_client"] for x in results[(kind, "traced")]]
            lines.append(f"- {kind}: " + "; ".join(f"{s.get('recorded')}/{s.get('shipped')}/{s.get('dropped')}/"
                                                    f"{s.get('ship_failures')}" for s in st)
                         + f"; client time alone (before the last events were shipped) {med(client)} us/msg")
        if (kind, "otel") in results:
            lines.append(f"  - OpenTelemetry spans exported per run: {[x.get('spans') for x in results[(kind, 'otel')]]}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        out = ROOT / "benchmarks" / "results" / "clients.md"
        old = out.read_text() if out.exists() else ""
        if "\n## " in old:  # keep hand-written sections below the table
            text += old[old.index("\n## "):]
        out.write_text(text)


if __name__ == "__main__":
    main()
