"""CPU cost of msgtrace's hot paths without a broker (stub producer / consumer, spool only).

    python benchmarks/profile_hooks.py [--n 50000] [--repeats 7] [--profile send|ack|poll|commit|record|processing]

Measures, per message, the Python work the hooks add on the business thread (``send``,
``poll``/``received``, ``processing()``, ``record()``) and on kafka-python's IO thread (the send
future's success callback, the commit hook), with a ``NullSink`` so no shipping runs. Times are
the thread's CPU time (``time.thread_time``), so other processes on a shared machine inflate them
less than wall time would; each figure is the median of ``--repeats`` interleaved runs, the
traced figures paired with a plain run of the same repeat. ``--profile X`` prints a cProfile of X.
confluent-kafka's ``produce()`` is timed into its local queue (no broker, no delivery report:
``bench_clients.py --breakdown`` has those), against a plain ``produce()`` carrying the one header
and the per-message callback msgtrace hands it.
``bench_hooks.py`` measures the whole thing (kafka-python, broker, shipping) against plain kafka-python.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kafka.consumer.fetcher import ConsumerRecord  # noqa: E402
from kafka.producer.future import FutureProduceResult, FutureRecordMetadata  # noqa: E402
from kafka.structs import OffsetAndMetadata, TopicPartition  # noqa: E402

from tracer import Tracer  # noqa: E402
from tracer.sdk.emitter import NullSink  # noqa: E402

VALUE = b"x" * 100
_clock = time.thread_time


class StubProducer:
    """Hands out kafka-python's own record futures, 100 per produce batch future, like its accumulator;
    ``ack_all`` completes the batches as its IO thread does on the broker's answer."""

    def __init__(self) -> None:
        self.batches: list[FutureProduceResult] = []
        self.n = 0

    def send(self, topic: str, value: Any = None, key: Any = None, headers: Any = None, partition: Any = None,
             timestamp_ms: Any = None) -> FutureRecordMetadata:
        if self.n % 100 == 0:
            self.batches.append(FutureProduceResult(TopicPartition(topic, 0)))
        f = FutureRecordMetadata(self.batches[-1], self.n % 100, 0, None, 2, 100, 50)
        self.n += 1
        return f

    def ack_all(self) -> None:
        for k, pf in enumerate(self.batches):
            pf.success((k * 100, -1, None))
        self.batches.clear()


class _Coord:
    """kafka-python 3's shape: the commit request coroutine hands the broker's answer to a handler."""

    async def _send_offset_commit_request(self, offsets: Any, *a: Any, **kw: Any) -> None:
        self._handle_offset_commit_response(offsets, 0.0, _Response([(tp.topic, [(tp.partition, 0)])
                                                                     for tp in offsets]))

    def _handle_offset_commit_response(self, offsets: Any, send_time: float, response: Any) -> None:
        return None


class _Response:
    def __init__(self, topics: list[Any]) -> None:
        self.topics = topics


class StubConsumer:
    """Hands out prepared batches; its coordinator accepts every commit."""

    def __init__(self, batches: list[dict[Any, Any]]) -> None:
        self.config = {"group_id": "bench-group"}
        self._coordinator = _Coord()
        self._batches = batches
        self._i = 0

    def poll(self, timeout_ms: Any = 0, max_records: Any = None, update_offsets: bool = True) -> dict[Any, Any]:
        b = self._batches[self._i % len(self._batches)]
        self._i += 1
        return b


def records(n: int, batch: int = 500) -> list[dict[Any, Any]]:
    """Batches of ConsumerRecords carrying the one header a traced producer adds."""
    tp = TopicPartition("bench", 0)
    out = []
    for start in range(0, n, batch):
        recs = [ConsumerRecord("bench", 0, None, off, 0, 0, b"k%d" % (off & 63), VALUE,
                               [("msgtrace-id", b"%08x-0000-4000-8000-%012x" % (off, off))], None, 2, 100, 91)
                for off in range(start, min(n, start + batch))]
        out.append({tp: recs})
    return out


def run_plain_send(n: int) -> float:
    stub = StubProducer()
    t0 = _clock()
    for i in range(n):
        stub.send("bench", VALUE, key=b"k%d" % (i & 63))
    dt = _clock() - t0
    stub.ack_all()
    return dt / n


def run_plain_ack(n: int) -> float:
    stub = StubProducer()
    for i in range(n):
        stub.send("bench", VALUE, key=b"k%d" % (i & 63))
    t0 = _clock()
    stub.ack_all()
    return (_clock() - t0) / n


def run_send(tracer: Tracer, n: int) -> tuple[float, float]:
    stub = StubProducer()
    p = tracer.wrap_producer(stub)
    t0 = _clock()
    for i in range(n):
        p.send("bench", VALUE, key=b"k%d" % (i & 63))
    t1 = _clock()
    stub.ack_all()
    t2 = _clock()
    return (t1 - t0) / n, (t2 - t1) / n


