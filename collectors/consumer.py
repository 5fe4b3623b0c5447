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
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from tracer.errors import ConfigError, MsgtraceError, describe
from tracer.events import MAX_RECORD_BYTES

from .steps import DEFAULT_RAW_LIMIT, Backoff, BatchStep, CommitStep, DecodeStep, StateLog, WriteStep, log_event
from .writer import StoreWriter
from .types import AuditSourceUnavailable, Batch, CollectorStats, FlushTimeout, Message, MessageRejected, Partition, \
    RawRecord

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
    consumer_options: dict[str, Any] = field(default_factory=dict)
    #: use the C decoder (collectors._fastjson) when it is built; False: the Python decoder only
    c_decoder: bool = True


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
        self.window_end: dict[Partition, int] = {}
        self.window_budget: dict[Partition, int] = {}
        self.held: deque[Any] = deque()
        self._revoked = False
        self._assigned_news: list[Any] | None = None
        self.paused = False
        self.assigned: set[Partition] = set()
        #: partition -> the group's committed offset as this collector knows it (what lag counts from)
        self.committed_at: dict[Partition, int] = {}
        self.kafka_state = StateLog("kafka")
        self.kafka_backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
        self.commit_step = CommitStep(self._commit, stats, backoff=Backoff(cfg.backoff_initial_s, cfg.backoff_max_s))
        self.write_step = WriteStep(StoreWriter(store, session_hold=cfg.session_hold_s), self.commit_step, stats,
                                    intent=self._intent, backoff=Backoff(cfg.backoff_initial_s, cfg.backoff_max_s),
                                    give_up_after=cfg.give_up_after_s, threaded=cfg.threaded_writes)
        self.batch_step = BatchStep(self.write_step, max_events=cfg.max_batch_events,
                                    max_records=cfg.max_batch_records, max_wait=cfg.max_batch_wait_s,
                                    raw_limit=cfg.raw_limit, in_window=self._in_window)
        self.strategy = DecodeStep(self.batch_step, cfg.max_record_bytes, use_c=cfg.c_decoder)
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

    def _after_rebalance(self) -> None:
        if self._revoked:
            self._revoked = False
            # Unwritten or uncommitted data of revoked partitions is dropped: the next owner
            # reads it again from the last commit, and the store de-duplicates what was written.
            dropped = not self.strategy.empty or bool(self.held)
            self.strategy.reset()
            self.held.clear()
            self.paused = False
            log_event(logging.INFO, "partitions revoked", dropped_uncommitted=dropped)
        if self._assigned_news is not None:
            assigned, self._assigned_news = self._assigned_news, None
            self._take_assignment(assigned)

    def _take_assignment(self, assigned: list[Any]) -> None:
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
            except Exception as e:  # only the duplicate count depends on it
                log_event(logging.DEBUG, "cannot read committed metadata", partition=str(p), error=str(e))
                continue
            if om is None:  # never committed: no collector wrote anything (the intent comes first)
                self.window_budget.pop(p, None)
                try:  # the lag counts from the log start
                    self.committed_at[p] = int(self.consumer.beginning_offsets([tp])[tp])
                except Exception:
                    pass
                continue
            self.committed_at[p] = int(om.offset)
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
        self._after_rebalance()
        if self.kafka_backoff.since is not None:
            self.kafka_backoff.ok()
            self.stats.kafka_down_since = None
            self.kafka_state.set("ok")
        n = 0
        for lst in recs.values():
            self.held.extend(lst)
            n += len(lst)
        return n

    def _lag(self, exact: bool = False) -> int | None:
        """Records of the assigned partitions not yet stored and committed (None: not known yet).

        Per partition: the log end minus the committed offset (records read and still in the
        pipeline count: they are not safe yet), also kept in ``stats.lag_by_partition``."""
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
                start = self.committed_at.get(p)
                by_partition[p] = max(0, end - (start if start is not None else self.consumer.position(tp)))
        except Exception:
            return None
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
        if self._lag(exact=True) != 0:
            return False
        if not self.strategy.join(self.cfg.shutdown_timeout_s):
            return False
        return self.strategy.empty and self._lag(exact=True) == 0

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


def _make_consumer(bootstrap: str, topic: str, group_id: str, cfg: CollectorConfig, listener: Any) -> Any:
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    opts = dict(bootstrap_servers=bootstrap.split(","), group_id=group_id, enable_auto_commit=False,
                auto_offset_reset="earliest", session_timeout_ms=cfg.session_timeout_ms,
                heartbeat_interval_ms=cfg.heartbeat_interval_ms, max_poll_records=cfg.max_poll_records,
                fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=32 * 1024 * 1024,
                client_id="msgtrace-collector")
    opts.update(cfg.consumer_options)
    try:
        consumer = KafkaConsumer(**opts)
        consumer.subscribe([topic], listener=listener)
    except KafkaError as e:
        raise AuditSourceUnavailable(f"cannot reach the audit Kafka at {bootstrap}: {describe(e)}") from None
    return consumer


