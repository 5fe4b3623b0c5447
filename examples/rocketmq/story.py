"""The red-packet story on RocketMQ: the sample trace file, the hooks' events and the orders export.

Run ``python examples/rocketmq/story.py [DIR]`` to (re)write, into DIR (default: beside this file):

* ``red-packet.trace``: RocketMQ message-trace records, as the trace topic's message bodies carry
  them (TraceDataEncoder format, written by ``tracer.ingest.rocketmq_format.encode_record`` from the
  documented field order; several client generations' layouts mixed, one body per line);
* ``red-packet-hooks.ndjson``: the events msgtrace's own hooks recorded (``tracer.sdk.rocketmq``
  and ``tracer.processing``) where RocketMQ's traces see nothing: the red-packet service's business
  outcomes and the order service's send that raised;
* ``orders-paid.csv``: the order ids the order database marked paid in the window (the source of
  truth for ``never_sent``).

:data:`CASES` is the ground truth (one order per seed loss); README.md in this folder tells the
story and the commands, and tests/test_rocketmq_story.py checks that ``msgtrace reconcile`` agrees.
Everything is deterministic: running it again writes the same bytes.
"""
from __future__ import annotations

import csv
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from tracer.events import Event, encode_event
from tracer.ingest.rocketmq_format import (
    ConsumeReturnType,
    EndTransactionRecord,
    MessageType,
    PubRecord,
    SubAfterRecord,
    SubBeforeRecord,
    TraceRecord,
    TransactionState,
    encode_record,
)

T0_MS = 1_795_255_200_000  # 2026-11-21T10:00:00Z
WINDOW = ("2026-11-21T10:00:00Z", "2026-11-21T11:00:00Z")
TOPIC = "order-paid"
PRODUCER = "order-service"
GROUP = "red-packet"
BROKER = "10.0.0.11:10911"
REGION = "DefaultRegion"


@dataclass(frozen=True, slots=True)
class Case:
    order: str  # the business id (the message key)
    story: str
    with_hooks: str  # the verdict with msgtrace's hooks imported and --hooked-group red-packet
    traces_only: str  # the verdict from RocketMQ's traces alone (+ the orders export)
    seen_by: str  # who can show this loss: "traces", "hooks", "source of truth", "nobody yet"


CASES: tuple[Case, ...] = (
    Case("order-1001:paid", "paid, published, red packet sent", "delivered", "delivered", "traces"),
    Case("order-1002:paid", "the broker answered FLUSH_SLAVE_TIMEOUT (slave down); the app logged it and never "
         "re-sent", "send_failed", "send_failed", "traces"),
    Case("order-1003:paid", "the order service crashed between its DB commit and the send", "never_sent",
         "never_sent", "source of truth"),
    Case("order-1004:paid", "the send raised (network jitter, NameServer unreachable): RocketMQ writes no trace "
         "record for a send that throws", "send_failed", "never_sent", "hooks"),
    Case("order-1005:paid", "acked from the page cache, then the broker machine died before the flush",
         "pending_in_broker", "pending_in_broker", "nobody yet"),
    Case("order-1006:paid", "the listener handed the payment to a thread and returned CONSUME_SUCCESS; the "
         "worker was killed", "lost_in_consumer", "delivered", "hooks"),
    Case("order-1007:paid", "the payment failed; the listener swallowed the error and returned CONSUME_SUCCESS",
         "failed_and_committed", "delivered", "hooks"),
    Case("order-1008:paid", "a poison message: RECONSUME_LATER on every delivery, 16 retries, then %DLQ%red-packet",
         "dead_lettered", "dead_lettered", "traces"),
    Case("order-1009:paid", "transactional: the local transaction failed, the half message was rolled back",
         "rolled_back", "rolled_back", "traces"),
    Case("order-1010:paid", "transactional: the producer died after the half message; no commit, no rollback, "
         "and its check-back never answered", "unacked", "unacked", "traces"),
    Case("order-1011:paid", "transactional: the producer died after its DB commit; the broker's check-back "
         "committed it and the red packet was paid", "delivered", "delivered", "traces"),
    Case("order-1012:paid", "the first delivery failed (payment service timeout), the retry succeeded",
         "delivered", "delivered", "traces"),
    Case("order-1013:paid", "the producer's trace buffer was full: its Pub record was dropped", "audit_gap",
         "audit_gap", "traces"),
)
#: flags beside the verdict (with hooks)
FLAGS = {"order-1012:paid": ["redelivered"], "order-1008:paid": ["redelivered"]}
#: a record cut short in the dump (quarantined with its reason)
BAD_RECORD = f"SubBefore\x01{T0_MS + 50_000}\x01{REGION}\x01{GROUP}\x01"


def _mid(n: int) -> str:
    """A client unique id (MessageClientIDSetter's shape: 32 hex digits)."""
    return f"0A00000B{n:04X}18B4AAC2{n * 7919:016X}"[:32]


def _offset_id(n: int) -> str:
    return f"0A00000B00002A9F{n * 4096:016X}"


def _pub(n: int, t: int, *, ok: bool = True, half: bool = False, layout: int = 14) -> PubRecord:
    return PubRecord(T0_MS + t, REGION, PRODUCER, TOPIC, _mid(n), "paid", f"order-{n}:paid", BROKER, 180, 4,
                     MessageType.Trans_Msg_Half if half else MessageType.Normal_Msg, _offset_id(n), ok,
                     "10.0.1.5", layout)


