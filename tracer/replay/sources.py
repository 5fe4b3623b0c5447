"""Where a lost message can still be had: the business topic at its offset, the DLQ, the source of truth.

* :class:`BusinessKafka` reads the business Kafka (``--bootstrap``) with a group-less consumer: it
  never commits, never joins a group and never creates a topic, so reading (a dry run included)
  changes nothing on the broker. Before reading a partition it asks for the log start and end
  offsets: a message below the log start was deleted by retention, one at or past the log end is
  gone with a reset log; neither can come from the broker.
* A record read at an offset must be the message: its ``msgtrace-id`` header is compared with the
  message id (a reset log reuses offsets for other messages).
* The DLQ copy is read where the ``dead_lettered`` event says it is (attrs ``dlq_partition`` /
  ``dlq_offset``); otherwise the DLQ topic is scanned, bounded, from shortly before the message was
  dead-lettered, for a record with the message's ``msgtrace-id`` header, or (a DLQ producer that
  dropped the headers) with the key and value of the original read from the business topic.
* :class:`SourceOfTruth` rebuilds a message from the business database through SQLAlchemy: a query
  returning id, key and payload with the ids bound as parameters (``:ids`` or ``:id``), never pasted.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Self

from tracer.errors import ConfigError, describe
from tracer.events import MSG_ID_HEADER
from tracer.replay.plan import Location, Message, Why

log = logging.getLogger("msgtrace.replay")

#: seek instead of reading on when the next wanted offset is further ahead than this
SEEK_GAP = 1000
#: start a DLQ scan this long before the dead_lettered event (clock skew, DLQ producer latency)
DLQ_SLACK_S = 300
SOURCE_BATCH = 500
#: how long a read past the reported log end (or at the end of a scan) waits for a record
PAST_END_WAIT_S = 1.5


def header(record: Any, name: str) -> bytes | None:
    for k, v in getattr(record, "headers", None) or ():
        if k == name:
            return bytes(v) if v is not None else b""
    return None


def to_message(record: Any) -> Message:
    return Message(record.key, record.value, [(k, bytes(v) if v is not None else b"") for k, v in record.headers or ()])


@dataclass(slots=True)
class Read:
    """The outcome of reading one location: the record, or why not."""

    record: Any = None
    why: Why | None = None
    text: str = ""
    note: str = ""


class BusinessKafka:
    """Read-only access to the business Kafka (kafka-python, group-less, no topic creation)."""

    def __init__(self, bootstrap: str, timeout_s: float = 10.0) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        from tracer.kafka_config import business_kafka_python

        self.bootstrap, self.timeout_s = bootstrap, timeout_s
        security = business_kafka_python()  # TLS / SASL of the business Kafka
        try:
            self._c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                    allow_auto_create_topics=False, auto_offset_reset="none",
                                    client_id="msgtrace-replay", request_timeout_ms=int(timeout_s * 1000) + 5000,
                                    max_poll_records=500, bootstrap_timeout_ms=int(timeout_s * 1000) + 5000,
                                    **security)
        except KafkaError as e:
            raise ConfigError(f"cannot reach the business Kafka at {bootstrap}: {describe(e)}") from None
        self._parts: dict[str, set[int]] = {}

    def close(self) -> None:
        try:
            self._c.close()
        except Exception as e:  # noqa: BLE001 - only reads were made
            log.info("closing the replay reader: %s", describe(e))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def partitions(self, topic: str) -> set[int]:
        if topic not in self._parts:
            self._parts[topic] = set(self._c.partitions_for_topic(topic) or ())
        return self._parts[topic]

    def topic_exists(self, topic: str) -> bool:
        self._parts.pop(topic, None)
        return bool(self.partitions(topic))

    def bounds(self, topic: str, parts: Iterable[int]) -> dict[int, tuple[int, int]]:
        """partition -> (log start offset, log end offset)."""
        from kafka.structs import TopicPartition

        tps = [TopicPartition(topic, p) for p in sorted(set(parts))]
        if not tps:
            return {}
        begin = self._c.beginning_offsets(tps)
        end = self._c.end_offsets(tps)
        return {tp.partition: (int(begin[tp]), int(end[tp])) for tp in tps}

    def read(self, locs: Iterable[Location], msg_ids: dict[Location, str],
             strict: frozenset[Location] = frozenset()) -> dict[Location, Read]:
        """Read each location; check log bounds first and the record's identity after.

        Below the log start is final. At or past the reported log end, a short read decides: a
        broker may report a low end (Tansu 0.6 reports the last batch's base offset + 1), and a
        record that is there is there."""
        by_tp: dict[tuple[str, int], list[int]] = {}
        for loc in locs:
            by_tp.setdefault((loc.topic, loc.partition), []).append(loc.offset)
        out: dict[Location, Read] = {}
        for topic in sorted({t for t, _ in by_tp}):
            parts = self.partitions(topic)
            tps = {p: offs for (t, p), offs in by_tp.items() if t == topic}
            if not parts:
                for p, offs in tps.items():
                    for o in offs:
                        out[Location(topic, p, o)] = Read(why=Why.TOPIC_GONE,
                                                          text=f"topic {topic} does not exist on {self.bootstrap}")
                continue
            bounds = self.bounds(topic, [p for p in tps if p in parts])
            for p, offs in sorted(tps.items()):
                if p not in parts:
                    for o in offs:
                        out[Location(topic, p, o)] = Read(why=Why.TOPIC_GONE, text=f"{topic} has no partition {p}")
                    continue
                start, end = bounds[p]
                inside: list[int] = []
                past: list[int] = []
                for o in sorted(set(offs)):
                    loc = Location(topic, p, o)
                    if o < start:
                        out[loc] = Read(why=Why.BELOW_LOG_START,
                                        text=f"{loc} is below the partition's log start offset {start}: "
                                             "retention deleted it; the broker cannot supply it")
                    else:
                        (inside if o < end else past).append(o)
                got = self._read_offsets(topic, p, inside, self.timeout_s) if inside else {}
                got.update(self._read_offsets(topic, p, past, PAST_END_WAIT_S) if past else {})
                for o in inside + past:
                    loc = Location(topic, p, o)
                    if o in past and got.get(o) is None:
                        out[loc] = Read(why=Why.BEYOND_LOG_END,
                                        text=f"{loc} is past the partition's log end offset {end} and no record is "
                                             "there: the broker's log was reset or truncated; it is gone")
                    else:
                        out[loc] = self._check(loc, got.get(o), msg_ids.get(loc, ""), loc in strict)
        return out

    @staticmethod
    def _check(loc: Location, record: Any, msg_id: str, strict: bool = False) -> Read:
        if record is None:
            return Read(why=Why.NOT_AT_OFFSET, text=f"no record at {loc} (compacted away or not returned in time)")
        h = header(record, MSG_ID_HEADER)
        if h is None and strict:
            return Read(why=Why.IDENTITY_UNVERIFIED, text=f"the record at {loc} has no msgtrace-id header: after a "
                                                          "loss in the broker it may be another message; not used")
        if h is None:
            return Read(record, note=f"{loc} has no msgtrace-id header: its identity is not verified")
        if h.decode("utf-8", "replace") != msg_id:
            return Read(why=Why.OFFSET_REUSED, text=f"the record at {loc} is another message "
                                                    f"({h.decode('utf-8', 'replace')!r}): the log was reset and "
                                                    "the offset reused")
        return Read(record)

    def _poll(self, tp: Any) -> list[Any] | None:
        """One fetch of ``tp``; None when the broker says the position is out of range."""
        from kafka.errors import OffsetOutOfRangeError

        try:
            return list(self._c.poll(timeout_ms=200).get(tp, []))
        except OffsetOutOfRangeError:
            return None

    def _read_offsets(self, topic: str, part: int, wanted: list[int], wait_s: float) -> dict[int, Any]:
        """The records at ``wanted`` (sorted) offsets of one partition; None where there is none. A
        seek that gets nothing for ``wait_s`` (or out of range) gives up on that offset."""
        from kafka.structs import TopicPartition

        tp = TopicPartition(topic, part)
        c = self._c
        c.assign([tp])
        out: dict[int, Any] = {}
        i = 0
        while i < len(wanted):
            c.seek(tp, wanted[i])
            deadline = time.monotonic() + wait_s
            while i < len(wanted):
                batch = self._poll(tp)
                if not batch:
                    if batch is None or time.monotonic() > deadline:
                        out[wanted[i]] = None
                        i += 1
                        break
                    continue
                deadline = time.monotonic() + wait_s
                for r in batch:
                    while i < len(wanted) and wanted[i] < r.offset:
                        out[wanted[i]] = None
                        i += 1
                    if i < len(wanted) and wanted[i] == r.offset:
                        out[r.offset] = r
                        i += 1
                if i < len(wanted) and wanted[i] > batch[-1].offset + SEEK_GAP:
                    break
        return out

    def scan(self, topic: str, since_ms: int, limit: int) -> tuple[list[Any], str]:
        """Up to ``limit`` records per partition of ``topic`` from about ``since_ms`` on; and in words
        what was scanned (said when a message is not found)."""
        from kafka.structs import TopicPartition

        parts = self.partitions(topic)
        if not parts:
            return [], f"DLQ topic {topic} does not exist on {self.bootstrap}"
        bounds = self.bounds(topic, parts)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        try:
            at = self._c.offsets_for_times({tp: max(0, since_ms) for tp in tps})
        except Exception as e:  # noqa: BLE001 - not every broker answers ListOffsets by time
            log.info("offsets_for_times on %s failed (%s): scanning the last %d records", topic, describe(e), limit)
            at = {}
        records: list[Any] = []
        said = []
        for tp in tps:
            start, end = bounds[tp.partition]
            hit = at.get(tp)
            s = max(start, hit.offset if hit is not None else end - limit)
            got = list(self._read_range(tp, s, limit))
            records.extend(got)
            last = got[-1].offset + 1 if got else s
            more = " (stopped at the limit: raise --dlq-scan-limit)" if len(got) >= limit else ""
            said.append(f"{tp.partition}@{s}..{last}{more}")
        return records, f"scanned {topic} partitions {', '.join(said)}"

    def _read_range(self, tp: Any, start: int, limit: int) -> Iterator[Any]:
        """Up to ``limit`` records from ``start`` until the partition has no more (nothing new for
        PAST_END_WAIT_S): to the log's real end, whatever end offset the broker reports."""
        c = self._c
        c.assign([tp])
        c.seek(tp, start)
        n = 0
        deadline = time.monotonic() + PAST_END_WAIT_S
        while n < limit and time.monotonic() < deadline:
            batch = self._poll(tp)
            if batch is None:
                return
            if batch:
                deadline = time.monotonic() + PAST_END_WAIT_S
            for r in batch:
                if n >= limit:
                    return
                n += 1
                yield r


# --- the source of truth -------------------------------------------------------------------

@dataclass(slots=True)
class SourceRow:
    msg_id: str
    key: bytes | None
    value: bytes | None
    topic: str = ""


_PARAM_IDS = re.compile(r"(?<![:\w\\]):ids\b")
_PARAM_ID = re.compile(r"(?<![:\w\\]):id\b")
_OTHER_COLON = re.compile(r"(?<!\\):(?!(?:ids|id)\b)")


def _as_bytes(v: Any) -> bytes | None:
    if v is None:
        return None
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, (dict, list)):
        import orjson

        return orjson.dumps(v)
    return str(v).encode("utf-8")


