"""Re-publish planned messages: original ``msgtrace-id``, a ``msgtrace-replay`` header, rate limited,
and the replay's own audit events.

Each re-published message carries the headers it had (``traceparent`` included, so its trace goes
on), its original ``msgtrace-id`` and ``msgtrace-replay: <replay run id>``. The replay records its
own ``sent`` and ``broker_acked`` / ``send_failed`` through a :class:`tracer.Tracer` (the public SDK's
``record()``), with attrs ``replay_run`` (the run id), ``replay_source`` and ``replay_of``: the
reconciler judges a message with all its events, so a replay that is then processed makes the
message delivered, and one that failed stays in its evidence.

A producer is only ever created here, and only by ``--execute``: a dry run never connects one.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from tracer.errors import ConfigError, describe
from tracer.events import MSG_ID_HEADER
from tracer.replay.plan import REPLAY_ATTR, REPLAY_HEADER, Item, Location, Result, Why

TRACEPARENT = "traceparent"
log = logging.getLogger("msgtrace.replay")


class Pacer:
    """At most ``rate`` calls of :meth:`wait` per second (0: no limit), evenly spaced."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / rate if rate and rate > 0 else 0.0
        self._clock, self._sleep = clock, sleep
        self._next = 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        now = self._clock()
        if self._next > now:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


def replay_headers(headers: list[tuple[str, bytes]], msg_id: str, run_id: str) -> list[tuple[str, bytes]]:
    """The message's headers with ``msgtrace-id`` (the original id) and ``msgtrace-replay`` (this run)."""
    kept = [(k, v) for k, v in headers if k not in (MSG_ID_HEADER, REPLAY_HEADER)]
    return kept + [(MSG_ID_HEADER, msg_id.encode("utf-8")), (REPLAY_HEADER, run_id.encode("ascii"))]


def _trace_ids(headers: list[tuple[str, bytes]]) -> tuple[str | None, str | None]:
    from tracer.sdk.kafka_python import parse_traceparent

    for k, v in headers:
        if k == TRACEPARENT:
            return parse_traceparent(v)
    return None, None


class Publisher:
    """One kafka-python producer (acks=all) on the business Kafka, for one replay run."""

    def __init__(self, bootstrap: str, run_id: str, tracer: Any, rate: float = 100.0,
                 timeout_s: float = 30.0) -> None:
        self.bootstrap, self.run_id, self.tracer = bootstrap, run_id, tracer
        self.pacer = Pacer(rate)
        self.timeout_s = timeout_s
        self._p: Any = None

    def _producer(self) -> Any:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        from tracer.kafka_config import business_kafka_python

        security = business_kafka_python()  # TLS / SASL of the business Kafka
        try:
            return KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5,
                                 client_id="msgtrace-replay", max_block_ms=10_000,
                                 request_timeout_ms=int(self.timeout_s * 1000) // 2,
                                 delivery_timeout_ms=int(self.timeout_s * 1000), **security)
        except KafkaError as e:
            raise ConfigError(f"cannot reach the business Kafka at {self.bootstrap}: {describe(e)}") from None

    def publish(self, items: list[Item], advance: Callable[[], None] | None = None) -> None:
        """Re-publish every planned item that has its message; set its result."""
        todo = [i for i in items if i.result == Result.PLANNED and i.message is not None]
        if not todo:
            return
        if self._p is None:
            self._p = self._producer()
        producer = self._p
        sent: list[tuple[Item, Any]] = []
        for item in todo:
            self.pacer.wait()
            fut = self._send(producer, item, advance)
            if fut is not None:
                sent.append((item, fut))
        try:
            producer.flush(timeout=self.timeout_s)
        except Exception as e:  # noqa: BLE001 - what was not acknowledged is judged per message below
            log.info("flush of the replay producer: %s", describe(e))
        for item, fut in sent:
            if not fut.is_done:
                item.fail(Why.NO_ACK, f"no acknowledgement within {self.timeout_s:.0f} s: it may or may not "
                                      "have been stored (check trace-msg before replaying again)")
            elif fut.succeeded():
                md = fut.value
                item.result = Result.PUBLISHED
                item.published = Location(md.topic, md.partition, md.offset)
            else:
                item.fail(Why.SEND_FAILED, f"the broker refused it: {describe(fut.exception)}")

    def close(self) -> None:
        p, self._p = self._p, None
        if p is not None:
            try:
                p.close(timeout=self.timeout_s)
            except Exception as e:  # noqa: BLE001 - every result is known by now
                log.info("closing the replay producer: %s", describe(e))

    def _send(self, producer: Any, item: Item, advance: Callable[[], None] | None) -> Any:
        msg = item.message
        assert msg is not None
        headers = replay_headers(msg.headers, item.msg_id, self.run_id)
        trace_id, span_id = _trace_ids(headers)
        attrs = {REPLAY_ATTR: self.run_id, "replay_source": item.source.value if item.source else "",
                 "replay_of": str(item.source_loc) if item.source_loc else (item.source.value if item.source else "")}
        topic = item.target_topic
        common = {"topic": topic, "key": msg.key, "trace_id": trace_id, "span_id": span_id}
        t = self.tracer
        t.record("sent", item.msg_id, attrs=attrs, **common)
        try:
            fut = producer.send(topic, value=msg.value, key=msg.key, headers=headers)
        except Exception as e:  # noqa: BLE001 - kafka-python raises several kinds; each fails this message
            t.record("send_failed", item.msg_id, error=describe(e), attrs=attrs, **common)
            item.fail(Why.SEND_FAILED, f"the send raised: {describe(e)}")
            if advance:
                advance()
            return None

        def acked(md: Any) -> None:
            t.record("broker_acked", item.msg_id, partition=md.partition, offset=md.offset, attrs=attrs, **common)
            if advance:
                advance()

        def failed(e: BaseException) -> None:
            t.record("send_failed", item.msg_id, error=describe(e), attrs=attrs, **common)
            if advance:
                advance()

        fut.add_callback(acked)
        fut.add_errback(failed)
        return fut
