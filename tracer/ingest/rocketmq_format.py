"""RocketMQ's message-trace records: the text format, parsed into typed records (and written back).

RocketMQ clients with message tracing on (``enableMsgTrace``) send one text per traced step to the
trace topic (``RMQ_SYS_TRACE_TOPIC`` or a custom one). The format is that of the Java client's
``TraceDataEncoder`` (apache/rocketmq, ``client/.../trace/``), built here from its documented field
order, not from its code:

* a record is its fields joined by ``\\x01`` (``TraceConstants.CONTENT_SPLITOR``) and ended by
  ``\\x02`` (``TraceConstants.FIELD_SPLITOR``); one trace-topic message body holds several records,
  encoded as UTF-8, up to ~128 KB;
* the first field names the type (``TraceType``): ``Pub``, ``SubBefore``, ``SubAfter``,
  ``EndTransaction``, ``Recall``;
* each type has had several field counts over the client's history (:data:`LAYOUTS`);
* Java writes a null string as ``null`` (a message without keys has keys ``null``), and Java's
  ``String.split`` drops trailing empty fields (a ``SubBefore`` whose keys are empty has 7 fields).

:func:`parse_record` checks a record strictly and raises :class:`tracer.errors.DecodeError` naming
the field and the reason; :func:`iter_raw_records` cuts a byte stream into records with bounded
memory; :func:`encode_record` writes records (tests and the sample story build their data with it).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import BinaryIO

from tracer.errors import DecodeError

FIELD_SEP = "\x01"  # TraceConstants.CONTENT_SPLITOR: between the fields of a record
RECORD_END = "\x02"  # TraceConstants.FIELD_SPLITOR: after each record
_RECORD_END_B = b"\x02"
#: A record longer than this is refused (a trace-topic message body is at most ~128 KB).
MAX_RECORD_BYTES = 256 * 1024
_JAVA_NULL = "null"
_INT32 = (-(2**31), 2**31 - 1)
#: ts_us = ts_ms * 1000 must fit the store's UInt64 (and be after 1970)
_TS_MS = (1, (2**64 - 1) // 1000)


class TraceType(StrEnum):
    """``TraceType``: the first field of every record."""

    PUB = "Pub"
    RECALL = "Recall"
    SUB_BEFORE = "SubBefore"
    SUB_AFTER = "SubAfter"
    END_TRANSACTION = "EndTransaction"


class MessageType(IntEnum):
    """``MessageType``, written as its ordinal."""

    Normal_Msg = 0
    Trans_Msg_Half = 1
    Trans_msg_Commit = 2
    Delay_Msg = 3
    Order_Msg = 4


class TransactionState(StrEnum):
    """``LocalTransactionState``, written by name (``UNKNOW`` is RocketMQ's spelling)."""

    COMMIT_MESSAGE = "COMMIT_MESSAGE"
    ROLLBACK_MESSAGE = "ROLLBACK_MESSAGE"
    UNKNOW = "UNKNOW"


class ConsumeReturnType(IntEnum):
    """``ConsumeReturnType``: how the listener ended (SubAfter's context code, an ordinal)."""

    SUCCESS = 0
    TIME_OUT = 1
    EXCEPTION = 2
    RETURNNULL = 3
    FAILED = 4


#: Field counts each type has been written with (oldest first), as read after Java's split.
LAYOUTS: dict[TraceType, tuple[int, ...]] = {
    # 13: before offsetMsgId; 14: current; 15: with clientHost (4.8-era clients)
    TraceType.PUB: (13, 14, 15),
    # 8: current; 9: with clientHost (4.8-era); 7: current with empty keys (trailing field dropped)
    TraceType.SUB_BEFORE: (7, 8, 9),
    # 6: oldest (5 with empty keys); 7: + context code (also the CLOUD channel's); 9: + timestamp and
    # group; 8: 9 with an empty group
    TraceType.SUB_AFTER: (5, 6, 7, 8, 9),
    # 13: current; 14: with clientHost after the message type (a 2021 development version)
    TraceType.END_TRANSACTION: (13, 14),
    TraceType.RECALL: (7,),
}


@dataclass(slots=True, frozen=True)
class PubRecord:
    """A send (``SendMessageTraceHookImpl``): written once the client has a send result."""

    ts_ms: int  # when the send started
    region: str | None
    group: str  # producer group
    topic: str
    msg_id: str  # the client's unique id; a batch send lists its messages' ids joined by ","
    tags: str | None
    keys: str | None
    store_host: str | None  # broker address
    body_length: int
    cost_ms: int
    msg_type: MessageType
    offset_msg_id: str | None  # store host + commit-log offset (None in the 13-field layout)
    success: bool  # SendStatus.SEND_OK; false for FLUSH_DISK_TIMEOUT, FLUSH_SLAVE_TIMEOUT, SLAVE_NOT_AVAILABLE
    client_host: str | None
    n_fields: int

    type = TraceType.PUB


@dataclass(slots=True, frozen=True)
class SubBeforeRecord:
    """A delivery handed to the listener (``consumeMessageBefore``), one per message of the batch."""

    ts_ms: int
    region: str | None
    group: str  # consumer group
    request_id: str  # shared with the SubAfter of the same listener call
    msg_id: str
    retry_times: int  # reconsumeTimes: 0 on the first delivery
    keys: str | None
    client_host: str | None
    n_fields: int

    type = TraceType.SUB_BEFORE


@dataclass(slots=True, frozen=True)
class SubAfterRecord:
    """The listener's result (``consumeMessageAfter``). Older layouts carry no time and no group:
    they come from the SubBefore with the same request id."""

    request_id: str
    msg_id: str
    cost_ms: int
    success: bool  # the listener returned CONSUME_SUCCESS
    keys: str | None
    context_code: ConsumeReturnType | None
    ts_ms: int | None
    group: str | None
    n_fields: int

    type = TraceType.SUB_AFTER


@dataclass(slots=True, frozen=True)
class EndTransactionRecord:
    """The producer's end of a transaction (``EndTransactionTraceHookImpl``): its own decision right
    after the local transaction, or its answer to the broker's check-back (``from_check``)."""

    ts_ms: int
    region: str | None
    group: str  # producer group
    topic: str
    msg_id: str  # the half message's id (as in its Pub)
    tags: str | None
    keys: str | None
    store_host: str | None
    msg_type: MessageType
    transaction_id: str | None
    state: TransactionState
    from_check: bool
    client_host: str | None
    n_fields: int

    type = TraceType.END_TRANSACTION


@dataclass(slots=True, frozen=True)
class RecallRecord:
    """A recall of a scheduled (delay) message before its delivery time."""

    ts_ms: int
    region: str | None
    group: str
    topic: str
    msg_id: str
    success: bool
    n_fields: int

    type = TraceType.RECALL


TraceRecord = PubRecord | SubBeforeRecord | SubAfterRecord | EndTransactionRecord | RecallRecord


# --- parsing -----------------------------------------------------------------------

class _Fields:
    """The fields of one record with typed, named getters that raise DecodeError."""

    __slots__ = ("f", "kind")

    def __init__(self, fields: list[str], kind: str) -> None:
        self.f = fields
        self.kind = kind

    def _bad(self, i: int, name: str, why: str) -> DecodeError:
        v = self.f[i]
        shown = v if len(v) <= 40 else v[:40] + "..."
        return DecodeError(f"{self.kind} field {i + 1} ({name}) {why}: {shown!r}", field=name)

    def text(self, i: int) -> str:
        return self.f[i]

    def opt(self, i: int) -> str | None:
        """A text field Java may have written as ``null``; empty and ``null`` are None."""
        if i >= len(self.f):
            return None
        v = self.f[i]
        return None if v == "" or v == _JAVA_NULL else v

    def required(self, i: int, name: str) -> str:
        v = self.f[i]
        if v == "" or v == _JAVA_NULL:
            raise self._bad(i, name, "is empty")
        return v

    def int_(self, i: int, name: str, lo: int, hi: int) -> int:
        v = self.f[i]
        # Java's Integer/Long.parseLong: an optional sign and ASCII digits, nothing else
        body = v[1:] if v[:1] in ("-", "+") else v
        if not body.isascii() or not body.isdigit():
            raise self._bad(i, name, "is not a number")
        n = int(v)
        if not lo <= n <= hi:
            raise self._bad(i, name, f"is out of range [{lo}, {hi}]")
        return n

    def ts(self, i: int) -> int:
        return self.int_(i, "timestamp", *_TS_MS)

    def bool_(self, i: int, name: str) -> bool:
        v = self.f[i].lower()
        if v == "true":
            return True
        if v == "false":
            return False
        # Java's Boolean.parseBoolean reads anything else as false; a corrupt flag must not
        # silently become a failed send or a failed consume
        raise self._bad(i, name, "is not true or false")

    def msg_type(self, i: int) -> MessageType:
        n = self.int_(i, "msgType", 0, 2**31 - 1)
        try:
            return MessageType(n)
        except ValueError:
            raise self._bad(i, "msgType", f"is not a message type ordinal (0-{len(MessageType) - 1})") from None


def _split(text: str) -> list[str]:
    """Fields as Java's ``String.split`` gives them: trailing empty fields dropped."""
    fields = text.split(FIELD_SEP)
    while len(fields) > 1 and fields[-1] == "":
        fields.pop()
    return fields


def parse_record(text: str) -> TraceRecord:
    """One record (without its ``\\x02``) as a typed record; DecodeError names what is wrong."""
    if not text:
        raise DecodeError("empty record")
    fields = _split(text)
    kind = fields[0]
    try:
        tt = TraceType(kind)
    except ValueError:
        shown = kind if len(kind) <= 40 else kind[:40] + "..."
        raise DecodeError(f"unknown trace type {shown!r} (expected one of {', '.join(t.value for t in TraceType)})",
                          field="type") from None
    n = len(fields)
    if n not in LAYOUTS[tt]:
        counts = LAYOUTS[tt]
        allowed = ", ".join(map(str, counts[:-1])) + f" or {counts[-1]}" if len(counts) > 1 else str(counts[0])
        raise DecodeError(f"{kind} record has {n} fields; RocketMQ writes {allowed}", field="fields")
    f = _Fields(fields, kind)
    return _PARSERS[tt](f, n)


def _pub(f: _Fields, n: int) -> PubRecord:
    offset_msg_id = f.opt(12) if n >= 14 else None
    success = f.bool_(13 if n >= 14 else 12, "success")
    return PubRecord(ts_ms=f.ts(1), region=f.opt(2), group=f.text(3), topic=f.required(4, "topic"),
                     msg_id=f.required(5, "msgId"), tags=f.opt(6), keys=f.opt(7), store_host=f.opt(8),
                     body_length=f.int_(9, "bodyLength", *_INT32), cost_ms=f.int_(10, "costTime", *_INT32),
                     msg_type=f.msg_type(11), offset_msg_id=offset_msg_id, success=success,
                     client_host=f.opt(14) if n >= 15 else None, n_fields=n)


def _sub_before(f: _Fields, n: int) -> SubBeforeRecord:
    return SubBeforeRecord(ts_ms=f.ts(1), region=f.opt(2), group=f.required(3, "group"),
                           request_id=f.required(4, "requestId"), msg_id=f.required(5, "msgId"),
                           retry_times=f.int_(6, "retryTimes", 0, 2**31 - 1), keys=f.opt(7),
                           client_host=f.opt(8), n_fields=n)


def _sub_after(f: _Fields, n: int) -> SubAfterRecord:
    code: ConsumeReturnType | None = None
    if n >= 7:
        c = f.int_(6, "contextCode", 0, 2**31 - 1)
        try:
            code = ConsumeReturnType(c)
        except ValueError:
            raise f._bad(6, "contextCode", f"is not a ConsumeReturnType ordinal (0-{len(ConsumeReturnType) - 1})") \
                from None
    ts_ms = f.ts(7) if n >= 8 else None
    group = f.opt(8) if n >= 9 else None
    return SubAfterRecord(request_id=f.required(1, "requestId"), msg_id=f.required(2, "msgId"),
                          cost_ms=f.int_(3, "costTime", *_INT32), success=f.bool_(4, "success"),
                          keys=f.opt(5), context_code=code, ts_ms=ts_ms, group=group, n_fields=n)


def _end_transaction(f: _Fields, n: int) -> EndTransactionRecord:
    i = 11 if n == 14 else 10  # the 14-field layout has clientHost at 10
    state_text = f.text(i + 1)
    try:
        state = TransactionState(state_text)
    except ValueError:
        raise f._bad(i + 1, "transactionState", "is not COMMIT_MESSAGE, ROLLBACK_MESSAGE or UNKNOW") from None
    return EndTransactionRecord(ts_ms=f.ts(1), region=f.opt(2), group=f.text(3), topic=f.required(4, "topic"),
                                msg_id=f.required(5, "msgId"), tags=f.opt(6), keys=f.opt(7), store_host=f.opt(8),
                                msg_type=f.msg_type(9), transaction_id=f.opt(i), state=state,
                                from_check=f.bool_(i + 2, "fromTransactionCheck"),
                                client_host=f.opt(10) if n == 14 else None, n_fields=n)


def _recall(f: _Fields, n: int) -> RecallRecord:
    return RecallRecord(ts_ms=f.ts(1), region=f.opt(2), group=f.text(3), topic=f.required(4, "topic"),
                        msg_id=f.required(5, "msgId"), success=f.bool_(6, "success"), n_fields=n)


_PARSERS: dict[TraceType, Callable[[_Fields, int], TraceRecord]] = {
    TraceType.PUB: _pub, TraceType.SUB_BEFORE: _sub_before, TraceType.SUB_AFTER: _sub_after,
    TraceType.END_TRANSACTION: _end_transaction, TraceType.RECALL: _recall,
}


# --- cutting a stream into records ---------------------------------------------------------

@dataclass(slots=True)
class RawRecord:
    """One record as read: its text (``error`` set and ``text`` empty when it cannot be decoded),
    its 1-based number in the input and the byte offset where it starts."""

    number: int
    offset: int
    text: str
    raw: bytes
    error: str | None = None


def iter_raw_records(stream: BinaryIO, *, chunk_bytes: int = 64 * 1024, max_record_bytes: int = MAX_RECORD_BYTES,
                     on_idle: Callable[[], None] | None = None,
                     wait_s: float | None = None) -> Iterator[RawRecord]:
    """Records of a byte stream (a file, or a dump of the trace topic piped in), in order.

    Bodies may follow each other directly or with line breaks between them: ``\\r`` and ``\\n`` around
    a record are dropped. Memory stays bounded: a record longer than ``max_record_bytes`` is reported
    (``error``) and skipped up to its end. With ``wait_s`` and a pipe, ``on_idle`` is called whenever
    no byte arrived for that long (the importer writes its partial batch then).
    """
    read: Callable[[int], bytes | None] = getattr(stream, "read1", None) or stream.read
    if on_idle is not None and wait_s:
        read = _pipe_reader(stream, wait_s) or read
    tail = b""
    tail_start = 0  # byte offset of tail in the input
    number = 0
    skipping = False  # inside an oversized record: drop bytes up to its end
    while True:
        chunk = read(chunk_bytes)
        if chunk is None:  # no input for wait_s
            if on_idle is not None:
                on_idle()
            continue
        if not chunk:
            break
        data = tail + chunk
        start = 0
        while True:
            end = data.find(_RECORD_END_B, start)
            if end < 0:
                break
            if skipping:
                skipping = False
            else:
                number += 1
                rec = _raw(number, tail_start + start, data[start:end], max_record_bytes)
                if rec is not None:
                    yield rec
                else:
                    number -= 1
            start = end + 1
        tail_start += start
        tail = data[start:]
        if len(tail) > max_record_bytes:
            if not skipping:
                number += 1
                yield RawRecord(number, tail_start, "", tail[:1024],
                                f"record of more than {max_record_bytes} bytes without a record end (\\x02)")
                skipping = True
            tail_start += len(tail)
            tail = b""
    if tail and not skipping:
        number += 1
        rec = _raw(number, tail_start, tail, max_record_bytes)
        if rec is not None:
            yield rec


def _raw(number: int, offset: int, data: bytes, max_record_bytes: int) -> RawRecord | None:
    body = data.strip(b"\r\n")
    if not body:
        return None
    offset += len(data) - len(data.lstrip(b"\r\n"))
    if len(body) > max_record_bytes:
        return RawRecord(number, offset, "", body[:1024], f"record of {len(body)} bytes exceeds {max_record_bytes}")
    try:
        return RawRecord(number, offset, body.decode("utf-8"), body)
    except UnicodeDecodeError as e:
        return RawRecord(number, offset, "", body, f"record is not UTF-8 (byte {e.start})")


def _pipe_reader(stream: BinaryIO, wait_s: float) -> Callable[[int], bytes | None] | None:
    """For a pipe, socket or terminal: a read that gives up after ``wait_s`` without input (None).

    Reads the descriptor directly (``os.read`` after ``select``): a buffered reader could hold
    bytes that ``select`` does not see. Only used before anything was read through ``stream``.
    """
    import os
    import select
    import stat

    try:
        fd = stream.fileno()
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return None
    except (AttributeError, OSError, ValueError):
        return None

    def read(n: int) -> bytes | None:
        r, _, _ = select.select([fd], [], [], wait_s)
        if not r:
            return None
        return os.read(fd, n)

    return read


# --- writing records (tests, the sample story) ---------------------------------------------

def _j(v: object) -> str:
    """A field as Java writes it: None -> ``null``, booleans in lower case."""
    if v is None:
        return _JAVA_NULL
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, IntEnum):
        return str(int(v))
    return str(v)