def _consume(n: int, t: int, ok: bool, retry: int = 0, req: str | None = None,
             code: ConsumeReturnType = ConsumeReturnType.SUCCESS, cost: int = 35,
             layouts: tuple[int, int] = (8, 9)) -> list[TraceRecord]:
    request = req or f"0A00001C{n:04X}{retry:02X}{T0_MS + t:014X}"[:32]
    keys = f"order-{n}:paid"
    before = SubBeforeRecord(T0_MS + t, REGION, GROUP, request, _mid(n), retry, keys, "10.0.2.7", layouts[0])
    after = SubAfterRecord(request, _mid(n), cost, ok, keys, code, T0_MS + t + cost, GROUP, layouts[1])
    return [before, after]


def _end(n: int, t: int, state: TransactionState, from_check: bool) -> EndTransactionRecord:
    return EndTransactionRecord(T0_MS + t, REGION, PRODUCER, TOPIC, _mid(n), "paid", f"order-{n}:paid", BROKER,
                                MessageType.Trans_msg_Commit, _mid(n), state, from_check, None, 13)


def trace_records() -> list[TraceRecord]:
    """Every trace record of the story, in the order the trace topic's consumer dumped them."""
    r: list[TraceRecord] = []
    r.append(_pub(1001, 1_000, layout=15))  # a 4.8-era producer (clientHost at the end)
    r += _consume(1001, 1_200, True, layouts=(9, 9))
    r.append(_pub(1002, 2_000, ok=False))
    # 1003: nothing (never sent); 1004: nothing (the send raised)
    r.append(_pub(1005, 5_000))  # acked; never delivered
    r.append(_pub(1006, 6_000))
    r += _consume(1006, 6_100, True)
    r.append(_pub(1007, 7_000))
    r += _consume(1007, 7_100, True)
    r.append(_pub(1008, 8_000))
    for retry in range(17):  # retries 0..16: the 17th failure goes to the DLQ
        r += _consume(1008, 8_100 + retry * 10_000, False, retry=retry, code=ConsumeReturnType.FAILED,
                      layouts=(8, 7) if retry % 2 else (8, 9))  # some consumers on the CLOUD layout
    r.append(_pub(1009, 9_000, half=True))
    r.append(_end(1009, 9_040, TransactionState.ROLLBACK_MESSAGE, False))
    r.append(_pub(1010, 10_000, half=True))
    r.append(_end(1010, 70_000, TransactionState.UNKNOW, True))  # its check-back: still unknown
    r.append(_pub(1011, 11_000, half=True))
    r.append(_end(1011, 71_000, TransactionState.COMMIT_MESSAGE, True))
    r += _consume(1011, 71_200, True, layouts=(8, 6))  # an old consumer: SubAfter without time and group
    r.append(_pub(1012, 12_000))
    r += _consume(1012, 12_100, False, code=ConsumeReturnType.EXCEPTION)
    r += _consume(1012, 22_100, True, retry=1)
    # 1013: the Pub was dropped by the producer's full trace buffer
    r += _consume(1013, 13_100, True)
    return r


def trace_text() -> bytes:
    """The dump: one trace-topic message body per line (records ended by \\x02)."""
    bodies: list[str] = []
    body = ""
    for i, rec in enumerate(trace_records()):
        body += encode_record(rec)
        if i % 3 == 2:  # the client batches a few records per trace message
            bodies.append(body)
            body = ""
    if body:
        bodies.append(body)
    bodies.insert(4, BAD_RECORD)  # a truncated body
    return ("\n".join(bodies) + "\n").encode("utf-8")


def _event(n: int, stage: str, t: int, **kw: object) -> Event:
    seq = kw.pop("seq")
    return Event(msg_id=f"order-{n}:paid", stage=stage, ts_us=(T0_MS + t) * 1000,
                 event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"msgtrace-story/{n}/{stage}/{t}")),
                 host=str(kw.pop("host")), pid=int(str(kw.pop("pid"))), mq="rocketmq", topic=TOPIC,
                 emitter_id=str(kw.pop("emitter")), seq=int(str(seq)), **kw)  # type: ignore[arg-type]


def hook_events() -> list[Event]:
    """What msgtrace's own hooks recorded (in the wire format the emitters ship)."""
    ev: list[Event] = []
    prod = {"service": "order-service", "host": "order-1", "pid": 4242, "emitter": "order-1-4242-a"}
    ev.append(_event(1004, "sent", 4_000, seq=1, key="order-1004:paid", **prod))
    ev.append(_event(1004, "send_failed", 7_000, seq=2, key="order-1004:paid",
                     error="MQClientException: No route info of this topic: order-paid", **prod))
    cons = {"service": "red-packet", "host": "red-packet-2", "pid": 777, "emitter": "red-packet-2-777-b"}
    seq = 0

    def c(n: int, stage: str, t: int, error: str | None = None) -> None:
        nonlocal seq
        seq += 1
        ev.append(_event(n, stage, t, seq=seq, consumer_group=GROUP, key=f"order-{n}:paid", error=error,
                         service=cons["service"], host=cons["host"], pid=cons["pid"], emitter=cons["emitter"]))

    c(1001, "business_done", 1_230)
    # 1006: the worker thread was killed before it finished: nothing
    c(1007, "business_failed", 7_130, "PaymentError: red-packet account frozen")
    c(1011, "business_done", 71_230)
    c(1012, "business_failed", 12_130, "TimeoutError: payment service")
    c(1012, "business_done", 22_130)
    c(1013, "business_done", 13_130)
    return ev


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "red-packet.trace", folder / "red-packet-hooks.ndjson", folder / "orders-paid.csv"]
    paths[0].write_bytes(trace_text())
    paths[1].write_bytes(b"\n".join(encode_event(e) for e in hook_events()) + b"\n")
    with paths[2].open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["order_id", "msg_id", "paid_at"])
        for case in CASES:
            n = int(case.order.split("-")[1].split(":")[0])
            w.writerow([n, case.order, f"2026-11-21T10:00:{(n - 1000) * 2:02d}Z"])
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    for p in write(target):
        print(p)
