"""``Tracer``: the SDK a service uses to record where its messages are.

    t = Tracer.from_env()                       # or Tracer(service=..., bootstrap=..., ...)
    producer = t.wrap_producer(KafkaProducer(...))
    consumer = t.wrap_consumer(KafkaConsumer(...))
    for record in consumer:
        with t.processing(record):
            pay_red_packet(record)

Recording is a spool append (see :mod:`tracer.emitter`): cheap, non-blocking,
and it never raises into business code. Where no audit Kafka is configured the
emitter writes straight to the store.
"""
from __future__ import annotations

import atexit
import contextvars
import itertools
import logging
import os
import random
import sys
import threading
import time
import uuid
import weakref
from typing import Any, Callable

from tracer.sdk.emitter import Emitter, KafkaSink, Sink, StoreSink
from tracer.events import MSG_ID_HEADER, STAGES
from tracer.sdk.kafka_python import (MAX_ERROR_CHARS, TRACEPARENT, TracedConsumer, TracedProducer, error_text, key_str,
                    parse_traceparent)

#: Longest attribute value kept from record(): audit lines must stay small.
MAX_ATTR_CHARS = 4096

log = logging.getLogger("msgtrace")

#: received messages remembered for ``processing(record)`` (group, trace context)
MAX_INFLIGHT = 100_000
_EVENT_FIELDS = ("topic", "partition", "offset", "consumer_group", "key", "error", "trace_id", "span_id")
_LIVE: "weakref.WeakSet[Tracer]" = weakref.WeakSet()
_randbytes = random.randbytes
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


def _otel_current() -> Callable[[], Any] | None:
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - opentelemetry-api is a dependency
        return None
    return trace.get_current_span


def _otel_context_var() -> contextvars.ContextVar | None:
    """OpenTelemetry's context variable, if it is the stock contextvars runtime context.

    Reading it is one C call; an empty context means no active span, so a send can start a new
    trace without going through the OTel API (a few Python calls per send). None: always ask the API.
    """
    try:
        from opentelemetry import context
    except ImportError:  # pragma: no cover
        return None
    cv = getattr(getattr(context, "_RUNTIME_CONTEXT", None), "_current_context", None)
    return cv if isinstance(cv, contextvars.ContextVar) else None


