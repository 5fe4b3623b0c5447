"""Proxies around kafka-python's KafkaProducer / KafkaConsumer that record stages.

Everything not traced is forwarded untouched (``__getattr__``), and the traced
calls return exactly what kafka-python returns or raise exactly what it raises:
the audit sits beside the business path, never in it.

- ``sent`` when ``send()`` is called; ``broker_acked`` / ``send_failed`` from the
  send future (its callbacks run on kafka-python's sender thread) or from an
  exception ``send()`` raised.
- ``received`` once per record returned by ``poll()`` or by iteration. The proxy
  wraps the consumer rather than patching it, so kafka-python's ``__next__``
  calling its own ``poll()`` internally is not seen twice.
- ``offset_committed`` from a hook on the coordinator's commit request: every
  commit kafka-python makes (``commit()``, ``commit_async()``, auto-commit, the
  commit before a rebalance or at close) goes through it, and it returns only
  when the broker accepted every partition. Each received message whose offset
  the committed position passed gets one event; ``offset`` is the committed
  position (Kafka's "next offset to read"), ``attrs.record_offset`` the message's.
"""
from __future__ import annotations

import inspect
import logging
import re
import threading
from typing import TYPE_CHECKING, Any

import orjson

from tracer.events import MAX_MSG_ID_CHARS, MSG_ID_HEADER, cap_msg_id

if TYPE_CHECKING:
    from tracer.sdk.tracer import Tracer

log = logging.getLogger("msgtrace.hooks")

TRACEPARENT = "traceparent"
SENT, SEND_FAILED, BROKER_ACKED = "sent", "send_failed", "broker_acked"
RECEIVED, OFFSET_COMMITTED = "received", "offset_committed"
#: uncommitted received messages remembered per partition (oldest forgotten beyond it)
MAX_PENDING_PER_PARTITION = 200_000


def key_str(key: Any) -> str | None:
    """The message key as text for the audit (bytes decoded leniently, capped)."""
    if key is None:
        return None
    if key.__class__ is bytes and len(key) <= 1024:
        return key.decode("utf-8", "replace")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key[:1024]).decode("utf-8", "replace")
    return str(key)[:1024]


