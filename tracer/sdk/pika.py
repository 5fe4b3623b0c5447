"""The pika (RabbitMQ) adapter: a proxy around a channel that publishes and consumes (DESIGN.md, Clients).

``tracer.wrap_channel(ch)`` accepts a ``BlockingChannel`` (``BlockingConnection``) or a
``pika.channel.Channel`` (``SelectConnection`` and pika's other asynchronous adapters). Mapping:
``topic`` is the exchange published to (the routing key for the default exchange; on delivery
``Basic.Deliver``'s exchange / routing key, so both sides name the same thing), ``consumer_group`` the
queue, ``partition`` / ``offset`` null, ``key`` the routing key; ``attrs`` of a delivery carry the
delivery tag, the redelivered flag and the routing key.

==========================================  =============================================================
``basic_publish(..., msg_id=None)``         ``sent`` (+ the ``msgtrace-id`` AMQP header; the caller's
                                            properties are copied, never mutated)
publisher confirm ack / nack                ``broker_acked`` / ``send_failed`` (blocking channel: the
                                            publish returns / raises ``NackError``; asynchronous channel:
                                            Basic.Ack / Basic.Nack, ``multiple`` too)
``basic.return`` of a ``mandatory`` message ``send_failed`` (``UnroutableError`` in confirm mode, else
                                            the return callback)
a channel / connection error in the publish ``send_failed``, re-raised unchanged
``basic_consume`` callback, ``consume()``,  ``received`` (the application's callback gets this proxy as
``basic_get``                               its channel, so its acks are seen)
``basic_ack`` (``multiple=True`` too)       ``offset_committed`` for the deliveries it covers
``auto_ack=True``                           ``offset_committed`` at delivery (the broker forgot it then)
``basic_nack`` / ``basic_reject``,          ``dead_lettered`` when the queue has a dead-letter exchange,
``requeue=False``                           else ``offset_committed`` (attrs ``settled=rejected``): the
                                            message is gone, judged as the business dropping it
``requeue=True``, ``basic_recover``         nothing: the message will be delivered again
==========================================  =============================================================

A queue's dead-letter exchange is learnt from ``queue_declare(arguments={"x-dead-letter-exchange": ...})``
made through any wrapped channel of the process (on the same broker and vhost); one set by a policy is
not visible to a client: tell msgtrace with ``channel.set_dead_letter_exchange(queue, exchange)``.

``processing(method)`` takes the ``method`` a delivery gave the application (``Basic.Deliver`` or
``Basic.GetOk``): the adapter remembers, for a bounded number of recent deliveries, which channel lane
and headers each method object belongs to (delivery tags repeat across channels).

OpenTelemetry's pika instrumentation (``PikaInstrumentor``) injects its ``traceparent`` inside
``basic_publish``: msgtrace then adds only ``msgtrace-id``, starts no span, and records ``sent`` with the
instrumentation's ids; its consumer span is current in the callback, so ``processing()`` starts none.
"""
from __future__ import annotations

import collections
import copy
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import NackError, UnroutableError

from tracer.identity import MSG_ID_HEADER, incoming_ids, text
from tracer.sdk.core import Recorder, RecordRef, Send

NAME = "pika"
MQ = "rabbitmq"
log = logging.getLogger("msgtrace.hooks")
#: deliveries remembered for ``processing(method)`` (method object -> lane and headers)
MAX_REFS = 50_000
#: publishes of a channel without confirms remembered for a later ``basic.return`` (mandatory ones)
MAX_AWAITING_RETURN = 10_000
_ALL = 1 << 63  # basic_ack(0, multiple=True): every outstanding delivery
_refs: collections.OrderedDict[int, tuple[Any, ...]] = collections.OrderedDict()
_refs_lock = threading.Lock()
_tokens = itertools.count(1)
#: (host, port, vhost, queue) -> the queue's dead-letter exchange, learnt on any channel of this process
_dead_letters: dict[tuple[str, int, str, str], str] = {}


def _where(channel: Any) -> tuple[str, int, str]:
    """(host, port, vhost) of a pika channel's connection ('' / 0 when it cannot be told)."""
    try:
        conn = channel.connection
        params: Any = getattr(getattr(conn, "_impl", conn), "params", None)
        return str(params.host), int(params.port), str(params.virtual_host)
    except Exception:
        return "", 0, ""


class Delivery(NamedTuple):
    """What ``consumer_id_fn`` gets for a RabbitMQ delivery (header-free mode or an id function)."""

    channel: Any
    method: Any
    properties: Any
    body: Any
    queue: str


