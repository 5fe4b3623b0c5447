"""The client-agnostic core every adapter calls: one typed call per stage, identity decided once.

A client adapter (``tracer/sdk/<client>.py``, see ``docs/sdk.md``) wraps a producer, consumer or
channel and calls a :class:`Recorder`; it never sees :class:`~tracer.sdk.tracer.Tracer` internals,
the emitter or the spool format. The calls, by stage (DESIGN.md, Stages):

========================  ====================================================================
``sent(...) -> Send``      the app handed a message to the client: identity (msg_id, trace
                           context, the headers to add) decided, ``sent`` spooled
                           (``sent_instrumented`` + ``sent_done``: a client whose own
                           OpenTelemetry instrumentation injects the context in the call)
``Send.acked(p, o)``       ``broker_acked``            (``Send.acked_metadata(md)``: md.partition/offset;
                           ``acked_many(topic, p, [(send, offset)])``: a produce batch at once;
                           ``acks.append(row)`` + ``flush_acks()``: reports gathered during one
                           client call, spooled in one frame before that call returns)
``Send.failed(e)``         ``send_failed``
``rolled_back(sends)``     ``rolled_back`` (an aborted transaction)
``received(book, ...)``    ``received`` for a batch of :data:`~tracer.sdk.inflight.Delivery` tuples
``received_one(...)``      ``received`` for one message (iteration)
``committed(book, ...)``   ``offset_committed`` for every received entry below a position
``committed_one(...)``     ``offset_committed`` for exactly one entry (a single ack)
``settled(...)``           ``offset_committed`` for given entries (auto-ack, transactional commits)
``identify(record)``       the identity of a received record, for ``processing()``
``processed(ident, ...)``  ``business_done`` / ``business_failed``
``event(stage, ...)``      any stage by hand (``dead_lettered``, ...)
========================  ====================================================================

Every call is thread-safe and never raises: a bug or a bad value is counted (``hook_errors``) and
logged at a limited rate, and the business call goes on. A :class:`Recorder` is bound to one MQ
(``mq`` of its events); all recorders of a tracer share one :class:`Core` (emitter, identity
policy, in-flight books), so ``processing(record)`` finds a record whichever adapter received it.

One module on purpose, over the usual ~500 lines: it is the whole adapter contract (docs/sdk.md), and
an adapter author reads one file to know every call there is.
"""
from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from tracer.identity import (
    MAX_KEY_CHARS,
    MAX_MSG_ID_CHARS,
    MSG_ID_HEADER,
    REPLAY_HEADER,
    TRACEPARENT,
    MsgIds,
    cap_msg_id,
    error_text,
    format_traceparent,
    get_header,
    incoming_ids,
    key_text,
    new_span_id,
    new_trace_ids,
    parse_traceparent,
    position_id,
    text,
)
from tracer.sdk.inflight import Delivery, InFlight
from tracer.sdk.otel import Context, Spans

SENT, SEND_FAILED, BROKER_ACKED = "sent", "send_failed", "broker_acked"
#: the attribute naming the ``msgtrace replay`` run of a re-published record (its msgtrace-replay header)
REPLAY_ATTR = "replay_run"
_REPLAY_HEADER_B = REPLAY_HEADER.encode()
RECEIVED, OFFSET_COMMITTED, ROLLED_BACK = "received", "offset_committed", "rolled_back"
BUSINESS_DONE, BUSINESS_FAILED = "business_done", "business_failed"


@dataclass(slots=True, frozen=True)
class IdentityPolicy:
    """How messages are identified and what msgtrace adds to them (DESIGN.md, Headers).

    ``headers``: add the ``msgtrace-id`` header (the default). False: header-free mode, nothing is
    added; ids come from ``id_fn`` / ``consumer_id_fn``, else from the record key.
    ``trace_context``: also add a W3C ``traceparent`` (continuing the active OpenTelemetry trace, else a
    new one) when the message carries none. ``otel_spans`` implies it.
    """

    headers: bool = True
    trace_context: bool = False
    id_fn: Callable[[str, Any, Any], Any] | None = None
    consumer_id_fn: Callable[[Any], Any] | None = None


@dataclass(slots=True)
class Identity:
    """Who a received message is, for the events recorded about it after receipt."""

    msg_id: str
    topic: str = ""
    partition: int | None = None
    offset: int | None = None
    consumer_group: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    replay_run: str | None = None  # the record was re-published by this ``msgtrace replay`` run


