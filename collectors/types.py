"""Small value types of the collector pipeline (slotted, no behaviour).

Kept free of kafka-python and of the store so that the steps can be unit
tested with plain objects.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

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
class Offsets:
    """What the write step hands to the commit step once a batch is stored."""

    #: partition -> next offset to commit
    positions: dict[Partition, int]
    #: monotonic time the oldest batch covered got its first record (for the batch latency)
    created: float = field(default_factory=time.monotonic)


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
    """The contract of every processing step (arroyo's ProcessingStrategy, complete).

    Each step holds the next one and forwards calls down the chain, so the consumer loop
    talks to the first step only.
    """

    def submit(self, item: T_contra) -> None:
        """Take one item, or raise :class:`MessageRejected` (bounded buffer full: retry later)."""

    def poll(self) -> None:
        """Do timed work (close an old batch, retry a failed write, harvest a finished one)."""

    def join(self, timeout: float) -> bool:
        """Flush everything held here and downstream within ``timeout`` s; False if not all went."""

    def reset(self) -> None:
        """Drop everything held here and downstream (partitions revoked: the next owner re-reads
        from the last commit, and the store de-duplicates what was written)."""

    @property
    def empty(self) -> bool:
        """True when neither this step nor any step after it holds anything."""

    def close(self) -> None:
        """Release resources (threads, store sessions); nothing is flushed."""


class BatchWriter(Protocol):
    """Where batches are stored (snuba's BatchWriter): the write step's only view of the store.

    ``write`` stores one batch's events and quarantine rows, raising a
    :class:`tracer.errors.StoreError` when it cannot; it is idempotent per part (a retry after a
    failure skips what went in, see ``Batch.events_written``) and records what it found on the
    batch (``duplicates``). ``release`` gives back anything held between writes (an embedded
    store's directory); the write step calls both on one thread.
    """

    def write(self, batch: Batch) -> None: ...

    def release(self) -> None: ...


#: upper bounds (seconds) of the batch latency histogram (Prometheus buckets; +Inf is implied)
LATENCY_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(slots=True)
class Histogram:
    """Cumulative-free bucket counts of observed durations (exported as a Prometheus histogram)."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        i = 0
        while i < len(self.bounds) and seconds > self.bounds[i]:
            i += 1
        self.counts[i] += 1
        self.total += seconds
        self.n += 1


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
    #: partition -> records behind the end of the log (assigned partitions only; refreshed with ``lag``)
    lag_by_partition: dict[Partition, int] = field(default_factory=dict)
    #: seconds of each batch's write (events + quarantine, retries included)
    write_seconds: Histogram = field(default_factory=Histogram)
    #: seconds from a batch's first record to the commit of its offsets
    batch_seconds: Histogram = field(default_factory=Histogram)
    #: monotonic time since when the store / Kafka has been failing (None: working)
    store_down_since: float | None = None
    kafka_down_since: float | None = None  # polling / connecting fails
    commit_down_since: float | None = None  # committing offsets fails
    last_error: str | None = None  # the last store or Kafka error (for the health endpoint)

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
