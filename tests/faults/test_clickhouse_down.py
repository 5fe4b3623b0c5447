"""The ClickHouse 18.16 server killed in the middle of a batch insert, then started again.

A live collector process writes a backlog into a server of the test's own. The server is
SIGKILLed while an INSERT into ``trace_events`` is running (seen in ``system.processes``), more
audit events arrive while it is down, and it is started again on the same ports and data. The
collector must notice, keep its offsets, resume by itself (no restart of the collector), and end
with every event stored once by event id; the half-inserted batch is written again in full.
"""
from __future__ import annotations

import pytest
from faultkit import committed, integrity, names, start_collector, stop, stored_events

from collectors.testing import create_topic, make_events, produce_events
from tracer.localsvc import port_open, wait_until
from tracer.store import Store


def insert_running(store: Store) -> bool:
    rows = store.query("SELECT count() AS n FROM system.processes "
                       "WHERE query LIKE 'INSERT INTO%trace_events%' AND query NOT LIKE '%system.processes%'")
    return int(rows[0]["n"]) > 0


def outage(server, how: str, url: str, bootstrap: str, topic: str, group: str, log, collector,
           emitter: str, n_total: int, down_events: int) -> tuple[int, int]:
    """While the collector inserts, ``how`` (kill / stop) the server; produce ``down_events`` while it is
    down; start it; wait for everything to be committed. Returns (committed at the outage, records)."""
    unavailable_before = log.read_text(errors="replace").count("store unavailable")
    probe = Store(url)
    try:
        wait_until(lambda: insert_running(probe), 60, "an INSERT into trace_events to be running", interval=0.005)
        getattr(server, how)()
    finally:
        probe.close()
    n = n_total + produce_events(bootstrap, topic, make_events(down_events, emitter_id=emitter), per_record=500,
                                 partitions=2)

    def noticed() -> bool:
        return log.read_text(errors="replace").count("store unavailable") > unavailable_before

    wait_until(noticed, 60, "the collector to notice the store is down")
    assert collector.poll() is None, log.read_text()[-3000:]
    # a batch whose insert ended just before the outage may still commit: count from here on
    at = committed(bootstrap, group, topic, 2)  # (a graceful stop may let the running insert and more finish)
    wait_until(lambda: not port_open(server.tcp_port), 30, "the server's port to close")
    assert committed(bootstrap, group, topic, 2) == at  # nothing committed while it cannot write
    server.start()
    wait_until(lambda: committed(bootstrap, group, topic, 2) == n, 120,
               "the collector to resume by itself and commit everything")
    assert collector.poll() is None
    return at, n


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_clickhouse_killed_and_stopped_mid_batch_no_loss_no_duplicates_collector_resumes(
        kafka_bootstrap, own_server, tmp_path):
    topic, group = names()
    create_topic(kafka_bootstrap, topic, 2)
    url = own_server.url("faults_down")
    n = produce_events(kafka_bootstrap, topic, make_events(120_000, emitter_id="em-1"), per_record=500, partitions=2)
    log = tmp_path / "collector.log"
    collector = start_collector(kafka_bootstrap, topic, url, group, log, "--batch-events", "20000")
    try:
        wait_until(lambda: stored_events(url) > 0, 90, "the first batch to be stored")
        at_kill, n = outage(own_server, "kill", url, kafka_bootstrap, topic, group, log, collector, "em-2", n, 20_000)
        n += produce_events(kafka_bootstrap, topic, make_events(120_000, emitter_id="em-3"), per_record=500,
                            partitions=2)
        at_stop, n = outage(own_server, "stop", url, kafka_bootstrap, topic, group, log, collector, "em-4", n, 20_000)
        assert stop(collector) == 0, log.read_text()[-3000:]
    finally:
        if collector.poll() is None:
            collector.kill()
    text = log.read_text(errors="replace")
    assert text.count("store unavailable") == 2 and text.count("store ok") == 2  # once per state change
    got = integrity(url)
    got.check({"em-1": 120_000, "em-2": 20_000, "em-3": 120_000, "em-4": 20_000})
    print(f"\ncommitted at the kill: {at_kill}, at the stop: {at_stop}, at the end: {n} records; rows {got.rows} "
          f"for {got.distinct} events")
