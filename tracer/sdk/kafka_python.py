"""The kafka-python adapter: proxies around KafkaProducer / KafkaConsumer that call the core.

Everything not traced is forwarded untouched (``__getattr__``), and the traced calls return exactly
what kafka-python returns or raise exactly what it raises: the audit sits beside the business path.

- ``sent`` when ``send()`` is called; ``broker_acked`` / ``send_failed`` from the send future (its
  callbacks run on kafka-python's IO thread) or from an exception ``send()`` raised.
- Transactions (``transactional_id``): every send between ``begin_transaction()`` and a successful
  ``abort_transaction()`` gets ``rolled_back``; offsets given to ``send_offsets_to_transaction()``
  become ``offset_committed`` for the wrapped consumers of that group once ``commit_transaction()``
  succeeded.
- ``received`` once per record returned by ``poll()`` or by iteration. The proxy wraps the consumer
  rather than patching it, so kafka-python's ``__next__`` calling its own ``poll()`` is not seen twice.
- ``offset_committed`` from a hook on the coordinator's handling of the broker's OffsetCommit
  response (run on the IO thread by the commit request coroutine in kafka-python 3): every commit
  kafka-python makes (``commit()``, ``commit_async()``, auto-commit, the commit before a rebalance and
  at close) goes through it; only the partitions the broker accepted count, and a commit refused
  before it is sent (a member that knows it left the group) records nothing. Each received message
  whose offset the committed position passed gets one event; ``offset`` is the committed position
  (Kafka's "next offset to read"), ``attrs.record_offset`` the message's.
"""
from __future__ import annotations

import inspect
import logging
import threading
from typing import Any

from tracer.identity import MAX_ERROR_CHARS as MAX_ERROR_CHARS  # noqa: F401  (older imports)
from tracer.identity import TRACEPARENT as TRACEPARENT  # noqa: F401
from tracer.identity import error_text as error_text
from tracer.identity import key_text
from tracer.identity import parse_traceparent as parse_traceparent  # noqa: F401
from tracer.sdk.core import Recorder, RecordRef

NAME = "kafka-python"
MQ = "kafka"
log = logging.getLogger("msgtrace.hooks")
key_str = key_text  # the name before tracer.identity


def wrap_producer(producer: Any, recorder: Recorder) -> TracedProducer:
    return TracedProducer(producer, recorder)


def wrap_consumer(consumer: Any, recorder: Recorder) -> TracedConsumer:
    return TracedConsumer(consumer, recorder)


def record_ref(record: Any) -> RecordRef | None:
    """Where a kafka-python ConsumerRecord sits (``processing(record)``)."""
    try:
        topic, partition, offset = record.topic, record.partition, record.offset
    except AttributeError:
        return None
    return RecordRef((topic, partition), offset, topic, partition, offset, getattr(record, "headers", None),
                     getattr(record, "key", None), record)


def otel_wrapped(obj: Any, name: str) -> bool:
    """Is ``type(obj).<name>`` wrapped by an OpenTelemetry instrumentation (wrapt, at instrument() time)?"""
    wrapper = getattr(getattr(type(obj), name, None), "_self_wrapper", None)
    return wrapper is not None and (getattr(wrapper, "__module__", "") or "").startswith("opentelemetry.")


