"""What every step shares: structured logs, state-change logging, backoff, bounded submits."""
from __future__ import annotations

import logging
import time
from typing import Any

from .types import MessageRejected, Step

log = logging.getLogger("msgtrace.collector")


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
    """Exponential backoff between retries: initial, x2, capped; ``since`` = first failure."""

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


def submit_until(step: Step[Any], item: Any, deadline: float) -> bool:
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
