"""A fault hook for tests only: the collector SIGKILLs itself at a chosen step.

    MSGTRACE_COLLECTOR_CRASH_AT=write:2        # die right after the 2nd batch went into the store
    MSGTRACE_COLLECTOR_CRASH_AT=decode:15,commit:3
    MSGTRACE_COLLECTOR_CRASH_MARKER=/tmp/kills # optional: append "STEP N" here (fsynced) just before

Test-only: never set it in production. It exists so that fault tests and the soak can kill a real
``msgtrace collect`` process at an exact point of its cycle instead of guessing with timers, and it
is read once, when a collector starts (a collector that has it logs a warning saying so). STEP is
where the process dies, at the N-th time it gets there (counted from the process start):

- ``decode``: a record was decoded, before it reaches the batch (nothing of it written);
- ``intent``: the write intent (the batch's first offsets, with metadata) was committed, the
  batch's rows are not written yet;
- ``write``: the batch's rows are in the store, its offsets not committed (the next run reads the
  batch again: the store must de-duplicate it);
- ``commit``: the broker accepted the batch's offsets, before the collector goes on.

Without the variable nothing is armed: the steps hold ``None`` and test it once per record.
"""
from __future__ import annotations

import os
import signal
import threading

from tracer.errors import ConfigError

CRASH_ENV = "MSGTRACE_COLLECTOR_CRASH_AT"
MARKER_ENV = "MSGTRACE_COLLECTOR_CRASH_MARKER"
STEPS = ("decode", "intent", "write", "commit")


class CrashPoints:
    """Counts arrivals per step and SIGKILLs the process at the armed one (thread-safe: the write
    step may run on a worker thread)."""

    __slots__ = ("at", "marker", "_counts", "_lock")

    def __init__(self, at: dict[str, int], marker: str | None = None) -> None:
        self.at = dict(at)
        self.marker = marker
        self._counts = dict.fromkeys(STEPS, 0)
        self._lock = threading.Lock()

    def __call__(self, step: str) -> None:
        """The collector reached ``step``: die if this is the armed arrival."""
        want = self.at.get(step)
        if want is None:
            return
        with self._lock:
            self._counts[step] += 1
            n = self._counts[step]
        if n == want:
            self._die(step, n)

    def _die(self, step: str, n: int) -> None:
        if self.marker:
            with open(self.marker, "a", encoding="ascii") as f:
                f.write(f"{step} {n}\n")
                f.flush()
                os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    def describe(self) -> str:
        return ",".join(f"{s}:{n}" for s, n in self.at.items())


def parse_crash_at(text: str) -> dict[str, int]:
    """``"write:2,decode:15"`` -> ``{"write": 2, "decode": 15}``; a bad value is a ConfigError."""
    out: dict[str, int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        step, _, n = part.partition(":")
        step = step.strip().lower()
        if step not in STEPS:
            raise ConfigError(f"{CRASH_ENV}: unknown step {step[:20]!r} (one of {', '.join(STEPS)})")
        try:
            count = int(n) if n.strip() else 1
        except ValueError:
            count = 0
        if count < 1:
            raise ConfigError(f"{CRASH_ENV}: {part[:30]!r} needs a count >= 1 (STEP:N)")
        out[step] = count
    return out


def crash_points_from_env() -> CrashPoints | None:
    """The armed crash points, or None (the normal case: the variable is not set)."""
    text = os.environ.get(CRASH_ENV, "")
    if not text.strip():
        return None
    at = parse_crash_at(text)
    return CrashPoints(at, os.environ.get(MARKER_ENV) or None) if at else None


__all__ = ["CRASH_ENV", "MARKER_ENV", "STEPS", "CrashPoints", "crash_points_from_env", "parse_crash_at"]
