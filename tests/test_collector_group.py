"""Collectors side by side: two ``msgtrace collect`` processes in one consumer group share the
audit topic's partitions; one joins while the other collects (a rebalance mid-run), then one is
SIGKILLed mid-run and the other takes its partitions over. Every event is stored exactly once by
event_id. Real Tansu broker (a broker of the test's own), real ClickHouse 18.16 server.

Tansu can wedge a consumer group when its membership changes during a rebalance, so membership
changes one step at a time, each step waiting (on the collectors' own /metrics) until the
group has settled before the next one.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from typing import Any

import pytest

from collectors.testing import create_topic, make_events, producer
from collectors.testing import scrape_metrics as scrape
from tracer.events import encode_batch, record_headers
from tracer.localsvc import free_port, wait_until
from tracer.store import Store

PARTITIONS = 4


class Feeder(threading.Thread):
    """Produces audit records (250 events each, round-robin over the partitions) until stopped."""

    def __init__(self, bootstrap: str, topic: str, per_s: float = 12.0, cap: int = 1_200) -> None:
        super().__init__(name="feeder", daemon=True)
        self.bootstrap, self.topic, self.per_s, self.cap = bootstrap, topic, per_s, cap
        self.stop = threading.Event()
        self.ids: list[str] = []
        self.records = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        p = producer(self.bootstrap, linger_ms=5)
        try:
            while not self.stop.is_set() and self.records < self.cap:
                events = make_events(250)
                p.send(self.topic, value=encode_batch(events), headers=record_headers(),
                       partition=self.records % PARTITIONS)
                self.ids.extend(e.event_id for e in events)
                self.records += 1
                self.stop.wait(1.0 / self.per_s)
            p.flush(60)
        except BaseException as e:  # surfaced by the test
            self.error = e
        finally:
            p.close(10)


def _assigned(m: dict[str, float], topic: str) -> set[int]:
    prefix = "msgtrace_collector_partition_lag_records{partition="
    return {int(k[len(prefix):].split(",", 1)[0]) for k in m if k.startswith(prefix) and k.endswith(f"topic={topic}}}")}


def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        ends = c.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
        return {tp.partition: o for tp, o in ends.items()}
    finally:
        c.close()


def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p)) or 0 for p in range(PARTITIONS)}
    finally:
        c.close()


@pytest.mark.slow
def test_two_collectors_share_partitions_and_survive_a_kill(tansu, server_url, tmp_path):
    bootstrap = tansu.bootstrap
    topic, group = f"audit-{uuid.uuid4().hex[:8]}", f"side-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, PARTITIONS)
    Store(server_url).init_schema()
    procs: dict[str, Any] = {}
    ports = {"a": free_port(), "b": free_port()}

    def start(name: str) -> None:
        cmd = [sys.executable, "-m", "tracer", "collect", "--bootstrap", bootstrap, "--audit-topic", topic,
               "--store", server_url, "--group", group, "--batch-events", "2000", "--batch-wait", "0.2",
               "--metrics-port", str(ports[name]), "--metrics-host", "127.0.0.1", "--log-level", "info"]
        log = open(tmp_path / f"collector-{name}.log", "wb")
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)), log)

    def logs() -> str:
        return "\n".join(f"--- {n}\n" + (tmp_path / f"collector-{n}.log").read_text()[-3000:] for n in procs)

    def alive(name: str) -> None:
        assert procs[name][0].poll() is None, logs()

    feeder = Feeder(bootstrap, topic)
    feeder.start()
    try:
        # 1. one collector alone takes every partition and stores
        start("a")
        wait_until(lambda: (lambda m: _assigned(m, topic) == set(range(PARTITIONS))
                            and m.get("msgtrace_collector_events_stored_total", 0) > 0)(scrape(ports["a"])),
                   90, "collector a to own all partitions and store events")
        # 2. a second one joins while records keep coming: the group splits the partitions
        start("b")

        def split() -> bool:
            alive("a")
            alive("b")
            ma, mb = scrape(ports["a"]), scrape(ports["b"])
            a, b = _assigned(ma, topic), _assigned(mb, topic)
            return bool(a) and bool(b) and not a & b and a | b == set(range(PARTITIONS)) \
                and mb.get("msgtrace_collector_events_stored_total", 0) > 0

        wait_until(split, 120, "the two collectors to share the partitions, both storing")
        stored_a = scrape(ports["a"]).get("msgtrace_collector_events_stored_total", 0)
        wait_until(lambda: scrape(ports["a"]).get("msgtrace_collector_events_stored_total", 0) > stored_a, 60,
                   "collector a to store more after the rebalance")
        # 3. a is killed mid-run (records still coming); b takes its partitions over
        assert not feeder.stop.is_set() and feeder.is_alive()
        procs["a"][0].send_signal(signal.SIGKILL)
        procs["a"][0].wait(10)
        def took_over() -> bool:
            alive("b")
            return _assigned(scrape(ports["b"]), topic) == set(range(PARTITIONS))

        wait_until(took_over, 120, "collector b to take over every partition")
        # 4. the feed ends; b drains and commits everything
        feeder.stop.set()
        feeder.join(60)
        assert feeder.error is None, feeder.error
        ends = _end_offsets(bootstrap, topic)
        assert sum(ends.values()) == feeder.records
        wait_until(lambda: _committed(bootstrap, group, topic) == ends, 120,
                   "the group's commits to reach the end of every partition")
        wait_until(lambda: scrape(ports["b"]).get("msgtrace_collector_lag_records") == 0, 30,
                   "collector b to report no lag")
        procs["b"][0].send_signal(signal.SIGTERM)
        assert procs["b"][0].wait(60) == 0, logs()
    finally:
        feeder.stop.set()
        for proc, log in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            log.close()
    # every event once by event_id: nothing lost, nothing counted twice
    with Store(server_url) as s:
        rows = s.query("SELECT event_id, count() AS n FROM {db:Identifier}.trace_events GROUP BY event_id")
    stored = {r["event_id"]: int(r["n"]) for r in rows}
    assert len(stored) == len(feeder.ids) == feeder.records * 250
    assert set(stored) == set(feeder.ids)
    # copies come only from batches written and not committed when a member left (killed or revoked)
    extra = sum(stored.values()) - len(stored)
    assert extra <= 3 * 2_000 * PARTITIONS, extra