class SourceOfTruth:
    """The business database (SQLAlchemy URL) and a query returning ``id``, ``key``, ``payload``
    (optionally ``topic``) for the ids bound as ``:ids`` (a list: ``WHERE id IN :ids``) or ``:id``
    (one query per message). Every other colon is literal (``'order-42:paid'``, ``x::text``)."""

    def __init__(self, sql: str, dsn: str) -> None:
        if not sql or not dsn:
            raise ConfigError("--source-sql and --source-dsn go together (the query and the business database URL)")
        self.many = bool(_PARAM_IDS.search(sql))
        if not self.many and not _PARAM_ID.search(sql):
            raise ConfigError("--source-sql must take the message ids as a bound parameter: :ids (a list, "
                              "e.g. WHERE msg_id IN :ids) or :id (one query per message)")
        self.sql, self.dsn = sql, dsn
        self._engine: Any = None

    def describe(self) -> str:
        from sqlalchemy.engine import make_url

        try:
            return f"sql on {make_url(self.dsn).render_as_string(hide_password=True)}"
        except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse: say nothing of it
            return "sql"

    def _statement(self) -> Any:
        from sqlalchemy import bindparam, text

        stmt = text(_OTHER_COLON.sub(r"\\:", self.sql))
        return stmt.bindparams(bindparam("ids", expanding=True)) if self.many else stmt

    def fetch(self, ids: list[str]) -> dict[str, list[SourceRow]]:
        """msg_id -> the rows the query returned for it."""
        try:
            from sqlalchemy import create_engine
        except ImportError:  # pragma: no cover - a dependency
            raise ConfigError("--source-sql needs SQLAlchemy") from None
        if self._engine is None:
            try:
                self._engine = create_engine(self.dsn)
            except Exception as e:  # noqa: BLE001 - any driver's error: one line
                raise ConfigError(f"invalid --source-dsn: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        out: dict[str, list[SourceRow]] = {}
        stmt = self._statement()
        try:
            with self._engine.connect() as conn:
                if self.many:
                    for k in range(0, len(ids), SOURCE_BATCH):
                        self._collect(conn.execute(stmt, {"ids": ids[k:k + SOURCE_BATCH]}), out)
                else:
                    for i in ids:
                        self._collect(conn.execute(stmt, {"id": i}), out)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - any driver's error: one line
            first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise ConfigError(f"source-of-truth query failed ({self.describe()}): {first}") from None
        return out

    @staticmethod
    def _collect(result: Any, out: dict[str, list[SourceRow]]) -> None:
        names = [str(n).lower() for n in result.keys()]  # noqa: SIM118 - a Result, not a dict
        if len(names) < 3 and not {"id", "payload"} <= set(names):
            raise ConfigError(f"--source-sql must return id, key and payload (it returned {', '.join(names)})")

        def col(name: str, pos: int) -> int:
            return names.index(name) if name in names else pos

        ii = col("id", 0) if "id" in names else col("msg_id", 0)
        ki, pi = col("key", 1), col("payload", 2)
        ti = names.index("topic") if "topic" in names else -1
        for row in result:
            mid = str(row[ii])
            out.setdefault(mid, []).append(SourceRow(mid, _as_bytes(row[ki]), _as_bytes(row[pi]),
                                                     str(row[ti]) if ti >= 0 and row[ti] is not None else ""))

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