def replay_run_of(headers: Any) -> str | None:
    """The ``msgtrace-replay`` header's value (a replay run id) of a received record, or None."""
    if not headers:
        return None
    if headers.__class__ is list:  # the Kafka clients' pairs: one short pass
        v = None
        for hk, hv in headers:
            if hk == REPLAY_HEADER or hk == _REPLAY_HEADER_B:
                v = hv
    else:
        v = get_header(headers, REPLAY_HEADER)
    return (text(v) or None) if v is not None else None


@dataclass(slots=True)
class RecordRef:
    """Where a received record sits, as its adapter's ``record_ref(record)`` tells the core.

    ``lane``/``position``: the keys of the in-flight book (Kafka: (topic, partition) and the offset;
    RabbitMQ: the adapter's lane and the delivery tag); ``offset``: the event's offset field.
    """

    lane: Hashable
    position: Any
    topic: str
    partition: int | None
    offset: int | None
    headers: Any
    key: Any = None
    record: Any = None


class Core:
    """State shared by all recorders of one tracer. Built by ``Tracer``; adapters never touch it."""

    def __init__(self, emitter: Any, policy: IdentityPolicy, spans: Spans | None,
                 on_error: Callable[[BaseException], None]) -> None:
        self.emitter = emitter
        self.policy = policy
        self.spans = spans
        self.context = Context()
        self.ids = MsgIds()
        self.on_error = on_error
        self.books: weakref.WeakSet[InFlight] = weakref.WeakSet()
        self.books_lock = threading.Lock()
        #: the live books as a tuple, replaced (never mutated) when one comes or goes: read without a lock
        self.book_list: tuple[InFlight, ...] = ()
        self.default_group: str | None = None
        self.forgotten_closed = 0  # forgotten entries of books already gone

    def new_book(self, group: str | None) -> InFlight:
        book = InFlight(group)
        with self.books_lock:
            self.books.add(book)
            self.book_list = tuple(self.books)
        if group is not None:
            self.default_group = group
        weakref.finalize(book, self._book_gone, book.forgotten_ref)
        return book

    def _book_gone(self, ref: list[int]) -> None:
        self.forgotten_closed += ref[0]
        with self.books_lock:
            self.book_list = tuple(self.books)

    def forgotten(self) -> int:
        with self.books_lock:
            books = list(self.books)
        return self.forgotten_closed + sum(b.forgotten for b in books)


_get = itemgetter
#: :meth:`Recorder.flush_acks` is due when this many delivery reports wait (bounds the frame and the memory)
ACKS_FLUSH_AT = 512


def _lane_group(book: InFlight, lane: Hashable) -> str | None:
    """The group a book received ``lane`` for: the lane's own (a RabbitMQ channel's book holds lanes of
    several queues), else the book's."""
    try:
        g = book.meta(lane)[2]
    except (KeyError, IndexError, TypeError):
        return book.group
    return g if g is not None else book.group


