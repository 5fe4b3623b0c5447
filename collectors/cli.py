"""``msgtrace collect``: audit topic -> ClickHouse.

Long-running by default, with a live status line on a terminal; ``--until-idle``
drains the topic and exits. SIGTERM (and Ctrl-C) finish the current batch,
commit and exit 0. Logs are structured (logfmt or JSON lines) on stderr.

The audit Kafka's TLS / SASL settings come from ``MSGTRACE_KAFKA_*`` or ``MSGTRACE_KAFKA_CONFIG``
(:mod:`tracer.kafka_config`), never from the command line. ``MSGTRACE_COLLECTOR_CRASH_AT`` is a
fault hook for tests only (:mod:`collectors.faults`).
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import click
import orjson

from tracer.cli.util import (
    EXIT_ERROR,
    EXIT_OK,
    audit_topic_option,
    bootstrap_option,
    err,
    handle_errors,
    json_option,
    store_option,
)


class LogFormatter(logging.Formatter):
    """``ts=... level=... event="..." key=value`` (logfmt) or one JSON object per line."""

    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        fields: dict[str, Any] = {"ts": ts, "level": record.levelname.lower(), "logger": record.name,
                                  "event": record.getMessage()}
        fields.update(getattr(record, "fields", None) or {})
        if self.as_json:
            return orjson.dumps(fields, default=str).decode()
        parts = []
        for k, v in fields.items():
            s = v if isinstance(v, str) else json.dumps(v, default=str)
            if not s or any(c in s for c in ' "=\t\n'):
                s = json.dumps(s)
            parts.append(f"{k}={s}")
        return " ".join(parts)


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now (rich's live display swaps it while it runs)."""

    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(LogFormatter(as_json))
    for name in ("msgtrace",):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level.upper())
        lg.propagate = False
    # kafka-python logs every failed reconnect; our own logs say it once per state change
    kafka_log = logging.getLogger("kafka")
    kafka_log.handlers[:] = [handler]
    kafka_log.propagate = False
    kafka_log.setLevel(logging.DEBUG if level == "debug" else logging.CRITICAL)


def _status_text(stats: Any, state: str, rate: float) -> str:
    last = "never"
    if stats.last_commit_us:
        last = f"{max(0.0, time.time() - stats.last_commit_us / 1e6):.1f} s ago"
    lag = "?" if stats.lag is None else f"{stats.lag:,}"
    return (f"[bold]{state}[/]  {rate:,.0f} events/s  stored {stats.stored:,}  dup {stats.duplicates:,}  "
            f"lag {lag} records  quarantined {stats.quarantined:,}  last commit {last}")


@click.command("collect")
@bootstrap_option
@audit_topic_option
@store_option
@click.option("--group", "group_id", default="msgtrace-collector", show_default=True, envvar="MSGTRACE_COLLECTOR_GROUP",
              help="Consumer group of the collectors (run several for more partitions).")
@click.option("--until-idle", is_flag=True, help="Drain the audit topic, commit and exit.")
@click.option("--batch-events", type=click.IntRange(1), default=20_000, show_default=True,
              help="Write a batch once it holds this many events ...")
@click.option("--batch-wait", type=click.FloatRange(0.01), default=1.0, show_default=True,
              help="... or once its first record is this many seconds old.")
@click.option("--session-timeout", type=click.FloatRange(0.5, 300), default=6.0, show_default=True,
              envvar="MSGTRACE_COLLECTOR_SESSION_TIMEOUT",
              help="Seconds without a heartbeat after which Kafka drops a collector from the group and gives "
                   "its partitions to the others (heartbeats every third of it). Short: a killed collector's "
                   "partitions move sooner; too short for the network: needless rebalances.")
@click.option("--startup-timeout", type=click.FloatRange(1), default=60.0, show_default=True,
              help="With --until-idle: give up when Kafka or the partitions do not come within this time.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, envvar="MSGTRACE_METRICS_PORT",
              help="Serve Prometheus metrics (/metrics) and a health check (/healthz) on this port (0: any free "
                   "port, logged).")
@click.option("--metrics-host", default="0.0.0.0", show_default=True, envvar="MSGTRACE_METRICS_HOST",
              help="Address the metrics port binds to (127.0.0.1: this host only).")
