"""Prometheus metrics and a health endpoint for ``msgtrace collect --metrics-port P``.

Every figure is read from the run's :class:`~collectors.types.CollectorStats` at scrape time
(a prometheus-client custom collector): the collector keeps one set of numbers, the CLI's
status line, ``--json`` and the metrics all show the same ones.

``GET /metrics``: the Prometheus text format. ``GET /healthz``: 200 while the collector makes
progress or is idle and caught up, 503 when the store or Kafka has been failing for longer than
``unhealthy_after`` seconds or records wait with no commit for that long; the body (JSON) says
why, for the orchestrator's events and the on-call engineer's ``curl``.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .step_base import log_event
from .types import CollectorStats, Histogram

PREFIX = "msgtrace_collector"
#: default of ``--unhealthy-after``: a store or Kafka outage this long turns /healthz to 503
DEFAULT_UNHEALTHY_AFTER_S = 60.0


@dataclass(slots=True)
class Health:
    """The answer of /healthz."""

    ok: bool
    problems: list[str]
    detail: dict[str, Any]

    @property
    def status(self) -> int:
        return 200 if self.ok else 503

    def body(self) -> bytes:
        return json.dumps({"status": "ok" if self.ok else "unhealthy", "problems": self.problems,
                           **self.detail}, default=str).encode() + b"\n"


def health(stats: CollectorStats, *, unhealthy_after: float = DEFAULT_UNHEALTHY_AFTER_S,
           now: float | None = None) -> Health:
    """Judge the collector's health from its stats (pure: unit-tested with plain values)."""
    now = time.monotonic() if now is None else now
    problems: list[str] = []

    def failing(since: float | None, what: str) -> float | None:
        if since is None:
            return None
        down = now - since
        if down > unhealthy_after:
            problems.append(f"{what} failing for {down:.0f} s: {stats.last_error or 'no error text'}")
        return round(down, 1)

    store_down = failing(stats.store_down_since, "store")
    kafka_since = [s for s in (stats.kafka_down_since, stats.commit_down_since) if s is not None]
    kafka_down = failing(min(kafka_since) if kafka_since else None, "Kafka")
    last_progress = stats.last_commit_at if stats.last_commit_at is not None else stats.started
    quiet = now - last_progress
    if stats.lag and quiet > unhealthy_after and store_down is None and kafka_down is None:
        problems.append(f"{stats.lag} records waiting and no commit for {quiet:.0f} s")
    detail = {"lag": stats.lag, "stored": stats.stored, "store_down_s": store_down, "kafka_down_s": kafka_down,
              "last_commit_s_ago": None if stats.last_commit_at is None else round(now - stats.last_commit_at, 1),
              "assigned_partitions": len(stats.lag_by_partition)}
    return Health(not problems, problems, detail)


