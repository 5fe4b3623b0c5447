"""The collector's processing steps: decode -> batch -> write -> commit.

Arroyo-style: each step has ``submit`` (may raise :class:`MessageRejected` when
its bounded buffer is full), ``poll`` (timed work: flush an old batch, retry a
failed write), ``join(timeout)`` (flush everything downstream, bounded) and
``close``; each holds the next step. Buffers are tiny and fixed: the decode step
keeps at most one decoded record, the batch step one batch being built and one
ready, the write step one batch, the commit step one offset map. Backpressure
travels up as MessageRejected and ends in the consumer pausing its partitions.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable, Mapping

from tracer.errors import MsgtraceError, QueryError, StoreError
from tracer.events import now_us

from .decode import N_COLUMNS, batch_store_columns, decode_record
from .types import (Batch, CollectorStats, Decoded, Message, MessageRejected, Partition, QuarantineRow, RawRecord,
                    Step)

log = logging.getLogger("msgtrace.collector")

#: quarantine keeps at most this many bytes of a bad record (raw_size has the full size)
DEFAULT_RAW_LIMIT = 64 * 1024
_EVENT_ID, _MSG_ID = 0, 1  # indexes in COLUMNS (decoded columns)


def log_event(level: int, event: str, **fields: Any) -> None:
    """Structured log line: an event name plus key/value fields (see cli.LogFormatter)."""
    log.log(level, event, extra={"fields": fields})


class StateLog:
    """Logs a component's state only when it changes (no log storm while a store is down)."""

    __slots__ = ("component", "state")

    def __init__(self, component: str) -> None:
        self.component = component
        self.state = "ok"

    def set(self, state: str, level: int = logging.WARNING, **fields: Any) -> bool:
        if state == self.state:
            return False
        previous, self.state = self.state, state
        log_event(level if state != "ok" else logging.INFO, f"{self.component} {state}",
                  previous=previous, **fields)
        return True


class Backoff:
    """Exponential backoff between retries: initial, x2, capped."""

    __slots__ = ("initial", "maximum", "delay", "next_at", "since")

    def __init__(self, initial: float = 0.5, maximum: float = 10.0) -> None:
        self.initial, self.maximum = initial, maximum
        self.delay = 0.0
        self.next_at = 0.0
        self.since: float | None = None

    def failed(self) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
        self.delay = self.initial if not self.delay else min(self.delay * 2, self.maximum)
        self.next_at = now + self.delay

    def ok(self) -> None:
        self.delay, self.next_at, self.since = 0.0, 0.0, None

    def ready(self) -> bool:
        return time.monotonic() >= self.next_at

    def wait(self, deadline: float) -> bool:
        """Sleep until the next attempt is due, but not past ``deadline``; False if out of time."""
        now = time.monotonic()
        if now >= deadline:
            return False
        if self.next_at > now:
            time.sleep(min(self.next_at, deadline) - now)
        return time.monotonic() < deadline


def _deadline_poll(step: Step[Any], item: Any, deadline: float) -> bool:
    """Submit ``item`` to ``step``, polling it while it pushes back, until ``deadline``."""
    while True:
        try:
            step.submit(item)
            return True
        except MessageRejected:
            if time.monotonic() >= deadline:
                return False
            step.poll()
            time.sleep(0.01)


# --- decode -----------------------------------------------------------------------

class DecodeStep:
    """Raw audit record -> :class:`Decoded` (good event columns + bad lines)."""

    def __init__(self, next_step: Step[Message[Decoded]], max_record_bytes: int, *, use_c: bool = True) -> None:
        self.next_step = next_step
        self.max_record_bytes = max_record_bytes
        self.use_c = use_c
        self._pending: Message[Decoded] | None = None

    def submit(self, message: Message[RawRecord]) -> None:
        if self._pending is not None:
            self._forward()
            if self._pending is not None:
                raise MessageRejected()
        rec = message.payload
        decoded = decode_record(rec.value, rec.headers, self.max_record_bytes, use_c=self.use_c)
        self._pending = Message(message.partition, message.offset, decoded)
        self._forward()

    def _forward(self) -> None:
        try:
            self.next_step.submit(self._pending)  # type: ignore[arg-type]
            self._pending = None
        except MessageRejected:
            pass

    def poll(self) -> None:
        self.next_step.poll()
        if self._pending is not None:
            self._forward()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if self._pending is not None:
            if not _deadline_poll(self.next_step, self._pending, deadline):
                return False
            self._pending = None
        return self.next_step.join(max(0.0, deadline - time.monotonic()))

    def reset(self) -> None:
        self._pending = None
        getattr(self.next_step, "reset", lambda: None)()

    @property
    def empty(self) -> bool:
        return self._pending is None and getattr(self.next_step, "empty", True)

    def close(self) -> None:
        self.next_step.close()


