"""Message identity, in one place for the SDK, the spool's expansion and the analysis side.

- ``msg_id``: made (:class:`MsgIds`), capped (:func:`cap_msg_id`), carried in the header
  :data:`MSG_ID_HEADER` and extracted again (:func:`incoming_msg_id`).
- W3C trace context: :func:`parse_traceparent` / :func:`format_traceparent`.
- Headers: one getter / setter pair (:func:`get_header`, :func:`with_headers`) over the two carrier
  shapes the clients use: a list of ``(str, bytes)`` pairs (kafka-python, confluent-kafka) and a
  mapping (pika's ``BasicProperties.headers``, confluent-kafka's dict form).
- Text the audit keeps of a key or an error (:func:`key_text`, :func:`error_text`), capped so one
  audit line always fits an audit record.

Nothing here imports the rest of msgtrace: every layer may import it without a cycle.
"""
from __future__ import annotations

import hashlib
import itertools
import random
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

#: Header carrying the business identity of a message from producer to consumer (DESIGN.md, Headers).
MSG_ID_HEADER = "msgtrace-id"
#: W3C trace context header; msgtrace reuses it and adds it only when configured for trace context.
TRACEPARENT = "traceparent"
#: Set by ``msgtrace replay`` on a re-published message (the replay run id).
REPLAY_HEADER = "msgtrace-replay"
#: Longest msg_id kept as it is (characters); longer ones are capped by :func:`cap_msg_id`.
MAX_MSG_ID_CHARS = 1024
#: Longest key text kept in an event.
MAX_KEY_CHARS = 1024
#: Longest error text kept in an event.
MAX_ERROR_CHARS = 4096

_MSG_ID_HEADER_B = MSG_ID_HEADER.encode()
_TRACEPARENT_B = TRACEPARENT.encode()


# --- msg_id -------------------------------------------------------------------------------------

def cap_msg_id(msg_id: str) -> str:
    """``msg_id``, or for one longer than MAX_MSG_ID_CHARS its first 976 characters +
    ``...sha256:`` + 32 hex digits of the SHA-256 of the whole id (idempotent).

    A payload passed as the id would otherwise make an audit line no record can carry; the same
    cap is applied in the producer header, the consumer hooks, expected ids and ``trace-msg``.
    """
    if len(msg_id) <= MAX_MSG_ID_CHARS:
        return msg_id
    digest = hashlib.sha256(msg_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{msg_id[:MAX_MSG_ID_CHARS - 48]}...sha256:{digest}"


class MsgIds:
    """Ids for messages the caller gave none: a random UUID-shaped prefix per process + a counter.

    One draw at start, then one counter step and one format per id (no ``uuid4()`` per send);
    the ids are unique across processes (122 random bits of prefix), and they look like UUIDs.
    """

    __slots__ = ("prefix", "_counter")

    def __init__(self) -> None:
        r = uuid.uuid4().hex
        self.prefix = f"{r[:8]}-{r[8:12]}-4{r[13:16]}-{'89ab'[int(r[16], 16) & 3]}{r[17:20]}-"
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self.prefix}{next(self._counter):012x}"


def position_id(topic: str, partition: int | None, offset: int | None) -> str:
    """The msg_id of a received message that carries none and has no id function: its position."""
    return f"{topic}/{partition}/{offset}"


