"""The spool's record format: what the hot path writes, and how it becomes audit wire lines.

Recording an event on the business thread must cost about a microsecond, so it does not build the
JSON wire line (DESIGN.md, Wire format). It appends one **frame** to the spool::

    <u32 payload length, little-endian> <u64 first seq> <payload: marshal of a tuple>

    EVENT   (1, ts_us, stage, msg_id, topic, partition, offset, group, key, error, trace_id, span_id,
             attrs, mq)                                                   one event, seq = first seq
    BATCH   (2, ts_us, stage, topic, partition, group, mq, offset, offsets, entries)
                                                   one event per Delivery entry, seq = first seq + i
    ROWS    (3, ts_us, stage, topic, partition, group, mq, rows)    one event per row
             row = (msg_id, offset, key, error, trace_id, span_id, attrs)  (a produce batch's acks)
    ACKS    (4, stage, mq, rows)                                    one event per row, each its own time
             row = (msg_id, topic, partition, offset, key, trace_id, span_id, time_ns)
                                                   (delivery reports gathered during one client call)

``marshal`` serializes the tuples the hooks already hold (ints, str, bytes keys, the client's
header pairs) in C, and leaves every per-message decision (msg_id and trace ids from the headers,
key text, caps) to :class:`Expander`, which runs where the events are shipped: on the shipper
thread, in the shipper process, in ``msgtrace ship``. The expansion is deterministic (event_id =
the emitter's prefix + seq), so a chunk shipped twice de-duplicates.

The length is written last: a frame whose length is set is complete, so a SIGKILL can only leave a
frame without length (read as the end of the data, counted as torn in a dead spool). marshal is
Python's own format, stable across versions for these types; the spool is local data written by this
process, never input from elsewhere, and a frame that does not decode is skipped and counted.
"""
from __future__ import annotations

import marshal
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tracer.identity import (
    MAX_KEY_CHARS,
    MAX_MSG_ID_CHARS,
    MSG_ID_HEADER,
    REPLAY_HEADER,
    TRACEPARENT,
    cap_msg_id,
    format_traceparent,
    get_header,
    incoming_ids,
    key_text,
    parse_traceparent,
    position_id,
    text,
)

EVENT, BATCH, ROWS, ACKS = 1, 2, 3, 4
HEADER = struct.Struct("<IQ")  # payload length, first seq
HEADER_SIZE = HEADER.size
MARSHAL_VERSION = 4
_dumps = orjson.dumps
_loads = marshal.loads
_unpack = HEADER.unpack_from
_NO_ATTRS: dict[str, str] = {}
_OFFSET_COMMITTED = "offset_committed"
_MAX_HEADS = 4096
#: the attribute a consumed record of a ``msgtrace replay`` run gets (its ``msgtrace-replay`` header's
#: value; tracer.replay.plan.REPLAY_ATTR, tracer.analysis.rules.REPLAY_ATTR)
REPLAY_ATTR = "replay_run"
_REPLAY_HEADER_B = REPLAY_HEADER.encode()


def encode(record: tuple[Any, ...]) -> bytes:
    """The payload of one frame (raises ValueError for objects marshal cannot carry)."""
    return marshal.dumps(record, MARSHAL_VERSION)


@dataclass(slots=True, frozen=True)
class SpoolMeta:
    """What every line of one emitter carries (kept in the spool's ``owner.json``)."""

    emitter_id: str
    eid_prefix: str
    service: str
    host: str
    pid: int
    mq: str = "kafka"

    def to_json(self) -> dict[str, Any]:
        return {"emitter_id": self.emitter_id, "eid_prefix": self.eid_prefix, "service": self.service,
                "host": self.host, "pid": self.pid, "mq": self.mq}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SpoolMeta:
        return cls(str(d["emitter_id"]), str(d["eid_prefix"]), str(d.get("service", "")), str(d.get("host", "")),
                   int(d.get("pid", 0)), str(d.get("mq") or "kafka"))


@dataclass(slots=True)
class Expanded:
    """Wire lines of a chunk of frames."""

    data: bytes          # NDJSON lines, each ending with b"\n"
    events: int
    bad_frames: int = 0  # frames that did not decode (skipped)
    last_error: str | None = None
    last_seq: int = 0    # seq of the last event expanded (0: none)


def split_frames(data: bytes | memoryview, start: int = 0) -> tuple[list[tuple[int, int, int]], int]:
    """Complete frames in ``data`` from ``start``: ([(seq, payload start, payload end)], end offset).

    Stops at a zero length (no frame yet: the end of the data) or at a frame not wholly in ``data``.
    """
    out = []
    pos, n = start, len(data)
    while pos + HEADER_SIZE <= n:
        length, seq = _unpack(data, pos)
        if length == 0:
            break
        end = pos + HEADER_SIZE + length
        if end > n:
            break
        out.append((seq, pos + HEADER_SIZE, end))
        pos = end
    return out, pos


