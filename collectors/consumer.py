"""The collector's consumer loop: kafka-python consumer group -> steps -> ClickHouse.

At least once: offsets are committed only after the store accepted the rows
(commit step after write step), never auto-committed. Nothing counts twice: the
store keeps duplicates harmlessly (ReplacingMergeTree by (msg_id, event_id))
and every query de-duplicates by event_id.

Duplicates (events already stored) are counted cheaply, aimed at the one case
that makes them in bulk -- a collector that wrote a batch and died before
committing. Before each write the collector commits the batch's *first*
offsets (nothing new) with the metadata ``msgtrace-upto=<next offset>`` (a write
intent); the commit after the write clears it. On assignment the consumer
reads that metadata: only records below it are looked up in the store. Brokers
that drop commit metadata (Tansu does) get a fallback: the first batch's worth of
events (``max_batch_events``) after each assignment is looked up. Repeats within
one batch are counted too. Copies that an emitter re-sent later, outside those
windows, are not looked up (that would cost a lookup per batch, ~0.3 s per 20k
ids on chDB); the store still collapses them at read time.

Rebalances (collectors side by side in one group): on revocation the pipeline's
unwritten and uncommitted data is dropped, and every partition of the new
assignment is sought back to the group's committed offset -- kafka-python keeps the
position of a partition that stays assigned, which would otherwise skip what was
dropped. A partition that moved is read by its new owner from the same offset.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracer.errors import MsgtraceError, describe
from tracer.events import MAX_RECORD_BYTES

from .steps import (
    DEFAULT_RAW_LIMIT,
    Backoff,
    BatchStep,
    CommitStep,
    DecodeStep,
    StateLog,
    WriteStep,
    log_event,
)
from .types import (
    AuditSourceUnavailable,
    Batch,
    CollectorStats,
    Message,
    MessageRejected,
    Partition,
    RawRecord,
)
from .writer import StoreWriter

INTENT_PREFIX = "msgtrace-upto="


@dataclass(slots=True)
class CollectorConfig:
    """Tuning knobs; the defaults suit one process on a small machine."""

    #: 100k: chDB writes one part per batch; with the C decoder the write is the slow step and
    #: bigger parts cost less per event (batches still close after max_batch_wait_s)
    max_batch_events: int = 100_000
    max_batch_records: int = 5_000
    max_batch_wait_s: float = 1.0
    poll_timeout_ms: int = 200
    max_poll_records: int = 500
    session_hold_s: float = 3.0
    #: write on a worker thread while the next batch is decoded (one batch in flight)
    threaded_writes: bool = True
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    #: give up (raise) after the store has been failing this long; None: retry forever
    #: (long-running mode) or 300 s (--until-idle)
    give_up_after_s: float | None = None
    startup_timeout_s: float = 60.0
    shutdown_timeout_s: float = 30.0
    raw_limit: int = DEFAULT_RAW_LIMIT
    max_record_bytes: int = MAX_RECORD_BYTES
    store_lock_timeout_s: float = 5.0
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    status_interval_s: float = 0.5
    #: cyclic-GC thresholds while collecting (None: leave the process's GC alone). Decoding
    #: makes ~1,000 container objects per record; with CPython's default (700, 10, 10) the
    #: young-generation passes alone took ~10% of the run, and freezing start-up objects
    #: keeps full passes short. Restored when the collector returns.
    gc_threshold: tuple[int, int, int] | None = (10_000, 20, 20)
    #: glibc's M_TOP_PAD while collecting (None: leave malloc alone). Every batch allocates and
    #: frees ~100 MB (fetch responses, record bytes, decoder buffers, Native blocks); by default
    #: glibc gives the freed heap back to the kernel and the next batch page-faults it in again.
    #: Measured into 18.16 (benchmarks/results/collector.md, same run): 271k -> 130k minor faults
    #: and 2.05 -> 1.79 collector CPU-s per 1M events; 64 MiB did as well as 256. The cost: up to
    #: this much freed memory stays in the process while it collects; given back (malloc_trim)
    #: when the collector returns. See collectors.run._tune_malloc.
    malloc_top_pad: int | None = 64 * 1024 * 1024
    consumer_options: dict[str, Any] = field(default_factory=dict)
    #: use the C decoder (collectors._fastjson) when it is built; False: the Python decoder only
    c_decoder: bool = True
    #: a test-only fault hook called with the step reached ("decode", "intent", "write", "commit");
    #: None: run_collector arms the one MSGTRACE_COLLECTOR_CRASH_AT asks for, if any (collectors.faults)
    crash: Callable[[str], None] | None = None


class Processor:
    """Polls the consumer, feeds the steps, pauses partitions on backpressure."""

    def __init__(self, consumer: Any, topic: str, store: Any, cfg: CollectorConfig, stats: CollectorStats,
                 *, until_idle: bool, stop: threading.Event,
                 on_status: Callable[[CollectorStats, str], None] | None = None) -> None:
        self.consumer = consumer
        self.topic = topic
        self.store = store
        self.cfg = cfg
        self.stats = stats
        self.until_idle = until_idle
        self.stop = stop
        self.on_status = on_status
        self.crash = cfg.crash
        self.window_end: dict[Partition, int] = {}
        self.window_budget: dict[Partition, int] = {}
        self.held: deque[Any] = deque()
        self._revoked = False
        self._rewind = False
        self._assigned_news: list[Any] | None = None
        self.paused = False
        self.assigned: set[Partition] = set()
        #: partition -> the group's committed offset as this collector knows it (what lag counts from)
        self.committed_at: dict[Partition, int] = {}
        self.kafka_state = StateLog("kafka")
        self.kafka_backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
        self.commit_step = CommitStep(self._commit, stats, backoff=Backoff(cfg.backoff_initial_s, cfg.backoff_max_s))
        writer = StoreWriter(store, session_hold=cfg.session_hold_s, crash=cfg.crash)
        self.write_step = WriteStep(writer, self.commit_step, stats,
                                    intent=self._intent, backoff=Backoff(cfg.backoff_initial_s, cfg.backoff_max_s),
                                    give_up_after=cfg.give_up_after_s, threaded=cfg.threaded_writes)
        self.batch_step = BatchStep(self.write_step, max_events=cfg.max_batch_events,
                                    max_records=cfg.max_batch_records, max_wait=cfg.max_batch_wait_s,
                                    raw_limit=cfg.raw_limit, in_window=self._in_window)
        self.strategy = DecodeStep(self.batch_step, cfg.max_record_bytes, use_c=cfg.c_decoder, crash=cfg.crash)
        self._last_status = 0.0

    # --- kafka glue ------------------------------------------------------------------
    @staticmethod
    def _tp(p: Partition) -> Any:
        from kafka import TopicPartition

        return TopicPartition(p.topic, p.index)

    def _commit(self, offsets: Mapping[Partition, int], metadata: Mapping[Partition, str] | None = None) -> None:
        from kafka.errors import CommitFailedError, IllegalStateError, KafkaError
        from kafka.structs import OffsetAndMetadata

        meta = metadata or {}
        live = {self._tp(p): OffsetAndMetadata(o, meta.get(p, ""), -1)
                for p, o in offsets.items() if p in self.assigned}
        if not live:
            return
        try:
            self.consumer.commit(live)
            for tp, om in live.items():
                self.committed_at[Partition(tp.topic, tp.partition)] = om.offset
            if self.crash is not None:
                self.crash("intent" if meta else "commit")
        except (CommitFailedError, IllegalStateError) as e:
            # The group rebalanced: these partitions are someone else's now. The rows are
            # stored; the new owner re-reads from the last commit and the store de-duplicates.
            log_event(logging.WARNING, "commit refused after rebalance", error=str(e).splitlines()[0][:200])
        except (KafkaError, OSError, RuntimeError) as e:
            raise AuditSourceUnavailable(f"cannot commit audit offsets: {describe(e)}") from None

    def _intent(self, batch: Batch) -> None:
        """Write intent: commit the batch's first offsets with metadata naming its end."""
        try:  # one commit request for all partitions of the batch
            self._commit(dict(batch.first_offsets),
                         {p: f"{INTENT_PREFIX}{batch.next_offsets[p]}" for p in batch.first_offsets})
        except MsgtraceError:
            pass  # only the duplicate count of a later restart depends on it

    def _in_window(self, p: Partition, offset: int, n_events: int) -> bool:
        end = self.window_end.get(p)
        if end is not None:
            return offset < end
        budget = self.window_budget.get(p, 0)
        if budget > 0:
            self.window_budget[p] = budget - n_events
            return True
        return False

    # kafka-python runs rebalance listeners on its IO thread, where no blocking call
    # (commit, committed) is allowed: they only take note; the main thread acts on it
    # right after poll() returns, before it touches a record of the new assignment.
    def on_revoked(self, revoked: Any) -> None:
        if revoked:
            self._revoked = True

    def on_assigned(self, assigned: Any) -> None:
        self._assigned_news = list(assigned)

    def _after_rebalance(self) -> bool:
        """Act on a rebalance seen by the last poll; True when the positions were rewound (then the
        records that poll returned are dropped: they are read again from the rewound positions)."""
        if self._revoked:
            self._revoked = False
            # Unwritten or uncommitted data is dropped: it is read again from the last commit (by
            # the next owner, or by this collector: see _take_assignment), and the store
            # de-duplicates what was written.
            dropped = not self.strategy.empty or bool(self.held)
            self.strategy.reset()
            self.held.clear()
            self.paused = False
            self._rewind = True
            log_event(logging.INFO, "partitions revoked", dropped_uncommitted=dropped)
        if self._assigned_news is not None:
            assigned, self._assigned_news = self._assigned_news, None
            rewind, self._rewind = self._rewind, False
            self._take_assignment(assigned, rewind=rewind)
            return rewind
        return False

    def _take_assignment(self, assigned: list[Any], *, rewind: bool = False) -> None:
        """Take a new assignment. ``rewind``: data was dropped at the revocation before it, and
        kafka-python keeps the position of a partition that stays assigned: every partition is
        sought back to the group's committed offset, or what was dropped would be skipped."""
        previous = self.committed_at
        self.assigned = {Partition(tp.topic, tp.partition) for tp in assigned}
        self.committed_at = {}
        self.paused = False
        for tp in assigned:
            p = Partition(tp.topic, tp.partition)
            self.window_end.pop(p, None)
            # Without a readable intent, look up the first batch's worth of events: a
            # collector with the same batch size wrote at most that much uncommitted.
            self.window_budget[p] = self.cfg.max_batch_events
            try:
                om = self.consumer.committed(tp, metadata=True)
                if om is None:  # never committed: no collector wrote anything (the intent comes first)
                    self.window_budget.pop(p, None)
                    self.committed_at[p] = int(self.consumer.beginning_offsets([tp])[tp])
                else:
                    self.committed_at[p] = int(om.offset)
            except Exception as e:
                om = None
                log_event(logging.WARNING if rewind else logging.DEBUG, "cannot read the committed offset",
                          partition=str(p), error=str(e))
                if p in previous:  # what this collector committed itself
                    self.committed_at[p] = previous[p]
            if rewind:
                self._seek(tp, p)
            if om is None:
                continue
            meta = getattr(om, "metadata", None)
            if meta is None:  # a broker that drops commit metadata (Tansu)
                continue
            self.window_budget.pop(p, None)
            if meta.startswith(INTENT_PREFIX):
                try:
                    self.window_end[p] = int(meta[len(INTENT_PREFIX):])
                except ValueError:
                    pass
        log_event(logging.INFO, "partitions assigned", partitions=sorted(str(p) for p in self.assigned),
                  intent_windows={str(p): e for p, e in self.window_end.items()},
                  lookup_budgets={str(p): b for p, b in self.window_budget.items()})

    def _seek(self, tp: Any, p: Partition) -> None:
        start = self.committed_at.get(p)
        try:
            if start is None:
                raise RuntimeError("committed offset unknown")
            self.consumer.seek(tp, start)
        except Exception as e:  # never guess a position: stop rather than skip records
            raise AuditSourceUnavailable(f"cannot rewind {p} to its committed offset after a rebalance: "
                                         f"{describe(e)}") from None

    # --- main loop -------------------------------------------------------------------
    def _drain_held(self) -> None:
        while self.held:
            r = self.held[0]
            msg = Message(Partition(r.topic, r.partition), r.offset, RawRecord(r.value, r.headers))
            try:
                self.strategy.submit(msg)
            except MessageRejected:
                return
            self.held.popleft()
            if self.stats.first_record_at is None:
                self.stats.first_record_at = time.monotonic()
            self.stats.records += 1

    def _set_paused(self, paused: bool) -> None:
        if paused == self.paused:
            return
        tps = [self._tp(p) for p in self.assigned]
        try:
            if paused:
                self.consumer.pause(*tps)
            else:
                self.consumer.resume(*tps)
        except Exception as e:
            log_event(logging.WARNING, "pause/resume failed", error=str(e))
            return
        self.paused = paused
        log_event(logging.INFO, "consumption paused" if paused else "consumption resumed",
                  partitions=len(tps))

    def _poll_kafka(self, timeout_ms: int) -> int:
        from kafka.errors import KafkaError

        try:
            recs = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.cfg.max_poll_records)
        except KafkaError as e:
            self.stats.kafka_failures += 1
            self.kafka_backoff.failed()
            self.stats.kafka_down_since = self.kafka_backoff.since
            self.stats.last_error = f"{describe(e)}"[:300]
            self.kafka_state.set("unavailable", error=self.stats.last_error)
            self.kafka_backoff.wait(time.monotonic() + self.kafka_backoff.delay)
            self._after_rebalance()
            return 0
        if self._after_rebalance():
            recs = {}  # fetched before the rewind: read again from the committed offsets
        if self.kafka_backoff.since is not None:
            self.kafka_backoff.ok()
            self.stats.kafka_down_since = None
            self.kafka_state.set("ok")
        n = 0
        for lst in recs.values():
            self.held.extend(lst)
            n += len(lst)
        return n

    def _lag(self, exact: bool = False, *, unread: bool = False) -> int | None:
        """Records of the assigned partitions not yet stored and committed (None: not known yet).

        Per partition: the log end minus the committed offset (records read and still in the
        pipeline count: they are not safe yet), also kept in ``stats.lag_by_partition``.
        ``unread``: records not yet read instead (the end minus the position, plus those held)."""
        if not self.assigned:
            self.stats.lag_by_partition = {}
            return None
        parts = sorted(self.assigned, key=lambda p: (p.topic, p.index))
        tps = [self._tp(p) for p in parts]
        try:
            ends = self.consumer.end_offsets(tps) if exact else {tp: self.consumer.highwater(tp) for tp in tps}
            by_partition: dict[Partition, int] = {}
            for p, tp in zip(parts, tps):
                end = ends.get(tp)
                if end is None:
                    return None
                start = None if unread else self.committed_at.get(p)
                by_partition[p] = max(0, end - (start if start is not None else self.consumer.position(tp)))
        except Exception:
            return None
        if unread:
            return sum(by_partition.values()) + len(self.held)
        self.stats.lag_by_partition = by_partition
        return sum(by_partition.values())

    def _status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < self.cfg.status_interval_s:
            return
        self._last_status = now
        self.stats.lag = self._lag()
        if self.on_status is not None:
            state = "store down" if self.write_step.down else ("paused" if self.paused else "running")
            try:
                self.on_status(self.stats, state)
            except Exception:
                pass

    def _idle(self) -> bool:
        if self.held or not self.strategy.empty or not self.assigned:
            return False
        if self._lag(exact=True, unread=True) != 0:
            return False
        if not self.strategy.join(self.cfg.shutdown_timeout_s):
            return False
        return self.strategy.empty and self._lag(exact=True, unread=True) == 0

    def run(self) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while not self.stop.is_set():
            self.strategy.poll()
            self._drain_held()
            if self.held:
                self._set_paused(True)
                # Wake as soon as the write in flight is done (not a fixed 50 ms later: that
                # idled the decode ~10% of a run); Kafka is still polled every round, which
                # keeps the group session and rebalances going (paused: returns nothing).
                self._poll_kafka(0 if self.write_step.wait_in_flight(0.05) else 50)
                self.strategy.poll()
                self._drain_held()
            else:
                self._set_paused(False)
                n = self._poll_kafka(self.cfg.poll_timeout_ms)
                if n:
                    # kafka-python sends the next fetch request from poll() only, and not from the
                    # poll that waited for these records: without this one the broker idles while
                    # they are decoded, and fetch and decode alternate (measured: ~25 ms of fetch +
                    # ~20 ms of decode per 30 records). Returns what is buffered already, if any.
                    self._poll_kafka(0)
                self._drain_held()
                if n == 0:
                    self.write_step.idle()
                if n == 0 and self.until_idle:
                    if self.assigned and self._idle():
                        break
                    if not self.assigned and time.monotonic() > deadline:
                        raise AuditSourceUnavailable(
                            f"no partition of audit topic {self.topic!r} was assigned within "
                            f"{self.cfg.startup_timeout_s:.0f} s (does the topic exist?)")
            self._status()
        self.shutdown()

    def shutdown(self) -> None:
        """Finish the current batch, commit, leave the group."""
        ok = self.strategy.join(self.cfg.shutdown_timeout_s)
        self.stats.lag = self._lag(exact=True)
        self.stats.clean_exit = ok
        self._status(force=True)
        if not ok:
            log_event(logging.ERROR, "stopped with unwritten events",
                      note="their offsets stay uncommitted; the next run reads them again")