class StatsCollector:
    """prometheus-client custom collector over one run's :class:`CollectorStats`."""

    def __init__(self, stats: CollectorStats, labels: dict[str, str] | None = None,
                 unhealthy_after: float = DEFAULT_UNHEALTHY_AFTER_S) -> None:
        self.stats = stats
        self.labels = dict(labels or {})
        self.unhealthy_after = unhealthy_after

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        s = self.stats
        if self.labels:
            yield InfoMetricFamily(PREFIX, "What this collector reads and where it writes.", value=self.labels)
        counters = [
            ("events_stored", "New distinct audit events stored (inserted minus duplicates).", s.stored),
            ("events_inserted", "Audit events written to trace_events, duplicates included.", s.inserted),
            ("duplicates", "Events found already stored (redelivered after a restart or rebalance) or "
                           "repeated within a batch.", s.duplicates),
            ("quarantined", "Bad audit records or lines written to the quarantine table.", s.quarantined),
            ("records", "Audit topic records read.", s.records),
            ("batches", "Batches written.", s.batches),
            ("commits", "Offset commits that Kafka accepted.", s.commits),
            ("store_failures", "Failed batch writes (each retry counts).", s.store_failures),
            ("kafka_failures", "Failed Kafka polls and commits.", s.kafka_failures),
        ]
        for name, doc, value in counters:
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        lag = GaugeMetricFamily(f"{PREFIX}_partition_lag_records",
                                "Records between the consumer position and the end of the log, per assigned "
                                "partition.", labels=["topic", "partition"])
        for p, n in sorted(s.lag_by_partition.items(), key=lambda kv: (kv[0].topic, kv[0].index)):
            lag.add_metric([p.topic, str(p.index)], n)
        yield lag
        yield GaugeMetricFamily(f"{PREFIX}_assigned_partitions", "Audit partitions assigned to this collector.",
                                value=len(s.lag_by_partition))
        if s.lag is not None:
            yield GaugeMetricFamily(f"{PREFIX}_lag_records", "Records not yet stored: behind the log end over the "
                                    "assigned partitions, plus read and not yet decoded.", value=s.lag)
        yield _histogram(f"{PREFIX}_batch_write_seconds", "Seconds to write one batch (retries included).",
                         s.write_seconds)
        yield _histogram(f"{PREFIX}_batch_latency_seconds",
                         "Seconds from a batch's first record to the commit of its offsets.", s.batch_seconds)
        if s.last_commit_us is not None:
            yield GaugeMetricFamily(f"{PREFIX}_last_commit_timestamp_seconds",
                                    "Unix time of the last accepted offset commit.", value=s.last_commit_us / 1e6)
        yield GaugeMetricFamily(f"{PREFIX}_store_up", "1 while batch writes succeed, 0 while they fail.",
                                value=0 if s.store_down_since is not None else 1)
        yield GaugeMetricFamily(f"{PREFIX}_kafka_up", "1 while Kafka polls and commits succeed, 0 while they fail.",
                                value=0 if s.kafka_down_since is not None or s.commit_down_since is not None else 1)
        yield GaugeMetricFamily(f"{PREFIX}_healthy", "1 when /healthz answers 200.",
                                value=1 if health(s, unhealthy_after=self.unhealthy_after).ok else 0)


def _histogram(name: str, doc: str, h: Histogram) -> Any:
    from prometheus_client.core import HistogramMetricFamily

    counts = list(h.counts)
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, c in zip(h.bounds, counts):
        running += c
        buckets.append((repr(float(bound)), running))
    buckets.append(("+Inf", running + counts[-1]))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.total)


def registry_for(stats: CollectorStats, labels: dict[str, str] | None = None,
                 unhealthy_after: float = DEFAULT_UNHEALTHY_AFTER_S) -> Any:
    """A registry with the run's metrics and the process's (CPU, memory, open files)."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    reg = CollectorRegistry()
    reg.register(StatsCollector(stats, labels, unhealthy_after))
    ProcessCollector(registry=reg)
    return reg


class MetricsServer:
    """``/metrics`` and ``/healthz`` on ``host:port`` (a daemon thread); ``close`` stops it."""

    def __init__(self, stats: CollectorStats, port: int, host: str = "0.0.0.0", *,
                 labels: dict[str, str] | None = None,
                 unhealthy_after: float = DEFAULT_UNHEALTHY_AFTER_S) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        registry = registry_for(stats, labels, unhealthy_after)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":
                        self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                    elif path in ("/healthz", "/health"):
                        h = health(stats, unhealthy_after=unhealthy_after)
                        self._send(h.status, "application/json", h.body())
                    elif path == "/":
                        self._send(200, "text/plain; charset=utf-8", b"msgtrace collector: /metrics /healthz\n")
                    else:
                        self._send(404, "text/plain; charset=utf-8", b"not found\n")
                except Exception as e:  # a scrape must never take the collector down
                    self._send(500, "text/plain; charset=utf-8", f"{type(e).__name__}: {e}\n".encode())

            def _send(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not log lines
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="msgtrace-metrics", daemon=True)
        self._thread.start()
        log_event(logging.INFO, "metrics serving", host=host, port=self.port, paths="/metrics /healthz")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