def run_collector(bootstrap: str, topic: str, store_url: str | None, group_id: str = "msgtrace-collector",
                  until_idle: bool = False, *, config: CollectorConfig | None = None,
                  stop: threading.Event | None = None,
                  on_status: Callable[[CollectorStats, str], None] | None = None,
                  init_schema: bool = True, stats: CollectorStats | None = None) -> CollectorStats:
    """Collect the audit topic into the store; returns the run's stats.

    ``until_idle``: drain the topic (every assigned partition read to its end and
    committed) and return. Otherwise run until ``stop`` is set. Kafka that cannot be
    reached at start is retried until ``config.startup_timeout_s``. ``stats``: the object to
    count into (e.g. one a metrics server already reads); a new one by default.
    """
    from tracer.store import Store

    if not bootstrap:
        raise ConfigError("no audit Kafka bootstrap servers (use --bootstrap or MSGTRACE_KAFKA_BOOTSTRAP)")
    if not topic:
        raise ConfigError("no audit topic (use --audit-topic or MSGTRACE_AUDIT_TOPIC)")
    cfg = config or CollectorConfig()
    if until_idle and cfg.give_up_after_s is None:
        import dataclasses

        cfg = dataclasses.replace(cfg, give_up_after_s=300.0)
    stop = stop or threading.Event()
    stats = stats if stats is not None else CollectorStats()
    store = Store(store_url, lock_timeout=cfg.store_lock_timeout_s)
    if init_schema:
        _init_schema(store, cfg, stop, stats)
    proc_box: list[Processor] = []
    listener = _listener_proxy(proc_box)
    backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
    state = StateLog("kafka")
    start_deadline = time.monotonic() + cfg.startup_timeout_s
    consumer = None
    while consumer is None:
        try:
            consumer = _make_consumer(bootstrap, topic, group_id, cfg, listener)
        except AuditSourceUnavailable as e:
            stats.kafka_failures += 1
            backoff.failed()
            stats.kafka_down_since, stats.last_error = backoff.since, str(e)
            state.set("unavailable", error=str(e))
            if stop.is_set() or (until_idle and time.monotonic() > start_deadline):
                store.close()
                raise
            backoff.wait(time.monotonic() + backoff.delay)
    state.set("ok")
    stats.kafka_down_since = None
    proc = Processor(consumer, topic, store, cfg, stats, until_idle=until_idle, stop=stop, on_status=on_status)
    proc_box.append(proc)
    from .decode import FAST_C

    decoder = "c" if cfg.c_decoder and FAST_C else "python"
    log_event(logging.INFO, "collector started", topic=topic, group=group_id, store=store.url.redacted(),
              until_idle=until_idle, decoder=decoder)
    if decoder == "python" and cfg.c_decoder:
        log_event(logging.WARNING, "C decoder not built: decoding in Python (about 4x slower); "
                  "reinstall msgtrace with a C compiler present to build collectors._fastjson")
    gc_restore = _tune_gc(cfg.gc_threshold)
    try:
        proc.run()
    finally:
        gc_restore()
        proc.strategy.close()
        try:
            consumer.close(autocommit=False)
        except Exception as e:
            log_event(logging.WARNING, "consumer close failed", error=str(e))
        store.close()
        stats.finished = time.monotonic()
    log_event(logging.INFO, "collector stopped", **stats.to_dict())
    if not stats.clean_exit:
        raise FlushTimeout(f"stopped with unwritten events after {cfg.shutdown_timeout_s:.0f} s; "
                           "their audit offsets stay uncommitted and the next run reads them again")
    return stats


def _tune_gc(threshold: tuple[int, int, int] | None) -> Callable[[], None]:
    """Set the collection thresholds and freeze what exists now; returns the undo."""
    import gc

    if threshold is None:
        return lambda: None
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*threshold)

    def restore() -> None:
        gc.set_threshold(*old)
        gc.unfreeze()

    return restore


def _listener_proxy(box: list[Processor]) -> Any:
    """A kafka-python rebalance listener forwarding to the processor (made after the consumer)."""
    from kafka import ConsumerRebalanceListener

    class _ListenerProxy(ConsumerRebalanceListener):
        def __init__(self, box: list[Processor]) -> None:
            self.box = box

        def on_partitions_revoked(self, revoked: Any) -> None:
            if self.box:
                self.box[0].on_revoked(revoked)

        def on_partitions_assigned(self, assigned: Any) -> None:
            if self.box:
                self.box[0].on_assigned(assigned)

    return _ListenerProxy(box)


def _init_schema(store: Any, cfg: CollectorConfig, stop: threading.Event, stats: CollectorStats) -> None:
    """Create the tables if needed, waiting (with backoff) for a store that is not up yet."""
    from tracer.errors import QueryError, StoreError

    backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
    state = StateLog("store")
    deadline = time.monotonic() + cfg.startup_timeout_s
    while True:
        try:
            store.init_schema()
            state.set("ok")
            stats.store_down_since = None
            return
        except QueryError:
            raise
        except StoreError as e:
            backoff.failed()
            stats.store_down_since, stats.last_error = backoff.since, str(e)
            state.set("unavailable", error=str(e))
            if stop.is_set() or time.monotonic() > deadline:
                raise
            backoff.wait(time.monotonic() + backoff.delay)
