"""The confluent-kafka adapter: proxies around ``confluent_kafka.Producer`` / ``Consumer`` that call the core.

Everything not traced is forwarded untouched, and the traced calls return exactly what confluent-kafka
returns or raise exactly what it raises (docs/sdk.md, "Rules every adapter keeps").

Producer
    ``produce(topic, value, key=, headers=, on_delivery=/callback=, msg_id=)`` records ``sent`` and adds
    the ``msgtrace-id`` header. The delivery report gives ``broker_acked`` (partition, offset) or
    ``send_failed``: msgtrace passes its own per-message callback, which records and then calls the
    application's (the per-message one, else the producer's configured ``on_delivery``) exactly once
    with librdkafka's arguments. A ``BufferError`` (local queue full) or any other exception from
    ``produce`` is a ``send_failed`` and is re-raised unchanged. ``poll``/``flush`` are untouched.
    Transactions: the sends between ``begin_transaction()`` and a successful ``abort_transaction()``
    get ``rolled_back``; offsets given to ``send_offsets_to_transaction()`` count as the group's
    commits once ``commit_transaction()`` succeeded.

Consumer
    ``poll()`` / ``consume()`` give ``received``. ``offset_committed`` only for what the broker accepted:
    a synchronous ``commit()`` returns the committed partitions (each checked for its error); an
    asynchronous commit and auto-commit (``enable.auto.commit``) are reported by librdkafka only to the
    ``on_commit`` callback, which exists only if it was configured when the consumer was built.

Why the drop-in classes :class:`Producer` and :class:`Consumer` (same arguments as confluent-kafka's):
librdkafka keeps ``on_delivery`` / ``on_commit`` / ``delivery.report.only.error`` inside the C handle and
confluent-kafka gives no way to read or set them afterwards. Built with these classes, msgtrace knows
them and chains them (``on_commit`` is installed as a relay that records, then calls the application's).
A plain ``confluent_kafka.Consumer`` still works: synchronous commits are recorded, asynchronous and
automatic ones cannot be seen (a warning says so once). A plain ``Producer`` whose configuration has no
callbacks at all (read from the handle's GC references, which hold every configured callable) gets
msgtrace's callback; one with configured callbacks msgtrace cannot tell apart keeps its own delivery
reports untouched, and msgtrace records only ``sent`` for produce calls without a callback (warned once).

OpenTelemetry's instrumentation (``ConfluentKafkaInstrumentor``: its proxies or its auto-instrumented
classes) injects its ``traceparent`` inside ``produce``: msgtrace then adds only ``msgtrace-id``, starts
no span and records ``sent`` with the instrumentation's trace and span ids (``Recorder.sent_instrumented``).
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import confluent_kafka

from tracer.identity import with_headers
from tracer.sdk.core import ACKS_FLUSH_AT, Recorder, RecordRef, Send
from tracer.sdk.otel import Spans

NAME = "confluent-kafka"
MQ = "kafka"
log = logging.getLogger("msgtrace.hooks")
_UNSET: Any = object()
_time_ns = time.time_ns
_warned: set[str] = set()
_warn_lock = threading.Lock()


def _warn_once(key: str, msg: str, *args: Any) -> None:
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(msg, *args)


# --- drop-in client classes ------------------------------------------------------------------------

def _conf(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The configuration dict confluent-kafka would see (a dict argument, keyword settings, or both)."""
    conf: dict[str, Any] = {}
    if args and isinstance(args[0], dict):
        conf.update(args[0])
        args = args[1:]
    if args:
        raise TypeError("expected a configuration dict")
    conf.update(kwargs)
    return conf


class Producer(confluent_kafka.Producer):
    """``confluent_kafka.Producer``, remembering its configuration (``config``) so that msgtrace can
    chain a configured ``on_delivery`` and honour ``delivery.report.only.error``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        conf = _conf(args, kwargs)
        super().__init__(conf)
        self.config = conf


class _CommitRelay:
    """The ``on_commit`` msgtrace installs: tells the wrapped consumers what the broker accepted, then
    calls the application's own ``on_commit`` (its exceptions propagate as without msgtrace)."""

    __slots__ = ("app", "sinks")

    def __init__(self, app: Callable[[Any, Any], Any] | None) -> None:
        self.app = app
        self.sinks: list[Callable[[Any, Any], None]] = []

    def __call__(self, err: Any, partitions: Any) -> None:
        for sink in self.sinks:
            sink(err, partitions)  # never raises (TracedConsumer._on_commit)
        if self.app is not None:
            self.app(err, partitions)