class Tracer:
    """Hooks + emitter for one service. Thread-safe; one per process is typical."""

    def __init__(self, service: str | None = None, bootstrap: str | None = None,
                 audit_topic: str = "msgtrace.audit", store: str | None = None, spool_dir: str | None = None,
                 id_fn: Callable[[str, Any, Any], str] | None = None,
                 consumer_id_fn: Callable[[Any], str] | None = None, fsync: str = "never",
                 max_spool_bytes: int = 256 << 20, mq: str = "kafka", *, sink: Sink | None = None,
                 otel_spans: Any = False, adopt: bool = True, **emitter_options: Any) -> None:
        """``bootstrap`` ships to the audit topic; else ``store`` (URL) or the default store gets
        the events directly. ``sink`` overrides both (``NullSink()``: spool only)."""
        self.service = service or os.environ.get("MSGTRACE_SERVICE") or os.path.basename(sys.argv[0] or "python")
        if sink is None:
            if bootstrap:
                sink = KafkaSink(bootstrap, audit_topic)
            else:
                sink = StoreSink(store)
        self.id_fn, self.consumer_id_fn = id_fn, consumer_id_fn
        self.mq = mq
        self._emitter = Emitter(self.service, sink, spool_dir, fsync=fsync, max_spool_bytes=max_spool_bytes,
                                mq=mq, adopt=adopt, **emitter_options)
        self._counters = {"hook_errors": 0, "pending_forgotten": 0}
        # (topic, partition, offset, group) -> (msg_id, group, trace_id, span_id, id(record)) of
        # records received and not yet processed; keyed by group too, since one tracer may wrap
        # consumers of several groups reading the same record
        self._inflight: dict[tuple, tuple] = {}
        self._inflight_lock = threading.Lock()
        self._groups: dict[str | None, None] = {}  # groups of the wrapped consumers (ordered set)
        r = uuid.uuid4().hex
        self._mid_prefix = f"{r[:8]}-{r[8:12]}-4{r[13:16]}-{'89ab'[int(r[16], 16) & 3]}{r[17:20]}-"
        self._mid_counter = itertools.count(1)
        self._current_span = _otel_current()
        self._otel_cv = _otel_context_var()
        self.default_group: str | None = None
        self.otel_spans = otel_spans
        self._otel_tracer = None
        if otel_spans:  # True: the global TracerProvider; or a TracerProvider of its own
            if hasattr(otel_spans, "get_tracer"):
                self._otel_tracer = otel_spans.get_tracer("msgtrace")
            else:
                from opentelemetry import trace

                self._otel_tracer = trace.get_tracer("msgtrace")
        _LIVE.add(self)

    @classmethod
    def from_env(cls, **overrides: Any) -> "Tracer":
        """Configure from MSGTRACE_* variables (DESIGN.md, Configuration); keyword arguments win."""
        env = os.environ.get
        kw: dict[str, Any] = {"service": env("MSGTRACE_SERVICE"), "bootstrap": env("MSGTRACE_KAFKA_BOOTSTRAP") or None,
                              "audit_topic": env("MSGTRACE_AUDIT_TOPIC") or "msgtrace.audit",
                              "store": env("MSGTRACE_STORE") or None, "spool_dir": env("MSGTRACE_SPOOL_DIR") or None}
        kw.update(overrides)
        return cls(**kw)

    # --- hooks --------------------------------------------------------------------
    def wrap_producer(self, producer: Any) -> TracedProducer:
        """A proxy of ``producer`` whose ``send`` records sent / broker_acked / send_failed."""
        return TracedProducer(producer, self)

    def wrap_consumer(self, consumer: Any) -> TracedConsumer:
        """A proxy of ``consumer`` recording received (poll, iteration) and offset_committed (all commits)."""
        c = TracedConsumer(consumer, self)
        if c.group is not None:
            self.default_group = c.group
        self._groups[c.group] = None
        return c

    def processing(self, record_or_msg_id: Any, consumer_group: str | None = None) -> "_Processing":
        """Context manager: business_done on success, business_failed (re-raised) on an exception."""
        return _Processing(self, record_or_msg_id, consumer_group)

    def record(self, stage: str, msg_id: Any, **fields: Any) -> None:
        """Record any stage by hand (other MQs, dead_lettered, ...). Never raises.

        Fields: topic, partition, offset, consumer_group (or group), key, error, trace_id, span_id,
        mq, ts_us, attrs (dict); any other keyword goes into attrs as text.
        """
        try:
            stage = str(stage)
            if stage not in STAGES:
                raise ValueError(f"unknown stage {stage!r} (one of {', '.join(sorted(STAGES))})")
            if not isinstance(msg_id, str):
                msg_id, ctx = self._record_identity(msg_id)
                for name, v in zip(("topic", "partition", "offset", "consumer_group", "trace_id", "span_id"),
                                   ctx):
                    fields.setdefault(name, v)
            if "group" in fields:
                fields.setdefault("consumer_group", fields.pop("group"))
            attrs = {str(k): str(v) for k, v in (fields.pop("attrs", None) or {}).items()}
            kw: dict[str, Any] = {}
            for name in _EVENT_FIELDS:
                if name in fields:
                    kw[name] = fields.pop(name)
            if kw.get("key") is not None:
                kw["key"] = key_str(kw["key"])
            if isinstance(kw.get("error"), BaseException):
                kw["error"] = error_text(kw["error"])
            elif isinstance(kw.get("error"), str) and len(kw["error"]) > MAX_ERROR_CHARS:
                kw["error"] = kw["error"][:MAX_ERROR_CHARS] + "..."
            mq = fields.pop("mq", None)
            ts_us = int(fields.pop("ts_us", 0) or 0)
            for k, v in fields.items():
                attrs[str(k)] = str(v)
            # one audit line must always fit an audit record: cap what callers hand us
            attrs = {k[:256]: v if len(v) <= MAX_ATTR_CHARS else v[:MAX_ATTR_CHARS] + "..."
                     for k, v in attrs.items()}
            if kw.get("topic") is None:
                kw["topic"] = ""
            self._emitter.emit(stage, msg_id, attrs=attrs, mq=mq, ts_us=ts_us, **kw)
        except Exception as e:
            self._counters["invalid"] = self._counters.get("invalid", 0) + 1
            self._hook_error(e)

    # --- control ------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything recorded so far is shipped; False if not within ``timeout``."""
        return self._emitter.flush(timeout)

    def close(self, timeout: float | None = 5.0) -> bool:
        """Ship what can be shipped within ``timeout`` and stop; the rest stays in the spool."""
        _LIVE.discard(self)
        return self._emitter.close(timeout)

    def __enter__(self) -> "Tracer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def stats(self) -> dict[str, Any]:
        s = self._emitter.stats
        s.update(self._counters)
        return s

    @property
    def emitter(self) -> Emitter:
        return self._emitter

    # --- internals used by the hooks ----------------------------------------------
    def _send_context(self) -> tuple[str, str, bytes]:
        """(trace_id, span_id, traceparent header value) for a send.

        With no active OpenTelemetry context (the common case) the ids come from one random draw;
        otherwise the current span's trace is continued (:meth:`_new_span_ids`).
        """
        cv = self._otel_cv
        if (cv.get() if cv is not None else self._current_span is not None):
            trace_id, span_id = self._new_span_ids()
            return trace_id, span_id, f"00-{trace_id}-{span_id}-01".encode()
        h = _randbytes(24).hex()
        trace_id, span_id = h[:32], h[32:]
        if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:  # invalid in W3C (p = 2^-64): draw again
            return self._send_context()
        return trace_id, span_id, f"00-{trace_id}-{span_id}-01".encode()

    def _new_msg_id(self, topic: str, key: Any, value: Any) -> str:
        if self.id_fn is not None:
            try:
                mid = self.id_fn(topic, key, value)
                if mid:
                    return str(mid)
            except Exception as e:
                self._hook_error(e)
        return f"{self._mid_prefix}{next(self._mid_counter):012x}"

    def _consumer_msg_id(self, record: Any) -> str:
        if self.consumer_id_fn is not None:
            try:
                mid = self.consumer_id_fn(record)
                if mid:
                    return str(mid)
            except Exception as e:
                self._hook_error(e)
        return f"{record.topic}/{record.partition}/{record.offset}"

    def _new_span_ids(self) -> tuple[str, str]:
        """(trace_id, span_id) for a send: the active OpenTelemetry trace if any, else a new one."""
        trace_id = None
        cur = self._current_span
        if cur is not None:
            sc = cur().get_span_context()
            if sc.is_valid:
                trace_id = f"{sc.trace_id:032x}"
        if trace_id is None:
            trace_id = f"{random.getrandbits(128) or 1:032x}"
        return trace_id, f"{random.getrandbits(64) or 1:016x}"

    def _trim_inflight(self) -> None:
        inflight = self._inflight
        if len(inflight) > MAX_INFLIGHT:
            with self._inflight_lock:
                for k in list(itertools.islice(iter(inflight), len(inflight) - MAX_INFLIGHT)):
                    inflight.pop(k, None)

    def _known(self, record: Any) -> tuple | None:
        """What the hooks noted when ``record`` was received: the entry of the consumer that
        returned this very object, else of any wrapped consumer that received its position."""
        inflight = self._inflight
        if not inflight:
            return None
        topic, partition, offset = record.topic, record.partition, record.offset
        found = None
        for g in self._groups:
            k = inflight.get((topic, partition, offset, g))
            if k is not None:
                if k[4] == id(record):
                    return k
                if found is None:
                    found = k
        return found

    def _record_identity(self, record: Any) -> tuple[str, tuple]:
        """msg_id and (topic, partition, offset, group, trace_id, span_id) of a ConsumerRecord."""
        key = (record.topic, record.partition, record.offset)
        known = self._known(record)
        if known is not None:
            msg_id, group, trace_id, span_id, _ = known
            return msg_id, (*key, group, trace_id, span_id)
        msg_id = trace_id = span_id = None
        for hk, hv in getattr(record, "headers", None) or ():
            if hk == MSG_ID_HEADER and hv:
                msg_id = hv.decode("utf-8", "replace")
            elif hk == TRACEPARENT:
                trace_id, span_id = parse_traceparent(hv)
        return msg_id or self._consumer_msg_id(record), (*key, self.default_group, trace_id, span_id)

    def _hook_error(self, e: BaseException) -> None:
        self._counters["hook_errors"] += 1
        text = self._emitter.last_error = error_text(e)
        self._emitter._log_rate_limited("msgtrace hook error (the business call was not affected): %s", text)


