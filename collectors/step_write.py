"""Write step: a batch -> the store (through a :class:`BatchWriter`), then its offsets onward."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from tracer.errors import StoreError

from .step_base import Backoff, StateLog, log_event
from .types import Batch, BatchWriter, CollectorStats, MessageRejected, Offsets, Step


class WriteStep:
    """Writes one batch at a time; hands its offsets to the next step only after the write.

    The write runs on one worker thread (``threaded``), so the next batch is read and decoded
    while the store inserts this one (chDB and the socket release the GIL); at most one batch
    is in flight or waiting for a retry -- a second one is rejected. Kafka calls (the write
    intent, the commit) stay on the caller's thread; every writer call (``write``, ``release``)
    runs on the worker thread.

    A failing store keeps the batch here, rejects new ones, and retries with exponential
    backoff in ``poll``; the state is logged once per change. ``give_up_after`` seconds of
    failures raise the store's error (``--until-idle`` runs end instead of waiting forever).
    """

    __slots__ = ("writer", "next_step", "stats", "intent", "backoff", "give_up_after", "state", "_pending",
                 "_future", "_executor", "_started")

    def __init__(self, writer: BatchWriter, next_step: Step[Offsets], stats: CollectorStats, *,
                 intent: Callable[[Batch], None] | None = None, backoff: Backoff | None = None,
                 give_up_after: float | None = None, threaded: bool = False) -> None:
        self.writer = writer
        self.next_step = next_step
        self.stats = stats
        self.intent = intent
        self.backoff = backoff or Backoff()
        self.give_up_after = give_up_after
        self.state = StateLog("store")
        self._pending: Batch | None = None  # accepted, not yet written
        self._future: Future[None] | None = None  # its write, when in flight on the worker
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="msgtrace-writer") if threaded else None
        self._started = 0.0  # monotonic: first attempt of the pending batch's write

    # --- the writer, on its thread ------------------------------------------------------
    def release(self, timeout: float = 30.0) -> None:
        """Let the writer give back what it holds between writes (an embedded store's directory)."""
        if self._executor is None:
            self.writer.release()
            return
        try:
            self._executor.submit(self.writer.release).result(timeout)
        except Exception as e:
            log_event(logging.WARNING, "store session release failed", error=str(e))

    def idle(self) -> None:
        """The source has nothing new: give the embedded store back to other processes."""
        if self._pending is None:
            self.release()

    def _start(self) -> None:
        batch = self._pending
        assert batch is not None and self._future is None
        if self.intent is not None and batch.n_events and not batch.events_written:
            self.intent(batch)
        if self._executor is not None:
            self._future = self._executor.submit(self.writer.write, batch)
            return
        try:
            self.writer.write(batch)
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
        self.stats.store_down_since = self.backoff.since
        self.stats.last_error = str(e)
        self.state.set("unavailable", error=str(e), retry_in_s=round(self.backoff.delay, 2),
                       events=batch.n_events)
        if (self.give_up_after is not None and self.backoff.since is not None
                and time.monotonic() - self.backoff.since > self.give_up_after):
            raise e

    def _done(self) -> None:
        batch = self._pending
        assert batch is not None
        self._pending = None
        self.stats.write_seconds.observe(time.monotonic() - self._started)
        self.stats.inserted += batch.n_events
        self.stats.duplicates += batch.duplicates
        self.stats.quarantined += len(batch.quarantine)
        if self.backoff.since is not None:
            self.state.set("ok", down_s=round(time.monotonic() - self.backoff.since, 1))
        self.backoff.ok()
        self.stats.store_down_since = None
        self.stats.batches += 1
        # The rows are in: only now may the offsets be committed.
        try:
            self.next_step.submit(Offsets(dict(batch.next_offsets), batch.created))
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

    # --- the step contract ----------------------------------------------------------------
    def submit(self, batch: Batch) -> None:
        if self._pending is not None:
            self._retry()
            if self._pending is not None:
                raise MessageRejected()
        self._pending = batch
        self._started = time.monotonic()
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
        self.next_step.reset()

    @property
    def down(self) -> bool:
        return self._pending is not None and self.backoff.since is not None

    @property
    def empty(self) -> bool:
        return self._pending is None and self.next_step.empty

    def close(self) -> None:
        self.release()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.next_step.close()