class Consumer(confluent_kafka.Consumer):
    """``confluent_kafka.Consumer`` whose asynchronous and automatic commits msgtrace can see: its
    ``on_commit`` is a relay to the wrapped consumer, then to the application's ``on_commit``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        conf = _conf(args, kwargs)
        relay = _CommitRelay(conf.get("on_commit"))
        super().__init__({**conf, "on_commit": relay})
        self.config = conf
        self._msgtrace_relay = relay


# --- what a client object tells us -----------------------------------------------------------------

def _instrumented(obj: Any) -> bool:
    """Does OpenTelemetry's confluent-kafka instrumentation wrap this object's produce/poll?"""
    return any((c.__module__ or "").startswith("opentelemetry.") for c in type(obj).__mro__)


def _raw(obj: Any) -> Any:
    """The confluent-kafka handle under OpenTelemetry's proxies (``ProxiedProducer/Consumer``)."""
    for name in ("original_producer", "original_consumer"):
        fn = getattr(type(obj), name, None)
        if fn is not None:
            try:
                return fn(obj)
            except Exception:
                return obj
    return obj


def _config(obj: Any) -> dict[str, Any] | None:
    for o in (obj, _raw(obj)):
        cfg = getattr(o, "config", None)
        if isinstance(cfg, dict):
            return cfg
    return None


def _has_callbacks(handle: Any) -> bool:
    """Whether the C handle holds any configured callable (on_delivery, error_cb, stats_cb, ...).

    The handle's GC traversal visits exactly the callables given in its configuration (and the
    logger); none at all proves there is no ``on_delivery`` that a per-message callback would shadow.
    """
    try:
        return any(callable(r) and not isinstance(r, type) for r in gc.get_referents(handle))
    except Exception:
        return True


def _truthy(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.lower() in ("true", "1"))


def group_of(consumer: Any) -> str | None:
    """The consumer's group id: from its configuration, else from librdkafka's serialized group
    metadata (``CGMDv2:`` + generation + group id, NUL-terminated)."""
    cfg = _config(consumer)
    if cfg and cfg.get("group.id"):
        return str(cfg["group.id"])
    try:
        md = _raw(consumer).consumer_group_metadata()
    except Exception:
        return None
    return group_from_metadata(md)


def group_from_metadata(md: Any) -> str | None:
    if not isinstance(md, (bytes, bytearray)) or not md.startswith(b"CGMDv") or md[6:7] != b":":
        return None
    rest = bytes(md[11:])
    end = rest.find(b"\0")
    return rest[:end].decode("utf-8", "replace") if end > 0 else None


# --- adapter entry points ---------------------------------------------------------------------------

def wrap_producer(producer: Any, recorder: Recorder) -> TracedProducer:
    if isinstance(producer, TracedProducer):
        return producer
    return TracedProducer(producer, recorder)


def wrap_consumer(consumer: Any, recorder: Recorder) -> TracedConsumer:
    if isinstance(consumer, TracedConsumer):
        return consumer
    return TracedConsumer(consumer, recorder)


def record_ref(record: Any) -> RecordRef | None:
    """Where a confluent-kafka ``Message`` sits (``processing(message)``)."""
    try:
        topic, partition, offset = record.topic(), record.partition(), record.offset()
        headers, key = record.headers(), record.key()
    except (AttributeError, TypeError):
        return None
    return RecordRef((topic, partition), offset, topic, partition, offset, headers, key, record)


def _kafka_error_text(err: Any) -> str:
    """``KafkaError _MSG_TIMED_OUT: Local: Message timed out`` (name and text, once)."""
    try:
        return f"KafkaError {err.name()}: {err.str()}"
    except Exception:
        return f"KafkaError: {err}"


