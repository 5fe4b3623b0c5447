"""Batch step: decoded records -> one :class:`Batch`, closed by size or by age."""
from __future__ import annotations

import time
from collections.abc import Callable

from tracer.events import now_us

from .decode import N_COLUMNS
from .step_base import submit_until
from .types import (
    Batch,
    Decoded,
    Message,
    MessageRejected,
    Partition,
    QuarantineRow,
    Step,
)

#: quarantine keeps at most this many bytes of a bad record (raw_size has the full size)
DEFAULT_RAW_LIMIT = 64 * 1024
_EVENT_ID, _MSG_ID = 0, 1  # indexes in COLUMNS (decoded columns)


def _prefix(raw: bytes, limit: int) -> str:
    """The stored form of raw bytes: UTF-8 text, other bytes as \\xNN, cut at ``limit`` bytes."""
    return raw[:limit].decode("utf-8", "backslashreplace")


class BatchStep:
    """Accumulates decoded records until ``max_events``/``max_records`` or ``max_wait`` seconds.

    Holds one batch being built and one sealed batch the next step refused (no more).
    ``in_window(partition, offset, n_events)`` says whether a record may already be stored by a
    previous owner of its partition: its event ids are then collected for the duplicate count.
    """

    __slots__ = ("next_step", "max_events", "max_records", "max_wait", "raw_limit", "in_window", "_building",
                 "_ready")

    def __init__(self, next_step: Step[Batch], *, max_events: int = 20_000, max_records: int = 5_000,
                 max_wait: float = 1.0, raw_limit: int = DEFAULT_RAW_LIMIT,
                 in_window: Callable[[Partition, int, int], bool] | None = None) -> None:
        self.next_step = next_step
        self.max_events, self.max_records, self.max_wait = max_events, max_records, max_wait
        self.raw_limit = raw_limit
        self.in_window: Callable[[Partition, int, int], bool] = in_window or (lambda p, o, n: False)
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
        self._push_ready()
        b = self._building
        if b is not None and self._ready is None and time.monotonic() - b.created >= self.max_wait:
            self._seal()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if self._ready is not None:
            if not submit_until(self.next_step, self._ready, deadline):
                return False
            self._ready = None
        if self._building is not None and self._building.n_records:
            if not submit_until(self.next_step, self._building, deadline):
                return False
        self._building = None
        return self.next_step.join(max(0.0, deadline - time.monotonic()))

    def reset(self) -> None:
        self._building = self._ready = None
        self.next_step.reset()

    @property
    def empty(self) -> bool:
        return self._building is None and self._ready is None and self.next_step.empty

    def close(self) -> None:
        self.next_step.close()