class Send(tuple):  # type: ignore[type-arg]
    """One outgoing message: ``(recorder, msg_id, topic, partition, key, trace_id, span_id, span, headers,
    app)``.

    ``headers`` are the ``(name, bytes)`` pairs the adapter adds to the message (a list, possibly empty;
    read-only: it may be handed to the client as the message's header list). ``key``: the key as the
    frames carry it (bytes up to 1 KiB as given, text otherwise: the shipper decodes, off the business
    thread). ``app``: whatever the adapter passed to :meth:`Recorder.sent` (the application's own
    delivery callback, say). A tuple, so a send costs one allocation; the send itself, or its bound
    methods, serve as the client's callbacks. Adapters may subclass it (``__slots__ = ()``) for
    client-specific callback shapes (``Recorder.sent(..., cls=...)``).
    """

    __slots__ = ()

    recorder = property(_get(0))
    msg_id = property(_get(1))
    topic = property(_get(2))
    partition = property(_get(3))
    key = property(_get(4))
    trace_id = property(_get(5))
    span_id = property(_get(6))
    span = property(_get(7))
    headers = property(_get(8))
    app = property(_get(9))

    def acked(self, partition: int | None, offset: int | None) -> None:
        """The broker acknowledged it: ``broker_acked`` (never raises)."""
        rec, msg_id, topic, _, k, trace_id, span_id, span, _h, _a = self
        try:
            rec._emit(BROKER_ACKED, msg_id, topic, partition, offset, None, k, None, trace_id, span_id)
            if span is not None:
                Spans.end_send(span, partition, offset, None)
        except Exception as e:
            rec.hook_error(e)

    def acked_metadata(self, md: Any) -> None:
        """``acked(md.partition, md.offset)``: the form of a kafka-python future's callback."""
        rec, msg_id, topic, _, k, trace_id, span_id, span, _h, _a = self
        try:
            rec._em(BROKER_ACKED, msg_id, topic, md.partition, md.offset, None, k, None, trace_id, span_id, None,
                    rec.mq)
            if span is not None:
                Spans.end_send(span, md.partition, md.offset, None)
        except Exception as e:
            rec.hook_error(e)

    def __call__(self, result: Any) -> None:
        """The send as one callback for both outcomes: an exception -> :meth:`failed`, anything else
        (an object with ``.partition`` / ``.offset``) -> :meth:`acked_metadata`. Passing the send itself
        (``future.add_both(s)``) allocates no bound methods per message."""
        if isinstance(result, BaseException):
            self.failed(result)
        else:
            self.acked_metadata(result)

    def failed(self, error: BaseException | str) -> None:
        """The client reported failure: ``send_failed`` with the error's type and text (never raises)."""
        rec, msg_id, topic, partition, k, trace_id, span_id, span, _h, _a = self
        try:
            attrs = {"error_type": type(error).__name__} if isinstance(error, BaseException) else None
            rec._emit(SEND_FAILED, msg_id, topic, partition, None, None, k, error_text(error), trace_id, span_id,
                      attrs)
            if span is not None:
                Spans.end_send(span, None, None, error)
        except Exception as e:
            rec.hook_error(e)