class _Report(Send):
    """A send that is its own delivery callback (``callback=send``): no closure per message.

    A success appends one row to the recorder's ``acks`` (spooled by :meth:`Recorder.flush_acks` before
    the ``poll()`` / ``flush()`` that ran the report returns, or when enough are waiting); a failure
    records ``send_failed`` at once. Then the application's callback (``app``, the per-message one or
    the producer's configured ``on_delivery``) is called once with librdkafka's arguments; its
    exceptions reach ``poll()`` / ``flush()`` as without msgtrace."""

    __slots__ = ()

    def __call__(self, err: Any, msg: Any) -> None:  # type: ignore[override]  # librdkafka's (err, msg)
        rec, mid, topic, _p, k, tid, sid, span, _h, app = self
        try:
            if err is None:
                acks = rec.acks
                acks.append((mid, topic, msg.partition(), msg.offset(), k, tid, sid, _time_ns()))
                if span is not None:
                    Spans.end_send(span, msg.partition(), msg.offset(), None)
                if len(acks) >= ACKS_FLUSH_AT:
                    rec.flush_acks()
            else:
                self.failed(_kafka_error_text(err))
        except Exception as e:  # runs inside librdkafka's callback path: never raise into it
            rec.hook_error(e)
        if app is not None:
            app(err, msg)


def _report_cell(cell: list[Send], app: Callable[[Any, Any], Any] | None) -> Callable[[Any, Any], None]:
    """The delivery callback of an instrumented send, whose Send is completed after the client call."""
    def dr(err: Any, msg: Any) -> None:
        s = cell[0]
        if err is None:
            s.acked(msg.partition(), msg.offset())
        else:
            s.failed(_kafka_error_text(err))
        if app is not None:
            app(err, msg)
    return dr