class _Processing:
    """``with tracer.processing(record):`` records the business outcome of one message."""

    __slots__ = ("_t", "_target", "_group", "_t0", "_ctx", "_span", "_token", "_key")

    def __init__(self, tracer: Tracer, target: Any, group: str | None) -> None:
        self._t, self._target, self._group = tracer, target, group
        self._span = self._token = self._key = None

    def __enter__(self) -> "_Processing":
        t = self._t
        try:
            target = self._target
            if isinstance(target, str):
                self._ctx = (target, ("", None, None, self._group or t.default_group, None, None))
            elif (known := t._known(target)) is not None:
                # a record this tracer received (the usual case): its identity is already known
                msg_id, group, trace_id, span_id, _ = known
                self._key = (target.topic, target.partition, target.offset, group)
                self._ctx = (msg_id, (target.topic, target.partition, target.offset,
                                      group if self._group is None else self._group, trace_id, span_id))
            else:
                msg_id, ctx = t._record_identity(target)
                if self._group is not None:
                    ctx = (*ctx[:3], self._group, *ctx[4:])
                self._ctx = (msg_id, ctx)
            if t._otel_tracer is not None:
                self._start_span()
        except Exception as e:
            t._hook_error(e)
            self._ctx = None
        self._t0 = time.perf_counter_ns()
        return self

    def _start_span(self) -> None:
        """An OpenTelemetry ``process`` span (messaging semantic conventions), child of the producer's."""
        from opentelemetry import context, trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

        msg_id, (topic, partition, offset, group, trace_id, span_id) = self._ctx
        parent = None
        if trace_id and span_id:
            parent = trace.set_span_in_context(NonRecordingSpan(SpanContext(
                int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(1))))
        attrs = {"messaging.system": "kafka", "messaging.operation.type": "process",
                 "messaging.operation.name": "process", "messaging.destination.name": topic,
                 "messaging.message.id": msg_id}
        if partition is not None:
            attrs["messaging.destination.partition.id"] = str(partition)
        if offset is not None:
            attrs["messaging.kafka.offset"] = offset
        if group:
            attrs["messaging.consumer.group.name"] = group
        span = self._t._otel_tracer.start_span(f"process {topic}".strip(), context=parent,
                                               kind=SpanKind.CONSUMER, attributes=attrs)
        self._span = span
        self._token = context.attach(trace.set_span_in_context(span))
        sc = span.get_span_context()
        if sc.is_valid:
            self._ctx = (msg_id, (topic, partition, offset, group, f"{sc.trace_id:032x}", f"{sc.span_id:016x}"))

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        t = self._t
        try:
            if self._ctx is not None and (exc is None or isinstance(exc, Exception)):
                # KeyboardInterrupt / SystemExit: the work did not finish, so no outcome is recorded
                msg_id, (topic, partition, offset, group, trace_id, span_id) = self._ctx
                dur = str((time.perf_counter_ns() - self._t0) // 1000)
                if exc is None:
                    t._emitter.emit("business_done", msg_id, topic, partition, offset, group, None, None,
                                    trace_id, span_id, {"duration_us": dur})
                else:
                    t._emitter.emit("business_failed", msg_id, topic, partition, offset, group, None,
                                    error_text(exc), trace_id, span_id,
                                    {"duration_us": dur, "error_type": type(exc).__name__})
                if self._key is not None:
                    t._inflight.pop(self._key, None)
            if self._span is not None:
                from opentelemetry import context
                from opentelemetry.trace import Status, StatusCode

                if exc is not None:
                    self._span.record_exception(exc)
                    self._span.set_status(Status(StatusCode.ERROR, str(exc)))
                self._span.end()
                context.detach(self._token)
        except Exception as e:
            t._hook_error(e)
        return False  # re-raise the business exception unchanged


@atexit.register
def _close_all() -> None:
    """At interpreter exit, give each live tracer a moment to ship (the spool keeps the rest)."""
    for t in list(_LIVE):
        try:
            t.close(timeout=2.0)
        except Exception:
            pass
