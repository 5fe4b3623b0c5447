"""RocketMQ trace records -> msgtrace events (DESIGN.md, Clients, the RocketMQ table).

| record | events |
|---|---|
| ``Pub`` success | ``sent`` (start of the send) + ``broker_acked`` (start + cost; store host, offsetMsgId) |
| ``Pub`` failure | ``sent`` + ``send_failed`` (a send status other than SEND_OK: the broker may hold it) |
| ``Pub`` of a half message (``Trans_Msg_Half``) | ``sent`` (transaction id = the message id, as the client sets it) |
| ``EndTransaction`` COMMIT / ROLLBACK / UNKNOW | ``broker_acked`` (now visible) / ``rolled_back`` / nothing |
| ``SubBefore`` | ``received`` (retry times > 0: ``redelivered`` in attrs) |
| ``SubAfter`` success | ``business_done``, or ``offset_committed`` for a group that records its business outcome with msgtrace's own hooks (:class:`SuccessMeans`) |
| ``SubAfter`` failure | ``business_failed``; at the group's maximum retry times also ``dead_lettered`` (the broker moves it to ``%DLQ%<group>``) |
| ``Recall`` success / failure | ``rolled_back`` (withdrawn before delivery) / nothing |

Why a mapper with state: ``SubBefore`` records carry no topic, and older ``SubAfter`` layouts carry no
time and no group; both come from other records (the ``Pub`` of the same message, the ``SubBefore`` of
the same listener call), which may arrive later in a dump or may have been imported before. The mapper
keeps bounded caches, defers what it cannot resolve yet (bounded too), asks a :class:`Lookup` (the
store) once per deferred record, and resolves the rest with fallbacks at the end.
"""
from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from tracer.errors import DecodeError
from tracer.events import Event, Stage, cap_msg_id

from .rocketmq_format import (
    ConsumeReturnType,
    EndTransactionRecord,
    MessageType,
    PubRecord,
    RawRecord,
    RecallRecord,
    SubAfterRecord,
    SubBeforeRecord,
    TraceRecord,
    TransactionState,
    parse_record,
)

MQ = "rocketmq"
#: ``source`` of quarantine rows and ``emitter_id`` of imported events (seq 0: no gap accounting)
SOURCE = "rocketmq-trace"
#: uuid5 namespace of imported events: an event id is derived from its record, so re-imports collapse
NAMESPACE = uuid.UUID("6d1c0b52-5a43-4c47-9a0e-2b1f2e8f6a17")
#: RocketMQ's default maximum reconsume times (SubscriptionGroupConfig.retryMaxTimes): the delivery
#: with this many retries that fails again goes to the dead-letter queue
DEFAULT_MAX_RECONSUME_TIMES = 16
DLQ_PREFIX = "%DLQ%"
KEY_SEPARATOR = " "  # MessageConst.KEY_SEPARATOR


class MsgIdFrom(StrEnum):
    """Where the business identity (msg_id) of a RocketMQ message comes from."""

    KEY = "key"  # the message key (``keys``) when set, else the msgId
    MSG_ID = "msg_id"  # always RocketMQ's msgId (the client's unique id)


class SuccessMeans(StrEnum):
    """What a ``SubAfter`` success (the listener returned CONSUME_SUCCESS) records.

    RocketMQ's "consume success" is the ack: the broker moves the group's offset past the message.
    Where the application records its business outcome itself (``tracer.processing``, the
    ``tracer.sdk.rocketmq`` listener), that outcome is the evidence of the business work, and the
    listener's success is only ``offset_committed``: a success returned before the work was done (work
    handed to another thread, then a crash) is then ``lost_in_consumer``. Without such hooks the
    listener's success is the only outcome there is: ``business_done``.
    """

    BUSINESS_DONE = "business_done"
    OFFSET_COMMITTED = "offset_committed"


def split_keys(keys: str | None) -> list[str]:
    """The keys of a message (RocketMQ joins several with a space; ``null`` is none)."""
    if not keys:
        return []
    return [k for k in keys.split(KEY_SEPARATOR) if k and k != "null"]


def business_id(keys: str | None, msg_id: str, mode: MsgIdFrom = MsgIdFrom.KEY) -> str:
    """The msg_id msgtrace uses for a RocketMQ message: its key, or the smallest of its keys when it
    has several (the Python client keeps keys in a set, so order cannot decide), else its msgId.
    ``tracer.sdk.rocketmq`` uses the same function, so hooks and imported traces name one message alike."""
    if mode is MsgIdFrom.KEY:
        ks = split_keys(keys)
        if ks:
            return cap_msg_id(min(ks))
    return cap_msg_id(msg_id)