class TracedProducer:
    """A KafkaProducer that records sent / broker_acked / send_failed (and rolled_back)."""

    def __init__(self, producer: Any, recorder: Recorder) -> None:
        sa = object.__setattr__
        sa(self, "_producer", producer)
        sa(self, "_rec", recorder)
        sa(self, "_send", producer.send)
        sa(self, "_batches", {})     # produce batch future -> _BatchAcks (its sends, acked in one callback)
        sa(self, "_new_batches", [0])  # a cell: attribute writes on the proxy go to the producer
        sa(self, "_txn", None)       # the sends of the open transaction, if any
        sa(self, "_txn_offsets", [])  # (group, offsets) given to send_offsets_to_transaction
        # OpenTelemetry's KafkaInstrumentor wraps KafkaProducer.send and injects its traceparent there
        sa(self, "_instrumented", otel_wrapped(producer, "send"))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._producer, name, value)

    def __repr__(self) -> str:
        return f"<TracedProducer {self._producer!r}>"

    def __enter__(self) -> TracedProducer:
        self._producer.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._producer.__exit__(*exc)

    @property
    def wrapped(self) -> Any:
        """The kafka-python producer underneath."""
        return self._producer

    def send(self, topic: Any, value: Any = None, key: Any = None, headers: Any = None, partition: Any = None,
             timestamp_ms: Any = None, msg_id: Any = None) -> Any:
        """KafkaProducer.send, plus the ``msgtrace-id`` header (DESIGN.md, Headers) and the send stages."""
        rec = self._rec
        if self._instrumented:
            return self._send_instrumented(topic, value, key, headers, partition, timestamp_ms, msg_id)
        try:
            s = rec.sent(topic, key, value, msg_id, headers, partition)
            add = s[8]
            if not add:
                out = headers
            elif headers is None:
                out = add  # the list the core built for this send: handed over as is
            else:
                out = headers + list(add) if type(headers) is list else headers
        except Exception as e:  # a bug in the hook must not cost the business its send
            rec.hook_error(e)
            return self._send(topic, value, key, headers, partition, timestamp_ms)
        try:
            future = self._send(topic, value, key, out, partition, timestamp_ms)
        except Exception as e:
            s.failed(e)
            raise
        try:
            pf = getattr(future, "_produce_future", None)
            batch = self._batches.get(pf) if pf is not None else None
            if batch is not None:
                batch.add(s, future)
            elif pf is not None and type(future.args) is tuple:
                self._new_batch(pf, s, future)
            else:  # not kafka-python's record future: one callback per send
                future.add_both(s)
            txn = self._txn
            if txn is not None:
                txn.append(s)
        except Exception as e:
            rec.hook_error(e)
        return future

    def _send_instrumented(self, topic: Any, value: Any, key: Any, headers: Any, partition: Any, timestamp_ms: Any,
                           msg_id: Any) -> Any:
        """send() through OpenTelemetry's instrumentation (KafkaInstrumentor wraps KafkaProducer.send and
        injects its traceparent into the header list handed to it): msgtrace adds only its id, starts no
        span, and spools ``sent`` with the instrumentation's ids (one callback per send: a rare path)."""
        rec = self._rec
        try:
            s = rec.sent_instrumented(topic, key, value, msg_id, headers, partition)
            if headers is None:
                out: Any = list(s[8])
            elif type(headers) is list:
                out = headers + list(s[8])
            else:
                out = headers
        except Exception as e:
            rec.hook_error(e)
            return self._send(topic, value, key, headers, partition, timestamp_ms)
        try:
            future = self._send(topic, value, key, out, partition, timestamp_ms)
        except Exception as e:
            rec.sent_done(s, out).failed(e)
            raise
        s = rec.sent_done(s, out)
        try:
            future.add_both(s)
            if self._txn is not None:
                self._txn.append(s)
        except Exception as e:
            rec.hook_error(e)
        return future

    def _new_batch(self, pf: Any, s: Any, future: Any) -> None:
        """The first send of a new produce batch: one callback on the batch's future serves all its sends."""
        b = _BatchAcks(self, pf, s, future)
        self._batches[pf] = b
        n = self._new_batches[0] = self._new_batches[0] + 1
        if n & 1023 == 0:
            self._sweep(stale_only=True)
        pf._add_cb_eb(b.done, b.failed)  # fires at once if the batch is already complete

    def _sweep(self, stale_only: bool = False) -> None:
        """Sends whose record future left its batch (kafka-python splits a batch the broker found too large
        and rebinds its futures; the old batch never completes): each gets a callback of its own."""
        for pf, b in list(self._batches.items()):
            if stale_only and not b.stale():
                continue
            for s, f in b.take_rebound():
                f.add_both(s)
            if pf.is_done or not b.sends:
                self._batches.pop(pf, None)

    def flush(self, timeout: Any = None) -> Any:
        result = self._producer.flush(timeout)
        try:
            self._sweep()
        except Exception as e:
            self._rec.hook_error(e)
        return result

    def close(self, *a: Any, **kw: Any) -> Any:
        result = self._producer.close(*a, **kw)
        try:
            self._sweep()
        except Exception as e:
            self._rec.hook_error(e)
        return result

    # --- transactions -------------------------------------------------------------------------------
    def begin_transaction(self) -> Any:
        result = self._producer.begin_transaction()
        object.__setattr__(self, "_txn", [])
        self._txn_offsets.clear()
        return result

    def send_offsets_to_transaction(self, offsets: Any, group_metadata: Any) -> Any:
        result = self._producer.send_offsets_to_transaction(offsets, group_metadata)
        try:
            group = getattr(group_metadata, "group_id", group_metadata)
            self._txn_offsets.append((str(group), dict(offsets)))
        except Exception as e:
            self._rec.hook_error(e)
        return result

    def commit_transaction(self) -> Any:
        result = self._producer.commit_transaction()
        try:  # committed: the transaction's offsets now count as the group's commits
            for group, offsets in self._txn_offsets:
                for tp, om in offsets.items():
                    self._rec.committed_group(group, tp, getattr(om, "offset", om))
        except Exception as e:
            self._rec.hook_error(e)
        object.__setattr__(self, "_txn", None)
        self._txn_offsets.clear()
        return result

    def abort_transaction(self) -> Any:
        result = self._producer.abort_transaction()
        sends = self._txn
        object.__setattr__(self, "_txn", None)
        self._txn_offsets.clear()
        if sends:
            self._rec.rolled_back(sends, self._transactional_id())
        return result

    def _transactional_id(self) -> str | None:
        try:
            tid = self._producer.config.get("transactional_id")
        except Exception:
            return None
        return str(tid) if tid else None


