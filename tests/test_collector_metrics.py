"""Metrics and health: ``msgtrace collect --metrics-port`` scraped over HTTP during a real collect
(real Tansu, a ClickHouse 18.16 server of the test's own that it stops and starts), the health
rules on plain values, and the emitter's counters (``tracer.sdk.metrics``) from a real Tracer."""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from conftest import unavailable

from collectors.metrics import health
from collectors.testing import create_topic, make_events, produce_events, produce_records
from collectors.testing import scrape_metrics as scrape
from collectors.types import CollectorStats, Partition
from tracer.events import record_headers
from tracer.localsvc import ClickHouseServer, ServiceError, free_port, wait_until


@pytest.fixture
def own_server() -> Iterator[ClickHouseServer]:
    """A ClickHouse server the test stops and starts (CI=true: unavailable fails, never skips)."""
    try:
        server = ClickHouseServer().start()
    except (ServiceError, TimeoutError, OSError) as e:
        unavailable("clickhouse-server", e)
    try:
        yield server
    finally:
        server.stop()


def _get(port: int, path: str) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


@pytest.mark.slow
def test_metrics_and_health_of_a_running_collector(kafka_bootstrap, own_server, tmp_path):
    topic, group = f"audit-{uuid.uuid4().hex[:8]}", f"metrics-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 2)
    url = own_server.url("collect_metrics")
    events = make_events(6_000)
    # the same events twice before the collector starts: one batch holds both copies
    produce_events(kafka_bootstrap, topic, events, per_record=250, partitions=2)
    produce_events(kafka_bootstrap, topic, events[:1_000], per_record=250, partitions=2)
    produce_records(kafka_bootstrap, topic, [(b"not json", record_headers())], partition=0)
    port = free_port()
    cmd = [sys.executable, "-m", "tracer", "collect", "--bootstrap", kafka_bootstrap, "--audit-topic", topic,
           "--store", url, "--group", group, "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
           "--unhealthy-after", "2", "--batch-wait", "0.2"]
    log = open(tmp_path / "collect.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        m = wait_until(lambda: (lambda x: x if x.get("msgtrace_collector_events_stored_total") == 6_000 else None)(
            scrape(port)), 90, "the collector to report 6,000 stored events")
        assert m["msgtrace_collector_events_inserted_total"] == 7_000
        assert m["msgtrace_collector_duplicates_total"] == 1_000
        assert m["msgtrace_collector_quarantined_total"] == 1
        assert m["msgtrace_collector_store_up"] == 1 and m["msgtrace_collector_kafka_up"] == 1
        assert m["msgtrace_collector_batch_write_seconds_count"] >= 1
        assert m["msgtrace_collector_batch_latency_seconds_count"] >= 1
        assert m["msgtrace_collector_last_commit_timestamp_seconds"] > 1.7e9
        assert any(k.startswith("process_cpu_seconds_total") for k in m)
        m = wait_until(lambda: (lambda x: x if x.get(f"msgtrace_collector_partition_lag_records{{partition=1,"
                                                      f"topic={topic}}}") == 0 else None)(scrape(port)),
                       30, "the lag of both partitions to read 0")
        assert m[f"msgtrace_collector_partition_lag_records{{partition=0,topic={topic}}}"] == 0
        assert m["msgtrace_collector_assigned_partitions"] == 2
        status, body = _get(port, "/healthz")
        assert status == 200 and '"status": "ok"' in body  # idle and caught up

        own_server.stop()  # the store goes away while events keep coming
        produce_events(kafka_bootstrap, topic, make_events(2_000), per_record=250, partitions=2)
        status, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(_get(port, "/healthz")), 60,
                                  "/healthz to turn 503 while the store is down")
        assert "store failing for" in body and "ClickHouse" in body
        m = scrape(port)
        assert m["msgtrace_collector_store_up"] == 0 and m["msgtrace_collector_store_failures_total"] >= 1
        assert m["msgtrace_collector_healthy"] == 0
        assert m["msgtrace_collector_lag_records"] > 0

        own_server.start()
        wait_until(lambda: scrape(port).get("msgtrace_collector_events_stored_total") == 8_000, 90,
                   "the collector to resume and store the 2,000 new events")
        wait_until(lambda: _get(port, "/healthz")[0] == 200, 30, "/healthz to return to 200")
        assert proc.poll() is None, (tmp_path / "collect.log").read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    assert proc.returncode == 0, (tmp_path / "collect.log").read_text()[-3000:]
    assert _get(port, "/metrics")[0] is None  # the server went with the process


