"""Helpers for tests and benchmarks: audit topics and audit records on a real broker.

Records are produced in the audit wire format (``encode_batch`` + ``record_headers``)
with a plain KafkaProducer, as the emitter does.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from tracer.events import Event, Stage, encode_batch, record_headers

_STAGES = [Stage.SENT, Stage.BROKER_ACKED, Stage.RECEIVED, Stage.BUSINESS_DONE]


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="msgtrace-test-admin")
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def make_events(n: int, *, prefix: str | None = None, emitter_id: str | None = None) -> list[Event]:
    """``n`` valid events: 4 stages per message, numbered like an emitter does."""
    prefix = prefix or uuid.uuid4().hex[:8]
    emitter_id = emitter_id or f"em-{prefix}"
    out = []
    for i in range(n):
        stage = _STAGES[i % 4]
        out.append(Event(msg_id=f"{prefix}-order-{i // 4}:paid", stage=stage.value, service="order-service",
                         host="host-a", pid=4242, topic="orders", partition=(i // 4) % 3,
                         offset=i // 4 if stage != Stage.SENT else None,
                         consumer_group="red-packet" if stage in (Stage.RECEIVED, Stage.BUSINESS_DONE) else None,
                         emitter_id=emitter_id, seq=i + 1, attrs={"i": str(i)}))
    return out


def producer(bootstrap: str, **kw: Any) -> Any:  # -> KafkaProducer
    from kafka import KafkaProducer

    opts = dict(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1024 * 1024,
                max_request_size=64 * 1024 * 1024, acks=1)
    opts.update(kw)
    return KafkaProducer(**opts)


def produce_records(bootstrap: str, topic: str,
                    values: Iterable[tuple[bytes | None, list[tuple[str, bytes]] | None]],
                    partition: int | None = None) -> int:
    """Send raw (value, headers) records; returns how many; flushes before returning."""
    p = producer(bootstrap)
    n = 0
    try:
        for value, headers in values:
            p.send(topic, value=value, headers=headers, partition=partition)
            n += 1
        p.flush(60)
    finally:
        p.close(10)
    return n


def produce_events(bootstrap: str, topic: str, events: Sequence[Event], per_record: int = 500,
                   partitions: int | None = None) -> int:
    """Send events in audit records of ``per_record`` events (round-robin over ``partitions``)."""
    p = producer(bootstrap)
    n = 0
    try:
        for k, i in enumerate(range(0, len(events), per_record)):
            part = k % partitions if partitions else None
            p.send(topic, value=encode_batch(events[i:i + per_record]), headers=record_headers(), partition=part)
            n += 1
        p.flush(60)
    finally:
        p.close(10)
    return n


def scrape_metrics(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """A collector's ``/metrics`` parsed: sample name with its labels (sorted, ``k=v``) -> value;
    empty when it does not answer (not started yet, or gone)."""
    import urllib.error
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out
