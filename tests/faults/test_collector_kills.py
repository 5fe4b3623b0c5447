"""The collector SIGKILLed at each of its steps, again and again, on both ClickHouse engines.

A real collector process (``collector_child.py`` around ``run_collector``) kills itself at the
N-th time it reaches a step: after decoding a record, after the write intent was committed, after
a batch's rows went into the store (offsets not committed: the batch is read again), after the
broker accepted a batch's commit. Each run's death is checked (exit by SIGKILL, the marker it
wrote just before). A last clean run drains the topic. The audit trail must then be whole: every
emitter's seq 1..n stored once by event id, and the group's committed offset at the log end.
"""
from __future__ import annotations

import subprocess

import pytest
from faultkit import child_env, collector_cmd, committed, drain, integrity, names

from collectors.testing import create_topic, make_events, produce_events

# (step, N): where each run dies (the N-th time it gets there); a write kill leaves its batch uncommitted
KILLS = [("decode", 15), ("write", 2), ("commit", 2), ("intent", 2), ("write", 1), ("decode", 30)]
EVENTS = 40_000
PER_RECORD = 200
PARTITIONS = 2


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_collector_sigkilled_at_every_step_stores_each_event_once(tansu, store_url, tmp_path):
    bootstrap = tansu.bootstrap
    topic, group = names()
    create_topic(bootstrap, topic, PARTITIONS)
    a = make_events(EVENTS // 2, emitter_id="em-orders")
    b = make_events(EVENTS // 2, emitter_id="em-red-packet")
    n_records = produce_events(bootstrap, topic, a + b, per_record=PER_RECORD, partitions=PARTITIONS)
    marker = tmp_path / "kills.txt"
    progress = []
    for i, (step, n) in enumerate(KILLS):
        log = tmp_path / f"collector-{i}.log"
        with open(log, "wb") as out:
            p = subprocess.run(collector_cmd(bootstrap, topic, store_url, group, "--crash", f"{step}:{n}",
                                             "--marker", str(marker), "--batch-events", "2000"),
                               stdout=out, stderr=subprocess.STDOUT, env=child_env(), timeout=90, check=False)
        assert p.returncode == -9, (step, n, p.returncode, log.read_text()[-2000:])
        assert marker.read_text().splitlines()[-1] == f"{step} {n}"
        progress.append(committed(bootstrap, group, topic, PARTITIONS))
    # the kills interrupted a run that had not finished: there is work left for the clean run
    assert progress[-1] < n_records, progress
    assert progress == sorted(progress), progress  # never rewound below an earlier commit
    mid = integrity(store_url)
    stats = drain(bootstrap, topic, store_url, group)
    assert stats["quarantined"] == 0 and stats["clean_exit"] is True
    got = integrity(store_url)
    got.check({"em-orders": EVENTS // 2, "em-red-packet": EVENTS // 2})
    assert got.stages == {"sent": EVENTS // 4, "broker_acked": EVENTS // 4, "received": EVENTS // 4,
                          "business_done": EVENTS // 4}
    assert committed(bootstrap, group, topic, PARTITIONS) == n_records
    # the write kills stored batches that were read again: copies on disk, each counted once
    assert mid.rows > mid.distinct or got.rows > got.distinct, (mid, got)
    print(f"\ncommitted after each kill: {progress} of {n_records} records; rows {got.rows} for "
          f"{got.distinct} events (re-read copies collapse by event id)")