class TracedProducer:
    """A confluent-kafka Producer that records sent / broker_acked / send_failed (and rolled_back)."""

    def __init__(self, producer: Any, recorder: Recorder) -> None:
        sa = object.__setattr__
        sa(self, "_producer", producer)
        sa(self, "_rec", recorder)
        sa(self, "_produce", producer.produce)
        sa(self, "_txn", None)        # the sends of the open transaction, if any
        sa(self, "_txn_offsets", [])  # (group, [TopicPartition]) given to send_offsets_to_transaction
        cfg = _config(producer)
        sa(self, "_instrumented", _instrumented(producer))
        sa(self, "_txn_id", (cfg or {}).get("transactional.id"))
        default = None
        may_add = True
        if cfg is not None:
            default = cfg.get("on_delivery") or cfg.get("delivery.report.callback")
            if _truthy(cfg.get("delivery.report.only.error")):
                _warn_once("only-error", "msgtrace: delivery.report.only.error is set: librdkafka reports no "
                           "successful delivery, so broker_acked cannot be recorded (sent and send_failed are)")
        elif _has_callbacks(_raw(producer)):
            may_add = False
            _warn_once("producer-callbacks",
                       "msgtrace: this confluent-kafka Producer was configured with callbacks msgtrace cannot "
                       "read (one may be on_delivery, which a per-message callback would replace): produce() "
                       "calls without their own callback record only 'sent'. Build it with "
                       "tracer.sdk.confluent.Producer (same arguments) to record broker_acked/send_failed too.")
        sa(self, "_default_cb", default)
        sa(self, "_may_add", may_add)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._producer, name, value)

    def __len__(self) -> int:
        return len(self._producer)

    def __repr__(self) -> str:
        return f"<TracedProducer {self._producer!r}>"

    @property
    def wrapped(self) -> Any:
        """The confluent-kafka producer underneath."""
        return self._producer

    def produce(self, topic: Any, value: Any = None, key: Any = None, partition: Any = _UNSET,
                callback: Any = None, on_delivery: Any = None, timestamp: Any = _UNSET, headers: Any = None,
                msg_id: Any = None) -> Any:
        """Producer.produce, plus the ``msgtrace-id`` header and the send stages (the same positional
        order as confluent-kafka's: topic, value, key, partition, callback, on_delivery, timestamp, headers)."""
        app = callback if callback is not None else on_delivery
        if partition is not _UNSET or timestamp is not _UNSET or self._instrumented:
            return self._produce_general(topic, value, key, partition, timestamp, app, headers, msg_id)
        rec = self._rec
        try:  # the common call, kept short: every µs shows on a ~2 µs client
            if app is None:
                app = self._default_cb
            s = rec.sent(topic, key, value, msg_id, headers, None, _Report, app)
            add = s[8]
            hdrs = headers if not add else (add if headers is None else with_headers(headers, add))
        except Exception as e:  # a bug in the hook must not cost the business its send
            rec.hook_error(e)
            return self._produce(topic, value, key, headers=headers, callback=app)
        try:
            if app is None and not self._may_add:
                result = self._produce(topic, value, key, headers=hdrs)
            else:
                result = self._produce(topic, value, key, callback=s, headers=hdrs)
        except BaseException as e:  # BufferError (queue full), KafkaException, ...: re-raised unchanged
            s.failed(e)
            raise
        if self._txn is not None:
            self._txn.append(s)
        return result

    def _produce_general(self, topic: Any, value: Any, key: Any, partition: Any, timestamp: Any, app: Any,
                         headers: Any, msg_id: Any) -> Any:
        """produce() with a partition or timestamp, or on an instrumented client."""
        rec = self._rec
        extra: dict[str, Any] = {}
        if partition is not _UNSET:
            extra["partition"] = partition
        if timestamp is not _UNSET:
            extra["timestamp"] = timestamp
        if self._instrumented:
            return self._produce_instrumented(topic, value, key, app, headers, msg_id, extra)
        try:
            if app is None:
                app = self._default_cb
            s = rec.sent(topic, key, value, msg_id, headers, extra.get("partition"), _Report, app)
            add = s[8]
            hdrs = headers if not add else (list(add) if headers is None else with_headers(headers, add))
            cb = s if (app is not None or self._may_add) else None
        except Exception as e:
            rec.hook_error(e)
            return self._produce(topic, value, key, headers=headers, callback=app, **extra)
        try:
            if cb is None:
                result = self._produce(topic, value, key, headers=hdrs, **extra)
            else:
                result = self._produce(topic, value, key, callback=cb, headers=hdrs, **extra)
        except BaseException as e:
            s.failed(e)
            raise
        if self._txn is not None:
            self._txn.append(s)
        return result

    def _produce_instrumented(self, topic: Any, value: Any, key: Any, app: Any, headers: Any, msg_id: Any,
                              extra: dict[str, Any]) -> Any:
        """The produce of a client OpenTelemetry instruments: its traceparent, msgtrace's id."""
        rec = self._rec
        try:
            s = rec.sent_instrumented(topic, key, value, msg_id, headers, extra.get("partition"))
            hdrs = with_headers(headers, s[8])  # a new carrier the instrumentation injects into
            if isinstance(hdrs, tuple):
                hdrs = list(hdrs)
            cell = [s]
            if app is None:
                app = self._default_cb
            cb = _report_cell(cell, app) if (app is not None or self._may_add) else None
        except Exception as e:
            rec.hook_error(e)
            return self._produce(topic, value, key=key, headers=headers, callback=app, **extra)
        kw = dict(extra)
        if cb is not None:
            kw["callback"] = cb
        try:
            # keywords: OpenTelemetry's proxy passes positional arguments after value on in the wrong place
            result = self._produce(topic, value, key=key, headers=hdrs, **kw)
        except BaseException as e:
            cell[0] = rec.sent_done(s, hdrs)
            cell[0].failed(e)
            raise
        cell[0] = rec.sent_done(s, hdrs)
        if self._txn is not None:
            self._txn.append(cell[0])
        return result

    # --- where librdkafka runs delivery reports: the acks they gathered are spooled before returning ---
    def poll(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._producer.poll(*args, **kwargs)
        finally:
            self._rec.flush_acks()

    def flush(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._producer.flush(*args, **kwargs)
        finally:
            self._rec.flush_acks()

    def purge(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._producer.purge(*args, **kwargs)
        finally:
            self._rec.flush_acks()

    def close(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._producer.close(*args, **kwargs)
        finally:
            self._rec.flush_acks()

    def produce_batch(self, *args: Any, **kwargs: Any) -> Any:
        _warn_once("produce-batch", "msgtrace: produce_batch() is not traced (confluent-kafka's batch mode "
                   "carries no headers, so msgtrace-id cannot travel); use produce()")
        return self._producer.produce_batch(*args, **kwargs)

    # --- transactions -------------------------------------------------------------------------------
    def begin_transaction(self, *args: Any, **kwargs: Any) -> Any:
        result = self._producer.begin_transaction(*args, **kwargs)
        object.__setattr__(self, "_txn", [])
        self._txn_offsets.clear()
        return result

    def send_offsets_to_transaction(self, positions: Any, group_metadata: Any, *args: Any, **kwargs: Any) -> Any:
        result = self._producer.send_offsets_to_transaction(positions, group_metadata, *args, **kwargs)
        try:
            group = group_from_metadata(group_metadata)
            if group is not None:
                self._txn_offsets.append((group, [(tp.topic, tp.partition, tp.offset) for tp in positions]))
        except Exception as e:
            self._rec.hook_error(e)
        return result

    def commit_transaction(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = self._producer.commit_transaction(*args, **kwargs)  # flushes: delivery reports run
        finally:
            self._rec.flush_acks()
        try:  # committed: the transaction's offsets now count as the group's commits
            for group, parts in self._txn_offsets:
                for topic, partition, offset in parts:
                    if offset is not None and offset >= 0:
                        self._rec.committed_group(group, (topic, partition), offset)
        except Exception as e:
            self._rec.hook_error(e)
        object.__setattr__(self, "_txn", None)
        self._txn_offsets.clear()
        return result

    def abort_transaction(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = self._producer.abort_transaction(*args, **kwargs)
        finally:
            self._rec.flush_acks()
        sends = self._txn
        object.__setattr__(self, "_txn", None)
        self._txn_offsets.clear()
        if sends:
            self._rec.rolled_back(sends, self._txn_id)
        return result


class TracedConsumer:
    """A confluent-kafka Consumer that records received and offset_committed."""

    def __init__(self, consumer: Any, recorder: Recorder) -> None:
        sa = object.__setattr__
        sa(self, "_consumer", consumer)
        sa(self, "_rec", recorder)
        sa(self, "_poll", consumer.poll)
        sa(self, "_consume", consumer.consume)
        group = group_of(consumer)
        sa(self, "group", group)
        sa(self, "_book", recorder.consumer(group))
        relay = getattr(_raw(consumer), "_msgtrace_relay", None)
        sa(self, "_relay", relay)
        if relay is not None:
            relay.sinks.append(self._on_commit)
        elif group is not None:
            _warn_once("consumer-relay",
                       "msgtrace: this confluent-kafka Consumer was not built with tracer.sdk.confluent.Consumer: "
                       "librdkafka reports asynchronous and automatic commits only to an on_commit callback set "
                       "at construction, so only synchronous commits give offset_committed. Build it with "
                       "tracer.sdk.confluent.Consumer (same arguments) to record every commit.")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._consumer, name, value)

    def __repr__(self) -> str:
        return f"<TracedConsumer {self._consumer!r}>"

    @property
    def wrapped(self) -> Any:
        """The confluent-kafka consumer underneath."""
        return self._consumer

    @property
    def inflight(self) -> Any:
        """This consumer's in-flight book (received, not yet committed)."""
        return self._book

    # --- received -----------------------------------------------------------------------------------
    def poll(self, *args: Any, **kwargs: Any) -> Any:
        m = self._poll(*args, **kwargs)
        if m is not None:
            try:
                if m.error() is None:
                    topic, partition = m.topic(), m.partition()
                    rec = self._rec
                    headers, key = m.headers(), m.key()
                    mid = rec.incoming_id(m, headers, key) if rec.incoming_ids_needed else None
                    rec.received(self._book, (topic, partition), topic, partition,
                                 ((m.offset(), key, headers, mid, None),))
            except Exception as e:
                self._rec.hook_error(e)
        return m

    def consume(self, *args: Any, **kwargs: Any) -> Any:
        msgs = self._consume(*args, **kwargs)
        if msgs:
            try:
                self._received(msgs)
            except Exception as e:
                self._rec.hook_error(e)
        return msgs

    def _received(self, msgs: Any) -> None:
        """One ``received`` per message, spooled per partition (a batch may span several)."""
        rec = self._rec
        needed = rec.incoming_ids_needed
        lanes: dict[tuple[str, int], list[tuple[Any, ...]]] = {}
        for m in msgs:
            if m.error() is not None:
                continue
            lane = (m.topic(), m.partition())
            headers, key = m.headers(), m.key()
            e = (m.offset(), key, headers, rec.incoming_id(m, headers, key) if needed else None, None)
            lst = lanes.get(lane)
            if lst is None:
                lanes[lane] = [e]
            else:
                lst.append(e)
        book = self._book
        for lane, entries in lanes.items():
            rec.received(book, lane, lane[0], lane[1], entries)

    # --- rebalances -----------------------------------------------------------------------------------
    def subscribe(self, topics: Any, *args: Any, **kwargs: Any) -> Any:
        """Consumer.subscribe, with the application's rebalance callbacks chained (they get this proxy,
        so a commit they make is recorded): partitions revoked or lost take their received, uncommitted
        messages out of this member's book (another member gets them, or this one again: a commit of
        the new assignment covers only what it received in it)."""
        names = ("on_assign", "on_revoke", "on_lost")
        cbs = dict(zip(names, args))
        cbs.update({k: kwargs.pop(k) for k in names if k in kwargs})
        try:
            app_assign, app_revoke, app_lost = (cbs.get(k) for k in names)
            cbs["on_revoke"] = self._rebalance_cb(app_revoke)
            # librdkafka gives lost partitions to on_revoke when there is no on_lost: keep that
            cbs["on_lost"] = self._rebalance_cb(app_lost if app_lost is not None else app_revoke)
            if app_assign is not None:
                cbs["on_assign"] = self._app_cb(app_assign)
        except Exception as e:
            self._rec.hook_error(e)
            cbs = dict(zip(names, args))
        return self._consumer.subscribe(topics, **cbs, **kwargs)

    def _app_cb(self, app: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def cb(_consumer: Any, partitions: Any) -> Any:
            return app(self, partitions)
        return cb

    def _rebalance_cb(self, app: Callable[[Any, Any], Any] | None) -> Callable[[Any, Any], Any]:
        def cb(_consumer: Any, partitions: Any) -> Any:
            try:
                if app is not None:
                    return app(self, partitions)
                return None
            finally:
                try:
                    for tp in partitions:
                        self._book.forget((tp.topic, tp.partition))
                except Exception as e:
                    self._rec.hook_error(e)
        return cb

    # --- offset_committed ---------------------------------------------------------------------------
    def commit(self, *args: Any, **kwargs: Any) -> Any:
        """Consumer.commit. Synchronous: the partitions it returns (each without error) are recorded;
        asynchronous: librdkafka's report to ``on_commit`` is (consumers built with :class:`Consumer`)."""
        result = self._consumer.commit(*args, **kwargs)
        if result:  # only a synchronous commit returns the committed partitions
            self._accepted(result)
        return result

    def _on_commit(self, err: Any, partitions: Any) -> None:
        """librdkafka's report of an asynchronous or automatic commit (run inside poll/consume/close)."""
        if err is None and partitions:
            self._accepted(partitions)

    def _accepted(self, partitions: Any) -> None:
        try:
            rec, book = self._rec, self._book
            for tp in partitions:
                if tp.error is None and tp.offset >= 0:
                    rec.committed(book, (tp.topic, tp.partition), tp.offset)
        except Exception as e:  # runs inside librdkafka's callback path: never raise into it
            self._rec.hook_error(e)


__all__ = [
    "MQ",
    "NAME",
    "Consumer",
    "Producer",
    "TracedConsumer",
    "TracedProducer",
    "group_from_metadata",
    "group_of",
    "record_ref",
    "wrap_consumer",
    "wrap_producer",
]