class Recorder:
    """The internal API of one client adapter (bound to one MQ). See the module docstring."""

    __slots__ = ("core", "mq", "_em", "_em_sent", "_emit", "_emit_many", "_emit_rows", "_emit_acks", "_policy", "_ids",
                 "_ctx", "_cv", "_spans", "_plain_send", "_mid_prefix", "_mid_counter", "_headers_on",
                 "incoming_ids_needed", "acks", "_acks_lock")

    def __init__(self, core: Core, mq: str) -> None:
        self.core = core
        self.mq = mq
        emitter = core.emitter
        emit = self._em = emitter.emit  # the hot path calls it directly, with ``mq`` last

        def _emit(stage: str, msg_id: str, topic: str, partition: int | None = None, offset: int | None = None,
                  group: str | None = None, key: Any = None, error: str | None = None, trace_id: str | None = None,
                  span_id: str | None = None, attrs: dict[str, str] | None = None, ts_us: int = 0) -> None:
            emit(stage, msg_id, topic, partition, offset, group, key, error, trace_id, span_id, attrs, mq, ts_us)

        self._emit = _emit
        self._em_sent = emitter.emit_sent
        self._emit_acks = emitter.emit_acks
        #: ``broker_acked`` reports waiting for :meth:`flush_acks`, one row each: ``(msg_id, topic,
        #: partition, offset, key, trace_id, span_id, time.time_ns())`` (see :meth:`flush_acks`)
        self.acks: list[tuple[Any, ...]] = []
        self._acks_lock = threading.Lock()
        self._emit_many = emitter.emit_deliveries
        self._emit_rows = emitter.emit_rows
        self._policy = core.policy
        self._ids = core.ids
        self._mid_prefix = core.ids.prefix
        self._mid_counter = core.ids._counter
        self._ctx = core.context
        self._cv = core.context._cv  # OpenTelemetry's context variable: empty = no active span
        self._spans = core.spans
        p = core.policy
        self._headers_on = p.headers
        # the common send: no caller headers to read, no span to start, no traceparent to add
        self._plain_send = core.spans is None and not p.trace_context
        #: True when adapters must compute each received message's msg_id themselves
        #: (:meth:`incoming_id`): an id function, or header-free mode. Otherwise they pass None
        #: and the id is read from the headers later, off the business thread.
        self.incoming_ids_needed = p.consumer_id_fn is not None or not p.headers

    @property
    def headers_enabled(self) -> bool:
        return self._policy.headers

    # --- errors ---------------------------------------------------------------------------------
    def hook_error(self, e: BaseException) -> None:
        """Count and log (rate-limited) a failure inside a hook; the business call is not affected."""
        try:
            self.core.on_error(e)
        except Exception:
            pass

    # --- producer side -----------------------------------------------------------------------------
    def sent(self, topic: str, key: Any = None, value: Any = None, msg_id: Any = None, headers: Any = None,
             partition: int | None = None, cls: type[Send] = Send, app: Any = None) -> Send:
        """Decide the identity of an outgoing message and spool ``sent``.

        ``msg_id``: the caller's; else an existing ``msgtrace-id`` header; else ``id_fn(topic, key,
        value)``; else (header-free mode) the key; else a new id. ``headers``: the caller's carrier,
        only read (never mutated). Returns the :class:`Send` (of class ``cls``, carrying ``app``); its
        ``headers`` are the pairs to add. Raises only on a bug (adapters catch it, count it with
        :meth:`hook_error` and send plainly).
        """
        k: Any
        if key is None or (key.__class__ is bytes and len(key) <= MAX_KEY_CHARS):
            k = key  # decoded where the frame is expanded (key_text), not on the business thread
        else:
            k = key_text(key)
        if headers is None and self._plain_send:  # the common case, kept short (it runs per message)
            if msg_id is None:
                if self._policy.id_fn is not None:
                    msg_id = self._call_id_fn(topic, key, value)
                elif not self._headers_on and k:
                    msg_id = key_text(k)
                else:
                    msg_id = f"{self._mid_prefix}{next(self._mid_counter):012x}"
            elif msg_id.__class__ is not str:
                msg_id = str(msg_id)
            if len(msg_id) > MAX_MSG_ID_CHARS:
                msg_id = cap_msg_id(msg_id)
            cv = self._cv
            if cv is not None and not cv.get():
                trace_id = span_id = None
            else:
                ctx = self._ctx.current()
                trace_id, span_id = ctx if ctx is not None else (None, None)
            self._em_sent(msg_id, topic, partition, k, trace_id, span_id, self.mq)
            return cls((self, msg_id, topic, partition, k, trace_id, span_id, None,
                        [(MSG_ID_HEADER, msg_id.encode())] if self._headers_on else (), app))
        return self._sent_general(topic, key, k, value, msg_id, headers, partition, cls, app)

    def _sent_general(self, topic: str, key: Any, k: Any, value: Any, msg_id: Any, headers: Any,
                      partition: int | None, cls: type[Send] = Send, app: Any = None) -> Send:
        pol = self._policy
        existing_id = text(get_header(headers, MSG_ID_HEADER)) if headers else None
        existing_tp = get_header(headers, TRACEPARENT) if headers else None
        if msg_id is None:
            msg_id = existing_id or None
        if msg_id is None:
            if pol.id_fn is not None:
                msg_id = self._call_id_fn(topic, key, value)
            elif not pol.headers and k:
                msg_id = key_text(k)
            else:
                msg_id = self._ids.new()
        msg_id = str(msg_id)
        if len(msg_id) > MAX_MSG_ID_CHARS:
            msg_id = cap_msg_id(msg_id)
        add: list[tuple[str, bytes]] = []
        span = None
        trace_id = span_id = None
        if existing_tp is not None:  # the message already carries a trace context: reused, never duplicated
            trace_id, span_id = parse_traceparent(existing_tp)
        elif self._spans is not None:
            span, s_trace, s_span = self._spans.start_send(self.mq, topic, msg_id, key_text(k))
            # an API without SDK hands out invalid ids: ids of our own, so the trace still links
            trace_id, span_id = (s_trace, s_span) if s_trace and s_span else self._new_ids()
            add.append((TRACEPARENT, format_traceparent(trace_id, span_id)))
        elif pol.trace_context:
            trace_id, span_id = self._new_ids()
            add.append((TRACEPARENT, format_traceparent(trace_id, span_id)))
        else:
            ctx = self._ctx.current()
            if ctx is not None:
                trace_id, span_id = ctx
        if not pol.headers:
            add = []  # header-free mode: nothing at all is added
        elif existing_id is None:
            add.append((MSG_ID_HEADER, msg_id.encode()))
        self._em_sent(msg_id, topic, partition, k, trace_id, span_id, self.mq)
        return cls((self, msg_id, topic, partition, k, trace_id, span_id, span, add, app))

    def sent_instrumented(self, topic: str, key: Any = None, value: Any = None, msg_id: Any = None,
                          headers: Any = None, partition: int | None = None, cls: type[Send] = Send,
                          app: Any = None) -> Send:
        """:meth:`sent` for a client that carries OpenTelemetry's own instrumentation, which injects the
        trace context inside the client call: the identity is decided (``s.headers`` holds only the
        ``msgtrace-id`` to add: no traceparent, no span of msgtrace's, so nothing is duplicated) but
        ``sent`` is not spooled yet. After the client call, :meth:`sent_done` reads the context the
        instrumentation put on the message and spools ``sent`` with it. Raises only on a bug."""
        pol = self._policy
        k = key_text(key) if key is not None else None
        existing_id = text(get_header(headers, MSG_ID_HEADER)) if headers else None
        if msg_id is None:
            msg_id = existing_id or None
        if msg_id is None:
            if pol.id_fn is not None:
                msg_id = self._call_id_fn(topic, key, value)
            elif not pol.headers and k:
                msg_id = k
            else:
                msg_id = self._ids.new()
        msg_id = str(msg_id)
        if len(msg_id) > MAX_MSG_ID_CHARS:
            msg_id = cap_msg_id(msg_id)
        add = ((MSG_ID_HEADER, msg_id.encode()),) if pol.headers and existing_id is None else ()
        return cls((self, msg_id, topic, partition, k, None, None, None, add, app))

    def sent_done(self, send: Send, carrier: Any) -> Send:
        """Spool ``sent`` for a :meth:`sent_instrumented` send, with the trace context found in
        ``carrier`` (the headers as the client call left them); returns the Send with those ids.
        Never raises."""
        try:
            tp = get_header(carrier, TRACEPARENT) if carrier else None
            trace_id, span_id = parse_traceparent(tp) if tp is not None else (None, None)
            if trace_id is None:
                ctx = self._ctx.current()
                if ctx is not None:
                    trace_id, span_id = ctx
            rec, msg_id, topic, partition, k, _t, _s, span, add, app = send
            out = send.__class__((rec, msg_id, topic, partition, k, trace_id, span_id, span, add, app))
            self._emit(SENT, msg_id, topic, partition, None, None, k, None, trace_id, span_id)
            return out
        except Exception as e:
            self.hook_error(e)
            return send

    def _new_ids(self) -> tuple[str, str]:
        """(trace_id, span_id) for a traceparent msgtrace adds: the active trace continued, else a new one."""
        ctx = self._ctx.current()
        if ctx is not None:
            return ctx[0], new_span_id()
        return new_trace_ids()

    def _call_id_fn(self, topic: str, key: Any, value: Any) -> str:
        fn = self._policy.id_fn
        try:
            mid = fn(topic, key, value) if fn is not None else None
            if mid:
                return str(mid)
        except Exception as e:
            self.hook_error(e)
        return self._ids.new()

    def acked_many(self, topic: str, partition: int | None, acked: Sequence[tuple[Send, int | None]]) -> None:
        """``broker_acked`` for several sends of one partition at once, ``(send, offset)`` each: a client
        that reports a whole produce batch in one callback (one spool frame instead of one per message)."""
        try:
            rows = []
            spans = []
            for s, offset in acked:
                rows.append((s[1], offset, s[4], None, s[5], s[6], None))
                if s[7] is not None:
                    spans.append((s[7], offset))
            self._emit_rows(BROKER_ACKED, topic, partition, None, self.mq, rows)
            for span, offset in spans:
                Spans.end_send(span, partition, offset, None)
        except Exception as e:
            self.hook_error(e)

    def flush_acks(self) -> None:
        """Spool the ``broker_acked`` rows waiting in :attr:`acks`, all in one frame. Never raises.

        For clients whose delivery reports arrive in bursts inside one business call (confluent-kafka
        runs them inside ``poll()`` / ``flush()``): the report appends its row to ``acks`` (one list
        append, the time taken there: the event keeps the moment of the report) and the adapter calls
        this before that business call returns, and whenever ``acks`` reaches
        :data:`ACKS_FLUSH_AT` rows. So, as for every other event, a report is in the spool when the
        call that delivered it returns; a process killed inside that call loses the reports of that
        call only (their ``sent`` frames were spooled at the send).
        """
        acks = self.acks
        if not acks:
            return
        try:
            with self._acks_lock:  # appends need no lock (list.append is atomic); two drains must not overlap
                n = len(acks)
                rows = acks[:n]
                del acks[:n]
            self._emit_acks(BROKER_ACKED, self.mq, rows)
        except Exception as e:
            self.hook_error(e)

    def rolled_back(self, sends: Iterable[Send], transaction_id: str | None = None) -> None:
        """The transaction these sends belonged to was aborted: ``rolled_back`` for each."""
        try:
            attrs = {"transaction_id": str(transaction_id)} if transaction_id else None
            for s in sends:
                self._emit(ROLLED_BACK, s[1], s[2], s[3], None, None, s[4], None, s[5], s[6], attrs)
        except Exception as e:
            self.hook_error(e)

    # --- consumer side -----------------------------------------------------------------------------
    def consumer(self, group: str | None) -> InFlight:
        """A new in-flight book for one wrapped consumer (or channel) of ``group``."""
        return self.core.new_book(group)

    def incoming_id(self, record: Any, headers: Any, key: Any) -> str | None:
        """The msg_id of a received message when :attr:`incoming_ids_needed`: the header (unless
        header-free), else ``consumer_id_fn(record)``, else (header-free) the key; None: its position."""
        pol = self._policy
        if pol.headers and headers:
            mid = text(get_header(headers, MSG_ID_HEADER))
            if mid:
                return mid
        if pol.consumer_id_fn is not None:
            try:
                mid = pol.consumer_id_fn(record)
                if mid:
                    return str(mid)
            except Exception as e:
                self.hook_error(e)
        if not pol.headers and key is not None:
            return key_text(key) or None
        return None

    def received(self, book: InFlight, lane: Hashable, topic: str, partition: int | None,
                 entries: Sequence[Delivery], *, group: Any = ..., offsets: bool = True,
                 track_commit: bool = True) -> None:
        """``received`` for each entry of one lane, spooled in one go, and noted in ``book``.

        ``offsets``: the entries' positions are the events' offsets (Kafka); False: offset null
        (RabbitMQ delivery tags). ``track_commit``: a later commit / ack covers them (False for
        consumers without a group, or RabbitMQ's auto-ack).
        """
        if not entries:
            return
        try:
            g = book.group if group is ... else group
            book.add(lane, entries, track_commit and g is not None, (topic, partition, g, offsets))
            self._emit_many(RECEIVED, topic, partition, g, self.mq, None, entries, offsets)
        except Exception as e:
            self.hook_error(e)

    def received_one(self, book: InFlight, lane: Hashable, topic: str, partition: int | None, entry: Delivery, *,
                     group: Any = ..., offsets: bool = True, track_commit: bool = True) -> None:
        """:meth:`received` for one message (a consumer iterated record by record)."""
        try:
            g = book.group if group is ... else group
            book.add_one(lane, entry, track_commit and g is not None, (topic, partition, g, offsets))
            self._emit_many(RECEIVED, topic, partition, g, self.mq, None, (entry,), offsets)
        except Exception as e:
            self.hook_error(e)

    def committed(self, book: InFlight, lane: Hashable, position: int, offset: Any = ...) -> int:
        """``offset_committed`` for every entry of ``lane`` received below ``position`` and not yet
        committed; returns how many. ``offset``: the events' offset field (default ``position``, Kafka's
        committed offset; None for RabbitMQ)."""
        try:
            entries = book.covered(lane, position)
            if entries:
                self._settle(book, lane, entries, position if offset is ... else offset)
            return len(entries)
        except Exception as e:
            self.hook_error(e)
            return 0

    def committed_group(self, group: str, lane: Hashable, position: int) -> int:
        """``committed`` in every book of ``group`` this tracer keeps (a transactional producer committed
        the group's offsets with ``send_offsets_to_transaction``)."""
        with self.core.books_lock:
            books = [b for b in self.core.books if b.group == group]
        return sum(self.committed(b, lane, position) for b in books)

    def committed_one(self, book: InFlight, lane: Hashable, position: Any, offset: int | None = None) -> bool:
        """``offset_committed`` for the one entry of ``lane`` at ``position`` (a single ack)."""
        try:
            e = book.take(lane, position)
            if e is None:
                return False
            self._settle(book, lane, [e], offset)
            return True
        except Exception as e:
            self.hook_error(e)
            return False

    def _settle(self, book: InFlight, lane: Hashable, entries: Sequence[Delivery], offset: int | None) -> None:
        topic, partition, group, offsets = book.meta(lane)
        self._emit_many(OFFSET_COMMITTED, topic, partition, group, self.mq, offset, entries, offsets)

    def settled(self, topic: str, partition: int | None, group: str | None, offset: int | None,
                entries: Sequence[Delivery], *, offsets: bool = True) -> None:
        """``offset_committed`` for the given entries (auto-ack at delivery, a transaction's offsets)."""
        if not entries:
            return
        try:
            self._emit_many(OFFSET_COMMITTED, topic, partition, group, self.mq, offset, entries, offsets)
        except Exception as e:
            self.hook_error(e)

    # --- after receipt -------------------------------------------------------------------------------
    def identify(self, ref: RecordRef, group: str | None = None) -> Identity:
        """The identity of a received record: the entry of the book that received this very object
        (else any book that received its position), else its headers / id function / position."""
        core = self.core
        found: Delivery | None = None
        found_group = None
        for b in core.book_list:
            e, exact = b.find(ref.lane, ref.position, ref.headers)
            if e is not None:
                if exact:
                    found, found_group = e, _lane_group(b, ref.lane)
                    break
                if found is None:
                    found, found_group = e, _lane_group(b, ref.lane)
        msg_id = found[3] if found is not None else None
        h_id, trace_id, span_id = incoming_ids(ref.headers) if ref.headers else (None, None, None)
        if msg_id is None:
            if self._policy.headers and h_id:
                msg_id = h_id
            elif self.incoming_ids_needed:
                msg_id = self.incoming_id(ref.record, ref.headers, ref.key)
        if not msg_id:
            msg_id = position_id(ref.topic, ref.partition, ref.offset)
        if len(msg_id) > MAX_MSG_ID_CHARS:
            msg_id = cap_msg_id(msg_id)
        g = group if group is not None else (found_group if found is not None else core.default_group)
        return Identity(msg_id, ref.topic, ref.partition, ref.offset, g, trace_id, span_id,
                        replay_run_of(ref.headers))

    def processed(self, ident: Identity, error: BaseException | None = None, duration_us: int | None = None) -> None:
        """``business_done`` (``error`` None) or ``business_failed`` for a received message."""
        try:
            attrs: dict[str, str] = {} if duration_us is None else {"duration_us": str(duration_us)}
            if ident.replay_run:
                attrs[REPLAY_ATTR] = ident.replay_run[:256]
            if error is None:
                self._em(BUSINESS_DONE, ident.msg_id, ident.topic, ident.partition, ident.offset,
                         ident.consumer_group, None, None, ident.trace_id, ident.span_id, attrs, self.mq)
            else:
                attrs["error_type"] = type(error).__name__
                self._emit(BUSINESS_FAILED, ident.msg_id, ident.topic, ident.partition, ident.offset,
                           ident.consumer_group, None, error_text(error), ident.trace_id, ident.span_id, attrs)
        except Exception as e:
            self.hook_error(e)

    def event(self, stage: str, msg_id: str, topic: str = "", partition: int | None = None,
              offset: int | None = None, group: str | None = None, key: Any = None, error: Any = None,
              trace_id: str | None = None, span_id: str | None = None, attrs: dict[str, str] | None = None,
              ts_us: int = 0) -> None:
        """Any stage by hand (``dead_lettered`` from an adapter's DLQ path, ...). Never raises."""
        try:
            if isinstance(error, BaseException):
                error = error_text(error)
            self._emit(stage, msg_id, topic, partition, offset, group, key_text(key), error, trace_id, span_id,
                       attrs, ts_us)
        except Exception as e:
            self.hook_error(e)


__all__ = ["Recorder", "Send", "Identity", "IdentityPolicy", "RecordRef", "Core", "InFlight", "Delivery",
           "SENT", "SEND_FAILED", "BROKER_ACKED", "RECEIVED", "OFFSET_COMMITTED", "ROLLED_BACK",
           "BUSINESS_DONE", "BUSINESS_FAILED"]