def text(value: Any) -> str | None:
    """A header value (bytes or text) as text, leniently decoded."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def incoming_msg_id(headers: Any) -> str | None:
    """The (capped) msg_id a received message carries in its headers, or None."""
    v = get_header(headers, MSG_ID_HEADER)
    if not v:
        return None
    mid = text(v)
    if not mid:
        return None
    return mid if len(mid) <= MAX_MSG_ID_CHARS else cap_msg_id(mid)


# --- W3C trace context --------------------------------------------------------------------------

_TRACEPARENT_RE = re.compile(rb"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_ZERO_TRACE, _ZERO_SPAN = b"0" * 32, b"0" * 16
_HEX_DASH = b"0123456789abcdef-"
_randbytes = random.randbytes


def parse_traceparent(value: bytes | str | None) -> tuple[str | None, str | None]:
    """(trace_id, span_id) of a W3C traceparent header, or (None, None) if absent or malformed."""
    if not value:
        return None, None
    if (value.__class__ is bytes and len(value) == 55 and value[2] == 45 and value[35] == 45
            and value[52] == 45 and not value.translate(None, _HEX_DASH) and value.count(b"-") == 3):
        # the canonical form every W3C producer writes: slices instead of a regex match
        trace, span = value[3:35], value[36:52]
        if trace == _ZERO_TRACE or span == _ZERO_SPAN:
            return None, None
        return trace.decode(), span.decode()
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    elif not isinstance(value, bytes):
        value = bytes(value)
    m = _TRACEPARENT_RE.match(value.strip().lower())
    if m is None or m[1] == _ZERO_TRACE or m[2] == _ZERO_SPAN:
        return None, None
    return m[1].decode(), m[2].decode()


def format_traceparent(trace_id: str, span_id: str, sampled: bool = True) -> bytes:
    """The W3C traceparent header value for (trace_id, span_id)."""
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}".encode()


def new_trace_ids() -> tuple[str, str]:
    """A new (trace_id, span_id): one random draw, never the all-zero ids W3C forbids."""
    while True:
        h = _randbytes(24).hex()
        trace_id, span_id = h[:32], h[32:]
        if trace_id != "0" * 32 and span_id != "0" * 16:
            return trace_id, span_id


def new_span_id() -> str:
    while True:
        s = _randbytes(8).hex()
        if s != "0" * 16:
            return s


def incoming_ids(headers: Any) -> tuple[str | None, str | None, str | None]:
    """(msg_id, trace_id, span_id) carried by a received message's headers (each None if absent).

    One pass over a list of pairs (the Kafka clients' form), or two lookups in a mapping.
    """
    msg_id = trace_id = span_id = None
    if not headers:
        return None, None, None
    if headers.__class__ is not list and isinstance(headers, Mapping):
        return incoming_msg_id(headers), *parse_traceparent(_as_bytes(get_header(headers, TRACEPARENT)))
    for hk, hv in headers:
        if hk == MSG_ID_HEADER or hk == _MSG_ID_HEADER_B:
            if hv:
                msg_id = text(hv)
        elif hk == TRACEPARENT or hk == _TRACEPARENT_B:
            trace_id, span_id = parse_traceparent(_as_bytes(hv))
    if msg_id is not None and len(msg_id) > MAX_MSG_ID_CHARS:
        msg_id = cap_msg_id(msg_id)
    return msg_id or None, trace_id, span_id


def _as_bytes(v: Any) -> bytes | str | None:
    if v is None or isinstance(v, (bytes, str)):
        return v
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    return str(v)


# --- headers: one getter / setter pair ----------------------------------------------------------

def get_header(headers: Any, name: str) -> Any:
    """The value of header ``name`` (the last one if repeated), or None.

    ``headers``: None, a list/tuple of ``(key, value)`` pairs (keys str or bytes), or a mapping.
    """
    if not headers:
        return None
    if isinstance(headers, Mapping):
        v = headers.get(name)
        if v is None and name.encode() in headers:
            v = headers[name.encode()]
        return v
    found = None
    bname = name.encode()
    for hk, hv in headers:
        if hk == name or hk == bname:
            found = hv
    return found


def has_header(headers: Any, name: str) -> bool:
    if not headers:
        return False
    if isinstance(headers, Mapping):
        return name in headers or name.encode() in headers
    bname = name.encode()
    return any(hk == name or hk == bname for hk, _ in headers)


def with_headers(headers: Any, added: Iterable[tuple[str, bytes]]) -> Any:
    """``headers`` plus ``added`` (a new object: the caller's list or dict is never mutated).

    None becomes a list of pairs; a mapping stays a mapping; a list stays a list. Anything else
    is returned unchanged (the client then raises its own error for it, as without msgtrace).
    """
    added = list(added)
    if headers is None:
        return added
    if isinstance(headers, list):
        return headers + added if added else headers
    if isinstance(headers, tuple):
        return list(headers) + added
    if isinstance(headers, Mapping):
        out = dict(headers)
        out.update(added)
        return out
    return headers


# --- text the audit keeps -------------------------------------------------------------------------

def key_text(key: Any) -> str | None:
    """The message key as text for the audit (bytes decoded leniently, capped)."""
    if key is None:
        return None
    if key.__class__ is bytes and len(key) <= MAX_KEY_CHARS:
        return key.decode("utf-8", "replace")
    if key.__class__ is str and len(key) <= MAX_KEY_CHARS:
        return key
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key[:MAX_KEY_CHARS]).decode("utf-8", "replace")
    return str(key)[:MAX_KEY_CHARS]


def error_text(e: BaseException | str) -> str:
    """``Type: message`` of an exception (or a given text), capped."""
    if isinstance(e, str):
        out = e
    else:
        s = str(e)
        out = f"{type(e).__name__}: {s}" if s else type(e).__name__
    return out if len(out) <= MAX_ERROR_CHARS else out[:MAX_ERROR_CHARS] + "..."


__all__ = ["MSG_ID_HEADER", "TRACEPARENT", "REPLAY_HEADER", "MAX_MSG_ID_CHARS", "MAX_KEY_CHARS",
           "MAX_ERROR_CHARS", "cap_msg_id", "MsgIds", "position_id", "text", "incoming_msg_id",
           "parse_traceparent", "format_traceparent", "new_trace_ids", "new_span_id", "incoming_ids",
           "get_header", "has_header", "with_headers", "key_text", "error_text"]
