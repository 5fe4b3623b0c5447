"""The event contract: one event = one stage reached by one message.

Stages, field names and the audit wire format are fixed by DESIGN.md; they are
in the data, so they never change meaning. A Kafka record on the audit topic
carries a batch of events as newline-delimited JSON whose keys are exactly the
``trace_events`` column names, with the header ``msgtrace-format: 1``.
"""
from __future__ import annotations

import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from tracer.errors import DecodeError

# msg_id rules (header name, cap) live in tracer.identity; re-exported here for older imports
from tracer.identity import MAX_MSG_ID_CHARS as MAX_MSG_ID_CHARS
from tracer.identity import MSG_ID_HEADER as MSG_ID_HEADER
from tracer.identity import cap_msg_id as cap_msg_id

FORMAT_HEADER = "msgtrace-format"
FORMAT_VERSION = "1"
#: Attribute naming the replay run on every event of a message re-published by ``msgtrace replay``
#: (the reconciler's ``replayed`` flag); the re-published message carries the run in the header
#: ``tracer.identity.REPLAY_HEADER``.
REPLAY_ATTR = "replay_run"
#: A record larger than this is refused on decode (quarantined by the collector).
MAX_RECORD_BYTES = 16 * 1024 * 1024


class Stage(StrEnum):
    """Stable stage names (DESIGN.md, Stages)."""

    SENT = "sent"
    SEND_FAILED = "send_failed"
    BROKER_ACKED = "broker_acked"
    RECEIVED = "received"
    OFFSET_COMMITTED = "offset_committed"
    BUSINESS_DONE = "business_done"
    BUSINESS_FAILED = "business_failed"
    DEAD_LETTERED = "dead_lettered"
    ROLLED_BACK = "rolled_back"


STAGES: frozenset[str] = frozenset(s.value for s in Stage)
#: Bit of each stage in the reconciler's stage bitmask (order = pipeline order).
STAGE_BITS: dict[str, int] = {s.value: 1 << i for i, s in enumerate(Stage)}


@dataclass(slots=True)
class Event:
    """One stage reached by one message, recorded where it happened."""

    msg_id: str
    stage: str
    ts_us: int = 0
    event_id: str = ""
    service: str = ""
    host: str = ""
    mq: str = "kafka"
    pid: int = 0
    topic: str = ""
    partition: int | None = None
    offset: int | None = None
    consumer_group: str | None = None
    key: str | None = None
    error: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    emitter_id: str = ""
    seq: int = 0
    attrs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.event_id:
            self.event_id = str(uuid.uuid4())
        if not self.ts_us:
            self.ts_us = now_us()

    def to_dict(self) -> dict[str, Any]:
        """The wire / column representation (keys in column order)."""
        return {name: getattr(self, name) for name in COLUMNS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        """Build from an already validated mapping (see :func:`validate_event`)."""
        return cls(**{name: d[name] for name in COLUMNS})


def now_us() -> int:
    """Microseconds since the epoch, UTC."""
    return time.time_ns() // 1000


_HOST = socket.gethostname()


def local_identity() -> tuple[str, int]:
    """(host, pid) of this process; pid is read each time because of fork()."""
    return _HOST, os.getpid()


# --- the column contract ----------------------------------------------------
# name -> (wire kind, nullable, ClickHouse type). Kinds are checked on decode.
SCHEMA: dict[str, tuple[str, bool, str]] = {
    "event_id": ("uuid", False, "String"),
    "msg_id": ("str", False, "String"),
    "stage": ("stage", False, "String"),
    "ts_us": ("uint", False, "UInt64"),
    "service": ("str", False, "String"),
    "host": ("str", False, "String"),
    "mq": ("str", False, "String"),
    "pid": ("uint", False, "UInt32"),
    "topic": ("str", False, "String"),
    "partition": ("int", True, "Nullable(Int32)"),
    "offset": ("int", True, "Nullable(Int64)"),
    "consumer_group": ("str", True, "Nullable(String)"),
    "key": ("str", True, "Nullable(String)"),
    "error": ("str", True, "Nullable(String)"),
    "trace_id": ("hex32", True, "Nullable(String)"),
    "span_id": ("hex16", True, "Nullable(String)"),
    "emitter_id": ("str", False, "String"),
    "seq": ("uint", False, "UInt64"),
    "attrs": ("attrs", False, "attrs"),  # stored as attr_keys / attr_values arrays
}
COLUMNS: tuple[str, ...] = tuple(SCHEMA)
_COLUMN_SET = frozenset(COLUMNS)
#: Storage columns of trace_events, in insert order (attrs split in two arrays).
STORE_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c != "attrs") + ("attr_keys", "attr_values")

