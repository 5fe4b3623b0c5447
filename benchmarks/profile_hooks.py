"""CPU cost of msgtrace's hot paths without a broker (stub producer / consumer, spool only).

    python benchmarks/profile_hooks.py [--n 50000] [--repeats 5] [--profile send|ack|poll|commit|emit]

Measures, per message, the Python work the hooks add on the business thread
(``send``, ``poll``/``received``, ``processing()``) and on kafka-python's IO
thread (the send future's success callback, the commit hook), with a
``NullSink`` so no shipping runs. ``--profile X`` prints a cProfile of X.
This isolates the hooks' own cost; ``bench_hooks.py`` measures the whole
thing (kafka-python, broker, shipper) against plain kafka-python.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kafka.consumer.fetcher import ConsumerRecord  # noqa: E402
from kafka.future import Future  # noqa: E402
from kafka.producer.future import RecordMetadata  # noqa: E402
from kafka.structs import OffsetAndMetadata, TopicPartition  # noqa: E402

from tracer import Tracer  # noqa: E402
from tracer.sdk.emitter import NullSink  # noqa: E402

VALUE = b"x" * 100


class StubProducer:
    """Returns a kafka-python Future per send; ``ack_all`` resolves them like the sender thread would."""

    def __init__(self) -> None:
        self.futures: list[tuple[Future, str]] = []

    def send(self, topic, value=None, key=None, headers=None, partition=None, timestamp_ms=None):
        f = Future()
        self.futures.append((f, topic))
        return f

    def ack_all(self) -> None:
        tp = TopicPartition("bench", 0)
        for i, (f, topic) in enumerate(self.futures):
            f.success(RecordMetadata(topic, 0, tp, i, 0, None, 2, 100, 91))
        self.futures.clear()


class _Coord:
    def _send_offset_commit_request(self, offsets, *a, **kw):
        return None


class StubConsumer:
    """Hands out prepared batches; its coordinator accepts every commit."""

    def __init__(self, batches: list[dict]) -> None:
        self.config = {"group_id": "bench-group"}
        self._coordinator = _Coord()
        self._batches = batches
        self._i = 0

    def poll(self, timeout_ms=0, max_records=None, update_offsets=True):
        b = self._batches[self._i % len(self._batches)]
        self._i += 1
        return b


def records(n: int, tracer: Tracer, batch: int = 500) -> list[dict]:
    """Batches of ConsumerRecords carrying the headers a traced producer adds."""
    tp = TopicPartition("bench", 0)
    out = []
    for start in range(0, n, batch):
        recs = []
        for off in range(start, min(n, start + batch)):
            headers = [("traceparent", b"00-%032x-%016x-01" % (off + 1, off + 1)),
                       ("msgtrace-id", b"%08x-0000-4000-8000-%012x" % (off, off))]
            recs.append(ConsumerRecord("bench", 0, None, off, 0, 0, b"k%d" % (off & 63), VALUE, headers, None,
                                       2, 100, 91))
        out.append({tp: recs})
    return out


def run_send(tracer: Tracer, n: int) -> tuple[float, float]:
    stub = StubProducer()
    p = tracer.wrap_producer(stub)
    t0 = time.perf_counter()
    for i in range(n):
        p.send("bench", VALUE, key=b"k%d" % (i & 63))
    t1 = time.perf_counter()
    stub.ack_all()
    t2 = time.perf_counter()
    return (t1 - t0) / n, (t2 - t1) / n


def run_plain_send(n: int) -> float:
    stub = StubProducer()
    t0 = time.perf_counter()
    for i in range(n):
        stub.send("bench", VALUE, key=b"k%d" % (i & 63))
    t1 = time.perf_counter()
    return (t1 - t0) / n


def run_consume(tracer: Tracer, n: int, processing: bool) -> tuple[float, float, float]:
    batches = records(n, tracer)
    c = tracer.wrap_consumer(StubConsumer(batches))
    coord = c._consumer._coordinator
    t_poll = t_commit = t_proc = 0.0
    for _ in batches:
        t0 = time.perf_counter()
        b = c.poll()
        t1 = time.perf_counter()
        if processing:
            for recs in b.values():
                for r in recs:
                    with tracer.processing(r):
                        pass
        t2 = time.perf_counter()
        offsets = {tp: OffsetAndMetadata(recs[-1].offset + 1, "", -1) for tp, recs in b.items()}
        coord._send_offset_commit_request(offsets)
        t3 = time.perf_counter()
        t_poll += t1 - t0
        t_proc += t2 - t1
        t_commit += t3 - t2
    return t_poll / n, t_commit / n, t_proc / n


def run_emit(tracer: Tracer, n: int) -> float:
    emit = tracer.emitter.emit
    t0 = time.perf_counter()
    for i in range(n):
        emit("sent", "0b5e1f2a-1111-4000-8000-000000000001", "bench", None, None, None, "k1", None,
             "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", choices=["send", "ack", "poll", "commit", "emit", "processing"])
    args = ap.parse_args()
    spool = tempfile.mkdtemp(prefix="msgtrace-prof-")
    tracer = Tracer(service="bench", sink=NullSink(), spool_dir=spool, max_spool_bytes=1 << 40,
                    segment_bytes=64 << 20)
    n = args.n
    if args.profile:
        prof = cProfile.Profile()
        if args.profile in ("send", "ack"):
            stub = StubProducer()
            p = tracer.wrap_producer(stub)
            if args.profile == "send":
                prof.enable()
            for i in range(n):
                p.send("bench", VALUE, key=b"k%d" % (i & 63))
            if args.profile == "ack":
                prof.enable()
            stub.ack_all()
        elif args.profile == "emit":
            prof.enable()
            run_emit(tracer, n)
        else:
            batches = records(n, tracer)
            c = tracer.wrap_consumer(StubConsumer(batches))
            coord = c._consumer._coordinator
            for _ in batches:
                if args.profile == "poll":
                    prof.enable()
                b = c.poll()
                prof.disable()
                if args.profile == "processing":
                    prof.enable()
                    for recs in b.values():
                        for r in recs:
                            with tracer.processing(r):
                                pass
                    prof.disable()
                offsets = {tp: OffsetAndMetadata(recs[-1].offset + 1, "", -1) for tp, recs in b.items()}
                if args.profile == "commit":
                    prof.enable()
                coord._send_offset_commit_request(offsets)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        tracer.close(0)
        shutil.rmtree(spool, ignore_errors=True)
        return
    res: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        row = {"plain send (stub)": run_plain_send(n)}
        row["traced send"], row["ack callback"] = run_send(tracer, n)
        row["poll/received"], row["commit hook"], _ = run_consume(tracer, n, False)
        _, _, row["processing()"] = run_consume(tracer, n, True)
        row["emit() one event"] = run_emit(tracer, n)
        for k, v in row.items():
            res.setdefault(k, []).append(v * 1e6)
    print(f"us per message, median (min-max) of {args.repeats} x {n}:")
    for k, v in res.items():
        print(f"  {k:22s} {statistics.median(v):6.2f} ({min(v):.2f}-{max(v):.2f})")
    tracer.close(0)
    shutil.rmtree(spool, ignore_errors=True)


if __name__ == "__main__":
    main()