class _BatchAcks:
    """The sends of one produce batch, recorded by one callback on the batch's future (kafka-python's
    IO thread): ``broker_acked`` for all of them in one spool frame, instead of one callback and one
    frame per message. A send noted after the batch completed (a race with the IO thread) and a send
    whose future was moved to another batch get a callback of their own. Sends and their futures are
    kept in two parallel lists (no tuple per message for the garbage collector to scan)."""

    __slots__ = ("owner", "pf", "sends", "futures", "lock", "closed")

    def __init__(self, owner: TracedProducer, pf: Any, s: Any, future: Any) -> None:
        self.owner, self.pf = owner, pf
        self.sends: list[Any] = [s]
        self.futures: list[Any] = [future]
        self.lock = threading.Lock()
        self.closed = False

    def add(self, s: Any, future: Any) -> None:
        with self.lock:
            if not self.closed:
                self.sends.append(s)
                self.futures.append(future)
                return
        future.add_both(s)  # the batch is done already: its own future is too, so this fires at once

    def _take(self) -> tuple[list[Any], list[Any]]:
        with self.lock:
            self.closed = True
            sends, futures = self.sends, self.futures
            self.sends, self.futures = [], []
        self.owner._batches.pop(self.pf, None)
        return sends, futures

    def take_rebound(self) -> list[tuple[Any, Any]]:
        with self.lock:
            pf = self.pf
            moved = [(s, f) for s, f in zip(self.sends, self.futures) if f._produce_future is not pf]
            if moved:
                keep = [(s, f) for s, f in zip(self.sends, self.futures) if f._produce_future is pf]
                self.sends, self.futures = [s for s, _ in keep], [f for _, f in keep]
        return moved

    def stale(self) -> bool:
        pf = self.pf
        return any(f._produce_future is not pf for f in self.futures)

    def done(self, result: Any) -> None:
        """The batch's future succeeded: ``(base offset, log append time, per-record errors or None)``."""
        try:
            sends, futures = self._take()
            base, _, record_errors = result
            pf = self.pf
            topic, partition = pf.topic_partition
            acked = []
            for s, f in zip(sends, futures):
                if f._produce_future is not pf:  # moved to another batch: it completes there
                    f.add_both(s)
                    continue
                idx = f.args[0]
                if record_errors is not None:
                    s.failed(record_errors(idx))
                    continue
                acked.append((s, base + idx if base != -1 and idx is not None else base))
            if acked:
                self.owner._rec.acked_many(topic, partition, acked)
        except Exception as e:  # on kafka-python's IO thread: never raise into it
            self.owner._rec.hook_error(e)

    def failed(self, error: BaseException) -> None:
        try:
            sends, futures = self._take()
            for s, f in zip(sends, futures):
                if f._produce_future is not self.pf:
                    f.add_both(s)
                else:
                    s.failed(error)
        except Exception as e:
            self.owner._rec.hook_error(e)


