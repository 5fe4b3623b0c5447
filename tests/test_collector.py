"""The collector end to end: real Tansu broker, real chDB and ClickHouse 18.16.

The 100k test produces through the real emitter (tracer.emitter, KafkaSink); the others
produce audit records in the same wire format (encode_batch +
record_headers) with a plain KafkaProducer (collectors.testing).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import orjson
import pytest
from conftest import unavailable

from collectors import CollectorConfig, run_collector
from collectors.consumer import Processor
from collectors.testing import create_topic, make_events, produce_events, produce_records
from tracer.events import MAX_RECORD_BYTES, encode_batch, record_headers
from tracer.localsvc import ClickHouseServer, ServiceError, wait_until
from tracer.store import Store

H = record_headers()
FAST = CollectorConfig(startup_timeout_s=60, shutdown_timeout_s=30, backoff_initial_s=0.2, backoff_max_s=2.0)


def _names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"audit-{tag}", f"collector-{tag}"


def counts(url: str) -> dict:
    """What the reconciler / trace-msg would count: distinct events, per stage; plus raw rows."""
    with Store(url) as s, s.session():
        total = s.query("SELECT uniqExact(event_id) AS n, count() AS rows FROM {db:Identifier}.trace_events")[0]
        stages = s.query("SELECT stage, uniqExact(event_id) AS n FROM {db:Identifier}.trace_events "
                         "GROUP BY stage ORDER BY stage")
        q = s.query("SELECT count() AS n FROM {db:Identifier}.quarantine")[0]["n"]
    return {"distinct": int(total["n"]), "rows": int(total["rows"]),
            "stages": {r["stage"]: int(r["n"]) for r in stages}, "quarantined": int(q)}


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return sum(c.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))
    finally:
        c.close()


def test_100k_events_from_the_emitter_arrive_exactly_once(kafka_bootstrap, store_url, tmp_path):
    from tracer.sdk.emitter import Emitter, KafkaSink

    topic, group = _names()
    em = Emitter("order-service", KafkaSink(kafka_bootstrap, topic, partitions=2), spool_dir=str(tmp_path / "spool"))
    em.start()
    try:
        for i in range(25_000):
            msg = f"{topic}-order-{i}:paid"
            em.emit("sent", msg, topic="orders")
            em.emit("broker_acked", msg, topic="orders", partition=i % 3, offset=i)
            em.emit("received", msg, topic="orders", partition=i % 3, offset=i, consumer_group="red-packet")
            em.emit("business_done", msg, topic="orders", consumer_group="red-packet")
        assert em.flush(120)
        assert em.stats["shipped"] == 100_000
    finally:
        em.close()
    stats = run_collector(kafka_bootstrap, topic, store_url, group, until_idle=True, config=FAST)
    assert (stats.inserted, stats.stored, stats.duplicates, stats.quarantined) == (100_000, 100_000, 0, 0)
    c = counts(store_url)
    assert c["distinct"] == c["rows"] == 100_000
    assert c["stages"] == {"broker_acked": 25_000, "business_done": 25_000, "received": 25_000, "sent": 25_000}
    with Store(store_url) as s:  # the emitter's numbering arrived whole: no gap, no repeat
        seqs = s.query("SELECT uniqExact(seq) AS n, min(seq) AS lo, max(seq) AS hi FROM {db:Identifier}.trace_events")
    assert (seqs[0]["n"], seqs[0]["lo"], seqs[0]["hi"]) == (100_000, 1, 100_000)
    assert committed(kafka_bootstrap, group, topic, 2) == stats.records
    # a second run finds nothing new
    again = run_collector(kafka_bootstrap, topic, store_url, group, until_idle=True, config=FAST)
    assert again.records == 0 and counts(store_url) == c


def test_redelivered_batch_changes_no_count(kafka_bootstrap, store_url, monkeypatch):
    """A collector that wrote a batch and died before committing: the batch comes again."""
    topic, group = _names()
    create_topic(kafka_bootstrap, topic, 1)
    events = make_events(8_000)
    produce_events(kafka_bootstrap, topic, events, per_record=400)
    real_commit = Processor._commit

    def crash_before_commit(self, offsets, metadata=""):
        if metadata:  # the write intent goes through; the commit after the write never happens
            real_commit(self, offsets, metadata)

    monkeypatch.setattr(Processor, "_commit", crash_before_commit)
    first = run_collector(kafka_bootstrap, topic, store_url, group, until_idle=True, config=FAST)
    assert first.stored == 8_000
    before = counts(store_url)
    with Store(store_url) as s:
        timeline = s.select_events(events[0].msg_id)
    monkeypatch.setattr(Processor, "_commit", real_commit)

    second = run_collector(kafka_bootstrap, topic, store_url, group, until_idle=True, config=FAST)
    assert second.records == 20 and second.inserted == 8_000
    assert (second.duplicates, second.stored) == (8_000, 0)  # found through the write-intent window
    after = counts(store_url)
    assert after["rows"] == 16_000  # stored twice ...
    assert {k: after[k] for k in ("distinct", "stages")} == {k: before[k] for k in ("distinct", "stages")}
    with Store(store_url) as s:  # ... and trace-msg shows the same timeline
        assert s.select_events(events[0].msg_id) == timeline
    assert len(timeline) == 4
    # an emitter re-sending the same events at new offsets changes no count either
    produce_events(kafka_bootstrap, topic, events[:2_000], per_record=400)
    third = run_collector(kafka_bootstrap, topic, store_url, group, until_idle=True, config=FAST)
    assert third.records == 5 and third.duplicates == 2_000  # within the first batch after assignment
    assert {k: counts(store_url)[k] for k in ("distinct", "stages")} == {k: before[k] for k in ("distinct", "stages")}


def _line(field: str, value) -> bytes:
    d = make_events(1)[0].to_dict()
    d[field] = value
    return orjson.dumps(d)


def test_mixed_audit_topic_quarantines_each_bad_record(kafka_bootstrap, store_url):
    topic, group = _names()
    create_topic(kafka_bootstrap, topic, 1)
    good = make_events(3_000)
    partly = make_events(3)
    bad = [  # (value, headers, expected reason)
        (b"\x00\xff\xfe\x9c garbage bytes", H, "invalid JSON"),
        (encode_batch(make_events(1))[:-40], H, "invalid JSON"),
        (_line("ts_us", "yesterday"), H, "field 'ts_us' must be an integer, got str"),
        (_line("stage", "teleported"), H, "unknown stage 'teleported'"),
        (encode_batch(make_events(2)), [("msgtrace-format", b"99")], "unknown format version '99'"),
        (encode_batch(make_events(2)), None, "missing header 'msgtrace-format'"),
        (b"x" * (MAX_RECORD_BYTES + 1), H, f"record of {MAX_RECORD_BYTES + 1} bytes exceeds the limit"),
    ]
    records = [(encode_batch(good[:1_500]), H)]
    records += [(v, h) for v, h, _ in bad]
    # a partly bad record: good lines around a bad one are kept
    records.append((b"\n".join([orjson.dumps(partly[0].to_dict()), b'{"truncated": ', orjson.dumps(partly[1].to_dict()),
                                orjson.dumps(partly[2].to_dict())]), H))
    records.append((encode_batch(good[1_500:]), H))
    produce_records(kafka_bootstrap, topic, records)
    stats = run_collector(kafka_bootstrap, topic, store_url, group, until_idle=True, config=FAST)
    assert stats.stored == 3_003 and stats.quarantined == len(bad) + 1
    c = counts(store_url)
    assert c["distinct"] == 3_003 and c["quarantined"] == len(bad) + 1
    with Store(store_url) as s:
        rows = s.query("SELECT source, partition, offset, line, field, error, raw_size, raw "
                       "FROM {db:Identifier}.quarantine ORDER BY offset")
    assert [r["offset"] for r in rows] == list(range(1, len(bad) + 2))
    for row, (value, _, reason) in zip(rows, bad):
        assert row["source"] == topic and row["partition"] == 0
        assert reason in row["error"], (reason, row["error"])
        assert row["raw_size"] == len(value)
        assert 0 < len(row["raw"]) <= 4 * 64 * 1024
    assert rows[-1]["line"] == 2 and "invalid JSON" in rows[-1]["error"]
    assert rows[3]["field"] == "stage"
    with Store(store_url) as s:
        stored_ids = {r["event_id"] for r in s.query(
            "SELECT DISTINCT event_id FROM {db:Identifier}.trace_events WHERE has({ids:Array(String)}, event_id)",
            {"ids": [e.event_id for e in partly]})}
    assert stored_ids == {e.event_id for e in partly}
    assert committed(kafka_bootstrap, group, topic, 1) == len(records)


# --- the collector as a process ------------------------------------------------------

def _collect_cmd(bootstrap: str, topic: str, url: str, group: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tracer", "collect", "--bootstrap", bootstrap, "--audit-topic", topic,
            "--store", url, "--group", group, *extra]


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env["MSGTRACE_STORE_LOCK_TIMEOUT"] = "30"
    env.update(extra)
    return env


def scrape(port: int) -> dict[str, float]:
    """The collector's own /metrics (samples without labels), {} while it does not answer."""
    import urllib.error
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except (OSError, urllib.error.URLError):
        return {}
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples if not s.labels}