@dataclass(slots=True, frozen=True)
class RocketMQImportConfig:
    """How trace records become events. Defaults suit traces alone (no msgtrace hooks)."""

    msg_id_from: MsgIdFrom = MsgIdFrom.KEY
    success_means: SuccessMeans = SuccessMeans.BUSINESS_DONE
    #: groups whose business outcome msgtrace's own hooks record: their SubAfter success is the ack
    hooked_groups: frozenset[str] = frozenset()
    max_reconsume_times: int = DEFAULT_MAX_RECONSUME_TIMES
    group_max_reconsume: Mapping[str, int] = field(default_factory=dict)
    #: topic of a consumer group's records when no Pub of the message is known (SubBefore has none)
    group_topics: Mapping[str, str] = field(default_factory=dict)
    #: ``service`` of the events (default: the producer / consumer group)
    service: str | None = None
    #: bounds: records waiting for their Pub / SubBefore, and the caches that resolve them
    max_pending: int = 50_000
    cache_size: int = 200_000

    def success_stage(self, group: str) -> Stage:
        if group in self.hooked_groups or self.success_means is SuccessMeans.OFFSET_COMMITTED:
            return Stage.OFFSET_COMMITTED
        return Stage.BUSINESS_DONE

    def max_reconsume(self, group: str) -> int:
        return self.group_max_reconsume.get(group, self.max_reconsume_times)


@dataclass(slots=True, frozen=True)
class Receipt:
    """What a SubAfter takes from its SubBefore."""

    group: str
    ts_ms: int
    retry_times: int
    host: str


class Lookup(Protocol):
    """Facts of earlier imports (the store): answers for records whose partners are not in this input."""

    def topics(self, msg_ids: Sequence[str]) -> dict[str, str]:
        """business msg_id -> the topic its producer-side events name."""
        ...

    def receipts(self, msg_ids: Sequence[str]) -> dict[tuple[str, str], Receipt]:
        """(request id, RocketMQ msgId) -> the receipt (imported SubBefore) of those messages."""
        ...


class NoLookup:
    """No earlier facts (library use on one self-contained input)."""

    def topics(self, msg_ids: Sequence[str]) -> dict[str, str]:
        return {}

    def receipts(self, msg_ids: Sequence[str]) -> dict[tuple[str, str], Receipt]:
        return {}


@dataclass(slots=True)
class BadRecord:
    """A record that cannot become events: kept for quarantine with the reason."""

    raw: RawRecord
    error: str
    field: str


@dataclass(slots=True)
class Mapped:
    events: list[Event] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)
    #: valid records that record no stage (EndTransaction UNKNOW, failed Recall)
    skipped: int = 0


@dataclass(slots=True)
class _Deferred:
    raw: RawRecord
    rec: SubBeforeRecord | SubAfterRecord | RecallRecord
    mid: str  # business msg_id
    looked_up: bool = False


class _LRU(OrderedDict[Any, Any]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, k: Any, v: Any) -> None:
        self[k] = v
        self.move_to_end(k)
        if len(self) > self.size:
            self.popitem(last=False)