class Expander:
    """Frames of one emitter -> audit wire lines (NDJSON with exactly the contract's keys)."""

    __slots__ = ("meta", "_tail", "_eid", "_heads")

    def __init__(self, meta: SpoolMeta) -> None:
        self.meta = meta
        self._tail = _dumps({"service": meta.service, "host": meta.host, "pid": meta.pid,
                             "emitter_id": meta.emitter_id}).replace(b"{", b",", 1)[:-1]
        self._eid = b',"event_id":"' + meta.eid_prefix.encode()
        self._heads: dict[tuple[Any, ...], bytes] = {}

    @property
    def heads(self) -> int:
        return len(self._heads)

    def _head(self, stage: str, topic: str, group: str | None, mq: str | None, partition: Any) -> bytes:
        """The constant start of a line for (stage, topic, group, mq, partition), up to the event_id's seq."""
        key = (stage, topic, group, mq, partition)
        head = self._heads.get(key)
        if head is None:
            head = (_dumps({"stage": stage, "mq": mq or self.meta.mq, "topic": topic, "consumer_group": group,
                            "partition": partition})[:-1] + self._tail + self._eid)
            if len(self._heads) >= _MAX_HEADS:  # bounded: many ad-hoc topics just rebuild heads
                self._heads.clear()
            self._heads[key] = head
        return head

    def expand(self, data: bytes, frames: Sequence[tuple[int, int, int]]) -> Expanded:
        out: list[bytes] = []
        bad = 0
        err = None
        events = 0
        last = 0
        for seq, start, end in frames:
            try:
                rec = _loads(data[start:end])
                kind = rec[0]
                if kind == EVENT:
                    out.append(self._event(seq, rec))
                    n = 1
                elif kind == BATCH:
                    n = self._batch(seq, rec, out)
                elif kind == ROWS:
                    n = self._rows(seq, rec, out)
                elif kind == ACKS:
                    n = self._acks(seq, rec, out)
                else:
                    raise ValueError(f"unknown frame kind {kind!r}")
                events += n
                if n:
                    last = seq + n - 1
            except Exception as e:  # a frame this version cannot read: skipped, counted, its seqs a gap
                bad += 1
                err = f"spool frame at seq {seq} skipped: {type(e).__name__}: {e}"
        return Expanded(b"".join(out), events, bad, err, last)

    def _event(self, seq: int, rec: tuple[Any, ...]) -> bytes:
        (_, ts_us, stage, msg_id, topic, partition, offset, group, key, error, trace_id, span_id, attrs, mq) = rec
        if len(msg_id) > MAX_MSG_ID_CHARS:
            msg_id = cap_msg_id(msg_id)
        dumps = _dumps
        # one %-format over the constant text (what orjson would write for the dict, byte for byte)
        return self._head(stage, topic or "", group, mq, partition) + _EVENT_LINE % (
            seq, seq, ts_us if ts_us.__class__ is int else int(ts_us), dumps(msg_id),
            b"null" if offset is None else (b"%d" % offset if offset.__class__ is int else dumps(offset)),
            b"null" if key is None else dumps(key_text(key)), b"null" if error is None else dumps(error),
            b"null" if trace_id is None else dumps(trace_id), b"null" if span_id is None else dumps(span_id),
            dumps(attrs) if attrs else b"{}")

    def _batch(self, seq: int, rec: tuple[Any, ...], out: list[bytes]) -> int:
        (_, ts_us, stage, topic, partition, group, mq, offset, offsets, entries) = rec
        head = self._head(stage, topic, group, mq, partition)
        committed = stage == _OFFSET_COMMITTED
        dumps = _dumps
        append = out.append
        for i, (pos, key, headers, msg_id, attrs) in enumerate(entries):
            h_id = tp = rp = None
            if headers:
                if headers.__class__ is list:  # the Kafka clients' pairs: one pass, no per-header call
                    for hk, hv in headers:
                        if hk == MSG_ID_HEADER:
                            h_id = hv
                        elif hk == TRACEPARENT:
                            tp = hv
                        elif hk == REPLAY_HEADER or hk == _REPLAY_HEADER_B:
                            rp = hv
                    if h_id is not None:
                        h_id = h_id.decode("utf-8", "replace") if h_id.__class__ is bytes else text(h_id)
                else:
                    h_id, trace_id, span_id = incoming_ids(headers)
                    tp = format_traceparent(trace_id, span_id) if trace_id and span_id else None
                    rp = get_header(headers, REPLAY_HEADER)
                if rp is not None:  # a record re-published by msgtrace replay: its events name the run
                    run = text(rp)
                    if run:
                        attrs = {**attrs, REPLAY_ATTR: run[:256]} if attrs else {REPLAY_ATTR: run[:256]}
            mid = msg_id or h_id or position_id(topic, partition, pos if offsets else None)
            if len(mid) > MAX_MSG_ID_CHARS:
                mid = cap_msg_id(mid)
            if tp is not None:
                trace_id, span_id = parse_traceparent(tp if tp.__class__ is bytes else _as_bytes(tp))
                ids = (b'"%s"' % trace_id.encode(), b'"%s"' % span_id.encode()) if trace_id and span_id else _NULL_IDS
            else:
                ids = _NULL_IDS
            if committed:
                k = b"null"
                off = offset
                if offsets and offset is not None and pos is not None:
                    if attrs:
                        a = dumps({**attrs, "record_offset": str(pos)})
                    elif pos.__class__ is int:  # what orjson writes for {"record_offset": str(pos)}
                        a = b'{"record_offset":"%d"}' % pos
                    else:
                        a = dumps({"record_offset": str(pos)})
                else:
                    a = dumps(attrs) if attrs else b"{}"
            else:
                if key is None:
                    k = b"null"
                elif key.__class__ is bytes and len(key) <= MAX_KEY_CHARS:
                    k = dumps(key.decode("utf-8", "replace"))
                else:
                    k = dumps(key_text(key))
                off = pos if offsets else offset
                a = dumps(attrs) if attrs else b"{}"
            s = seq + i
            append(head + _LINE % (s, s, ts_us, dumps(mid), b"null" if off is None else b"%d" % off, k, ids[0],
                                   ids[1], a))
        return len(entries)

    def _rows(self, seq: int, rec: tuple[Any, ...], out: list[bytes]) -> int:
        (_, ts_us, stage, topic, partition, group, mq, rows) = rec
        head = self._head(stage, topic, group, mq, partition)
        dumps = _dumps
        append = out.append
        for i, (msg_id, offset, key, error, trace_id, span_id, attrs) in enumerate(rows):
            if len(msg_id) > MAX_MSG_ID_CHARS:
                msg_id = cap_msg_id(msg_id)
            s = seq + i
            append(head + b'%012x","seq":%d,' % (s, s) + dumps(
                {"ts_us": ts_us, "msg_id": msg_id, "offset": offset, "key": key_text(key) if key is not None else None,
                 "error": error, "trace_id": trace_id, "span_id": span_id, "attrs": attrs or _NO_ATTRS})[1:] + b"\n")
        return len(rows)


    def _acks(self, seq: int, rec: tuple[Any, ...], out: list[bytes]) -> int:
        (_, stage, mq, rows) = rec
        dumps = _dumps
        append = out.append
        line = _LINE
        null = b"null"
        last: tuple[Any, Any] | None = None
        head = b""
        for i, (msg_id, topic, partition, offset, key, trace_id, span_id, ts_ns) in enumerate(rows):
            if (topic, partition) != last:  # the rows of a frame mostly share one partition
                last = (topic, partition)
                head = self._head(stage, topic, None, mq, partition)
            if len(msg_id) > MAX_MSG_ID_CHARS:
                msg_id = cap_msg_id(msg_id)
            if key is not None:
                key = dumps(key.decode("utf-8", "replace") if key.__class__ is bytes and len(key) <= MAX_KEY_CHARS
                            else key_text(key))
            s = seq + i
            append(head + line % (
                s, s, ts_ns // 1000, dumps(msg_id),
                null if offset is None else (b"%d" % offset if offset.__class__ is int else dumps(offset)),
                null if key is None else key, null if trace_id is None else dumps(trace_id),
                null if span_id is None else dumps(span_id), b"{}"))
        return len(rows)