@pytest.mark.slow
def test_sigkill_three_times_ends_with_the_same_counts(tansu, store_url, tmp_path):
    """SIGKILL at three points of a run; after restarts nothing is lost and nothing counts twice.

    No fixed sleeps: each collector is killed once its own /metrics shows both partitions assigned
    and the group's committed offsets (a fresh consumer's ``committed()``) passed the mark. A short
    session (``--session-timeout 1.5``) lets the killed member drop out of the group before the next
    one joins (Tansu can wedge a group when a member's session expires during a rebalance); the next
    collector showing both partitions as its own is the sign the group settled without the dead one.
    """
    from tracer.localsvc import free_port

    bootstrap = tansu.bootstrap
    topic, group = _names()
    create_topic(bootstrap, topic, 2)
    events = make_events(100_000)
    n_records = produce_events(bootstrap, topic, events, per_record=250, partitions=2)
    # small batches: the run takes long enough to be killed three times in the middle of it
    cmd = _collect_cmd(bootstrap, topic, store_url, group, "--batch-events", "2000", "--log-level", "warning",
                       "--session-timeout", "1.5")
    kills = 0
    progress = []
    for fraction in (0.15, 0.4, 0.65):
        port = free_port()
        log_path = tmp_path / f"collector-{kills}.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(cmd + ["--metrics-port", str(port), "--metrics-host", "127.0.0.1"],
                                stdout=log, stderr=subprocess.STDOUT, env=_env())
        try:
            wait_until(lambda: scrape(port).get("msgtrace_collector_assigned_partitions") == 2  # noqa: B023 (called now)
                       or proc.poll() is not None, 90,  # noqa: B023
                       "the collector to own both partitions (the group settled)",
                       interval=0.1)
            assert proc.poll() is None, log_path.read_text()
            wait_until(lambda: committed(bootstrap, group, topic, 2) >= fraction * n_records  # noqa: B023 (called now)
                       or proc.poll() is not None,  # noqa: B023
                       120, f"the collector to commit {fraction:.0%} of the records", interval=0.1)
            assert proc.poll() is None, log_path.read_text()
            progress.append(committed(bootstrap, group, topic, 2))
        finally:
            proc.kill()
            proc.wait(10)
            log.close()
        assert proc.returncode == -9
        kills += 1
    assert progress == sorted(progress) and progress[-1] < n_records, progress
    out = subprocess.run(cmd + ["--until-idle", "--json"], capture_output=True, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    final = orjson.loads(out.stdout)
    assert final["quarantined"] == 0 and final["clean_exit"] is True
    c = counts(store_url)
    assert c["distinct"] == 100_000
    assert c["stages"] == {"broker_acked": 25_000, "business_done": 25_000, "received": 25_000, "sent": 25_000}
    assert committed(bootstrap, group, topic, 2) == n_records
    assert kills == 3


def test_crash_hook_kills_the_collector_where_asked(kafka_bootstrap, chdb_url, tmp_path):
    """MSGTRACE_COLLECTOR_CRASH_AT (test-only): the real ``msgtrace collect`` dies by SIGKILL right after
    its 2nd batch write, before that batch's commit; the marker names the point; the next run
    stores the rest and the store holds each event once."""
    topic, group = _names()
    create_topic(kafka_bootstrap, topic, 1)
    n_records = produce_events(kafka_bootstrap, topic, make_events(6_000), per_record=200)
    marker = tmp_path / "kills.txt"
    cmd = _collect_cmd(kafka_bootstrap, topic, chdb_url, group, "--batch-events", "1000", "--until-idle",
                       "--session-timeout", "1.5", "--json")
    died = subprocess.run(cmd, capture_output=True, timeout=120,
                          env=_env(MSGTRACE_COLLECTOR_CRASH_AT="write:2", MSGTRACE_COLLECTOR_CRASH_MARKER=str(marker)))
    assert died.returncode == -9, died.stderr.decode()[-2000:]
    assert marker.read_text() == "write 2\n"
    assert b"test-only fault hook armed" in died.stderr
    first = committed(kafka_bootstrap, group, topic, 1)
    assert 0 < first < n_records  # the first batch committed, the second written and not committed
    assert counts(chdb_url)["distinct"] == 2_000
    ok = subprocess.run(cmd, capture_output=True, timeout=120, env=_env())
    assert ok.returncode == 0, ok.stderr.decode()[-2000:]
    assert orjson.loads(ok.stdout)["duplicates"] >= 1_000  # the written, uncommitted batch was read again
    assert counts(chdb_url)["distinct"] == 6_000  # each event once, whatever copies the store still holds
    assert committed(kafka_bootstrap, group, topic, 1) == n_records


def test_sigterm_finishes_the_batch_commits_and_exits_0(kafka_bootstrap, chdb_url, tmp_path):
    topic, group = _names()
    create_topic(kafka_bootstrap, topic, 1)
    n_records = produce_events(kafka_bootstrap, topic, make_events(5_000), per_record=250)
    # a long batch wait: the last batch is still open when SIGTERM comes
    cmd = _collect_cmd(kafka_bootstrap, topic, chdb_url, group, "--batch-wait", "600", "--batch-events", "2000",
                       "--json")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(tmp_path / "c.log", "wb"), env=_env())
    try:
        wait_until(lambda: committed(kafka_bootstrap, group, topic, 1) >= 16, 60, "the first full batches")
        assert committed(kafka_bootstrap, group, topic, 1) < n_records  # 1000 events wait in the open batch
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (tmp_path / "c.log").read_text()
    assert orjson.loads(out)["stored"] == 5_000
    assert committed(kafka_bootstrap, group, topic, 1) == n_records
    assert counts(chdb_url)["distinct"] == 5_000