@click.option("--unhealthy-after", type=click.FloatRange(1), default=60.0, show_default=True,
              help="/healthz answers 503 once the store or Kafka has failed this many seconds, or records "
                   "wait with no commit for as long.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="Least severe log level written to stderr.")
@click.option("--log-json", is_flag=True, help="Log JSON lines instead of logfmt.")
@click.option("--from", "from_path", metavar="FILE|-",
              help="Collect from a file, or stdin with -, instead of the audit topic: a dump of the audit topic "
                   "(msgtrace's NDJSON events) or of RocketMQ's trace topic (--format rocketmq-trace), streamed in "
                   "batches; the same validation, de-duplication and quarantine ('msgtrace import' does the same, "
                   "with the RocketMQ mapping's options).")
@click.option("--format", "from_format", type=click.Choice(["events", "rocketmq-trace"]), default="events",
              show_default=True, help="With --from: what the records are.")
@json_option
@handle_errors
def collect(bootstrap: str | None, audit_topic: str, store_url: str | None, group_id: str, until_idle: bool,
            batch_events: int, batch_wait: float, session_timeout: float, startup_timeout: float,
            metrics_port: int | None, metrics_host: str, unhealthy_after: float, log_level: str, log_json: bool,
            from_path: str | None, from_format: str, as_json: bool) -> None:
    """Collect audit events from Kafka into ClickHouse (at least once, de-duplicated).

    Run several with the same --group to share the audit topic's partitions: a rebalance (one
    joins, one dies) loses nothing and stores nothing twice by event id.
    """
    from .consumer import CollectorConfig
    from .run import run_collector
    from .types import CollectorStats

    if from_path is not None:
        from tracer.cli.importer import run_import  # the importer's path, read in batches as it comes

        run_import(from_path, store_url, from_format, batch_events, as_json)
        return
    setup_logging(log_level, log_json)
    stats = CollectorStats()
    metrics = None
    if metrics_port is not None:
        from tracer.errors import ConfigError
        from tracer.store import default_store_url, parse_store_url

        from .decode import FAST_C
        from .metrics import MetricsServer

        labels = {"group": group_id, "topic": audit_topic, "decoder": "c" if FAST_C else "python",
                  "store": parse_store_url(store_url or default_store_url()).redacted()}
        try:
            metrics = MetricsServer(stats, metrics_port, metrics_host, labels=labels,
                                    unhealthy_after=unhealthy_after)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {metrics_host}:{metrics_port}: "
                              f"{e.strerror or e}") from None
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    session_ms = int(session_timeout * 1000)
    cfg = CollectorConfig(max_batch_events=batch_events, max_batch_wait_s=batch_wait,
                          startup_timeout_s=startup_timeout, session_timeout_ms=session_ms,
                          heartbeat_interval_ms=max(100, min(1000, session_ms // 3)))
    live = None
    on_status = None
    if err.is_terminal and not as_json:
        from rich.live import Live

        live = Live("starting", console=err, refresh_per_second=4, transient=False, redirect_stderr=True)
        live.start()
        last = {"t": time.monotonic(), "n": 0}

        def on_status(stats: Any, state: str) -> None:
            now = time.monotonic()
            rate = (stats.inserted - last["n"]) / max(1e-6, now - last["t"])
            last.update(t=now, n=stats.inserted)
            live.update(_status_text(stats, state, rate))
    try:
        stats = run_collector(bootstrap or "", audit_topic, store_url, group_id, until_idle, config=cfg, stop=stop,
                              on_status=on_status, stats=stats)
    finally:
        if metrics is not None:
            metrics.close()
        if live is not None:
            live.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if as_json:
        sys.stdout.write(orjson.dumps(stats.to_dict()).decode() + "\n")
    else:
        d = stats.to_dict()
        err.print(f"collected: stored {d['stored']:,}  duplicates {d['duplicates']:,}  "
                  f"quarantined {d['quarantined']:,}  ({d['events_per_s']:,.0f} events/s)")
    sys.exit(EXIT_OK if stats.clean_exit else EXIT_ERROR)
