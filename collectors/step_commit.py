"""Commit step: the offsets of stored batches -> Kafka."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from tracer.errors import MsgtraceError
from tracer.events import now_us

from .step_base import Backoff, StateLog
from .types import CollectorStats, Offsets, Partition


class CommitStep:
    """Commits offsets of written batches. Offsets merge (max per partition), so it never rejects.

    ``commit`` raises a :class:`MsgtraceError` when Kafka cannot take the commit; the offsets stay
    here and are retried with backoff in ``poll`` (later batches' offsets merge into them).
    """

    __slots__ = ("commit", "stats", "backoff", "state", "_pending", "_oldest")

    def __init__(self, commit: Callable[[Mapping[Partition, int]], None], stats: CollectorStats, *,
                 backoff: Backoff | None = None) -> None:
        self.commit = commit
        self.stats = stats
        self.backoff = backoff or Backoff()
        self.state = StateLog("kafka commit")
        self._pending: dict[Partition, int] = {}
        self._oldest: float | None = None

    def submit(self, offsets: Offsets) -> None:
        for p, o in offsets.positions.items():
            if o > self._pending.get(p, -1):
                self._pending[p] = o
        if self._oldest is None or offsets.created < self._oldest:
            self._oldest = offsets.created
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
            self.stats.commit_down_since = self.backoff.since
            self.stats.last_error = str(e)
            self.state.set("failing", error=str(e), retry_in_s=round(self.backoff.delay, 2))
            return False
        for p, o in offsets.items():
            if self._pending.get(p) == o:
                del self._pending[p]
        self.stats.commit_down_since = None
        self.backoff.ok()
        self.state.set("ok")
        now = time.monotonic()
        self.stats.commits += 1
        self.stats.last_commit_us = now_us()
        self.stats.last_commit_at = now
        if self._oldest is not None:
            self.stats.batch_seconds.observe(now - self._oldest)
        self._oldest = None if not self._pending else self._oldest
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

    def drop(self, partitions: Iterable[Partition] | None = None) -> None:
        """Forget offsets (of revoked partitions): the new owner starts from the last commit."""
        if partitions is None:
            self._pending.clear()
        else:
            for p in partitions:
                self._pending.pop(p, None)
        if not self._pending:
            self._oldest = None

    def reset(self) -> None:
        self.drop()

    @property
    def empty(self) -> bool:
        return not self._pending

    def close(self) -> None:
        pass

