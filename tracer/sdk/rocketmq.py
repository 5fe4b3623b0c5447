"""Hooks for RocketMQ's Python client 5.x (``rocketmq-python-client``), on ``Tracer.record`` alone.

RocketMQ's own message traces (``msgtrace import rocketmq-trace``) miss what matters most in the
seeds: a send that raises leaves no trace record, a trace buffer that is full drops records, and a
listener's CONSUME_SUCCESS says nothing about whether the business work finished. These wrappers
record the stages where the application sees them, and never change what the client does or
returns: the client's exceptions reach the caller unchanged, and a failure of the audit itself
never does (``Tracer.record`` never raises; building its fields is guarded here too).

| call | stages |
|---|---|
| :meth:`RocketMQHooks.send` (``Producer.send``) | ``sent``; ``broker_acked`` with the receipt; ``send_failed`` when it raises |
| the same with a transaction (half message) | ``sent`` (attrs: transaction id); no ack until the transaction ends |
| :meth:`TracedTransaction.commit` / ``rollback`` | ``broker_acked`` (now visible) / ``rolled_back`` |
| :class:`TracedChecker` (the broker's check-back) | COMMIT: ``broker_acked``; ROLLBACK: ``rolled_back``; else nothing (still in doubt) |
| :class:`TracedListener` (``PushConsumer``) | ``received`` (delivery attempt > 1: redelivered); the result: SUCCESS -> ``business_done`` or ``offset_committed`` (:class:`SuccessMeans`), FAILURE or an exception -> ``business_failed``, at the last attempt also ``dead_lettered`` |
| :meth:`RocketMQHooks.received` / :meth:`RocketMQHooks.ack` (``SimpleConsumer``) | ``received`` / ``offset_committed`` after the ack succeeded |

Messages are named as the trace importer names them (:func:`tracer.ingest.rocketmq.business_id`):
the message key when set (the smallest of several), else the client's message id. Import this
module only where the client is installed; it imports nothing of the client at import time.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from tracer.ingest.rocketmq import MsgIdFrom, SuccessMeans, business_id

MQ = "rocketmq"
#: The push consumer's default maximum delivery attempts (first delivery included): a message that
#: fails its last attempt goes to the group's dead-letter queue.
DEFAULT_MAX_ATTEMPTS = 17
#: ``TransactionResolution`` values of the client's protocol (definition.proto)
COMMIT, ROLLBACK = 1, 2
#: ``ConsumeResult.SUCCESS.value``
_SUCCESS = 0


class Recorder(Protocol):
    """What the hooks need of a tracer: ``tracer.Tracer.record`` (never raises)."""

    def record(self, stage: str, msg_id: Any, **fields: Any) -> None: ...


def _now_us() -> int:
    return time.time_ns() // 1000


def _keys(message: Any) -> str | None:
    keys = getattr(message, "keys", None)
    if not keys:
        return None
    return " ".join(sorted(str(k) for k in keys))


class RocketMQHooks:
    """Records the stages of RocketMQ 5.x sends, transactions and consumption with ``tracer.record``."""

    def __init__(self, tracer: Recorder, *, msg_id_from: MsgIdFrom = MsgIdFrom.KEY,
                 id_fn: Callable[[Any], str] | None = None) -> None:
        """``id_fn(message)``, when given, names messages instead of their keys / message id: use the
        same rule as ``msgtrace import rocketmq-trace --msg-id`` so traces and hooks name one message."""
        self.tracer = tracer
        self.msg_id_from = msg_id_from
        self.id_fn = id_fn
        self.errors = 0  # hook failures swallowed (never raised into business code)

    # --- identity ------------------------------------------------------------------------
    def msg_id(self, message: Any) -> str | None:
        """The msgtrace msg_id of ``message`` (None before a message without keys has a message id)."""
        if self.id_fn is not None:
            return str(self.id_fn(message))
        mid = getattr(message, "message_id", None) or ""
        keys = _keys(message)
        if not keys and not mid:
            return None
        return business_id(keys, str(mid), self.msg_id_from)

    def _record(self, stage: str, message: Any, ts_us: int = 0, **fields: Any) -> None:
        try:
            mid = self.msg_id(message)
            if mid is None:
                self.errors += 1
                return
            attrs: dict[str, str] = {}
            rmq_id = getattr(message, "message_id", None)
            if rmq_id:
                attrs["rocketmq.msg_id"] = str(rmq_id)
            tag = getattr(message, "tag", None)
            if tag:
                attrs["rocketmq.tags"] = str(tag)
            attrs.update({k: str(v) for k, v in (fields.pop("attrs", None) or {}).items()})
            self.tracer.record(stage, mid, topic=str(getattr(message, "topic", "") or ""), key=_keys(message),
                               mq=MQ, ts_us=ts_us, attrs=attrs, **fields)
        except Exception:  # noqa: BLE001 (the audit never raises into business code)
            self.errors += 1

    # --- producer ------------------------------------------------------------------------
    def send(self, producer: Any, message: Any, transaction: Any = None) -> Any:
        """``producer.send(message, transaction)``, recorded. A :class:`TracedTransaction` may be passed."""
        inner_tx = transaction.transaction if isinstance(transaction, TracedTransaction) else transaction
        t0 = _now_us()
        try:
            receipt = producer.send(message, inner_tx) if inner_tx is not None else producer.send(message)
        except BaseException as e:
            self._send_failed(message, t0, e)
            raise
        if isinstance(transaction, TracedTransaction):
            transaction.message = message
            transaction.transaction_id = getattr(receipt, "transaction_id", None)
        self._sent(message, t0, receipt, half=inner_tx is not None)
        return receipt

    def send_async(self, producer: Any, message: Any) -> Any:
        """``producer.send_async(message)``, recorded when its future resolves."""
        t0 = _now_us()
        try:
            future = producer.send_async(message)
        except BaseException as e:
            self._send_failed(message, t0, e)
            raise

        def done(f: Any) -> None:
            try:
                e = f.exception()
            except BaseException as cancelled:  # noqa: BLE001 (a cancelled future raises here)
                e = cancelled
            if e is not None:
                self._send_failed(message, t0, e)
            else:
                self._sent(message, t0, f.result(), half=False)

        try:
            future.add_done_callback(done)
        except Exception:  # noqa: BLE001 (the audit never raises into business code)
            self.errors += 1
        return future

    def _receipt_attrs(self, receipt: Any) -> dict[str, str]:
        attrs: dict[str, str] = {}
        try:
            queue = getattr(receipt, "message_queue", None)
            if queue is not None:
                attrs["rocketmq.queue"] = str(queue)
            if getattr(receipt, "offset", None) is not None:
                attrs["rocketmq.queue_offset"] = str(receipt.offset)
            if getattr(receipt, "transaction_id", None):
                attrs["rocketmq.transaction_id"] = str(receipt.transaction_id)
        except Exception:  # noqa: BLE001 (the audit never raises into business code)
            self.errors += 1
        return attrs

    def _sent(self, message: Any, t0: int, receipt: Any, *, half: bool) -> None:
        attrs = self._receipt_attrs(receipt)
        if half:
            attrs["rocketmq.half"] = "true"
            self._record("sent", message, t0, attrs=attrs)
            return
        self._record("sent", message, t0, attrs=dict(attrs))
        self._record("broker_acked", message, attrs=attrs)

    def _send_failed(self, message: Any, t0: int, e: BaseException) -> None:
        self._record("sent", message, t0)
        self._record("send_failed", message, error=e)

    def begin_transaction(self, producer: Any) -> TracedTransaction:
        """``producer.begin_transaction()``, wrapped: pass it to :meth:`send`, then commit or roll back."""
        return TracedTransaction(producer.begin_transaction(), self)

    def checker(self, checker: Any) -> TracedChecker:
        """A transaction checker that records the answers ``checker`` gives the broker's check-back."""
        return TracedChecker(checker, self)

    def transaction_end(self, message: Any, resolution: int, *, from_check: bool,
                        transaction_id: str | None = None) -> None:
        """Record a transaction's end by hand: COMMIT -> broker_acked, ROLLBACK -> rolled_back, else nothing."""
        attrs = {"rocketmq.from_transaction_check": "true" if from_check else "false"}
        if transaction_id:
            attrs["rocketmq.transaction_id"] = transaction_id
        if resolution == COMMIT:
            self._record("broker_acked", message, attrs=dict(attrs, **{"rocketmq.transaction_state": "COMMIT"}))
        elif resolution == ROLLBACK:
            self._record("rolled_back", message, attrs=dict(attrs, **{"rocketmq.transaction_state": "ROLLBACK"}),
                         error="the producer rolled back the half message"
                               + (" answering the broker's check-back" if from_check else ""))

    # --- consumers ---------------------------------------------------------------------------
    def listener(self, listener: Any, consumer_group: str, *,
                 success_means: SuccessMeans = SuccessMeans.BUSINESS_DONE,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> TracedListener:
        """A ``MessageListener`` for ``PushConsumer`` that records around ``listener.consume``."""
        return TracedListener(listener, self, consumer_group, success_means=success_means, max_attempts=max_attempts)

    def received(self, message: Any, consumer_group: str) -> None:
        """A message returned by ``SimpleConsumer.receive`` (or handed to a listener)."""
        attempt = getattr(message, "delivery_attempt", None)
        attrs: dict[str, str] = {}
        if attempt:
            attrs["rocketmq.delivery_attempt"] = str(attempt)
            attrs["rocketmq.retry_times"] = str(max(int(attempt) - 1, 0))
            if int(attempt) > 1:
                attrs["redelivered"] = "true"
        self._record("received", message, consumer_group=consumer_group, attrs=attrs)

    def ack(self, consumer: Any, message: Any, consumer_group: str) -> Any:
        """``consumer.ack(message)`` (SimpleConsumer), recorded as offset_committed once it succeeded."""
        result = consumer.ack(message)
        self._record("offset_committed", message, consumer_group=consumer_group)
        return result

    def acked(self, message: Any, consumer_group: str) -> None:
        """Record an ack made elsewhere (``ack_async`` done, say)."""
        self._record("offset_committed", message, consumer_group=consumer_group)


class TracedTransaction:
    """A client ``Transaction`` whose commit and rollback are recorded (after they succeeded)."""

    def __init__(self, transaction: Any, hooks: RocketMQHooks) -> None:
        self.transaction = transaction
        self.hooks = hooks
        self.message: Any = None
        self.transaction_id: str | None = None

    def commit(self) -> Any:
        res = self.transaction.commit()
        self._ended(COMMIT)
        return res

    def rollback(self) -> Any:
        res = self.transaction.rollback()
        self._ended(ROLLBACK)
        return res

    def _ended(self, resolution: int) -> None:
        if self.message is not None:
            self.hooks.transaction_end(self.message, resolution, from_check=False,
                                       transaction_id=str(self.transaction_id) if self.transaction_id else None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transaction, name)


class TracedChecker:
    """A ``TransactionChecker``: asks ``checker``, records its answer to the broker's check-back, returns it."""

    def __init__(self, checker: Any, hooks: RocketMQHooks) -> None:
        self.checker = checker
        self.hooks = hooks

    def check(self, message: Any) -> Any:
        result = self.checker.check(message)
        try:
            self.hooks.transaction_end(message, int(result), from_check=True)
        except Exception:  # noqa: BLE001 (the audit never raises into business code)
            self.hooks.errors += 1
        return result


class TracedListener:
    """A push consumer's ``MessageListener`` that records received and the consume result.

    ``success_means``: a SUCCESS returned by a listener that does its business work before returning
    is ``business_done`` (the default). A listener that hands the work to another thread, or whose
    business outcome is recorded with ``tracer.processing(msg_id, group)`` where the work finishes,
    should pass ``SuccessMeans.OFFSET_COMMITTED``: the SUCCESS is then the ack, and a success without
    a later business outcome is ``lost_in_consumer``.
    """

    def __init__(self, listener: Any, hooks: RocketMQHooks, consumer_group: str, *,
                 success_means: SuccessMeans = SuccessMeans.BUSINESS_DONE,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        self.listener = listener
        self.hooks = hooks
        self.consumer_group = consumer_group
        self.success_means = success_means
        self.max_attempts = max_attempts

    def consume(self, message: Any) -> Any:
        hooks, group = self.hooks, self.consumer_group
        hooks.received(message, group)
        try:
            result = self.listener.consume(message)
        except BaseException as e:
            self._failed(message, e)
            raise
        try:
            ok = getattr(result, "value", result) == _SUCCESS
        except Exception:  # noqa: BLE001 (the audit never raises into business code)
            ok = False
        if ok:
            stage = self.success_means.value
            hooks._record(stage, message, consumer_group=group,
                          attrs={"rocketmq.consume_success_means": stage})
        else:
            self._failed(message, f"consume result {getattr(result, 'name', result)}")
        return result

    def _failed(self, message: Any, error: Any) -> None:
        hooks, group = self.hooks, self.consumer_group
        hooks._record("business_failed", message, consumer_group=group, error=error)
        attempt = getattr(message, "delivery_attempt", None) or 0
        try:
            last = int(attempt) >= self.max_attempts
        except (TypeError, ValueError):
            last = False
        if last:
            dlq = f"%DLQ%{group}"
            hooks._record("dead_lettered", message, consumer_group=group,
                          error=f"failed its last delivery attempt ({attempt} of {self.max_attempts}): the broker "
                                f"moves it to {dlq}",
                          attrs={"dlq_topic": dlq, "rocketmq.dlq_inferred": "true"})
