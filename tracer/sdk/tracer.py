"""``Tracer``: the SDK a service uses to record where its messages are.

    t = Tracer.from_env()                       # or Tracer(service=..., bootstrap=..., ...)
    producer = t.wrap_producer(KafkaProducer(...))
    consumer = t.wrap_consumer(KafkaConsumer(...))
    for record in consumer:
        with t.processing(record):
            pay_red_packet(record)

``Tracer`` is the public entry point and owns the parts: the emitter (spool + shipping), the
identity policy and the :class:`~tracer.sdk.core.Core` that the client adapters record through.
``wrap_producer`` / ``wrap_consumer`` / ``wrap_channel`` pick the adapter by the client's type
(:mod:`tracer.sdk.registry`). Recording is a spool append: cheap, non-blocking, and it never
raises into business code. Where no audit Kafka is configured the events go straight to the store.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Literal

from tracer.errors import ConfigError
from tracer.events import STAGES
from tracer.identity import MAX_ERROR_CHARS, error_text, key_text
from tracer.sdk import registry
from tracer.sdk.core import Core, Identity, IdentityPolicy, Recorder
from tracer.sdk.emitter import Emitter, KafkaSink, Sink, StoreSink
from tracer.sdk.otel import Spans

#: Longest attribute value kept from record(): audit lines must stay small.
MAX_ATTR_CHARS = 4096

log = logging.getLogger("msgtrace")
_LIVE: weakref.WeakSet[Tracer] = weakref.WeakSet()


class Tracer:
    """Hooks + emitter for one service. Thread-safe; one per process is typical."""

    def __init__(self, service: str | None = None, bootstrap: str | None = None,
                 audit_topic: str = "msgtrace.audit", store: str | None = None, spool_dir: str | None = None,
                 id_fn: Callable[[str, Any, Any], Any] | None = None,
                 consumer_id_fn: Callable[[Any], Any] | None = None, fsync: str = "never",
                 max_spool_bytes: int = 256 << 20, mq: str = "kafka", *, sink: Sink | None = None,
                 otel_spans: Any = False, adopt: bool = True, headers: bool = True, trace_context: bool = False,
                 **emitter_options: Any) -> None:
        """``bootstrap`` ships to the audit topic; else ``store`` (URL) or the default store gets
        the events directly. ``sink`` overrides both (``NullSink()``: spool only).

        Identity (DESIGN.md, Headers): by default one header, ``msgtrace-id``, is added; an existing
        ``traceparent`` (on the message, or the active OpenTelemetry context) is reused.
        ``trace_context=True`` also adds a ``traceparent`` when there is none; ``otel_spans`` (True for
        the global TracerProvider, or a TracerProvider) records OpenTelemetry send / process spans and
        implies it. ``headers=False`` is the header-free mode: nothing is added to any message, ids come
        from ``id_fn(topic, key, value)`` / ``consumer_id_fn(record)``, else from the record key.
        """
        if not headers and (trace_context or otel_spans):
            raise ConfigError("headers=False (header-free mode) adds no header at all: it cannot be combined "
                              "with trace_context or otel_spans, which add a traceparent")
        self.service = service or os.environ.get("MSGTRACE_SERVICE") or os.path.basename(sys.argv[0] or "python")
        if sink is None:
            sink = KafkaSink(bootstrap, audit_topic) if bootstrap else StoreSink(store)
        self.mq = mq
        self._emitter = Emitter(self.service, sink, spool_dir, fsync=fsync, max_spool_bytes=max_spool_bytes,
                                mq=mq, adopt=adopt, **emitter_options)
        self._counters = {"hook_errors": 0}
        self.otel_spans = otel_spans
        spans = Spans(otel_spans) if otel_spans else None
        self.policy = IdentityPolicy(headers=headers, trace_context=bool(trace_context or otel_spans),
                                     id_fn=id_fn, consumer_id_fn=consumer_id_fn)
        self._core = Core(self._emitter, self.policy, spans, self._hook_error)
        self._recorders: dict[str, Recorder] = {}
        self._record_refs: dict[type, tuple[Callable[[Any], Any], Recorder] | None] = {}
        self._recorders_lock = threading.Lock()
        _LIVE.add(self)

    @classmethod
    def from_env(cls, **overrides: Any) -> Tracer:
        """Configure from MSGTRACE_* variables (DESIGN.md, Configuration); keyword arguments win."""
        env = os.environ.get
        kw: dict[str, Any] = {"service": env("MSGTRACE_SERVICE"), "bootstrap": env("MSGTRACE_KAFKA_BOOTSTRAP") or None,
                              "audit_topic": env("MSGTRACE_AUDIT_TOPIC") or "msgtrace.audit",
                              "store": env("MSGTRACE_STORE") or None, "spool_dir": env("MSGTRACE_SPOOL_DIR") or None}
        kw.update(overrides)
        return cls(**kw)

    # --- identity configuration (read-only views) ------------------------------------------------
    @property
    def id_fn(self) -> Callable[[str, Any, Any], Any] | None:
        return self.policy.id_fn

    @property
    def consumer_id_fn(self) -> Callable[[Any], Any] | None:
        return self.policy.consumer_id_fn

    @property
    def default_group(self) -> str | None:
        """The group of the consumer wrapped last: ``processing(msg_id)`` names it unless told otherwise."""
        return self._core.default_group

    @default_group.setter
    def default_group(self, group: str | None) -> None:
        self._core.default_group = group

    def recorder(self, mq: str | None = None) -> Recorder:
        """The core's recorder for events of ``mq`` (adapters get theirs through ``wrap_*``)."""
        mq = mq or self.mq
        r = self._recorders.get(mq)
        if r is None:
            with self._recorders_lock:
                r = self._recorders.get(mq)
                if r is None:
                    r = self._recorders[mq] = Recorder(self._core, mq)
        return r

    # --- hooks --------------------------------------------------------------------------------------
    def wrap_producer(self, producer: Any, client: str | None = None) -> Any:
        """A proxy of ``producer`` recording sent / broker_acked / send_failed (and rolled_back).

        The adapter is chosen by the producer's type (kafka-python, confluent-kafka); ``client``
        names one explicitly ("kafka-python", "confluent-kafka").
        """
        return self._wrap(producer, "producer", client)

    def wrap_consumer(self, consumer: Any, client: str | None = None) -> Any:
        """A proxy of ``consumer`` recording received (poll, iteration) and offset_committed (all commits)."""
        return self._wrap(consumer, "consumer", client)

    def wrap_channel(self, channel: Any, client: str | None = None) -> Any:
        """A proxy of a RabbitMQ channel (pika) recording both the publishing and the consuming stages."""
        return self._wrap(channel, "channel", client)

    def _wrap(self, obj: Any, kind: str, client: str | None) -> Any:
        adapter = registry.adapter_for(obj, kind, client)
        return getattr(adapter, f"wrap_{kind}")(obj, self.recorder(getattr(adapter, "MQ", None)))

    def processing(self, record_or_msg_id: Any, consumer_group: str | None = None) -> _Processing:
        """Context manager: business_done on success, business_failed (re-raised) on an exception."""
        return _Processing(self, record_or_msg_id, consumer_group)

    def record(self, stage: str, msg_id: Any, *, topic: Any = None, partition: Any = None, offset: Any = None,
               consumer_group: Any = None, group: Any = None, key: Any = None, error: Any = None,
               trace_id: Any = None, span_id: Any = None, mq: Any = None, ts_us: Any = 0, attrs: Any = None,
               **fields: Any) -> None:
        """Record any stage by hand (other MQs, dead_lettered, ...). Never raises.

        ``msg_id``: the id, or a received record (its identity is looked up: its topic, partition,
        offset, group and trace ids fill the fields not given; a record re-published by ``msgtrace
        replay`` adds ``replay_run`` to attrs). Fields: topic, partition, offset, consumer_group (or
        group), key, error, trace_id, span_id, mq, ts_us, attrs (dict); any other keyword goes into
        attrs as text, e.g. ``record("dead_lettered", record, dlq_topic="orders.dlq", dlq_partition=0,
        dlq_offset=42)``: where the DLQ copy went (``msgtrace replay`` reads it there).

        The named fields are keyword parameters (parsed by the interpreter, not popped from a dict):
        this runs on the business thread, once per event.
        """
        try:
            if stage not in STAGES:
                raise ValueError(f"unknown stage {stage!r} (one of {', '.join(sorted(STAGES))})")
            if stage.__class__ is not str:
                stage = str(stage)
            if consumer_group is None:
                consumer_group = group
            if msg_id.__class__ is not str:
                if isinstance(msg_id, str):
                    msg_id = str(msg_id)
                else:
                    ident = self._identify(msg_id, None)
                    msg_id = ident.msg_id
                    if topic is None:
                        topic = ident.topic
                    if partition is None:
                        partition = ident.partition
                    if offset is None:
                        offset = ident.offset
                    if consumer_group is None:
                        consumer_group = ident.consumer_group
                    if trace_id is None:
                        trace_id = ident.trace_id
                    if span_id is None:
                        span_id = ident.span_id
                    if ident.replay_run:  # a record re-published by msgtrace replay: its events name the run
                        fields.setdefault("replay_run", ident.replay_run[:256])
            if key is not None:
                key = key_text(key)
            if error is not None:
                if error.__class__ is str:
                    if len(error) > MAX_ERROR_CHARS:
                        error = error[:MAX_ERROR_CHARS] + "..."
                elif isinstance(error, BaseException):
                    error = error_text(error)
                else:
                    error = error_text(str(error))
            out: dict[str, str] | None = None
            if attrs or fields:
                out = {str(k): str(v) for k, v in attrs.items()} if attrs else {}
                for k, v in fields.items():
                    out[k] = str(v)
                # one audit line must always fit an audit record: cap what callers hand us
                for k, v in out.items():
                    if len(k) > 256 or len(v) > MAX_ATTR_CHARS:
                        out = {k[:256]: v if len(v) <= MAX_ATTR_CHARS else v[:MAX_ATTR_CHARS] + "..."
                               for k, v in out.items()}
                        break
            self._emitter.emit(stage, msg_id, topic or "", partition, offset, consumer_group, key, error, trace_id,
                               span_id, out, mq, int(ts_us or 0))
        except Exception as e:
            self._emitter.counters["invalid"] += 1
            self._hook_error(e)

    # --- control ------------------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything recorded so far is shipped; False if not within ``timeout``."""
        self._flush_acks()
        return self._emitter.flush(timeout)

    def close(self, timeout: float | None = 5.0) -> bool:
        """Ship what can be shipped within ``timeout`` and stop; the rest stays in the spool."""
        _LIVE.discard(self)
        self._flush_acks()
        return self._emitter.close(timeout)

    def _flush_acks(self) -> None:
        """Delivery reports the adapters gathered and have not spooled yet (``Recorder.flush_acks``)."""
        for r in list(self._recorders.values()):
            r.flush_acks()

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def stats(self) -> dict[str, Any]:
        """The emitter's counters (recorded, shipped, dropped, ...) plus the hooks' own."""
        s = self._emitter.stats
        s.update(self._counters)
        s["pending_forgotten"] = self._core.forgotten()
        return s

    @property
    def emitter(self) -> Emitter:
        return self._emitter

    # --- internals ------------------------------------------------------------------------------------
    def _record_ref_for(self, cls: type) -> tuple[Callable[[Any], Any], Recorder] | None:
        """(the adapter's ``record_ref``, its recorder) for records of ``cls``, cached per class."""
        adapter = registry.adapter_for_record_type(cls)
        found = (adapter.record_ref, self.recorder(getattr(adapter, "MQ", None))) if adapter is not None else None
        if len(self._record_refs) > 256:
            self._record_refs.clear()
        self._record_refs[cls] = found
        return found

    def _identify(self, record: Any, group: str | None) -> Identity:
        """The identity of a received record (any client with an adapter)."""
        found = self._record_refs.get(type(record)) or self._record_ref_for(type(record))
        ref = found[0](record) if found is not None else None
        if ref is None:
            raise TypeError(f"not a msg_id nor a received record: {type(record).__qualname__}")
        return found[1].identify(ref, group)  # type: ignore[index]

    def _hook_error(self, e: BaseException) -> None:
        self._counters["hook_errors"] += 1
        text = self._emitter.last_error = error_text(e)
        self._emitter._log_rate_limited("msgtrace hook error (the business call was not affected): %s", text)