# --- batch -------------------------------------------------------------------------

def _prefix(raw: bytes, limit: int) -> str:
    """The stored form of raw bytes: UTF-8 text, other bytes as \\xNN, cut at ``limit`` bytes."""
    return raw[:limit].decode("utf-8", "backslashreplace")


class BatchStep:
    """Accumulates decoded records until ``max_events``/``max_records`` or ``max_wait`` seconds."""

    def __init__(self, next_step: Step[Batch], *, max_events: int = 20_000, max_records: int = 5_000,
                 max_wait: float = 1.0, raw_limit: int = DEFAULT_RAW_LIMIT,
                 in_window: Callable[[Partition, int, int], bool] | None = None) -> None:
        self.next_step = next_step
        self.max_events, self.max_records, self.max_wait = max_events, max_records, max_wait
        self.raw_limit = raw_limit
        self.in_window = in_window or (lambda p, o, n: False)
        self._building: Batch | None = None
        self._ready: Batch | None = None

    def _new(self) -> Batch:
        return Batch(columns=[[] for _ in range(N_COLUMNS)])

    def submit(self, message: Message[Decoded]) -> None:
        if self._ready is not None:
            self._push_ready()
            if self._ready is not None:
                raise MessageRejected()
        b = self._building
        if b is None:
            b = self._building = self._new()
        d = message.payload
        p = message.partition
        if d.arrow is not None:
            b.arrow.append(d.arrow)
            if self.in_window(p, message.offset, d.n_events):
                b.window_ids.extend(d.arrow.column(_EVENT_ID).to_pylist())
                b.window_msg_ids.extend(d.arrow.column(_MSG_ID).to_pylist())
        elif d.columns is not None:
            for col, add in zip(b.columns, d.columns):
                col.extend(add)
            if self.in_window(p, message.offset, d.n_events):
                b.window_ids.extend(d.columns[_EVENT_ID])
                b.window_msg_ids.extend(d.columns[_MSG_ID])
        if d.bad:
            received = now_us()
            for bl in d.bad:
                b.quarantine.append(QuarantineRow(received, p.topic, p.index, message.offset,
                                                  bl.line or 0, bl.field or "", bl.error, len(bl.raw),
                                                  _prefix(bl.raw, self.raw_limit)))
        b.n_events += d.n_events
        b.n_records += 1
        b.first_offsets.setdefault(p, message.offset)
        b.next_offsets[p] = message.next_offset
        if b.n_events >= self.max_events or b.n_records >= self.max_records:
            self._seal()

    def _seal(self) -> None:
        self._ready, self._building = self._building, None
        self._push_ready()

    def _push_ready(self) -> None:
        if self._ready is None:
            return
        try:
            self.next_step.submit(self._ready)
            self._ready = None
        except MessageRejected:
            pass

    def poll(self) -> None:
        self.next_step.poll()
        if self._ready is not None:
            self._push_ready()
        b = self._building
        if b is not None and self._ready is None and time.monotonic() - b.created >= self.max_wait:
            self._seal()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if self._ready is not None:
            if not _deadline_poll(self.next_step, self._ready, deadline):
                return False
            self._ready = None
        if self._building is not None and self._building.n_records:
            if not _deadline_poll(self.next_step, self._building, deadline):
                return False
        self._building = None
        return self.next_step.join(max(0.0, deadline - time.monotonic()))

    def reset(self) -> None:
        self._building = self._ready = None
        getattr(self.next_step, "reset", lambda: None)()

    @property
    def empty(self) -> bool:
        return self._building is None and self._ready is None and getattr(self.next_step, "empty", True)

    def close(self) -> None:
        self.next_step.close()


# --- write -------------------------------------------------------------------------