_TRACEPARENT_RE = re.compile(rb"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_ZERO_TRACE, _ZERO_SPAN = b"0" * 32, b"0" * 16


_HEX_DASH = b"0123456789abcdef-"
_dumps = orjson.dumps


def parse_traceparent(value: bytes | str | None) -> tuple[str | None, str | None]:
    """(trace_id, span_id) of a W3C traceparent header, or (None, None) if malformed."""
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
    m = _TRACEPARENT_RE.match(value.strip().lower())
    if m is None or m[1] == _ZERO_TRACE or m[2] == _ZERO_SPAN:
        return None, None
    return m[1].decode(), m[2].decode()


#: Longest error text kept in an event: an audit line must stay far below the audit topic's record limit.
MAX_ERROR_CHARS = 4096


def error_text(e: BaseException) -> str:
    text = str(e)
    out = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return out if len(out) <= MAX_ERROR_CHARS else out[:MAX_ERROR_CHARS] + "..."


class TracedProducer:
    """A KafkaProducer that records sent / broker_acked / send_failed."""

    def __init__(self, producer: Any, tracer: "Tracer") -> None:
        object.__setattr__(self, "_producer", producer)
        object.__setattr__(self, "_tracer", tracer)
        object.__setattr__(self, "_emit", tracer._emitter.emit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._producer, name, value)

    def __repr__(self) -> str:
        return f"<TracedProducer {self._producer!r}>"

    def __enter__(self) -> "TracedProducer":
        self._producer.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._producer.__exit__(*exc)

    @property
    def wrapped(self) -> Any:
        """The kafka-python producer underneath."""
        return self._producer

    def send(self, topic, value=None, key=None, headers=None, partition=None, timestamp_ms=None, msg_id=None):
        """KafkaProducer.send, plus the ``msgtrace-id`` / ``traceparent`` headers and the send stages."""
        t = self._tracer
        try:
            span = None
            if headers is None and t._otel_tracer is None:
                # the common case, kept short: no caller headers, no OpenTelemetry span to start
                if msg_id is None:
                    msg_id = (f"{t._mid_prefix}{next(t._mid_counter):012x}" if t.id_fn is None
                              else t._new_msg_id(topic, key, value))
                elif msg_id.__class__ is not str:
                    msg_id = str(msg_id)
                if len(msg_id) > MAX_MSG_ID_CHARS:
                    msg_id = cap_msg_id(msg_id)
                trace_id, span_id, traceparent = t._send_context()
                out_headers = [(TRACEPARENT, traceparent), (MSG_ID_HEADER, msg_id.encode())]
            else:
                msg_id, out_headers, trace_id, span_id, span = self._send_headers(topic, key, value, headers,
                                                                                   msg_id)
            if key is None:
                k = None
            elif key.__class__ is bytes and len(key) <= 1024:
                k = key.decode("utf-8", "replace")
            else:
                k = key_str(key)
            self._emit(SENT, msg_id, topic, partition, None, None, k, None, trace_id, span_id)
        except Exception as e:  # a bug in the hook must not cost the business its send
            t._hook_error(e)
            return self._producer.send(topic, value=value, key=key, headers=headers, partition=partition,
                                       timestamp_ms=timestamp_ms)
        try:
            future = self._producer.send(topic, value=value, key=key, headers=out_headers, partition=partition,
                                         timestamp_ms=timestamp_ms)
        except Exception as e:
            self._emit(SEND_FAILED, msg_id, topic, partition, None, None, k, error_text(e), trace_id, span_id,
                       {"error_type": type(e).__name__})
            if span is not None:
                _end_send_span(span, None, e)
            raise
        try:
            # one small object per send serves both outcomes (a tuple: no Python __init__ to run)
            cbs = _SendOutcome((self._emit, msg_id, topic, partition, k, trace_id, span_id, span))
            both = getattr(future, "_add_cb_eb", None)
            if both is not None:
                both(cbs.acked, cbs.failed)
            else:
                future.add_callback(cbs.acked)
                future.add_errback(cbs.failed)
        except Exception as e:
            t._hook_error(e)
        return future

    def _send_headers(self, topic: str, key: Any, value: Any, headers: Any, msg_id: Any) -> tuple:
        """The general case: caller headers (kept, never mutated), an existing context or id, OTel spans."""
        t = self._tracer
        trace_id = span_id = traceparent = None
        has_id = False
        if headers is None:
            out_headers: Any = []
        elif type(headers) is list:
            out_headers = headers[:]  # never mutate the caller's list
            for hk, hv in headers:   # a caller (or OTel) may already carry the context / id
                if hk == TRACEPARENT:
                    trace_id, span_id = parse_traceparent(hv)
                    traceparent = hv
                elif hk == MSG_ID_HEADER and hv:
                    has_id = True
                    if msg_id is None:
                        msg_id = bytes(hv).decode("utf-8", "replace")
        else:
            out_headers = None  # not a list: kafka-python raises its own TypeError below
        if msg_id is None:
            msg_id = t._new_msg_id(topic, key, value)
        else:
            msg_id = str(msg_id)
        if len(msg_id) > MAX_MSG_ID_CHARS:
            msg_id = cap_msg_id(msg_id)
        span = None
        if traceparent is None:
            if t._otel_tracer is not None:
                span, trace_id, span_id = _start_send_span(t, topic, msg_id, key)
                traceparent = f"00-{trace_id}-{span_id}-01".encode()
            else:
                trace_id, span_id, traceparent = t._send_context()
            if out_headers is not None:
                out_headers.append((TRACEPARENT, traceparent))
        if out_headers is None:
            out_headers = headers
        elif not has_id:
            out_headers.append((MSG_ID_HEADER, msg_id.encode()))
        return msg_id, out_headers, trace_id, span_id, span


class _SendOutcome(tuple):
    """(emit, msg_id, topic, partition, key, trace_id, span_id, span) of one send; its bound methods are
    the send future's callback and errback (run on kafka-python's IO thread; never raise)."""

    __slots__ = ()

    def acked(self, md: Any) -> None:
        emit, msg_id, topic, _, k, trace_id, span_id, span = self
        emit(BROKER_ACKED, msg_id, topic, md.partition, md.offset, None, k, None, trace_id, span_id)
        if span is not None:
            _end_send_span(span, md, None)

    def failed(self, e: BaseException) -> None:
        emit, msg_id, topic, partition, k, trace_id, span_id, span = self
        emit(SEND_FAILED, msg_id, topic, partition, None, None, k, error_text(e), trace_id, span_id,
             {"error_type": type(e).__name__})
        if span is not None:
            _end_send_span(span, None, e)


def _start_send_span(t: "Tracer", topic: str, msg_id: str, key: Any) -> tuple[Any, str, str]:
    """An OpenTelemetry PRODUCER span ``send {topic}`` (messaging semantic conventions), child of the current."""
    from opentelemetry.trace import SpanKind

    attrs = {"messaging.system": "kafka", "messaging.operation.name": "send", "messaging.operation.type": "send",
             "messaging.destination.name": topic, "messaging.message.id": msg_id}
    if key is not None:
        attrs["messaging.kafka.message.key"] = key_str(key) or ""
    span = t._otel_tracer.start_span(f"send {topic}", kind=SpanKind.PRODUCER, attributes=attrs)
    sc = span.get_span_context()
    if not sc.is_valid:  # no SDK configured: the API hands out invalid contexts
        return (span, *t._new_span_ids())
    return span, f"{sc.trace_id:032x}", f"{sc.span_id:016x}"


def _end_send_span(span: Any, md: Any, error: BaseException | None) -> None:
    try:
        if md is not None:
            span.set_attribute("messaging.destination.partition.id", str(md.partition))
            span.set_attribute("messaging.kafka.offset", md.offset)
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_attribute("error.type", type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, str(error)))
        span.end()
    except Exception:
        pass