def run_consume(tracer: Tracer | None, batches: list[dict[Any, Any]], n: int,
                processing: bool) -> tuple[float, float, float]:
    stub = StubConsumer(batches)
    c: Any = tracer.wrap_consumer(stub) if tracer is not None else stub
    coord = stub._coordinator
    t_poll = t_commit = t_proc = 0.0
    for _ in batches:
        t0 = _clock()
        b = c.poll()
        t1 = _clock()
        if processing and tracer is not None:
            for recs in b.values():
                for r in recs:
                    with tracer.processing(r):
                        pass
        t2 = _clock()
        offsets = {tp: OffsetAndMetadata(recs[-1].offset + 1, "", -1) for tp, recs in b.items()}
        coro = coord._send_offset_commit_request(offsets)
        try:
            coro.send(None)  # the coroutine completes at once (no await inside): run it in place
        except StopIteration:
            pass
        t3 = _clock()
        t_poll += t1 - t0
        t_proc += t2 - t1
        t_commit += t3 - t2
    return t_poll / n, t_commit / n, t_proc / n


def run_iterate(tracer: Tracer | None, batches: list[dict[Any, Any]], n: int) -> float:
    """Records one by one, as ``for record in consumer`` hands them out."""
    recs = [r for b in batches for rs in b.values() for r in rs]

    class Iter:
        config = {"group_id": "bench-group"}
        _coordinator = _Coord()

        def __init__(self) -> None:
            self._it = iter(recs)

        def __next__(self) -> Any:
            return next(self._it)

    stub = Iter()
    c: Any = tracer.wrap_consumer(stub) if tracer is not None else stub
    nxt = c.__next__
    t0 = _clock()
    for _ in range(len(recs)):
        nxt()
    return (_clock() - t0) / n


def run_confluent_produce(tracer: Tracer | None, n: int) -> float:
    """confluent-kafka's ``produce()`` into its local queue (no broker: nothing is sent, no report
    runs): plain with one 36-byte header and a per-message callback (what msgtrace hands it), or
    traced. The queue is purged after each run."""
    from confluent_kafka import Producer

    raw = Producer({"bootstrap.servers": "127.0.0.1:1", "queue.buffering.max.messages": n + 10,
                    "queue.buffering.max.kbytes": 4 << 20, "message.timeout.ms": 600000, "log_level": 0})
    p: Any = tracer.wrap_producer(raw) if tracer is not None else raw

    def dr(err: Any, msg: Any) -> None:
        pass

    t0 = _clock()
    if tracer is None:
        for i in range(n):
            p.produce("bench", VALUE, b"k%d" % (i & 63), callback=dr,
                      headers=[("msgtrace-id", b"fb0a6cd3-870c-407f-9ef9-%012x" % i)])
    else:
        for i in range(n):
            p.produce("bench", VALUE, b"k%d" % (i & 63))
    dt = _clock() - t0
    raw.purge()
    raw.flush(0)
    return dt / n


def run_record(tracer: Tracer, n: int) -> float:
    rec = tracer.record
    t0 = _clock()
    for _ in range(n):
        rec("dead_lettered", "0b5e1f2a-1111-4000-8000-000000000001", topic="bench", consumer_group="g",
            dlq_topic="bench.dlq")
    return (_clock() - t0) / n


def run_processing_id(tracer: Tracer, n: int) -> float:
    t0 = _clock()
    for _ in range(n):
        with tracer.processing("0b5e1f2a-1111-4000-8000-000000000001", "g"):
            pass
    return (_clock() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--profile", choices=["send", "ack", "poll", "commit", "record", "processing"])
    args = ap.parse_args()
    spool = tempfile.mkdtemp(prefix="msgtrace-prof-")
    tracer = Tracer(service="bench", sink=NullSink(), spool_dir=spool, max_spool_bytes=1 << 40,
                    segment_bytes=64 << 20)
    n = args.n
    batches = records(n)
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
        elif args.profile == "record":
            prof.enable()
            run_record(tracer, n)
        else:
            prof.enable()
            run_consume(tracer, batches, n, args.profile == "processing")
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        tracer.close(0)
        shutil.rmtree(spool, ignore_errors=True)
        return
    res: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        plain_send, plain_ack = run_plain_send(n), run_plain_ack(n)
        traced_send, traced_ack = run_send(tracer, n)
        p_poll, p_commit, _ = run_consume(None, batches, n, False)
        t_poll, t_commit, _ = run_consume(tracer, batches, n, False)
        _, _, t_proc = run_consume(tracer, batches, n, True)
        p_iter, t_iter = run_iterate(None, batches, n), run_iterate(tracer, batches, n)
        row = {"send (added)": traced_send - plain_send, "ack callback (added)": traced_ack - plain_ack,
               "poll/received (added)": t_poll - p_poll, "commit hook (added)": t_commit - p_commit,
               "iteration/received (added)": t_iter - p_iter,
               "processing(record)": t_proc, "processing(msg_id)": run_processing_id(tracer, n),
               "record()": run_record(tracer, n), "plain stub send": plain_send}
        try:
            ck_plain = run_confluent_produce(None, n)
            row["confluent produce() (added)"] = run_confluent_produce(tracer, n) - ck_plain
            row["confluent produce(), plain + header + callback"] = ck_plain
        except ImportError:
            pass
        for k, v in row.items():
            res.setdefault(k, []).append(v * 1e6)
    print(f"us of thread CPU per message, median (min-max) of {args.repeats} x {n}:")
    for k, v in res.items():
        print(f"  {k:24s} {statistics.median(v):6.2f} ({min(v):.2f}-{max(v):.2f})")
    tracer.close(0)
    shutil.rmtree(spool, ignore_errors=True)


if __name__ == "__main__":
    main()
