"""Decode step: raw audit record -> :class:`Decoded` (good event columns + bad lines)."""
from __future__ import annotations

import time
from collections.abc import Callable

from .decode import decode_record
from .step_base import submit_until
from .types import Decoded, Message, MessageRejected, RawRecord, Step


class DecodeStep:
    """Decodes one record at a time; holds at most one decoded record the next step refused."""

    __slots__ = ("next_step", "max_record_bytes", "use_c", "crash", "_pending")

    def __init__(self, next_step: Step[Message[Decoded]], max_record_bytes: int, *, use_c: bool = True,
                 crash: Callable[[str], None] | None = None) -> None:
        self.next_step = next_step
        self.max_record_bytes = max_record_bytes
        self.use_c = use_c
        #: the test-only fault hook (collectors.faults), called with "decode" after each record
        self.crash = crash
        self._pending: Message[Decoded] | None = None

    def submit(self, message: Message[RawRecord]) -> None:
        if self._pending is not None:
            self._forward()
            if self._pending is not None:
                raise MessageRejected()
        rec = message.payload
        decoded = decode_record(rec.value, rec.headers, self.max_record_bytes, use_c=self.use_c)
        if self.crash is not None:
            self.crash("decode")
        self._pending = Message(message.partition, message.offset, decoded)
        self._forward()

    def _forward(self) -> None:
        if self._pending is None:
            return
        try:
            self.next_step.submit(self._pending)
            self._pending = None
        except MessageRejected:
            pass

    def poll(self) -> None:
        self.next_step.poll()
        self._forward()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if self._pending is not None:
            if not submit_until(self.next_step, self._pending, deadline):
                return False
            self._pending = None
        return self.next_step.join(max(0.0, deadline - time.monotonic()))

    def reset(self) -> None:
        self._pending = None
        self.next_step.reset()

    @property
    def empty(self) -> bool:
        return self._pending is None and self.next_step.empty

    def close(self) -> None:
        self.next_step.close()