def wrap_channel(channel: Any, recorder: Recorder) -> TracedChannel:
    if isinstance(channel, TracedChannel):
        return channel
    if isinstance(channel, BlockingChannel):
        return TracedBlockingChannel(channel, recorder)
    return TracedAsyncChannel(channel, recorder)


def record_ref(record: Any) -> RecordRef | None:
    """Where a delivery's ``method`` (Basic.Deliver / Basic.GetOk) sits, if a wrapped channel received it."""
    r = _refs.get(id(record))
    if r is None or r[0] is not record:
        return None
    _, lane, headers, topic, rk = r
    return RecordRef(lane, record.delivery_tag, topic, None, None, headers, rk, record)


def _remember(method: Any, lane: tuple[Any, ...], headers: Any, topic: str, rk: str) -> None:
    _refs[id(method)] = (method, lane, headers, topic, rk)  # holds method: its id cannot be reused meanwhile
    if len(_refs) > MAX_REFS:
        with _refs_lock:
            while len(_refs) > MAX_REFS:
                try:
                    _refs.popitem(last=False)
                except KeyError:
                    break


def _with_headers(properties: Any, add: Any) -> Any:
    """``properties`` carrying the headers to add (a copy: the caller's object is never changed)."""
    if not add:
        return properties
    added = {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v for k, v in add}
    if properties is None:
        return pika.BasicProperties(headers=added)
    out = copy.copy(properties)
    out.headers = {**properties.headers, **added} if properties.headers else added
    return out


def _returned_text(method: Any) -> str:
    return f"returned by the broker: {getattr(method, 'reply_code', '?')} {getattr(method, 'reply_text', '')}" \
           f" (exchange {getattr(method, 'exchange', '')!r}, routing key {getattr(method, 'routing_key', '')!r})"


