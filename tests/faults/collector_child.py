"""A real ``msgtrace`` collector process that SIGKILLs itself at a chosen step (fault tests and the soak).

    python collector_child.py BOOTSTRAP TOPIC STORE_URL GROUP [--crash STEP:N] [--until-idle]
                              [--batch-events N] [--marker PATH]

STEP is where the process dies, at the N-th time it gets there (counted from its start):

- ``decode``: a record has just been decoded, before it reaches the batch (nothing of it written);
- ``intent``: the write intent (the batch's first offsets, with metadata) was committed, the
  batch's rows are not written yet;
- ``write``: the batch's rows are in the store, its offsets not committed (the next run reads the
  batch again: the store must de-duplicate it);
- ``commit``: the broker accepted the batch's offsets, before the collector goes on.

The collector offers no fault hook of its own, so this wraps its step functions (the names are
checked at start: a refactoring that removes one fails loudly here, it never silently kills
nowhere). Before dying the process appends ``STEP N`` to ``--marker``, so the test knows the kill
happened where it was meant to. The consumer session is short (1.5 s): Tansu can wedge a group
when a killed member's long session expires during the next member's join.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

STEPS = ("decode", "intent", "write", "commit")


def _die(step: str, n: int, marker: str | None) -> None:
    if marker:
        with open(marker, "a", encoding="ascii") as f:
            f.write(f"{step} {n}\n")
            f.flush()
            os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def install_crash(step: str, at: int, marker: str | None) -> None:
    """Wrap the collector's function for ``step`` so that its ``at``-th call kills the process."""
    from collectors import consumer, step_decode, writer

    calls = [0]
    lock = threading.Lock()

    def hit() -> bool:
        with lock:
            calls[0] += 1
            return calls[0] == at

    if step == "decode":
        real_decode = step_decode.decode_record

        def decode_record(*a, **kw):  # type: ignore[no-untyped-def]
            out = real_decode(*a, **kw)
            if hit():
                _die(step, at, marker)
            return out

        step_decode.decode_record = decode_record
    elif step == "write":
        real_write = writer.StoreWriter.write

        def write(self, batch):  # type: ignore[no-untyped-def]
            real_write(self, batch)
            if batch.n_events and hit():
                _die(step, at, marker)

        writer.StoreWriter.write = write
    elif step in ("intent", "commit"):
        real_commit = consumer.Processor._commit

        def _commit(self, offsets, metadata=None):  # type: ignore[no-untyped-def]
            real_commit(self, offsets, metadata)
            is_intent = bool(metadata)
            if is_intent == (step == "intent") and offsets and hit():
                _die(step, at, marker)

        consumer.Processor._commit = _commit
    else:
        raise SystemExit(f"unknown step {step!r} (one of {', '.join(STEPS)})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("bootstrap")
    ap.add_argument("topic")
    ap.add_argument("store")
    ap.add_argument("group")
    ap.add_argument("--crash", default=None, metavar="STEP:N")
    ap.add_argument("--until-idle", action="store_true")
    ap.add_argument("--batch-events", type=int, default=2_000)
    ap.add_argument("--batch-wait", type=float, default=0.2)
    ap.add_argument("--marker", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from collectors import CollectorConfig, consumer, run_collector, step_decode, writer
    from collectors.cli import setup_logging

    for owner, name in ((step_decode, "decode_record"), (writer.StoreWriter, "write"),
                        (consumer.Processor, "_commit")):
        if not hasattr(owner, name):
            raise SystemExit(f"collector_child: {owner.__name__}.{name} is gone: the crash points need updating")
    if args.crash:
        step, _, n = args.crash.partition(":")
        install_crash(step, int(n or 1), args.marker)
    setup_logging("info", False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    cfg = CollectorConfig(max_batch_events=args.batch_events, max_batch_wait_s=args.batch_wait,
                          session_timeout_ms=1500, heartbeat_interval_ms=300, backoff_initial_s=0.2,
                          backoff_max_s=1.0, startup_timeout_s=60, shutdown_timeout_s=30)
    stats = run_collector(args.bootstrap, args.topic, args.store, args.group, until_idle=args.until_idle,
                          config=cfg, stop=stop)
    if args.json:
        import json

        print(json.dumps(stats.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
