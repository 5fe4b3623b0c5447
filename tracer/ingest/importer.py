"""Importing events from files and pipes into the store: validate, de-duplicate, quarantine, write.

The collector's rules, for inputs that are not the audit topic: every event passes
:func:`tracer.events.validate_event`; an event whose id is already stored (or repeated in the batch)
is not written again, so a re-import stores nothing twice and changes no count; a record that cannot
become events goes to the ``quarantine`` table with its reason, once (a re-import of the same bad
record adds no second row). Input is read as a stream and written batch by batch (bounded memory),
so a dump of a trace topic can be piped in.

:class:`StoreWriter` is the one-method writer (snuba style); :func:`import_rocketmq_trace` and
:func:`import_events` drive it for RocketMQ trace records and msgtrace's own NDJSON events.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from collectors.types import QuarantineRow
from tracer.errors import DecodeError
from tracer.events import Event, decode_event_line, encode_event, now_us, validate_event

from .rocketmq import (
    SOURCE,
    BadRecord,
    Lookup,
    Receipt,
    RocketMQImportConfig,
    TraceMapper,
)
from .rocketmq_format import iter_raw_records

#: quarantine keeps at most this many bytes of a bad record (raw_size has the full size)
RAW_LIMIT = 64 * 1024
#: 18.16 renders bound parameters into the query text (max_query_size 256 KiB): id lists are chunked
_CHUNK_BYTES = 100_000


@dataclass(slots=True)
class ImportStats:
    """What an import did; ``to_dict`` is the ``--json`` output."""

    source: str
    records: int = 0  # input records (trace records, NDJSON lines)
    events: int = 0  # events the records map to
    stored: int = 0  # new events written
    duplicates: int = 0  # events already stored (or repeated in the input): not written again
    quarantined: int = 0  # bad records written to quarantine
    quarantine_duplicates: int = 0  # bad records already in quarantine: not written again
    skipped: int = 0  # valid records that record no stage (e.g. EndTransaction UNKNOW)
    unresolved: int = 0  # records resolved with fallbacks at the end (no Pub / SubBefore found)
    batches: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def to_dict(self) -> dict[str, Any]:
        el = self.elapsed
        return {"source": self.source, "records": self.records, "events": self.events, "stored": self.stored,
                "duplicates": self.duplicates, "quarantined": self.quarantined,
                "quarantine_duplicates": self.quarantine_duplicates, "skipped": self.skipped,
                "unresolved": self.unresolved, "batches": self.batches, "by_type": dict(self.by_type),
                "elapsed_s": round(el, 3), "records_per_s": round(self.records / el, 1) if el > 0 else 0.0}


def _chunks(items: Sequence[str], max_bytes: int = _CHUNK_BYTES) -> Iterator[Sequence[str]]:
    i = 0
    while i < len(items):
        size, j = 0, i
        while j < len(items) and (j == i or size < max_bytes):
            size += len(items[j]) + 8
            j += 1
        yield items[i:j]
        i = j


def _prefix(raw: bytes, limit: int = RAW_LIMIT) -> str:
    return raw[:limit].decode("utf-8", "replace")


class StoreWriter:
    """Writes one batch: validated, new events to ``trace_events``; new bad records to ``quarantine``."""

    def __init__(self, store: Any, source: str) -> None:
        self.store = store
        self.source = source

    def write(self, events: Sequence[Event], bad: Sequence[QuarantineRow], stats: ImportStats) -> None:
        good: list[Event] = []
        quarantine = list(bad)
        seen: set[str] = set()
        received = now_us()
        for e in events:
            try:
                v = validate_event(e.to_dict())
            except DecodeError as err:
                line = encode_event(e)
                quarantine.append(QuarantineRow(received, self.source, -1, -1, 0, err.field or "", err.reason,
                                                len(line), _prefix(line)))
                continue
            if v.event_id in seen:
                stats.duplicates += 1
                continue
            seen.add(v.event_id)
            good.append(v)
        with self.store.session():
            if good:
                stored = self._existing(good)
                new = [e for e in good if e.event_id not in stored]
                stats.duplicates += len(good) - len(new)
                if new:
                    self.store.insert_events(new)
                stats.stored += len(new)
            if quarantine:
                known = self._known_bad(quarantine)
                fresh: list[QuarantineRow] = []
                for q in quarantine:
                    k = (q.raw, q.error)
                    if k in known:
                        stats.quarantine_duplicates += 1
                        continue
                    known.add(k)
                    fresh.append(q)
                if fresh:
                    self.store.insert("quarantine", {f: [getattr(r, f) for r in fresh]
                                                     for f in QuarantineRow.__slots__})
                stats.quarantined += len(fresh)
        stats.batches += 1

    def _existing(self, events: Sequence[Event]) -> set[str]:
        """Ids of these events already stored (looked up by the table's key, msg_id then event_id)."""
        found: set[str] = set()
        by_mid = sorted({(e.msg_id, e.event_id) for e in events})
        ids = [e for _, e in by_mid]
        for chunk in _chunks(ids):
            cset = set(chunk)
            mids = sorted({m for m, e in by_mid if e in cset})
            rows = self.store.query(
                "SELECT DISTINCT event_id FROM {db:Identifier}.trace_events "
                "WHERE msg_id IN (SELECT arrayJoin({mids:Array(String)})) "
                "AND event_id IN (SELECT arrayJoin({ids:Array(String)}))",
                {"mids": mids, "ids": list(chunk)})
            found.update(r["event_id"] for r in rows)
        return found

    def _known_bad(self, rows: Sequence[QuarantineRow]) -> set[tuple[str, str]]:
        raws = sorted({r.raw for r in rows})
        known: set[tuple[str, str]] = set()
        for chunk in _chunks(raws):
            got = self.store.query(
                "SELECT raw, error FROM {db:Identifier}.quarantine WHERE source = {source:String} "
                "AND raw IN (SELECT arrayJoin({raws:Array(String)}))",
                {"source": self.source, "raws": list(chunk)})
            known.update((r["raw"], r["error"]) for r in got)
        return known


class StoreLookup:
    """:class:`tracer.ingest.rocketmq.Lookup` over the store: what earlier imports (or msgtrace's own
    RocketMQ hooks) recorded about these messages."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def topics(self, msg_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for chunk in _chunks(msg_ids):
            rows = self.store.query(
                "SELECT msg_id, any(topic) AS known_topic FROM {db:Identifier}.trace_events "
                "WHERE msg_id IN (SELECT arrayJoin({ids:Array(String)})) AND mq = 'rocketmq' AND topic != '' "
                "AND stage IN ('sent', 'send_failed', 'broker_acked', 'rolled_back') GROUP BY msg_id",
                {"ids": list(chunk)})
            out.update((r["msg_id"], r["known_topic"]) for r in rows)
        return out

    def receipts(self, msg_ids: Sequence[str]) -> dict[tuple[str, str], Receipt]:
        out: dict[tuple[str, str], Receipt] = {}
        for chunk in _chunks(msg_ids):
            rows = self.store.query(
                "SELECT consumer_group, ts_us, host, attr_keys, attr_values FROM {db:Identifier}.trace_events "
                "WHERE msg_id IN (SELECT arrayJoin({ids:Array(String)})) AND mq = 'rocketmq' AND stage = 'received'",
                {"ids": list(chunk)})
            for r in rows:
                a = dict(zip(r["attr_keys"], r["attr_values"]))
                req, mid, retry = a.get("rocketmq.request_id"), a.get("rocketmq.msg_id"), a.get("rocketmq.retry_times")
                if req and mid and retry is not None and retry.isdigit() and r["consumer_group"]:
                    out[(req, mid)] = Receipt(r["consumer_group"], int(r["ts_us"]) // 1000, int(retry), r["host"] or "")
        return out


def _bad_rows(bad: Iterable[BadRecord], source: str) -> list[QuarantineRow]:
    t = now_us()
    return [QuarantineRow(t, source, -1, b.raw.offset, min(b.raw.number, 2**31 - 1), b.field, b.error,
                          len(b.raw.raw), _prefix(b.raw.raw)) for b in bad]


def import_rocketmq_trace(store: Any, stream: BinaryIO, config: RocketMQImportConfig | None = None, *,
                          batch_records: int = 10_000, wait_s: float = 1.0,
                          lookup: Lookup | None = None,
                          progress: Callable[[ImportStats], None] | None = None) -> ImportStats:
    """Import RocketMQ trace records (TraceDataEncoder format) from ``stream`` into ``store``.

    Written every ``batch_records`` records, and whenever a pipe is idle for ``wait_s`` (a live dump
    is stored as it comes). Quarantine rows name the record's number (``line``) and byte offset
    (``offset``) in the input.
    """
    stats = ImportStats(SOURCE)
    mapper = TraceMapper(config, lookup if lookup is not None else StoreLookup(store))
    writer = StoreWriter(store, SOURCE)
    n_batch = 0

    def write(final: bool) -> None:
        nonlocal n_batch
        out = mapper.flush(final)
        if final:
            stats.unresolved += sum(1 for e in out.events if e.topic == "" and e.consumer_group)
        stats.events += len(out.events)
        stats.skipped += out.skipped
        if out.events or out.bad:
            writer.write(out.events, _bad_rows(out.bad, SOURCE), stats)
        stats.by_type = dict(mapper.by_type)
        n_batch = 0
        if progress is not None:
            progress(stats)

    def idle() -> None:
        if n_batch:
            write(False)

    store.init_schema()
    for raw in iter_raw_records(stream, on_idle=idle, wait_s=wait_s):
        stats.records += 1
        n_batch += 1
        mapper.feed(raw)
        if n_batch >= batch_records:
            write(False)
    write(True)
    stats.finished = time.monotonic()
    return stats


def import_events(store: Any, stream: BinaryIO, *, source: str = "events-file", batch_records: int = 10_000,
                  progress: Callable[[ImportStats], None] | None = None) -> ImportStats:
    """Import msgtrace's own events (the audit wire format, one JSON object per line) from ``stream``:
    e.g. what an application's hooks wrote to a file where no audit Kafka was reachable."""
    stats = ImportStats(source)
    writer = StoreWriter(store, source)
    events: list[Event] = []
    bad: list[QuarantineRow] = []
    store.init_schema()
    offset = 0
    for n, line in enumerate(stream, start=1):
        start, offset = offset, offset + len(line)
        body = line.strip()
        if not body:
            continue
        stats.records += 1
        try:
            events.append(decode_event_line(body))
        except DecodeError as e:
            bad.append(QuarantineRow(now_us(), source, -1, start, min(n, 2**31 - 1), e.field or "", e.reason,
                                     len(body), _prefix(body)))
        if len(events) + len(bad) >= batch_records:
            stats.events += len(events)
            writer.write(events, bad, stats)
            events, bad = [], []
            if progress is not None:
                progress(stats)
    if events or bad:
        stats.events += len(events)
        writer.write(events, bad, stats)
    stats.finished = time.monotonic()
    return stats
