"""Small value types of the collector pipeline (slotted, no behaviour).

Kept free of kafka-python and of the store so that the steps can be unit
tested with plain objects.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, Sequence, TypeVar

from tracer.errors import MsgtraceError

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class MessageRejected(Exception):
    """A step's bounded buffer is full: the caller keeps the item and retries later.

    Not a failure: it is how backpressure travels upstream (the consumer then
    pauses its partitions instead of growing a queue).
    """


class AuditSourceUnavailable(MsgtraceError):
    """The audit Kafka cannot be reached (translated from kafka-python errors)."""


class FlushTimeout(MsgtraceError):
    """A join/flush did not finish within its timeout (data stays uncommitted)."""


@dataclass(frozen=True, slots=True)
class Partition:
    topic: str
    index: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.index}"


@dataclass(slots=True)
class Message(Generic[T]):
    """One audit record (or what a step made of it) with its position."""

    partition: Partition
    offset: int
    payload: T

    @property
    def next_offset(self) -> int:
        """The offset to commit once this message is done (Kafka commits the next position)."""
        return self.offset + 1


@dataclass(slots=True)
class RawRecord:
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


@dataclass(slots=True)
class QuarantineRow:
    """One bad record or line, as the ``quarantine`` table stores it."""

    received_us: int
    source: str
    partition: int
    offset: int
    line: int
    field: str
    error: str
    raw_size: int
    raw: str


@dataclass(slots=True)
class Decoded:
    """A decoded audit record: good events as store columns, bad lines for quarantine."""

    n_events: int
    columns: list[Sequence[Any]] | None  # in COLUMNS order (attrs: the dicts); None when no good event
    bad: list[Any]  # tracer.events.BadLine
    raw_size: int
    fast: bool  # True when a fast path (C or columnar Python) accepted the whole record
    arrow: Any = None  # pa.RecordBatch of the events when the C decoder made them (then columns is None)


@dataclass(slots=True)
class Batch:
    """Events and quarantine rows of several records, with the offsets they cover."""

    columns: list[list[Any]]  # events decoded in Python (COLUMNS order, attrs as dicts)
    arrow: list[Any] = field(default_factory=list)  # record batches from the C decoder
    quarantine: list[QuarantineRow] = field(default_factory=list)
    n_events: int = 0
    n_records: int = 0
    #: partition -> next offset to commit once the batch is stored
    next_offsets: dict[Partition, int] = field(default_factory=dict)
    #: partition -> first offset in the batch (used for the write-intent commit)
    first_offsets: dict[Partition, int] = field(default_factory=dict)
    #: event ids of records that a previous collector may already have written
    window_ids: list[str] = field(default_factory=list)
    window_msg_ids: list[str] = field(default_factory=list)  # parallel to window_ids
    created: float = field(default_factory=time.monotonic)
    events_written: bool = False
    duplicates: int = 0  # found when the events were written
    quarantine_written: bool = False


class Step(Protocol[T_contra]):
    """An arroyo-style processing step: submit may raise MessageRejected; poll does
    timed work; join flushes everything downstream within a timeout."""

    def submit(self, item: T_contra) -> None: ...

    def poll(self) -> None: ...

    def join(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class CollectorStats:
    """What a collector run did; ``to_dict`` is the ``--json`` output."""

    records: int = 0
    inserted: int = 0  # rows written to trace_events (including re-written duplicates)
    duplicates: int = 0  # of those, event_ids already stored or repeated within the batch
    quarantined: int = 0  # bad records / lines written to quarantine
    batches: int = 0
    commits: int = 0
    store_failures: int = 0
    kafka_failures: int = 0
    lag: int | None = None
    last_commit_us: int | None = None
    started: float = field(default_factory=time.monotonic)
    first_record_at: float | None = None  # monotonic, when the first record entered the pipeline
    last_commit_at: float | None = None  # monotonic
    finished: float | None = None
    clean_exit: bool = True

    @property
    def stored(self) -> int:
        """New distinct events this run added to the store."""
        return self.inserted - self.duplicates

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def sustained_rate(self) -> float:
        """Events/s from the first record to the last commit (no group join, no idle wait)."""
        if self.first_record_at is None or self.last_commit_at is None or self.last_commit_at <= self.first_record_at:
            return 0.0
        return self.inserted / (self.last_commit_at - self.first_record_at)

    def to_dict(self) -> dict[str, Any]:
        el = self.elapsed
        return {"stored": self.stored, "inserted": self.inserted, "duplicates": self.duplicates,
                "quarantined": self.quarantined, "records": self.records, "batches": self.batches,
                "commits": self.commits, "store_failures": self.store_failures,
                "kafka_failures": self.kafka_failures, "lag": self.lag, "last_commit_us": self.last_commit_us,
                "elapsed_s": round(el, 3), "events_per_s": round(self.inserted / el, 1) if el > 0 else 0.0,
                "sustained_events_per_s": round(self.sustained_rate, 1),
                "clean_exit": self.clean_exit}