def test_metrics_port_in_use_is_one_clear_line(tmp_path):
    import socket

    from click.testing import CliRunner

    from tracer.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = CliRunner().invoke(main, ["collect", "--bootstrap", "127.0.0.1:1", "--store", f"chdb://{tmp_path}/s",
                                      "--metrics-port", str(port), "--metrics-host", "127.0.0.1", "--until-idle"])
    assert r.exit_code == 2, r.output
    assert f"cannot serve metrics on 127.0.0.1:{port}" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# --- the health rules on plain values ------------------------------------------------------

def test_health_rules() -> None:
    now = 1_000.0
    idle = CollectorStats(started=now - 600, lag=0, last_commit_at=now - 500)
    idle.lag_by_partition = {Partition("a", 0): 0}
    assert health(idle, unhealthy_after=60, now=now).ok  # idle and caught up, long after the last commit
    busy = CollectorStats(started=now - 600, lag=5_000, last_commit_at=now - 5)
    assert health(busy, unhealthy_after=60, now=now).ok  # behind, but committing
    stalled = CollectorStats(started=now - 600, lag=5_000, last_commit_at=now - 120)
    h = health(stalled, unhealthy_after=60, now=now)
    assert not h.ok and h.status == 503 and "5000 records waiting and no commit for 120 s" in h.problems[0]
    short = CollectorStats(started=now - 600, lag=10, last_commit_at=now - 5, store_down_since=now - 30,
                           last_error="cannot reach ClickHouse at h:9000")
    assert health(short, unhealthy_after=60, now=now).ok  # a short outage is not yet unhealthy
    long = CollectorStats(started=now - 600, lag=10, last_commit_at=now - 90, store_down_since=now - 90,
                          last_error="cannot reach ClickHouse at h:9000")
    h = health(long, unhealthy_after=60, now=now)
    assert not h.ok and h.problems == ["store failing for 90 s: cannot reach ClickHouse at h:9000"]
    commits = CollectorStats(started=now - 600, lag=0, commit_down_since=now - 61, last_error="broker gone")
    assert health(commits, unhealthy_after=60, now=now).problems == ["Kafka failing for 61 s: broker gone"]
    starting = CollectorStats(started=now - 10, lag=None)
    assert health(starting, unhealthy_after=60, now=now).ok


# --- the emitter's counters -------------------------------------------------------------------

def test_tracer_counters_as_prometheus_metrics(kafka_bootstrap, tmp_path):
    from prometheus_client import CollectorRegistry, start_http_server

    from tracer import Tracer
    from tracer.sdk.metrics import TracerCollector, register

    topic = f"audit-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 1)
    tracer = Tracer(service="order-service", bootstrap=kafka_bootstrap, audit_topic=topic,
                    spool_dir=str(tmp_path / "spool"))
    registry = CollectorRegistry()
    register(tracer, registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        for i in range(50):
            tracer.record("sent", f"order-{i}:paid", topic="orders")
        assert tracer.flush(60)
        m = scrape(port)
        stats = tracer.stats
        assert m["msgtrace_emitter_events_recorded_total"] == stats["recorded"] == 50
        assert m["msgtrace_emitter_events_shipped_total"] == stats["shipped"] == 50
        assert m["msgtrace_emitter_events_dropped_total"] == 0
        assert m["msgtrace_emitter_spool_bytes"] == 0 and m["msgtrace_emitter_up"] == 1
        assert any(k.startswith("msgtrace_emitter_info{") and "service=order-service" in k for k in m)
    finally:
        server.shutdown()
        server.server_close()
        tracer.close()

    class Broken:
        @property
        def stats(self):
            raise RuntimeError("reshaped")

    reg = CollectorRegistry()
    reg.register(TracerCollector(Broken()))  # type: ignore[arg-type]
    assert reg.get_sample_value("msgtrace_emitter_up") == 0  # a scrape never raises into the app