class TracedConsumer:
    """A KafkaConsumer that records received and offset_committed."""

    def __init__(self, consumer: Any, recorder: Recorder) -> None:
        sa = object.__setattr__
        sa(self, "_consumer", consumer)
        sa(self, "_rec", recorder)
        config = getattr(consumer, "config", None) or {}
        group = config.get("group_id")
        sa(self, "group", group)
        sa(self, "_book", recorder.consumer(group))
        self._install_commit_hook()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._consumer, name, value)

    def __repr__(self) -> str:
        return f"<TracedConsumer {self._consumer!r}>"

    def __enter__(self) -> TracedConsumer:
        self._consumer.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._consumer.__exit__(*exc)

    @property
    def wrapped(self) -> Any:
        """The kafka-python consumer underneath."""
        return self._consumer

    @property
    def inflight(self) -> Any:
        """This consumer's in-flight book (received, not yet committed)."""
        return self._book

    # --- received -----------------------------------------------------------------------------------
    def poll(self, timeout_ms: Any = 0, max_records: Any = None, update_offsets: bool = True) -> Any:
        records = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records,
                                      update_offsets=update_offsets)
        if records:
            try:
                for tp, recs in records.items():
                    self._received(tp, recs)
            except Exception as e:
                self._rec.hook_error(e)
        return records

    def __iter__(self) -> TracedConsumer:
        return self

    def __next__(self) -> Any:
        record = next(self._consumer)
        try:
            rec = self._rec
            topic, partition, headers = record.topic, record.partition, record.headers
            mid = rec.incoming_id(record, headers, record.key) if rec.incoming_ids_needed else None
            rec.received_one(self._book, (topic, partition), topic, partition,
                             (record.offset, record.key, headers, mid, None))
        except Exception as e:
            self._rec.hook_error(e)
        return record

    def _received(self, lane: Any, records: Any) -> None:
        """One ``received`` per record of one partition, spooled for the batch at once."""
        rec = self._rec
        if rec.incoming_ids_needed:
            ident = rec.incoming_id
            entries = [(r.offset, r.key, r.headers, ident(r, r.headers, r.key), None) for r in records]
        else:  # ids are read from the headers later, off the business thread
            entries = [(r.offset, r.key, r.headers, None, None) for r in records]
        first = records[0]
        rec.received(self._book, lane, first.topic, first.partition, entries)

    # --- offset_committed ---------------------------------------------------------------------------
    def _install_commit_hook(self) -> None:
        """Hook where the broker's answer to a commit is known (kafka-python 3, on its IO thread).

        Every commit kafka-python makes goes through the coordinator's commit request coroutine, which
        hands the broker's OffsetCommit response to ``_handle_offset_commit_response``: the hook reads the
        per-partition error codes there and records ``offset_committed`` for the partitions the broker
        accepted (error code 0), and only those, before kafka-python raises for the others. A commit that
        never reaches the broker (the client knows it left the group) raises before any response and
        records nothing. Older layouts without that method: the request coroutine is wrapped instead,
        and a commit counts once it returned without raising.
        """
        coord = getattr(self._consumer, "_coordinator", None)
        if self.group is None or coord is None:
            return
        handle = getattr(coord, "_handle_offset_commit_response", None)
        if handle is not None and getattr(handle, "_msgtrace", False):
            return  # already hooked (the same consumer wrapped twice)
        on_commit = self._committed
        if handle is not None and callable(handle):
            def hooked_response(offsets: Any, send_time: Any, response: Any, *a: Any, **kw: Any) -> Any:
                try:
                    accepted = _accepted(offsets, response)
                except Exception as e:
                    self._rec.hook_error(e)
                    accepted = {}
                try:
                    return handle(offsets, send_time, response, *a, **kw)
                finally:
                    if accepted:
                        on_commit(accepted)

            hooked_response._msgtrace = True  # type: ignore[attr-defined]
            coord._handle_offset_commit_response = hooked_response
            return
        orig = getattr(coord, "_send_offset_commit_request", None)
        if orig is None or not inspect.iscoroutinefunction(orig):
            log.warning("msgtrace: this kafka-python has no commit hook msgtrace knows; "
                        "offset_committed will not be recorded")
            return
        if getattr(orig, "_msgtrace", False):
            return

        async def hooked(offsets: Any, *a: Any, **kw: Any) -> Any:
            result = await orig(offsets, *a, **kw)  # raises when the broker rejected the commit
            on_commit(offsets)
            return result

        hooked._msgtrace = True  # type: ignore[attr-defined]
        coord._send_offset_commit_request = hooked

    def _committed(self, offsets: Any) -> None:
        """The broker accepted ``offsets``: every received message below them is now committed."""
        try:
            rec, book = self._rec, self._book
            for tp, om in offsets.items():
                rec.committed(book, tp, getattr(om, "offset", om))
        except Exception as e:  # runs on kafka-python's IO path: never raise into it
            self._rec.hook_error(e)


def _accepted(offsets: Any, response: Any) -> dict[Any, Any]:
    """The entries of ``offsets`` whose partition the OffsetCommit ``response`` reports without error."""
    ok = set()
    for topic, partitions in response.topics:
        for partition, error_code in partitions:
            if error_code == 0:
                ok.add((topic, partition))
    return {tp: om for tp, om in offsets.items() if (tp[0], tp[1]) in ok}


__all__ = ["TracedProducer", "TracedConsumer", "wrap_producer", "wrap_consumer", "record_ref", "NAME", "MQ"]