# --- ClickHouse down ------------------------------------------------------------------

@pytest.fixture
def own_server():
    """A server of the test's own, which it stops and starts (CI=true: unavailable fails, never skips)."""
    try:
        server = ClickHouseServer().start()
    except (ServiceError, TimeoutError, OSError) as e:
        unavailable("clickhouse-server", e)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_clickhouse_down_20s_no_loss_resumes_by_itself(kafka_bootstrap, own_server, caplog):
    topic, group = _names()
    create_topic(kafka_bootstrap, topic, 1)
    url = own_server.url("collect_down")
    stop = threading.Event()
    result: dict = {}
    cfg = CollectorConfig(max_batch_events=2_000, max_batch_wait_s=0.2, backoff_initial_s=0.2, backoff_max_s=2.0)
    caplog.set_level(logging.INFO, logger="msgtrace.collector")

    def run() -> None:
        try:
            result["stats"] = run_collector(kafka_bootstrap, topic, url, group, config=cfg, stop=stop)
        except BaseException as e:  # surfaced by the assertions below
            result["error"] = e

    first = make_events(10_000)
    second = make_events(10_000)
    n1 = produce_events(kafka_bootstrap, topic, first, per_record=250)
    t = threading.Thread(target=run, name="collector")
    t.start()
    try:
        wait_until(lambda: committed(kafka_bootstrap, group, topic, 1) == n1, 60, "the first events to be committed")
        own_server.stop()
        n2 = produce_events(kafka_bootstrap, topic, second, per_record=250)
        down_since = time.monotonic()
        wait_until(lambda: any(r.getMessage() == "store unavailable" for r in caplog.records), 30,
                   "the collector to notice the store is down")
        while time.monotonic() - down_since < 20:  # the outage lasts 20 s
            assert committed(kafka_bootstrap, group, topic, 1) == n1  # nothing committed while it cannot write
            assert t.is_alive()
            time.sleep(0.5)
        own_server.start()
        wait_until(lambda: committed(kafka_bootstrap, group, topic, 1) == n1 + n2, 90,
                   "the collector to resume and commit everything")
    finally:
        stop.set()
        t.join(60)
    assert "error" not in result, result.get("error")
    stats = result["stats"]
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs.count("store unavailable") == 1 and msgs.count("store ok") == 1  # once per state change
    assert stats.store_failures >= 2 and stats.stored == 20_000
    c = counts(url)
    assert c["distinct"] == 20_000