_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HEX32_RE = re.compile(r"^[0-9a-f]{32}$")
_HEX16_RE = re.compile(r"^[0-9a-f]{16}$")
_LIMITS = {"partition": (-(2**31), 2**31 - 1), "offset": (-(2**63), 2**63 - 1),
           "pid": (0, 2**32 - 1), "ts_us": (0, 2**64 - 1), "seq": (0, 2**64 - 1)}


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def validate_event(obj: Any, line: int | None = None) -> Event:
    """Check one decoded JSON object strictly against the contract.

    Raises :class:`DecodeError` naming the first offending field.
    """
    if not isinstance(obj, dict):
        raise DecodeError(f"event must be a JSON object, got {_type_name(obj)}", line=line)
    keys = obj.keys()
    if len(keys) != len(COLUMNS) or keys != _COLUMN_SET:
        missing = [c for c in COLUMNS if c not in obj]
        if missing:
            raise DecodeError(f"missing field {missing[0]!r}", field=missing[0], line=line)
        extra = sorted(k for k in keys if k not in _COLUMN_SET)
        raise DecodeError(f"unknown field {extra[0]!r}", field=extra[0], line=line)
    for name, (kind, nullable, _) in SCHEMA.items():
        v = obj[name]
        if v is None:
            if nullable:
                continue
            raise DecodeError(f"field {name!r} must not be null", field=name, line=line)
        if kind in ("int", "uint"):
            if type(v) is not int:
                raise DecodeError(f"field {name!r} must be an integer, got {_type_name(v)}", field=name, line=line)
            lo, hi = _LIMITS[name]
            if not lo <= v <= hi:
                raise DecodeError(f"field {name!r} out of range: {v}", field=name, line=line)
        elif kind == "attrs":
            if not isinstance(v, dict):
                raise DecodeError(f"field 'attrs' must be an object, got {_type_name(v)}", field=name, line=line)
            for k, av in v.items():
                if not isinstance(av, str):
                    raise DecodeError(f"field 'attrs' value of {k!r} must be a string, got {_type_name(av)}",
                                      field=name, line=line)
        else:
            if not isinstance(v, str):
                raise DecodeError(f"field {name!r} must be a string, got {_type_name(v)}", field=name, line=line)
            if kind == "stage" and v not in STAGES:
                raise DecodeError(f"unknown stage {v!r}", field=name, line=line)
            if kind == "uuid" and not _UUID_RE.fullmatch(v):
                raise DecodeError(f"field 'event_id' is not a UUID: {v[:60]!r}", field=name, line=line)
            if kind == "hex32" and not _HEX32_RE.fullmatch(v):
                raise DecodeError(f"field {name!r} must be 32 lowercase hex digits", field=name, line=line)
            if kind == "hex16" and not _HEX16_RE.fullmatch(v):
                raise DecodeError(f"field {name!r} must be 16 lowercase hex digits", field=name, line=line)
    if not obj["msg_id"]:
        raise DecodeError("field 'msg_id' must not be empty", field="msg_id", line=line)
    return Event(**obj)


# --- wire format ---------------------------------------------------------------

def encode_event(event: Event) -> bytes:
    """One NDJSON line (without the newline)."""
    return orjson.dumps(event.to_dict())


def encode_batch(events: Iterable[Event]) -> bytes:
    """The value of one audit record: events as newline-delimited JSON."""
    return b"\n".join(orjson.dumps(e.to_dict()) for e in events)


def record_headers() -> list[tuple[str, bytes]]:
    """Headers every audit record carries."""
    return [(FORMAT_HEADER, FORMAT_VERSION.encode())]


@dataclass(slots=True)
class BadLine:
    """One line of an audit record that failed to decode: kept for quarantine."""

    line: int | None
    error: str
    field: str | None
    raw: bytes


@dataclass(slots=True)
class DecodedBatch:
    events: list[Event]
    bad: list[BadLine]


def check_format_header(headers: Sequence[tuple[str, bytes | None]] | None) -> None:
    """Raise DecodeError unless the record declares a format version we read."""
    for k, v in headers or ():
        if k == FORMAT_HEADER:
            version = (v or b"").decode("utf-8", "replace")
            if version != FORMAT_VERSION:
                raise DecodeError(f"unknown format version {version!r} in header {FORMAT_HEADER!r} "
                                  f"(this msgtrace reads {FORMAT_VERSION!r})", field=FORMAT_HEADER)
            return
    raise DecodeError(f"missing header {FORMAT_HEADER!r}", field=FORMAT_HEADER)


def decode_batch(value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None = None,
                 *, check_header: bool = True) -> DecodedBatch:
    """Decode one audit record; good events and bad lines are both returned.

    A bad header or an oversized record makes the whole record one bad line.
    Blank lines are ignored; every other line must be one valid event.
    """
    raw = value or b""
    try:
        if check_header:
            check_format_header(headers)
        if len(raw) > MAX_RECORD_BYTES:
            raise DecodeError(f"record of {len(raw)} bytes exceeds the limit of {MAX_RECORD_BYTES}")
        if not raw.strip():
            raise DecodeError("empty record")
    except DecodeError as e:
        return DecodedBatch([], [BadLine(None, str(e), e.field, raw)])
    events: list[Event] = []
    bad: list[BadLine] = []
    for n, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise DecodeError(f"invalid JSON: {e}", line=n) from None
            events.append(validate_event(obj, line=n))
        except DecodeError as e:
            bad.append(BadLine(n, str(e), e.field, line))
    return DecodedBatch(events, bad)


def decode_event_line(line: bytes | str) -> Event:
    """Decode and validate a single NDJSON line (raises DecodeError)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise DecodeError(f"invalid JSON: {e}") from None
    return validate_event(obj)


def to_columns(events: Sequence[Event]) -> dict[str, list[Any]]:
    """Column lists in :data:`STORE_COLUMNS` order, ready for a columnar insert."""
    cols: dict[str, list[Any]] = {c: [] for c in STORE_COLUMNS}
    appenders = [(cols[c].append, c) for c in COLUMNS if c != "attrs"]
    ak, av = cols["attr_keys"].append, cols["attr_values"].append
    for e in events:
        for app, name in appenders:
            app(getattr(e, name))
        a = e.attrs
        ak(list(a.keys()))
        av(list(a.values()))
    return cols


def from_row(row: Mapping[str, Any]) -> Event:
    """Rebuild an Event from a ``trace_events`` row (storage columns)."""
    d = {c: row[c] for c in COLUMNS if c != "attrs"}
    d["attrs"] = dict(zip(row["attr_keys"], row["attr_values"]))
    return Event(**d)