def encode_record(rec: TraceRecord, n_fields: int | None = None) -> str:
    """``rec`` in the trace format, ``\\x02`` included, in the layout of ``n_fields`` fields (default
    the record's own), as RocketMQ's clients write it (a trailing empty field is dropped on read)."""
    n = n_fields or rec.n_fields
    if n not in LAYOUTS[rec.type]:
        raise ValueError(f"{rec.type.value} has no {n}-field layout")
    f: list[object]
    if isinstance(rec, PubRecord):
        f = [rec.type.value, rec.ts_ms, rec.region, rec.group, rec.topic, rec.msg_id, rec.tags, rec.keys,
             rec.store_host, rec.body_length, rec.cost_ms, rec.msg_type]
        f += [rec.success] if n == 13 else [rec.offset_msg_id, rec.success]
        if n == 15:
            f.append(rec.client_host)
    elif isinstance(rec, SubBeforeRecord):
        f = [rec.type.value, rec.ts_ms, rec.region, rec.group, rec.request_id, rec.msg_id, rec.retry_times,
             rec.keys if n > 7 else ""]
        if n == 9:
            f.append(rec.client_host)
    elif isinstance(rec, SubAfterRecord):
        f = [rec.type.value, rec.request_id, rec.msg_id, rec.cost_ms, rec.success, rec.keys if n > 5 else ""]
        if n >= 7:
            f.append(rec.context_code if rec.context_code is not None else ConsumeReturnType.SUCCESS)
        if n >= 8:
            f += [rec.ts_ms, rec.group if n == 9 else ""]
    elif isinstance(rec, EndTransactionRecord):
        f = [rec.type.value, rec.ts_ms, rec.region, rec.group, rec.topic, rec.msg_id, rec.tags, rec.keys,
             rec.store_host, rec.msg_type]
        if n == 14:
            f.append(rec.client_host)
        f += [rec.transaction_id, rec.state.value, rec.from_check]
    else:
        f = [rec.type.value, rec.ts_ms, rec.region, rec.group, rec.topic, rec.msg_id, rec.success]
    return FIELD_SEP.join(_j(v) for v in f) + RECORD_END