class TracedChannel:
    """What both channel kinds share: deliveries, settlements, dead-letter knowledge, returns."""

    def __init__(self, channel: Any, recorder: Recorder) -> None:
        sa = object.__setattr__
        sa(self, "_ch", channel)
        sa(self, "_rec", recorder)
        sa(self, "_book", recorder.consumer(None))  # lanes carry their queue as the group
        sa(self, "_token", next(_tokens))
        sa(self, "_lanes", {})          # lane -> None (ordered set): every lane an ack may cover
        sa(self, "_where", _where(channel))
        sa(self, "_awaiting_return", collections.OrderedDict())  # msg_id -> Send (mandatory, no confirms)
        orig = getattr(channel, "basic_publish", None)
        sa(self, "_instrumented", hasattr(orig, "_original_function"))  # OpenTelemetry's PikaInstrumentor
        try:
            channel.add_on_return_callback(self._on_return)
        except Exception as e:
            recorder.hook_error(e)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ch, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._ch, name, value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._ch!r}>"

    def __enter__(self) -> TracedChannel:
        self._ch.__enter__()
        return self

    def __exit__(self, *exc: object) -> Any:
        return self._ch.__exit__(*exc)

    @property
    def wrapped(self) -> Any:
        """The pika channel underneath."""
        return self._ch

    @property
    def inflight(self) -> Any:
        """This channel's in-flight book (delivered, not yet settled)."""
        return self._book

    # --- publishing (shared parts) ---------------------------------------------------------------------
    def _start_publish(self, exchange: str, routing_key: str, body: Any, properties: Any,
                       msg_id: Any) -> tuple[Send, Any]:
        rec = self._rec
        topic = exchange or routing_key
        hdrs = properties.headers if properties is not None else None
        if self._instrumented:
            s = rec.sent_instrumented(topic, routing_key, body, msg_id, hdrs, None)
            props = _with_headers(properties, s[8])
            if props is properties or props is None:  # the instrumentation injects into a copy of ours
                props = copy.copy(properties) if properties is not None else pika.BasicProperties(headers={})
                props.headers = dict(properties.headers or {}) if properties is not None else {}
        else:
            s = rec.sent(topic, routing_key, body, msg_id, hdrs, None)
            props = _with_headers(properties, s[8])
        return s, props

    def _done(self, s: Send, props: Any) -> Send:
        """The publish call returned (or raised): for an instrumented channel, spool ``sent`` now."""
        if self._instrumented:
            done: Send = self._rec.sent_done(s, props.headers if props is not None else None)
            return done
        return s

    def _await_return(self, s: Send) -> None:
        d = self._awaiting_return
        d[s[1]] = s
        while len(d) > MAX_AWAITING_RETURN:
            d.popitem(last=False)

    def _on_return(self, _channel: Any, method: Any, properties: Any, body: Any) -> None:
        """``basic.return`` outside confirm mode (confirm mode: the publish itself reports it)."""
        try:
            if self._confirming():
                return
            headers = properties.headers if properties is not None else None
            mid = text(headers.get(MSG_ID_HEADER)) if headers else None
            if not mid:
                return
            s = self._awaiting_return.pop(mid, None)
            if s is not None:
                s.failed(_returned_text(method))
            else:
                _, trace_id, span_id = incoming_ids(headers)
                self._rec.event("send_failed", mid, method.exchange or method.routing_key, key=method.routing_key,
                                error=_returned_text(method), trace_id=trace_id, span_id=span_id)
        except Exception as e:
            self._rec.hook_error(e)

    def _confirming(self) -> bool:
        return False

    # --- deliveries ------------------------------------------------------------------------------------
    def _delivered(self, method: Any, properties: Any, body: Any, queue: str, auto_ack: bool) -> None:
        """``received`` for one delivery (and, with auto_ack, ``offset_committed`` at once)."""
        rec = self._rec
        rk = method.routing_key
        topic = method.exchange or rk
        headers = properties.headers if properties is not None else None
        tag = method.delivery_tag
        mid = None
        if rec.incoming_ids_needed:
            mid = rec.incoming_id(Delivery(self, method, properties, body, queue), headers, rk)
        if mid is None and not (headers and MSG_ID_HEADER in headers):
            # no msgtrace-id: the AMQP message-id if the publisher set one, else this delivery's place
            mid = (properties.message_id if properties is not None and properties.message_id else None) \
                or f"{topic}/{queue}#{tag}"
        attrs = {"delivery_tag": str(tag), "redelivered": "true" if method.redelivered else "false",
                 "routing_key": rk}
        lane = (self._token, queue, topic)
        if lane not in self._lanes:
            self._lanes[lane] = None
        entry = (tag, rk, headers, mid, attrs)
        rec.received(self._book, lane, topic, None, (entry,), group=queue, offsets=False, track_commit=not auto_ack)
        _remember(method, lane, headers, topic, rk)
        if auto_ack:
            rec.settled(topic, None, queue, None, ((tag, rk, headers, mid, {**attrs, "auto_ack": "true"}),),
                        offsets=False)

    def _consumer_callback(self, queue: str, auto_ack: bool, app: Callable[..., Any]) -> Callable[..., Any]:
        def on_message(_channel: Any, method: Any, properties: Any, body: Any) -> Any:
            try:
                self._delivered(method, properties, body, queue, auto_ack)
            except Exception as e:
                self._rec.hook_error(e)
            return app(self, method, properties, body)  # the app acks through this proxy
        return on_message

    # --- settlements -----------------------------------------------------------------------------------
    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> Any:
        result = self._ch.basic_ack(delivery_tag=delivery_tag, multiple=multiple)
        try:  # sent on an open channel (pika raises otherwise): the broker forgets the message now
            rec, book = self._rec, self._book
            if multiple:
                upto = delivery_tag + 1 if delivery_tag else _ALL
                for lane in list(self._lanes):
                    rec.committed(book, lane, upto, offset=None)
            else:
                for lane in list(self._lanes):
                    if rec.committed_one(book, lane, delivery_tag):
                        break
        except Exception as e:
            self._rec.hook_error(e)
        return result

    def basic_nack(self, delivery_tag: int = 0, multiple: bool = False, requeue: bool = True) -> Any:
        result = self._ch.basic_nack(delivery_tag=delivery_tag, multiple=multiple, requeue=requeue)
        self._rejected(delivery_tag, multiple, requeue, "nack")
        return result

    def basic_reject(self, delivery_tag: int = 0, requeue: bool = True) -> Any:
        result = self._ch.basic_reject(delivery_tag=delivery_tag, requeue=requeue)
        self._rejected(delivery_tag, False, requeue, "reject")
        return result

    def basic_recover(self, *args: Any, **kwargs: Any) -> Any:
        result = self._ch.basic_recover(*args, **kwargs)
        try:  # every unacked delivery of the channel comes again
            for lane in list(self._lanes):
                self._book.forget(lane)
        except Exception as e:
            self._rec.hook_error(e)
        return result

    def _rejected(self, tag: int, multiple: bool, requeue: bool, how: str) -> None:
        """nack / reject: requeued deliveries come again (nothing to record); the others are dead-lettered
        or gone."""
        try:
            book = self._book
            for lane in list(self._lanes):
                if multiple:
                    entries = book.covered(lane, tag + 1 if tag else _ALL)
                else:
                    one = book.take(lane, tag)
                    entries = [one] if one is not None else []
                if not entries:
                    continue
                if not requeue:
                    self._dropped(lane, entries, how)
                if not multiple:
                    break
        except Exception as e:
            self._rec.hook_error(e)

    def _dropped(self, lane: tuple[Any, ...], entries: list[tuple[Any, ...]], how: str) -> None:
        _, queue, topic = lane
        reason = f"{how}, requeue=false"
        dlx = _dead_letters.get((*self._where, queue))
        if dlx is None:  # discarded by the broker: settled without being processed (the business dropped it)
            self._rec.settled(topic, None, queue, None,
                              [(p, k, h, m, {**(a or {}), "settled": reason}) for p, k, h, m, a in entries],
                              offsets=False)
            return
        for pos, key, headers, mid, attrs in entries:
            h_id, trace_id, span_id = incoming_ids(headers)
            a = dict(attrs or {})
            a.update(dlq_exchange=dlx, reason=reason)
            self._rec.event("dead_lettered", mid or h_id or f"{topic}/{queue}#{pos}", topic, None, None, queue, key,
                            None, trace_id, span_id, a)

    # --- declarations --------------------------------------------------------------------------------
    def set_dead_letter_exchange(self, queue: str, exchange: str | None) -> None:
        """Tell msgtrace that ``queue`` dead-letters to ``exchange`` (a policy set it, so no client sees
        it); None: it has none. Applies to every channel of this process on the same broker and vhost."""
        key = (*self._where, queue)
        if exchange is None:
            _dead_letters.pop(key, None)
        else:
            _dead_letters[key] = str(exchange)

    def _learn_queue(self, queue: str, arguments: Any) -> None:
        try:
            if arguments and "x-dead-letter-exchange" in arguments and queue:
                self.set_dead_letter_exchange(queue, arguments["x-dead-letter-exchange"])
        except Exception as e:
            self._rec.hook_error(e)


