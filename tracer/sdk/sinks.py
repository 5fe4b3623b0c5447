"""Where shipped audit lines go: the audit topic (:class:`KafkaSink`), the store directly
(:class:`StoreSink`), or nowhere yet (:class:`NullSink`, the spool keeps everything).

A sink has one job, ``ship(data, lines)``: take complete wire lines (NDJSON) or raise, in which case
the same lines are shipped again later. ``spec()`` describes a sink so that a shipper process can
build the same one (None: the sink lives only in this process, and ships from a thread).

The audit topic can lose what it acknowledged; :class:`KafkaSink` therefore tells the shipper where
each record went (``last_acks``) and how the topic looks now (``topic_state``), and checks the topic
before shipping whenever its connection to the broker was re-established (a restarted broker):
:mod:`tracer.sdk.recovery` decides from both what must be shipped again.
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

from tracer.events import decode_batch, record_headers
from tracer.sdk.recovery import TopicState

log = logging.getLogger("msgtrace.emitter")
#: how long the audit sink's Kafka clients wait for a first broker (kafka-python's default is 30 s)
BOOTSTRAP_TIMEOUT_MS = 5000


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

    Creates the topic if it is missing (a restarted memory broker loses it) and rebuilds the
    producer after a failure, so a broker that comes back is used. Before shipping on a connection
    that was re-established (the broker restarted, say), it checks that the topic still exists and
    creates it first: a memory broker (Tansu) restarted under a producer with cached metadata
    acknowledges writes to the vanished topic that nobody can ever read.
    """

    name = "kafka"
    chunk_bytes = 4 << 20
    interval = 0.25

    def __init__(self, bootstrap: str, topic: str = "msgtrace.audit", partitions: int = 3,
                 record_bytes: int = 512 << 10, timeout: float = 10.0, **producer_config: Any) -> None:
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.record_bytes, self.timeout = record_bytes, timeout
        self.producer_config = producer_config
        self._producer: Any = None
        self._admin: Any = None
        self._headers = record_headers()
        self._conns: frozenset[int] | None = None
        #: (partition, offset) of each record of the last successful ship, in order
        self.last_acks: list[tuple[int, int]] = []
        #: why the topic was (re)created before the last ship ("" if it was not)
        self.recreated = ""

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
        from kafka import KafkaProducer

        self.ensure_topic()
        cfg: dict[str, Any] = dict(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0,
                                   enable_idempotence=False, retries=2, request_timeout_ms=5000,
                                   delivery_timeout_ms=int(self.timeout * 1000), max_block_ms=5000,
                                   max_request_size=max(1 << 20, 2 * self.record_bytes),
                                   reconnect_backoff_max_ms=1000, client_id="msgtrace-emitter",
                                   # kafka-python waits 30 s for a first broker by default: a shipper
                                   # must stay responsive (close, adoption) while the audit Kafka is away
                                   bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
        cfg.update(self._security())
        cfg.update(self.producer_config)
        self._producer = KafkaProducer(**cfg)
        self._conns = self._connections()
        return self._producer

    @staticmethod
    def _security() -> dict[str, Any]:
        """The audit Kafka's TLS / SASL settings from MSGTRACE_KAFKA_* (tracer.kafka_config), read
        where the client is made (the shipper process inherits the variables: no secret travels in
        the sink's spec or on a command line); explicit producer_config keys win over them."""
        from tracer.kafka_config import audit_settings

        return audit_settings().kafka_python()

    def _admin_client(self) -> Any:
        if self._admin is None:
            from kafka.admin import KafkaAdminClient

            admin_cfg = {k: v for k, v in {**self._security(), **self.producer_config}.items()
                         if k.startswith(("security_", "ssl_", "sasl_")) or k in ("api_version",)}
            admin_cfg.setdefault("bootstrap_timeout_ms", self.producer_config.get("bootstrap_timeout_ms",
                                                                                 BOOTSTRAP_TIMEOUT_MS))
            self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000,
                                           client_id="msgtrace-emitter-admin", **admin_cfg)
        return self._admin

    def _drop_admin(self) -> None:
        a, self._admin = self._admin, None
        if a is not None:
            try:
                a.close()
            except Exception:
                pass

    def ensure_topic(self) -> bool:
        """Create the audit topic unless it exists (best effort: auto-creation may do it); True if
        it was created here."""
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        try:
            admin = self._admin_client()
            if self.topic in set(admin.list_topics()):
                return False
            try:
                admin.create_topics([NewTopic(self.topic, self.partitions, 1)])
            except TopicAlreadyExistsError:
                return False
            return True
        except Exception:
            self._drop_admin()
            raise

    def topic_state(self, partitions: list[int]) -> TopicState:
        """The audit topic now: exists, its topic id, the log end offsets of ``partitions``."""
        from kafka import TopicPartition

        try:
            admin = self._admin_client()
            [desc] = admin.describe_topics([self.topic]) or [{"error_code": 3}]
            if desc.get("error_code") or not desc.get("partitions"):
                return TopicState(False)
            topic_id = desc.get("topic_id")
            known = {int(p["partition_index"]) for p in desc["partitions"] if "partition_index" in p}
            ends: dict[int, int] = {}
            ask = [p for p in partitions if not known or p in known]
            if ask:
                from kafka.admin import OffsetSpec

                got = admin.list_partition_offsets({TopicPartition(self.topic, p): OffsetSpec.LATEST for p in ask})
                ends = {tp.partition: int(v.offset) for tp, v in got.items()}
            return TopicState(True, str(topic_id) if topic_id else None, ends)
        except Exception:
            self._drop_admin()
            raise

    def _connections(self) -> frozenset[int] | None:
        """Identities of the producer's broker connections (kafka-python internals; None if unknown):
        a new one means the connection was re-established."""
        try:
            conns = self._producer._sender._client._manager._conns
            return frozenset(id(c) for c in list(conns.values()))
        except Exception:
            return None

    def reconnected(self) -> bool:
        """True when the producer re-established a broker connection since the last ship."""
        if self._producer is None:
            return False
        now = self._connections()
        return now is not None and self._conns is not None and now != self._conns

    def ship(self, data: bytes, lines: int) -> None:
        self.recreated = ""
        if self._producer is not None and self.reconnected():
            # the broker may have restarted: never write into a topic it no longer has
            if self.ensure_topic():
                self.recreated = "the audit topic was missing after a reconnect and was created again"
                self._drop_producer()  # fresh metadata for the new topic
        producer = self._producer or self._connect()
        before = self._connections()
        try:
            futures = [producer.send(self.topic, value=v, headers=self._headers)
                       for v in _split_records(data, self.record_bytes)]
            producer.flush(self.timeout)
            acks = []
            for f in futures:
                md = f.get(0)
                acks.append((int(md.partition), int(md.offset)))
            after = self._connections()
            if before is not None and after is not None and after != before and self.ensure_topic():
                # reconnected while shipping and the topic was gone: those acks came from a topic
                # the broker does not have (nobody can read them); ship the same lines again
                raise RuntimeError(f"audit topic {self.topic} vanished while shipping (broker restarted?); "
                                   "created it again, shipping again")
            self.last_acks = acks
            self._conns = after
        except Exception:
            self.last_acks = []
            self._drop_producer()
            raise

    def _drop_producer(self) -> None:
        p, self._producer = self._producer, None
        self._conns = None
        if p is not None:
            try:
                p.close(timeout=0)
            except Exception:
                pass

    def close(self) -> None:
        self._drop_producer()
        self._drop_admin()


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