class WriteStep:
    """Writes a batch to ``trace_events`` and ``quarantine``; hands its offsets on after.

    The write runs on one worker thread (``threaded``), so the next batch is read and
    decoded while ClickHouse inserts this one (chDB and the socket release the GIL);
    at most one batch is in flight or waiting for a retry -- a second one is rejected.
    Kafka calls (the write intent, the commit) stay on the caller's thread.

    A failing store keeps the batch here, rejects new ones, and retries with
    exponential backoff in ``poll``; the state is logged once per change. On chDB a
    store session is held across back-to-back batches for at most ``session_hold``
    seconds (opening one costs ~0.1-0.2 s) and dropped as soon as the source is
    idle, so other processes (``trace-msg``, the reconciler) get the directory in
    between: after each release the next batch still has to be read and decoded,
    which leaves them a gap.
    """

    def __init__(self, store: Any, next_step: Step[Mapping[Partition, int]], stats: CollectorStats, *,
                 intent: Callable[[Batch], None] | None = None, session_hold: float = 3.0,
                 backoff: Backoff | None = None, give_up_after: float | None = None,
                 dup_chunk_bytes: int = 100_000, threaded: bool = False) -> None:
        self.store = store
        self.next_step = next_step
        self.stats = stats
        self.intent = intent
        self.session_hold = session_hold
        self.backoff = backoff or Backoff()
        self.give_up_after = give_up_after
        self.dup_chunk_bytes = dup_chunk_bytes
        self.state = StateLog("store")
        self._pending: Batch | None = None  # accepted, not yet written
        self._future: Future[None] | None = None  # its write, when in flight on the worker
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="msgtrace-writer") if threaded else None
        self._session: Any = None
        self._session_opened = 0.0
        self._last_write = 0.0
        # chDB's insert takes Arrow arrays as they are: attrs go in flattened, not as a list per event
        self._arrow = getattr(store, "engine", None) == "chdb"
        if self._arrow:  # import now (~0.5 s), not on the writer thread with the first batch waiting
            import pyarrow  # noqa: F401

    # --- chDB session lease (only ever touched on the writer's thread) ---------------
    def _open_session(self) -> None:
        if self._session is None:
            cm = self.store.session()
            cm.__enter__()
            self._session, self._session_opened = cm, time.monotonic()

    def _release_now(self) -> None:
        cm, self._session = self._session, None
        if cm is not None:
            try:
                cm.__exit__(None, None, None)
            except Exception as e:  # closing must not lose the batch state
                log_event(logging.WARNING, "store session close failed", error=str(e))

    def release(self, timeout: float = 30.0) -> None:
        """Drop the store session (lets other processes open an embedded store)."""
        if self._executor is None:
            self._release_now()
        elif self._session is not None:
            try:
                self._executor.submit(self._release_now).result(timeout)
            except Exception as e:
                log_event(logging.WARNING, "store session release failed", error=str(e))

    def idle(self) -> None:
        """The source has nothing new: give the embedded store back to other processes."""
        if self._pending is None:
            self.release()

    # --- the write ----------------------------------------------------------------------
    def _count_redelivered(self, batch: Batch) -> int:
        """Events of the redelivery window that an earlier (killed) collector already stored."""
        pairs = sorted(set(zip(batch.window_ids, batch.window_msg_ids)))
        found = 0
        i = 0
        while i < len(pairs):
            # chunks of ~100 KB of literals: 18.16 renders parameters into the query text,
            # whose size is limited (max_query_size, 256 KiB by default)
            size, j = 0, i
            while j < len(pairs) and size < self.dup_chunk_bytes:
                size += len(pairs[j][0]) + len(pairs[j][1]) + 8
                j += 1
            chunk = pairs[i:j]
            i = j
            # IN (SELECT arrayJoin(...)): 18.16 has no IN over an array literal; this form
            # builds a set and still uses the (msg_id, event_id) key on both engines.
            rows = self.store.query(
                "SELECT uniqExact(event_id) AS n FROM {db:Identifier}.trace_events "
                "WHERE msg_id IN (SELECT arrayJoin({mids:Array(String)})) "
                "AND event_id IN (SELECT arrayJoin({ids:Array(String)}))",
                {"mids": sorted({m for _, m in chunk}), "ids": [e for e, _ in chunk]})
            found += int(rows[0]["n"]) if rows else 0
        return found

    def _write(self, batch: Batch) -> None:
        """Runs on the writer thread (or inline). Idempotent per part: a retry skips what went in."""
        try:
            self._open_session()
            if batch.n_events and not batch.events_written:
                dups = 0
                try:
                    dups = self._count_redelivered(batch)
                except QueryError as e:  # only the count suffers; never block the write on it
                    log_event(logging.WARNING, "duplicate lookup failed", error=str(e))
                columns, distinct = batch_store_columns(batch.columns, batch.arrow, arrow=self._arrow)
                dups += batch.n_events - distinct
                self.store.insert("trace_events", columns)
                batch.events_written = True
                batch.duplicates = dups
            if batch.quarantine and not batch.quarantine_written:
                q = batch.quarantine
                self.store.insert("quarantine", {f: [getattr(r, f) for r in q] for f in QuarantineRow.__slots__})
                batch.quarantine_written = True
            self._last_write = time.monotonic()
            if self._last_write - self._session_opened >= self.session_hold:
                self._release_now()
        except StoreError:
            self._release_now()
            raise

    def _start(self) -> None:
        batch = self._pending
        assert batch is not None and self._future is None
        if self.intent is not None and batch.n_events and not batch.events_written:
            self.intent(batch)
        if self._executor is not None:
            self._future = self._executor.submit(self._write, batch)
            return
        try:
            self._write(batch)
        except StoreError as e:
            self._failed(e)
            return
        self._done()

    def _harvest(self) -> None:
        f = self._future
        if f is None or not f.done():
            return
        self._future = None
        e = f.exception()
        if e is None:
            self._done()
        elif isinstance(e, StoreError):
            self._failed(e)
        else:
            raise e

    def _failed(self, e: StoreError) -> None:
        batch = self._pending
        assert batch is not None
        self.stats.store_failures += 1
        self.backoff.failed()
        self.state.set("unavailable", error=str(e), retry_in_s=round(self.backoff.delay, 2),
                       events=batch.n_events)
        if (self.give_up_after is not None and self.backoff.since is not None
                and time.monotonic() - self.backoff.since > self.give_up_after):
            raise e

    def _done(self) -> None:
        batch = self._pending
        assert batch is not None
        self._pending = None
        self.stats.inserted += batch.n_events
        self.stats.duplicates += batch.duplicates
        self.stats.quarantined += len(batch.quarantine)
        if self.backoff.since is not None:
            self.state.set("ok", down_s=round(time.monotonic() - self.backoff.since, 1))
        self.backoff.ok()
        self.stats.batches += 1
        # The rows are in: only now may the offsets be committed.
        try:
            self.next_step.submit(dict(batch.next_offsets))
        except MessageRejected:  # the commit step merges offsets; it never rejects
            raise AssertionError("commit step rejected offsets") from None

    def _retry(self) -> None:
        self._harvest()
        if self._pending is not None and self._future is None and self.backoff.ready():
            self._start()

    def wait_in_flight(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the write on the worker thread; False if none is in flight."""
        f = self._future
        if f is None:
            return False
        try:
            f.exception(timeout=timeout)
        except FutureTimeout:
            pass
        return True

    def submit(self, batch: Batch) -> None:
        if self._pending is not None:
            self._retry()
            if self._pending is not None:
                raise MessageRejected()
        self._pending = batch
        self._start()

    def poll(self) -> None:
        self._retry()
        self.next_step.poll()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._pending is not None:
            if self._future is not None:
                try:
                    self._future.exception(timeout=max(0.0, deadline - time.monotonic()))
                except FutureTimeout:
                    return False
                self._harvest()
                continue
            if not self.backoff.wait(deadline):
                break
            self._start()
        self.release()
        if self._pending is not None:
            return False
        return self.next_step.join(max(0.0, deadline - time.monotonic()))

    def reset(self) -> None:
        if self._future is not None:  # let a write in flight finish; its offsets are not committed
            try:
                self._future.exception(timeout=60)
            except FutureTimeout:
                pass
            self._future = None
        self._pending = None
        self.release()
        getattr(self.next_step, "reset", lambda: None)()

    @property
    def down(self) -> bool:
        return self._pending is not None and self.backoff.since is not None

    @property
    def empty(self) -> bool:
        return self._pending is None and getattr(self.next_step, "empty", True)

    def close(self) -> None:
        self.release()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.next_step.close()


# --- commit ------------------------------------------------------------------------

class CommitStep:
    """Commits offsets of written batches. Offsets merge (max per partition), so it never rejects."""

    def __init__(self, commit: Callable[[Mapping[Partition, int]], None], stats: CollectorStats, *,
                 backoff: Backoff | None = None) -> None:
        self.commit = commit
        self.stats = stats
        self.backoff = backoff or Backoff()
        self.state = StateLog("kafka commit")
        self._pending: dict[Partition, int] = {}

    def submit(self, offsets: Mapping[Partition, int]) -> None:
        for p, o in offsets.items():
            if o > self._pending.get(p, -1):
                self._pending[p] = o
        self._try()

    def _try(self) -> bool:
        if not self._pending:
            return True
        offsets = dict(self._pending)
        try:
            self.commit(offsets)
        except MsgtraceError as e:
            self.stats.kafka_failures += 1
            self.backoff.failed()
            self.state.set("failing", error=str(e), retry_in_s=round(self.backoff.delay, 2))
            return False
        for p, o in offsets.items():
            if self._pending.get(p) == o:
                del self._pending[p]
        self.backoff.ok()
        self.state.set("ok")
        self.stats.commits += 1
        self.stats.last_commit_us = now_us()
        self.stats.last_commit_at = time.monotonic()
        return True

    def poll(self) -> None:
        if self._pending and self.backoff.ready():
            self._try()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._pending:
            if self._try():
                break
            if not self.backoff.wait(deadline):
                return False
        return not self._pending

    def drop(self, partitions: Any = None) -> None:
        """Forget offsets (of revoked partitions): the new owner starts from the last commit."""
        if partitions is None:
            self._pending.clear()
        else:
            for p in partitions:
                self._pending.pop(p, None)

    def reset(self) -> None:
        self.drop()

    @property
    def empty(self) -> bool:
        return not self._pending

    def close(self) -> None:
        pass
