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

The crash points are the collector's own test-only fault hook (``collectors.faults``, the one
``MSGTRACE_COLLECTOR_CRASH_AT`` arms in ``msgtrace collect``). Before dying the process appends
``STEP N`` to ``--marker``, so the test knows the kill happened where it was meant to. The consumer
session is short (1.5 s): Tansu can wedge a group when a killed member's long session expires
during the next member's join.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading


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

    from collectors import CollectorConfig, run_collector
    from collectors.cli import setup_logging
    from collectors.faults import CrashPoints, parse_crash_at

    crash = CrashPoints(parse_crash_at(args.crash), args.marker) if args.crash else None
    setup_logging("info", False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    cfg = CollectorConfig(max_batch_events=args.batch_events, max_batch_wait_s=args.batch_wait,
                          session_timeout_ms=1500, heartbeat_interval_ms=300, backoff_initial_s=0.2,
                          backoff_max_s=1.0, startup_timeout_s=60, shutdown_timeout_s=30, crash=crash)
    stats = run_collector(args.bootstrap, args.topic, args.store, args.group, until_idle=args.until_idle,
                          config=cfg, stop=stop)
    if args.json:
        import json

        print(json.dumps(stats.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