#: the variable part of a delivery's line (after the head): seq hex, seq, ts, msg_id, offset, key, ids, attrs
_LINE = (b'%012x","seq":%d,"ts_us":%d,"msg_id":%b,"offset":%b,"key":%b,"error":null,"trace_id":%b,'
         b'"span_id":%b,"attrs":%b}\n')
_NULL_IDS = (b"null", b"null")
#: the same for one event of any stage (error as given)
_EVENT_LINE = (b'%012x","seq":%d,"ts_us":%d,"msg_id":%b,"offset":%b,"key":%b,"error":%b,"trace_id":%b,'
               b'"span_id":%b,"attrs":%b}\n')


def _as_bytes(v: Any) -> bytes:
    return v.encode("ascii", "replace") if isinstance(v, str) else bytes(v)


def sanitize_entries(entries: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Entries marshal can carry: keys as text, headers reduced to their id headers (a client that
    deserializes keys into objects, or carries exotic header values)."""
    from tracer.identity import MSG_ID_HEADER, TRACEPARENT, text

    out = []
    for pos, key, headers, msg_id, attrs in entries:
        hs = None
        if headers:
            hs = []
            for name in (TRACEPARENT, MSG_ID_HEADER):
                v = get_header(headers, name)
                if v is not None:
                    hs.append((name, v if isinstance(v, bytes) else (text(v) or "").encode()))
        out.append((pos if pos is None or type(pos) is int else str(pos), key_text(key), hs,
                    None if msg_id is None else str(msg_id),
                    None if not attrs else {str(k): str(v) for k, v in attrs.items()}))
    return out


__all__ = ["EVENT", "BATCH", "ROWS", "ACKS", "HEADER", "HEADER_SIZE", "SpoolMeta", "Expander", "Expanded", "encode",
           "split_frames", "sanitize_entries"]
