"""tracer.sdk.rocketmq: the hooks for rocketmq-python-client 5.x, where no broker is needed.

No RocketMQ broker exists on these machines (not in Debian, not on PyPI), so the client's network
calls are replaced by a small stand-in producer; everything else is the client's own code: its
``Message`` (sent ones and ones decoded from the protocol's protobuf), ``SendReceipt``,
``MessageQueue``, ``Transaction`` (commit / rollback through ``end_transaction``), ``ConsumeResult``
and its push consumer's ``Consumption`` thread pool, which calls our listener exactly as a running
``PushConsumer`` does. The last test sends the recorded events through a real ``Tracer`` into chDB
and ClickHouse 18.16 and judges them with the reconciler.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

rocketmq = pytest.importorskip("rocketmq", reason="rocketmq-python-client 5.x (the optional RocketMQ client)")

from rocketmq import (
    ConsumeResult,
    Message,
    MessageListener,
    SendReceipt,
    TransactionResolution,
)
from rocketmq.grpc_protocol import Code, definition_pb2
from rocketmq.v5.client import ClientConfiguration, Credentials
from rocketmq.v5.client.metrics import ClientMetrics
from rocketmq.v5.consumer.push.consumption import Consumption
from rocketmq.v5.exception import ClientException
from rocketmq.v5.model import MessageQueue
from rocketmq.v5.producer.producer import Transaction
from rocketmq.v5.util import MessageIdCodec

from tracer import verdicts as V
from tracer.ingest.rocketmq import SuccessMeans
from tracer.sdk.rocketmq import RocketMQHooks


@dataclass
class Recorder:
    """Collects what the hooks hand to ``Tracer.record`` (the unit tests' view)."""

    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    fail: bool = False

    def record(self, stage: str, msg_id: Any, **fields: Any) -> None:
        if self.fail:
            raise RuntimeError("audit broken")
        self.calls.append((stage, msg_id, fields))

    @property
    def stages(self) -> list[tuple[str, str]]:
        return [(s, m) for s, m, _ in self.calls]


def queue() -> MessageQueue:
    q = definition_pb2.MessageQueue()
    q.topic.name = "order-paid"
    q.id = 3
    q.broker.name = "broker-a"
    addr = q.broker.endpoints.addresses.add()
    addr.host, addr.port = "127.0.0.1", 8081
    return MessageQueue(q)


class StandInProducer:
    """What ``Producer.send`` does around its RPC: names the message, fills the transaction, returns a
    receipt; or raises as the client does when the broker cannot be reached."""

    def __init__(self, error: Exception | None = None, end_code: int = Code.OK) -> None:
        self.error, self.end_code, self.ended = error, end_code, []

    def send(self, message: Message, transaction: Any = None) -> SendReceipt:
        message.message_id = MessageIdCodec().next_message_id()
        if self.error is not None:
            raise self.error
        if transaction is not None:
            transaction.add_half_message(message)
        receipt = SendReceipt(message.message_id, "TX-" + message.message_id if transaction else None, queue(), 42)
        if transaction is not None:
            transaction.add_send_receipt(receipt)
        return receipt

    def begin_transaction(self) -> Transaction:
        return Transaction(self)

    def end_transaction(self, endpoints: Any, message: Any, transaction_id: Any, result: Any, source: Any) -> Any:
        self.ended.append((transaction_id, result))
        status = definition_pb2.Status()
        status.code = self.end_code
        return type("Response", (), {"status": status})()


def outgoing(key: str | None = "order-1:paid") -> Message:
    m = Message()
    m.topic = "order-paid"
    m.body = b"{}"
    m.tag = "paid"
    if key:
        m.keys = key
    return m


def delivered(key: str, attempt: int, message_id: str = "01ABCDEF0123456789ABCDEF0123456789") -> Message:
    """A message as the consumer decodes it from the broker's protobuf."""
    pb = definition_pb2.Message()
    pb.topic.name = "order-paid"
    pb.body = b"{}"
    sp = pb.system_properties
    sp.keys.append(key)
    sp.message_id = message_id
    sp.delivery_attempt = attempt
    sp.receipt_handle = "handle"
    sp.body_encoding = definition_pb2.IDENTITY
    sp.body_digest.type = definition_pb2.CRC32
    import zlib

    sp.body_digest.checksum = format(zlib.crc32(b"{}") & 0xFFFFFFFF, "X")
    return Message().fromProtobuf(pb)


# --- producer ---------------------------------------------------------------------------------

def test_send_records_sent_and_broker_acked_named_by_the_key():
    rec = Recorder()
    hooks = RocketMQHooks(rec)
    receipt = hooks.send(StandInProducer(), outgoing())
    assert isinstance(receipt, SendReceipt)
    assert rec.stages == [("sent", "order-1:paid"), ("broker_acked", "order-1:paid")]
    ack = rec.calls[1][2]
    assert ack["mq"] == "rocketmq" and ack["topic"] == "order-paid" and ack["key"] == "order-1:paid"
    assert ack["attrs"]["rocketmq.queue_offset"] == "42" and "order-paid" in ack["attrs"]["rocketmq.queue"]
    assert ack["attrs"]["rocketmq.msg_id"] == receipt.message_id
    assert rec.calls[0][2]["ts_us"] <= time.time_ns() // 1000  # sent: when the send started


def test_send_without_key_is_named_by_the_message_id():
    rec = Recorder()
    receipt = RocketMQHooks(rec).send(StandInProducer(), outgoing(None))
    assert {m for _, m in rec.stages} == {receipt.message_id}


def test_a_send_that_raises_is_send_failed_and_the_error_reaches_the_caller():
    rec = Recorder()
    boom = ClientException("No route info of this topic: order-paid")
    with pytest.raises(ClientException) as ei:
        RocketMQHooks(rec).send(StandInProducer(error=boom), outgoing())
    assert ei.value is boom
    assert rec.stages == [("sent", "order-1:paid"), ("send_failed", "order-1:paid")]
    assert rec.calls[1][2]["error"] is boom  # Tracer.record turns it into text


def test_hooks_never_raise_into_business_code():
    rec = Recorder(fail=True)
    hooks = RocketMQHooks(rec)
    receipt = hooks.send(StandInProducer(), outgoing())
    assert receipt.offset == 42 and hooks.errors == 2


def test_transaction_commit_rollback_and_check_back():
    rec = Recorder()
    hooks = RocketMQHooks(rec)
    prod = StandInProducer()
    tx = hooks.begin_transaction(prod)
    receipt = hooks.send(prod, outgoing("order-9:paid"), tx)
    assert rec.stages == [("sent", "order-9:paid")]  # a half message: not visible, no ack yet
    assert rec.calls[0][2]["attrs"]["rocketmq.half"] == "true"
    assert rec.calls[0][2]["attrs"]["rocketmq.transaction_id"] == receipt.transaction_id
    tx.commit()  # the client's own Transaction ends it through end_transaction
    assert prod.ended == [(receipt.transaction_id, TransactionResolution.COMMIT)]
    assert rec.stages[-1] == ("broker_acked", "order-9:paid")
    assert rec.calls[-1][2]["attrs"]["rocketmq.from_transaction_check"] == "false"

    tx2 = hooks.begin_transaction(prod)
    hooks.send(prod, outgoing("order-10:paid"), tx2)
    tx2.rollback()
    assert rec.stages[-1] == ("rolled_back", "order-10:paid")

    failing = StandInProducer(end_code=Code.INTERNAL_ERROR)
    tx3 = hooks.begin_transaction(failing)
    hooks.send(failing, outgoing("order-11:paid"), tx3)
    with pytest.raises(ClientException):
        tx3.commit()
    assert rec.stages[-1] == ("sent", "order-11:paid")  # a failed commit records nothing: still in doubt

    class Checker:
        def __init__(self, answer: int) -> None:
            self.answer = answer

        def check(self, message: Message) -> int:
            return self.answer

    half = delivered("order-11:paid", 1)
    for answer, stage in ((TransactionResolution.TRANSACTION_RESOLUTION_UNSPECIFIED, None),
                          (TransactionResolution.ROLLBACK, "rolled_back"),
                          (TransactionResolution.COMMIT, "broker_acked")):
        before = len(rec.calls)
        assert hooks.checker(Checker(answer)).check(half) == answer
        got = rec.calls[before:]
        assert [s for s, _, _ in got] == ([stage] if stage else [])
        if stage:
            assert got[0][2]["attrs"]["rocketmq.from_transaction_check"] == "true"


def test_send_async_records_when_the_future_resolves():
    from concurrent.futures import Future

    class AsyncProducer(StandInProducer):
        def send_async(self, message: Message) -> Future:
            self.future: Future = Future()
            message.message_id = MessageIdCodec().next_message_id()
            return self.future

    rec = Recorder()
    prod = AsyncProducer()
    fut = RocketMQHooks(rec).send_async(prod, outgoing())
    assert rec.stages == []
    fut.set_exception(ClientException("timeout"))
    assert rec.stages == [("sent", "order-1:paid"), ("send_failed", "order-1:paid")]


# --- push consumer: the listener inside the client's own consumption pool -------------------------

class Listener(MessageListener):
    def __init__(self, result: Any) -> None:
        self.result = result

    def consume(self, message: Message) -> ConsumeResult:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def run_consumption(listener: Any, messages: list[Message]) -> list[Any]:
    results: list[Any] = []
    done = threading.Event()

    def callback(result: Any, message: Any, mq: Any, pq: Any) -> None:
        results.append(result)
        if len(results) == len(messages):
            done.set()

    config = ClientConfiguration("127.0.0.1:8081", Credentials())
    consumption = Consumption(listener, 2, callback, "test-client", None)
    try:
        consumption.execute_consume(messages, None, None, "red-packet", ClientMetrics("test-client", config))
        assert done.wait(10), "the consumption pool did not call back"
    finally:
        consumption.shutdown()
    return results


def test_listener_records_received_and_the_result():
    rec = Recorder()
    hooks = RocketMQHooks(rec)
    ok = hooks.listener(Listener(ConsumeResult.SUCCESS), "red-packet")
    assert run_consumption(ok, [delivered("order-1:paid", 1)]) == [ConsumeResult.SUCCESS]
    assert rec.stages == [("received", "order-1:paid"), ("business_done", "order-1:paid")]
    assert rec.calls[0][2]["consumer_group"] == "red-packet" and "redelivered" not in rec.calls[0][2]["attrs"]

    rec.calls.clear()
    acked = hooks.listener(Listener(ConsumeResult.SUCCESS), "red-packet", success_means=SuccessMeans.OFFSET_COMMITTED)
    run_consumption(acked, [delivered("order-2:paid", 2)])
    assert rec.stages == [("received", "order-2:paid"), ("offset_committed", "order-2:paid")]
    assert rec.calls[0][2]["attrs"]["redelivered"] == "true"


def test_listener_failures_and_the_last_attempt():
    rec = Recorder()
    hooks = RocketMQHooks(rec)
    raising = hooks.listener(Listener(ValueError("payment refused")), "red-packet")
    # the client turns the exception into FAILURE (our wrapper re-raised it unchanged)
    assert run_consumption(raising, [delivered("order-3:paid", 1)]) == [ConsumeResult.FAILURE]
    assert rec.stages == [("received", "order-3:paid"), ("business_failed", "order-3:paid")]
    assert "payment refused" in str(rec.calls[1][2]["error"])

    rec.calls.clear()
    failing = hooks.listener(Listener(ConsumeResult.FAILURE), "red-packet")
    run_consumption(failing, [delivered("order-4:paid", 17)])
    assert rec.stages == [("received", "order-4:paid"), ("business_failed", "order-4:paid"),
                          ("dead_lettered", "order-4:paid")]
    assert rec.calls[2][2]["attrs"]["dlq_topic"] == "%DLQ%red-packet"


def test_simple_consumer_ack_after_success_only():
    rec = Recorder()
    hooks = RocketMQHooks(rec)

    class Simple:
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        def ack(self, message: Message) -> None:
            if self.fail:
                raise ClientException("invalid receipt handle")

    m = delivered("order-5:paid", 1)
    hooks.received(m, "red-packet")
    hooks.ack(Simple(False), m, "red-packet")
    with pytest.raises(ClientException):
        hooks.ack(Simple(True), m, "red-packet")
    assert rec.stages == [("received", "order-5:paid"), ("offset_committed", "order-5:paid")]


# --- end to end: a real Tracer, the store, the reconciler -----------------------------------------

def test_hooks_through_a_tracer_into_the_store_and_the_verdicts(store_url, tmp_path):
    from tracer.analysis.reconcile import reconcile
    from tracer.sdk.tracer import Tracer
    from tracer.store import Store

    t0 = time.time_ns() // 1000
    with Tracer(service="red-packet", store=store_url, spool_dir=str(tmp_path / "spool")) as tracer:
        hooks = RocketMQHooks(tracer)
        prod = StandInProducer()
        with pytest.raises(ClientException):
            hooks.send(StandInProducer(error=ClientException("no route")), outgoing("order-1:paid"))
        for n in (2, 3, 4):
            hooks.send(prod, outgoing(f"order-{n}:paid"))
        tx = hooks.begin_transaction(prod)
        hooks.send(prod, outgoing("order-5:paid"), tx)
        tx.rollback()
        hooks.send(prod, outgoing("order-6:paid"), hooks.begin_transaction(prod))  # no end of transaction
        handed_off = hooks.listener(Listener(ConsumeResult.SUCCESS), "red-packet",
                                    success_means=SuccessMeans.OFFSET_COMMITTED)
        run_consumption(handed_off, [delivered("order-2:paid", 1), delivered("order-3:paid", 1, "01" + "B" * 32)])
        with tracer.processing("order-3:paid", "red-packet"):  # only order-3's work finished
            pass
        poison = hooks.listener(Listener(ConsumeResult.FAILURE), "red-packet", max_attempts=2)
        run_consumption(poison, [delivered("order-4:paid", 1, "01" + "C" * 32)])
        run_consumption(poison, [delivered("order-4:paid", 2, "01" + "C" * 32)])
        assert hooks.errors == 0
    with Store(store_url) as store:
        res = reconcile(store, t0 - 1_000_000, time.time_ns() // 1000 + 1_000_000, 600, write=False,
                        now_us=time.time_ns() // 1000 + 3_600_000_000)
    v = {(r.msg_id, r.consumer_group): r.verdict for r in res.rows}
    g = "red-packet"
    assert v[("order-1:paid", g)] == V.SEND_FAILED
    assert v[("order-2:paid", g)] == V.LOST_IN_CONSUMER
    assert ("order-3:paid", g) not in v  # delivered
    assert v[("order-4:paid", g)] == V.DEAD_LETTERED
    assert v[("order-6:paid", g)] == V.UNACKED
    assert {grp: verdict for (m, grp), verdict in v.items() if m == "order-5:paid"} == {g: V.ROLLED_BACK}
