"""Where shipped audit lines go: the audit topic (:class:`KafkaSink`), the store directly
(:class:`StoreSink`), or nowhere yet (:class:`NullSink`, the spool keeps everything).

A sink has one job, ``ship(data, lines)``: take complete wire lines (NDJSON) or raise, in which case
the same lines are shipped again later. ``spec()`` describes a sink so that a shipper process can
build the same one (None: the sink lives only in this process, and ships from a thread).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from tracer.events import decode_batch, record_headers

log = logging.getLogger("msgtrace.emitter")


class Sink(Protocol):
    """Where shipped lines go. ``ship`` raises on failure (the lines are shipped again later)."""

    name: str
    #: bytes read from the spool per ship call, and seconds between ship calls when idle
    chunk_bytes: int
    interval: float

    def ship(self, data: bytes, lines: int) -> None: ...

    def close(self) -> None: ...


def sink_spec(sink: Any) -> dict[str, Any] | None:
    """A JSON description a shipper process rebuilds ``sink`` from (:func:`sink_from_spec`), or None."""
    spec = getattr(sink, "spec", None)
    try:
        return spec() if callable(spec) else None
    except Exception:
        return None


def sink_from_spec(spec: dict[str, Any]) -> Sink:
    kind = spec.get("kind")
    if kind == "kafka":
        return KafkaSink(spec["bootstrap"], spec["topic"], partitions=spec["partitions"],
                         record_bytes=spec["record_bytes"], timeout=spec["timeout"], **spec["producer_config"])
    raise ValueError(f"unknown sink kind {kind!r}")


def _split_records(data: bytes, max_bytes: int) -> list[bytes]:
    """Cut NDJSON ``data`` at line ends into record values of at most ~max_bytes (no trailing newline)."""
    out: list[bytes] = []
    start, n = 0, len(data)
    while start < n:
        end = min(start + max_bytes, n)
        if end < n:
            cut = data.rfind(b"\n", start, end)
            end = cut + 1 if cut >= start else data.find(b"\n", end) + 1 or n
        out.append(data[start:end].rstrip(b"\n"))
        start = end
    return [v for v in out if v]


class KafkaSink:
    """Ships to the audit topic with kafka-python: acks=all, one record = a batch of events.

    Creates the topic if it is missing (a restarted memory broker loses it) and
    rebuilds the producer after a failure, so a broker that comes back is used.
    """

    name = "kafka"
    chunk_bytes = 4 << 20
    interval = 0.25

    def __init__(self, bootstrap: str, topic: str = "msgtrace.audit", partitions: int = 3,
                 record_bytes: int = 512 << 10, timeout: float = 10.0, **producer_config: Any) -> None:
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.record_bytes, self.timeout = record_bytes, timeout
        self.producer_config = producer_config
        self._producer = None
        self._headers = record_headers()

    def spec(self) -> dict[str, Any] | None:
        """JSON-able settings (None when the producer config holds objects: SSL contexts, callables)."""
        import json

        d = {"kind": "kafka", "bootstrap": self.bootstrap, "topic": self.topic, "partitions": self.partitions,
             "record_bytes": self.record_bytes, "timeout": self.timeout, "producer_config": self.producer_config}
        try:
            json.dumps(d)
        except (TypeError, ValueError):
            return None
        return d

    def _connect(self) -> Any:
        from kafka import KafkaProducer  # type: ignore[import-untyped]

        self.ensure_topic()
        cfg: dict[str, Any] = dict(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0,
                                   enable_idempotence=False, retries=2, request_timeout_ms=5000,
                                   delivery_timeout_ms=int(self.timeout * 1000), max_block_ms=5000,
                                   max_request_size=max(1 << 20, 2 * self.record_bytes),
                                   reconnect_backoff_max_ms=1000, client_id="msgtrace-emitter")
        cfg.update(self.producer_config)
        self._producer = KafkaProducer(**cfg)
        return self._producer

    def ensure_topic(self) -> None:
        """Create the audit topic unless it exists (best effort: auto-creation may do it)."""
        from kafka.admin import KafkaAdminClient, NewTopic  # type: ignore[import-untyped]
        from kafka.errors import TopicAlreadyExistsError  # type: ignore[import-untyped]

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000,
                                 client_id="msgtrace-emitter-admin")
        try:
            if self.topic not in set(admin.list_topics()):
                try:
                    admin.create_topics([NewTopic(self.topic, self.partitions, 1)])
                except TopicAlreadyExistsError:
                    pass
        finally:
            admin.close()

    def ship(self, data: bytes, lines: int) -> None:
        producer = self._producer or self._connect()
        t0 = time.monotonic()
        try:
            futures = [producer.send(self.topic, value=v, headers=self._headers)
                       for v in _split_records(data, self.record_bytes)]
            producer.flush(self.timeout)
            for f in futures:
                f.get(0)
            if time.monotonic() - t0 > 0.5:
                self._verify_topic()
        except Exception:
            self._drop_producer()
            raise

    def _verify_topic(self) -> None:
        """After a slow ship (the broker may have restarted meanwhile), make sure the topic still exists.

        A memory broker (Tansu) restarted under a producer with cached metadata acknowledges
        writes to the vanished topic and keeps nothing; shipping again is then the only remedy.
        """
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000,
                                 client_id="msgtrace-emitter-admin")
        try:
            exists = self.topic in set(admin.list_topics())
        finally:
            admin.close()
        if not exists:
            raise RuntimeError(f"audit topic {self.topic} vanished while shipping (broker restarted?); "
                               "shipping again")

    def _drop_producer(self) -> None:
        p, self._producer = self._producer, None
        if p is not None:
            try:
                p.close(timeout=0)
            except Exception:
                pass

    def close(self) -> None:
        self._drop_producer()


class StoreSink:
    """Writes straight into the ClickHouse store (``Store.insert_events``).

    For chDB each insert briefly takes the directory lock, so batches are large
    and spaced out (``interval``) to let several processes share one directory.
    """

    name = "store"
    chunk_bytes = 16 << 20
    interval = 1.0

    def __init__(self, url: str | None = None, interval: float = 1.0) -> None:
        self.url, self.interval = url, interval
        self._store: Any = None
        self.bad_lines = 0

    def ship(self, data: bytes, lines: int) -> None:
        if self._store is None:
            from tracer.store import Store

            store = Store(self.url)
            store.init_schema()
            self._store = store
        batch = decode_batch(data, check_header=False)
        for bad in batch.bad:
            self.bad_lines += 1
            log.error("msgtrace spool line not stored: %s", bad.error)
        self._store.insert_events(batch.events)

    def close(self) -> None:
        s, self._store = self._store, None
        if s is not None:
            s.close()


class NullSink:
    """Keeps everything in the spool (another process or ``msgtrace ship`` drains it)."""

    name = "none"
    chunk_bytes = 1 << 20
    interval = 3600.0

    def ship(self, data: bytes, lines: int) -> None:
        raise RuntimeError("no sink configured")

    def close(self) -> None:
        pass


__all__ = ["Sink", "KafkaSink", "StoreSink", "NullSink", "sink_spec", "sink_from_spec"]