def _event_id(role: str, text: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{role}\x1f{text}"))


_FAIL_TEXT = {
    ConsumeReturnType.EXCEPTION: "the listener threw an exception",
    ConsumeReturnType.RETURNNULL: "the listener returned null",
    ConsumeReturnType.FAILED: "the listener returned RECONSUME_LATER",
    ConsumeReturnType.TIME_OUT: "the listener timed out",
}


class TraceMapper:
    """Turns raw trace records into events: :meth:`feed` each record, :meth:`flush` per batch,
    ``flush(final=True)`` at the end of the input."""

    def __init__(self, config: RocketMQImportConfig | None = None, lookup: Lookup | None = None) -> None:
        self.config = config or RocketMQImportConfig()
        self.lookup: Lookup = lookup or NoLookup()
        self._out = Mapped()
        self._deferred: list[_Deferred] = []
        self._topics = _LRU(self.config.cache_size)  # business msg_id -> topic
        self._mids = _LRU(self.config.cache_size)  # RocketMQ msgId -> business msg_id (for Recall)
        self._receipts = _LRU(self.config.cache_size)  # (request id, msgId) -> Receipt
        self.by_type: dict[str, int] = {}

    @property
    def pending(self) -> int:
        return len(self._deferred)

    # --- input ------------------------------------------------------------------------
    def feed(self, raw: RawRecord) -> None:
        """One record: producer-side records become events now, consumer-side ones wait for flush."""
        if raw.error is not None:
            self._out.bad.append(BadRecord(raw, raw.error, "record"))
            return
        try:
            rec = parse_record(raw.text)
        except DecodeError as e:
            self._out.bad.append(BadRecord(raw, e.reason, e.field or ""))
            return
        self.by_type[rec.type.value] = self.by_type.get(rec.type.value, 0) + 1
        if isinstance(rec, PubRecord):
            self._pub(raw, rec)
        elif isinstance(rec, EndTransactionRecord):
            self._end_transaction(raw, rec)
        elif isinstance(rec, SubBeforeRecord):
            mid = self._mid(rec.keys, rec.msg_id)
            self._receipts.put((rec.request_id, rec.msg_id), Receipt(rec.group, rec.ts_ms, rec.retry_times,
                                                                     rec.client_host or ""))
            self._deferred.append(_Deferred(raw, rec, mid))
        elif isinstance(rec, SubAfterRecord):
            self._deferred.append(_Deferred(raw, rec, self._mid(rec.keys, rec.msg_id)))
        else:
            self._deferred.append(_Deferred(raw, rec, rec.msg_id))

    def flush(self, final: bool = False) -> Mapped:
        """Resolve what can be resolved and hand out the events and bad records so far."""
        self._resolve(final)
        out, self._out = self._out, Mapped()
        return out

    # --- producer side -------------------------------------------------------------------
    def _mid(self, keys: str | None, msg_id: str) -> str:
        return business_id(keys, msg_id, self.config.msg_id_from)

    def _base(self, mid: str, text: str, role: str, stage: Stage, ts_ms: int, *, topic: str, group: str,
              host: str | None, keys: str | None, attrs: dict[str, str], consumer_group: str | None = None,
              error: str | None = None, extra_us: int = 0) -> Event:
        return Event(msg_id=mid, stage=stage.value, ts_us=ts_ms * 1000 + extra_us, event_id=_event_id(role, text),
                     service=self.config.service or group or MQ, host=host or "", mq=MQ, pid=0, topic=topic,
                     consumer_group=consumer_group, key=keys, error=error, emitter_id=SOURCE, seq=0, attrs=attrs)

    def _pub(self, raw: RawRecord, rec: PubRecord) -> None:
        ids = rec.msg_id.split(",") if "," in rec.msg_id else [rec.msg_id]
        offsets = (rec.offset_msg_id or "").split(",") if rec.offset_msg_id else []
        batch = len(ids) > 1
        for i, rmq_id in enumerate(ids):
            rmq_id = rmq_id.strip()
            if not rmq_id:
                continue
            keys = None if batch else rec.keys  # a batch's keys are not its messages'
            mid = self._mid(keys, rmq_id)
            self._topics.put(mid, rec.topic)
            self._mids.put(rmq_id, mid)
            suffix = f"#{i}" if batch else ""
            attrs = {"rocketmq.msg_id": rmq_id, "rocketmq.producer_group": rec.group,
                     "rocketmq.msg_type": rec.msg_type.name, "rocketmq.trace": "Pub", "source": SOURCE}
            offset_id = offsets[i] if i < len(offsets) else (None if batch else rec.offset_msg_id)
            for name, v in (("rocketmq.store_host", rec.store_host), ("rocketmq.offset_msg_id", offset_id),
                            ("rocketmq.tags", rec.tags), ("rocketmq.region", rec.region)):
                if v:
                    attrs[name] = v
            if len(split_keys(keys)) > 1:
                attrs["rocketmq.keys"] = keys or ""
            attrs["rocketmq.cost_ms"] = str(rec.cost_ms)
            half = rec.msg_type is MessageType.Trans_Msg_Half
            if half:
                attrs["rocketmq.transaction_id"] = rmq_id  # the client sets it to the message's unique id
                attrs["rocketmq.half"] = "true"
            common: dict[str, Any] = {"topic": rec.topic, "group": rec.group, "host": rec.client_host,
                                      "keys": keys}
            ev = self._out.events
            ev.append(self._base(mid, raw.text, "sent" + suffix, Stage.SENT, rec.ts_ms, attrs=attrs, **common))
            done_us = max(rec.cost_ms, 0) * 1000
            if not rec.success:
                where = (f"; the broker {rec.store_host or '?'} stored it (offsetMsgId {offset_id}) but did not flush "
                         "or replicate it in time") if offset_id else ""
                err = ("send status was not SEND_OK (FLUSH_DISK_TIMEOUT, FLUSH_SLAVE_TIMEOUT or SLAVE_NOT_AVAILABLE)"
                       f"{where}")
                ev.append(self._base(mid, raw.text, "fail" + suffix, Stage.SEND_FAILED, rec.ts_ms, attrs=attrs,
                                     error=err, extra_us=done_us, **common))
            elif not half:
                ev.append(self._base(mid, raw.text, "ack" + suffix, Stage.BROKER_ACKED, rec.ts_ms, attrs=attrs,
                                     extra_us=done_us, **common))

    def _end_transaction(self, raw: RawRecord, rec: EndTransactionRecord) -> None:
        if rec.state is TransactionState.UNKNOW:  # still in doubt: the broker will check back
            self._out.skipped += 1
            return
        mid = self._mid(rec.keys, rec.msg_id)
        self._topics.put(mid, rec.topic)
        self._mids.put(rec.msg_id, mid)
        attrs = {"rocketmq.msg_id": rec.msg_id, "rocketmq.producer_group": rec.group,
                 "rocketmq.transaction_id": rec.transaction_id or rec.msg_id,
                 "rocketmq.transaction_state": rec.state.value,
                 "rocketmq.from_transaction_check": "true" if rec.from_check else "false",
                 "rocketmq.trace": "EndTransaction", "source": SOURCE}
        for name, v in (("rocketmq.store_host", rec.store_host), ("rocketmq.tags", rec.tags),
                        ("rocketmq.region", rec.region)):
            if v:
                attrs[name] = v
        if len(split_keys(rec.keys)) > 1:
            attrs["rocketmq.keys"] = rec.keys or ""
        commit = rec.state is TransactionState.COMMIT_MESSAGE
        stage = Stage.BROKER_ACKED if commit else Stage.ROLLED_BACK
        error = None if commit else ("the producer rolled back the half message"
                                     + (" answering the broker's check-back" if rec.from_check else ""))
        self._out.events.append(self._base(mid, raw.text, "end", stage, rec.ts_ms, topic=rec.topic, group=rec.group,
                                           host=rec.client_host, keys=rec.keys, attrs=attrs, error=error))

    # --- consumer side -------------------------------------------------------------------
    def _resolve(self, final: bool) -> None:
        if not self._deferred:
            return
        # whatever exceeds the bound is resolved now, with the fallbacks, oldest first
        force = len(self._deferred) - self.config.max_pending if not final else len(self._deferred)
        need_lookup = [d for d in self._deferred if not d.looked_up and not self._known(d)]
        if need_lookup:
            mids = sorted({d.mid for d in need_lookup})
            topics = self.lookup.topics(mids)
            for m, t in topics.items():
                self._topics.put(m, t)
            if any(isinstance(d.rec, SubAfterRecord) for d in need_lookup):
                for k, r in self.lookup.receipts(sorted({d.mid for d in need_lookup
                                                         if isinstance(d.rec, SubAfterRecord)})).items():
                    self._receipts.put(k, r)
            for d in need_lookup:
                d.looked_up = True
        keep: list[_Deferred] = []
        for i, d in enumerate(self._deferred):
            if not self._emit(d, forced=i < force):
                keep.append(d)
        self._deferred = keep

    def _known(self, d: _Deferred) -> bool:
        rec = d.rec
        if isinstance(rec, RecallRecord):
            return True  # resolved from this input only
        if isinstance(rec, SubAfterRecord) and (rec.request_id, rec.msg_id) not in self._receipts:
            return False
        return d.mid in self._topics

    def _topic(self, d: _Deferred, group: str | None, forced: bool) -> str | None:
        t = self._topics.get(d.mid)
        if t is not None:
            return str(t)
        if group is not None and group in self.config.group_topics:
            return self.config.group_topics[group]
        return "" if forced else None

    def _emit(self, d: _Deferred, forced: bool) -> bool:
        """Events of one deferred record; False when it must wait (not forced and not resolvable)."""
        rec = d.rec
        if isinstance(rec, RecallRecord):
            return self._recall(d, rec, forced)
        if isinstance(rec, SubBeforeRecord):
            topic = self._topic(d, rec.group, forced)
            if topic is None:
                return False
            attrs = {"rocketmq.msg_id": rec.msg_id, "rocketmq.request_id": rec.request_id,
                     "rocketmq.retry_times": str(rec.retry_times), "rocketmq.trace": "SubBefore", "source": SOURCE}
            if rec.retry_times > 0:
                attrs["redelivered"] = "true"
            if rec.region:
                attrs["rocketmq.region"] = rec.region
            if len(split_keys(rec.keys)) > 1:
                attrs["rocketmq.keys"] = rec.keys or ""
            self._out.events.append(self._base(d.mid, d.raw.text, "recv", Stage.RECEIVED, rec.ts_ms, topic=topic,
                                               group=rec.group, host=rec.client_host, keys=rec.keys, attrs=attrs,
                                               consumer_group=rec.group))
            return True
        return self._sub_after(d, rec, forced)

    def _sub_after(self, d: _Deferred, rec: SubAfterRecord, forced: bool) -> bool:
        receipt: Receipt | None = self._receipts.get((rec.request_id, rec.msg_id))
        if receipt is None and not forced:
            return False
        group = receipt.group if receipt is not None else rec.group
        if rec.ts_ms is not None:
            ts_ms = rec.ts_ms
        elif receipt is not None:
            ts_ms = receipt.ts_ms + max(rec.cost_ms, 0)
        else:
            ts_ms = 0
        if not group or not ts_ms:
            self._out.bad.append(BadRecord(d.raw, f"SubAfter without its SubBefore (request id {rec.request_id}): "
                                                  "no consumer group or time to record it with", "requestId"))
            return True
        topic = self._topic(d, group, forced)
        if topic is None:
            return False
        attrs = {"rocketmq.msg_id": rec.msg_id, "rocketmq.request_id": rec.request_id,
                 "rocketmq.cost_ms": str(rec.cost_ms), "rocketmq.trace": "SubAfter", "source": SOURCE}
        if rec.context_code is not None:
            attrs["rocketmq.consume_return"] = rec.context_code.name
        if receipt is not None:
            attrs["rocketmq.retry_times"] = str(receipt.retry_times)
        host = receipt.host if receipt is not None else None
        common: dict[str, Any] = {"topic": topic, "group": group, "host": host, "keys": rec.keys,
                                  "consumer_group": group}
        ev = self._out.events
        if rec.success:
            stage = self.config.success_stage(group)
            attrs["rocketmq.consume_success_means"] = stage.value
            ev.append(self._base(d.mid, d.raw.text, "outcome", stage, ts_ms, attrs=attrs, **common))
            return True
        code = rec.context_code if rec.context_code not in (None, ConsumeReturnType.SUCCESS) else None
        error = "consume failed: " + (_FAIL_TEXT.get(code, code.name) if code is not None else "the listener failed")
        ev.append(self._base(d.mid, d.raw.text, "outcome", Stage.BUSINESS_FAILED, ts_ms, attrs=attrs, error=error,
                             **common))
        limit = self.config.max_reconsume(group)
        if receipt is not None and receipt.retry_times >= limit:
            dlq = DLQ_PREFIX + group
            dl_attrs = dict(attrs, **{"dlq_topic": dlq, "rocketmq.dlq_inferred": "true",
                                      "rocketmq.max_reconsume_times": str(limit)})
            ev.append(self._base(d.mid, d.raw.text, "dlq", Stage.DEAD_LETTERED, ts_ms, attrs=dl_attrs, extra_us=1,
                                 error=f"failed at retry {receipt.retry_times} of at most {limit}: the broker moves "
                                       f"it to {dlq}", **common))
        return True

    def _recall(self, d: _Deferred, rec: RecallRecord, forced: bool) -> bool:
        mid = self._mids.get(rec.msg_id)
        if mid is None and not forced:
            return False
        if not rec.success:  # the scheduled message stays and will be delivered
            self._out.skipped += 1
            return True
        mid = str(mid) if mid is not None else self._mid(None, rec.msg_id)
        attrs = {"rocketmq.msg_id": rec.msg_id, "rocketmq.producer_group": rec.group, "rocketmq.trace": "Recall",
                 "rocketmq.recalled": "true", "source": SOURCE}
        self._out.events.append(self._base(mid, d.raw.text, "recall", Stage.ROLLED_BACK, rec.ts_ms, topic=rec.topic,
                                           group=rec.group, host=None, keys=None, attrs=attrs,
                                           error="the producer recalled the scheduled message before its delivery"))
        return True


def map_records(texts: Sequence[str] | Sequence[TraceRecord], config: RocketMQImportConfig | None = None) -> Mapped:
    """Events of a self-contained list of records (texts without ``\\x02``, or parsed records)."""
    from .rocketmq_format import encode_record

    m = TraceMapper(config)
    for i, t in enumerate(texts, start=1):
        text = t if isinstance(t, str) else encode_record(t).rstrip("\x02")
        m.feed(RawRecord(i, 0, text, text.encode("utf-8")))
    return m.flush(final=True)