class TracedConsumer:
    """A KafkaConsumer that records received and offset_committed."""

    def __init__(self, consumer: Any, tracer: "Tracer") -> None:
        sa = object.__setattr__
        sa(self, "_consumer", consumer)
        sa(self, "_tracer", tracer)
        sa(self, "_emitter", tracer._emitter)
        sa(self, "_pending", {})   # TopicPartition -> [(offset, msg_id, encoded id members)]
        sa(self, "_plock", threading.Lock())
        config = getattr(consumer, "config", None) or {}
        sa(self, "group", config.get("group_id"))
        self._install_commit_hook()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._consumer, name, value)

    def __repr__(self) -> str:
        return f"<TracedConsumer {self._consumer!r}>"

    def __enter__(self) -> "TracedConsumer":
        self._consumer.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._consumer.__exit__(*exc)

    @property
    def wrapped(self) -> Any:
        """The kafka-python consumer underneath."""
        return self._consumer

    # --- received -------------------------------------------------------------
    def poll(self, timeout_ms=0, max_records=None, update_offsets=True):
        records = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records,
                                      update_offsets=update_offsets)
        if records:
            try:
                for tp, recs in records.items():
                    self._received(tp, recs)
            except Exception as e:
                self._tracer._hook_error(e)
        return records

    def __iter__(self) -> "TracedConsumer":
        return self

    def __next__(self):
        record = next(self._consumer)
        try:
            self._received(None, (record,))
        except Exception as e:
            self._tracer._hook_error(e)
        return record

    def _received(self, tp: Any, records: Any) -> None:
        """One ``received`` per record, spooled for the whole batch at once (records of one partition)."""
        t = self._tracer
        group = self.group
        rows = []
        pend = []
        inflight = t._inflight
        first = records[0]
        topic, partition = first.topic, first.partition
        id_fn = t._consumer_msg_id
        dumps = _dumps
        for r in records:
            msg_id = trace_id = span_id = None
            for hk, hv in r.headers or ():
                if hk == MSG_ID_HEADER:
                    msg_id = hv.decode("utf-8", "replace") if hv else None
                elif hk == TRACEPARENT:
                    trace_id, span_id = parse_traceparent(hv)
            if msg_id is None:
                msg_id = id_fn(r)
            if len(msg_id) > MAX_MSG_ID_CHARS:
                msg_id = cap_msg_id(msg_id)
            off = r.offset
            k = r.key
            if k is not None:
                k = k.decode("utf-8", "replace") if k.__class__ is bytes and len(k) <= 1024 else key_str(k)
            # the members received and offset_committed share, encoded once
            ids = dumps({"msg_id": msg_id, "trace_id": trace_id, "span_id": span_id})[1:-1]
            rows.append((msg_id, b'"offset":%d,"key":%b,%b' % (off, dumps(k), ids)))
            pend.append((off, msg_id, ids))
            inflight[(topic, partition, off, group)] = (msg_id, group, trace_id, span_id, id(r))
        self._emitter.emit_rows(RECEIVED, topic, group, {"partition": partition, "error": None, "attrs": {}}, rows)
        t._trim_inflight()
        if group is None:
            return
        if tp is None:
            from kafka.structs import TopicPartition

            tp = TopicPartition(topic, partition)
        with self._plock:
            lst = self._pending.get(tp)
            if lst is None:
                self._pending[tp] = pend
            else:
                lst.extend(pend)
                if len(lst) > MAX_PENDING_PER_PARTITION:
                    del lst[:len(lst) - MAX_PENDING_PER_PARTITION]
                    t._counters["pending_forgotten"] += 1

    # --- offset_committed -----------------------------------------------------------
    def _install_commit_hook(self) -> None:
        coord = getattr(self._consumer, "_coordinator", None)
        orig = getattr(coord, "_send_offset_commit_request", None)
        if self.group is None or orig is None:
            if self.group is not None:
                log.warning("msgtrace: this kafka-python has no commit request hook; "
                            "offset_committed will not be recorded")
            return
        if getattr(orig, "_msgtrace", False):
            return
        on_commit = self._committed

        if inspect.iscoroutinefunction(orig):
            async def hooked(offsets, *a, **kw):
                result = await orig(offsets, *a, **kw)
                on_commit(offsets)
                return result
        else:
            def hooked(offsets, *a, **kw):  # type: ignore[misc]
                result = orig(offsets, *a, **kw)
                on_commit(offsets)
                return result
        hooked._msgtrace = True  # type: ignore[attr-defined]
        coord._send_offset_commit_request = hooked

    def _committed(self, offsets: Any) -> None:
        """The broker accepted ``offsets``: every pending message below them is now committed."""
        try:
            group = self.group
            batches = []
            pending = self._pending
            with self._plock:
                for tp, om in offsets.items():
                    lst = pending.get(tp)
                    if not lst:
                        continue
                    pos = getattr(om, "offset", om)
                    rows = [(msg_id, b'"attrs":{"record_offset":"%d"},%b' % (off, ids))
                            for off, msg_id, ids in lst if off < pos]
                    if rows:
                        pending[tp] = [p for p in lst if p[0] >= pos] if len(rows) != len(lst) else []
                        batches.append((tp, pos, rows))
            emit_rows = self._emitter.emit_rows
            for tp, pos, rows in batches:  # one spool write burst per partition and commit
                emit_rows(OFFSET_COMMITTED, tp.topic, group,
                          {"partition": tp.partition, "offset": pos, "key": None, "error": None}, rows)
        except Exception as e:  # runs on kafka-python's IO path: never raise into it
            self._tracer._hook_error(e)