class _Processing:
    """``with tracer.processing(record):`` records the business outcome of one message."""

    __slots__ = ("_t", "_target", "_group", "_t0", "_ident", "_span", "_token", "_rec")

    def __init__(self, tracer: Tracer, target: Any, group: str | None) -> None:
        self._t, self._target, self._group = tracer, target, group
        self._span: Any = None
        self._token: Any = None
        self._ident: Identity | None = None

    def __enter__(self) -> _Processing:
        t = self._t
        try:
            target = self._target
            if isinstance(target, str):
                self._rec = t.recorder()
                self._ident = Identity(target, "", None, None, self._group or t.default_group)
            else:
                found = t._record_refs.get(type(target)) or t._record_ref_for(type(target))
                ref = found[0](target) if found is not None else None
                if ref is None:
                    raise TypeError(f"processing() needs a msg_id or a received record, "
                                    f"got {type(target).__qualname__}")
                self._rec = found[1]  # type: ignore[index]
                self._ident = self._rec.identify(ref, self._group)
            spans = t._core.spans
            ident = self._ident
            if spans is not None and ident is not None and not _consumer_span_active():
                self._span, self._token = spans.start_process(self._rec.mq, ident.msg_id, ident.topic,
                                                              ident.partition, ident.offset, ident.consumer_group,
                                                              ident.trace_id, ident.span_id)
                ids = spans.ids(self._span)
                if ids is not None:
                    ident.trace_id, ident.span_id = ids
        except Exception as e:
            t._hook_error(e)
            self._ident = None
        self._t0 = time.perf_counter_ns()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        t = self._t
        try:
            ident = self._ident
            if ident is not None and (exc is None or isinstance(exc, Exception)):
                # KeyboardInterrupt / SystemExit: the work did not finish, so no outcome is recorded
                self._rec.processed(ident, exc, (time.perf_counter_ns() - self._t0) // 1000)
            if self._span is not None:
                Spans.end_process(self._span, self._token, exc)
        except Exception as e:
            t._hook_error(e)
        return False  # re-raise the business exception unchanged


def _consumer_span_active() -> bool:
    """True when a CONSUMER span is already current: the client's own OpenTelemetry instrumentation
    (confluent-kafka's, pika's) made one for this message, so msgtrace starts no second one."""
    try:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        return getattr(trace.get_current_span(), "kind", None) == SpanKind.CONSUMER
    except Exception:
        return False


@atexit.register
def _close_all() -> None:
    """At interpreter exit, give each live tracer a moment to ship (the spool keeps the rest)."""
    for t in list(_LIVE):
        try:
            t.close(timeout=2.0)
        except Exception:
            pass