class TracedBlockingChannel(TracedChannel):
    """A ``BlockingChannel``: publishes are synchronous, and so are their confirms."""

    def _confirming(self) -> bool:
        return bool(getattr(self._ch, "_delivery_confirmation", False))

    def basic_publish(self, exchange: str, routing_key: str, body: Any, properties: Any = None,
                      mandatory: bool = False, msg_id: Any = None) -> Any:
        """BlockingChannel.basic_publish, plus the ``msgtrace-id`` header and the publish stages."""
        try:
            s, props = self._start_publish(exchange, routing_key, body, properties, msg_id)
            confirming = self._confirming()
        except Exception as e:
            self._rec.hook_error(e)
            return self._ch.basic_publish(exchange, routing_key, body, properties, mandatory)
        try:
            result = self._ch.basic_publish(exchange, routing_key, body, props, mandatory)
        except UnroutableError as e:  # returned (no queue bound for it), then acked
            s = self._done(s, props)
            s.failed(_returned_text(e.messages[0].method) if e.messages else e)
            raise
        except NackError as e:
            self._done(s, props).failed(e)
            raise
        except BaseException as e:  # the channel or connection closed under the publish, ...
            self._done(s, props).failed(e)
            raise
        s = self._done(s, props)
        if confirming:
            s.acked(None, None)
        elif mandatory:
            self._await_return(s)
        return result

    def basic_consume(self, queue: str, on_message_callback: Callable[..., Any], auto_ack: bool = False,
                      exclusive: bool = False, consumer_tag: str | None = None, arguments: Any = None) -> Any:
        cb = self._consumer_callback(queue, auto_ack, on_message_callback)
        return self._ch.basic_consume(queue, cb, auto_ack=auto_ack, exclusive=exclusive, consumer_tag=consumer_tag,
                                      arguments=arguments)

    def basic_get(self, queue: str, auto_ack: bool = False) -> Any:
        result = self._ch.basic_get(queue, auto_ack=auto_ack)
        method = result[0]
        if method is not None:
            try:
                self._delivered(method, result[1], result[2], queue, auto_ack)
            except Exception as e:
                self._rec.hook_error(e)
        return result

    def consume(self, queue: str, auto_ack: bool = False, exclusive: bool = False, arguments: Any = None,
                inactivity_timeout: float | None = None) -> Iterator[Any]:
        """BlockingChannel.consume: the same generator, each delivery recorded as it is yielded."""
        for item in self._ch.consume(queue, auto_ack=auto_ack, exclusive=exclusive, arguments=arguments,
                                     inactivity_timeout=inactivity_timeout):
            if item and item[0] is not None:
                try:
                    self._delivered(item[0], item[1], item[2], queue, auto_ack)
                except Exception as e:
                    self._rec.hook_error(e)
            yield item

    def queue_declare(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        result = self._ch.queue_declare(queue, *args, **kwargs)
        arguments = kwargs.get("arguments", args[4] if len(args) > 4 else None)
        name = queue or getattr(getattr(result, "method", None), "queue", "")
        self._learn_queue(name, arguments)
        return result


class TracedAsyncChannel(TracedChannel):
    """A ``pika.channel.Channel`` (SelectConnection, ...): confirms arrive as Basic.Ack / Basic.Nack
    frames numbered by publish order (from 1 after Confirm.Select); publish through this proxy."""

    def __init__(self, channel: Any, recorder: Recorder) -> None:
        super().__init__(channel, recorder)
        object.__setattr__(self, "_confirm", False)
        object.__setattr__(self, "_seq", 0)
        object.__setattr__(self, "_unconfirmed", collections.OrderedDict())  # publish seq -> Send

    def _confirming(self) -> bool:
        return bool(self._confirm)

    def confirm_delivery(self, ack_nack_callback: Callable[..., Any], callback: Any = None) -> Any:
        rec = self._rec

        def on_confirm(frame: Any) -> Any:
            try:
                self._confirmed(frame.method)
            except Exception as e:
                rec.hook_error(e)
            return ack_nack_callback(frame)

        result = self._ch.confirm_delivery(on_confirm, callback)
        object.__setattr__(self, "_confirm", True)
        return result

    def _confirmed(self, method: Any) -> None:
        tag, multiple = method.delivery_tag, method.multiple
        pending = self._unconfirmed
        if multiple:
            done = [k for k in pending if k <= tag]
        else:
            done = [tag] if tag in pending else []
        nack = isinstance(method, pika.spec.Basic.Nack)
        for k in done:
            s = pending.pop(k)
            if s is None:  # returned before its ack: already send_failed
                continue
            if nack:
                s.failed("NackError: the broker nacked the message (Basic.Nack)")
            else:
                s.acked(None, None)

    def _on_return(self, channel: Any, method: Any, properties: Any, body: Any) -> None:
        if not self._confirm:
            return super()._on_return(channel, method, properties, body)
        try:  # confirm mode: the return comes before the ack of the same publish
            headers = properties.headers if properties is not None else None
            mid = text(headers.get(MSG_ID_HEADER)) if headers else None
            for k, s in self._unconfirmed.items():
                if s is not None and s[1] == mid:
                    s.failed(_returned_text(method))
                    self._unconfirmed[k] = None
                    break
        except Exception as e:
            self._rec.hook_error(e)

    def basic_publish(self, exchange: str, routing_key: str, body: Any, properties: Any = None,
                      mandatory: bool = False, msg_id: Any = None) -> Any:
        try:
            s, props = self._start_publish(exchange, routing_key, body, properties, msg_id)
        except Exception as e:
            self._rec.hook_error(e)
            return self._ch.basic_publish(exchange, routing_key, body, properties, mandatory)
        try:
            result = self._ch.basic_publish(exchange, routing_key, body, props, mandatory)
        except BaseException as e:
            self._done(s, props).failed(e)
            raise
        s = self._done(s, props)
        if self._confirm:
            seq = self._seq + 1
            object.__setattr__(self, "_seq", seq)
            self._unconfirmed[seq] = s
        elif mandatory:
            self._await_return(s)
        return result

    def basic_consume(self, queue: str, on_message_callback: Callable[..., Any], auto_ack: bool = False,
                      exclusive: bool = False, consumer_tag: str | None = None, arguments: Any = None,
                      callback: Any = None) -> Any:
        cb = self._consumer_callback(queue, auto_ack, on_message_callback)
        return self._ch.basic_consume(queue, cb, auto_ack=auto_ack, exclusive=exclusive, consumer_tag=consumer_tag,
                                      arguments=arguments, callback=callback)

    def basic_get(self, queue: str, callback: Callable[..., Any], auto_ack: bool = False) -> Any:
        return self._ch.basic_get(queue, self._consumer_callback(queue, auto_ack, callback), auto_ack=auto_ack)

    def queue_declare(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        arguments = kwargs.get("arguments", args[4] if len(args) > 4 else None)
        if queue:
            self._learn_queue(queue, arguments)
        return self._ch.queue_declare(queue, *args, **kwargs)


__all__ = [
    "MQ",
    "NAME",
    "Delivery",
    "TracedAsyncChannel",
    "TracedBlockingChannel",
    "TracedChannel",
    "record_ref",
    "wrap_channel",
]