@pytest.mark.slow
def test_kafka_down_collector_reconnects(tansu, server_url):
    """The broker dies and comes back (a memory broker: empty); the collector carries on by itself."""
    topic, group = _names()
    create_topic(tansu.bootstrap, topic, 1)
    stop = threading.Event()
    seen: dict = {}
    result: dict = {}
    cfg = CollectorConfig(max_batch_events=1_000, max_batch_wait_s=0.2, backoff_initial_s=0.2, backoff_max_s=1.0)

    def run() -> None:
        try:
            result["stats"] = run_collector(tansu.bootstrap, topic, server_url, group, config=cfg, stop=stop,
                                            on_status=lambda st, state: seen.update(stats=st))
        except BaseException as e:
            result["error"] = e

    n1 = produce_events(tansu.bootstrap, topic, make_events(2_000), per_record=200)
    t = threading.Thread(target=run, name="collector")
    t.start()
    try:
        wait_until(lambda: committed(tansu.bootstrap, group, topic, 1) == n1, 60, "the first events")
        tansu.restart()  # everything the broker had is gone, the port stays
        create_topic(tansu.bootstrap, topic, 1)
        produce_events(tansu.bootstrap, topic, make_events(2_000), per_record=200)
        wait_until(lambda: seen.get("stats") is not None and seen["stats"].stored >= 4_000, 120,
                   "the collector to reconnect and store the new events")
        assert t.is_alive()
    finally:
        stop.set()
        t.join(60)
    assert "error" not in result, result.get("error")
    assert counts(server_url)["distinct"] == 4_000
