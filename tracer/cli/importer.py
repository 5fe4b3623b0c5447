"""``msgtrace import``: other records of message stages, from a file or a pipe, into the store.

``msgtrace import rocketmq-trace FILE|-`` reads RocketMQ's message-trace records (the bodies of the
trace topic, ``RMQ_SYS_TRACE_TOPIC`` by default) and ``msgtrace import events FILE|-`` msgtrace's own
NDJSON events; both validate, de-duplicate (a re-import stores nothing twice) and quarantine bad
records with the reason, as the collector does. A thin click layer over :mod:`tracer.ingest`.
"""
from __future__ import annotations

import json
import sys
from typing import IO, Any

import click

from tracer.cli.util import err, handle_errors, json_option, out, store_option
from tracer.errors import ConfigError


@click.group("import")
def import_group() -> None:
    """Import records of message stages from a file or stdin into the store."""


def _open(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None


def _pairs(values: tuple[str, ...], option: str, *, numeric: bool = False) -> dict[str, Any]:
    outp: dict[str, Any] = {}
    for v in values:
        name, sep, val = v.partition("=")
        if not sep or not name or not val:
            raise ConfigError(f"{option} {v!r}: use GROUP=VALUE")
        if numeric:
            if not val.isdigit():
                raise ConfigError(f"{option} {v!r}: the value must be a whole number")
            outp[name] = int(val)
        else:
            outp[name] = val
    return outp


def _summary(stats: Any, what: str) -> None:
    d = stats.to_dict()
    parts = [f"{d['records']} {what}", f"{d['stored']} events stored"]
    if d["duplicates"]:
        parts.append(f"{d['duplicates']} already stored")
    if d.get("skipped"):
        parts.append(f"{d['skipped']} without a stage (transaction still in doubt, failed recall)")
    out.print("imported " + ", ".join(parts))
    if d["quarantined"] or d["quarantine_duplicates"]:
        err.print(f"[yellow]{d['quarantined']} bad record(s) quarantined[/]"
                  + (f" ({d['quarantine_duplicates']} already in quarantine)" if d["quarantine_duplicates"] else "")
                  + ": SELECT line, error FROM quarantine WHERE source = "
                  + f"'{d['source']}' ORDER BY received_us DESC", markup=True)
    if d.get("unresolved"):
        err.print(f"{d['unresolved']} consumer event(s) have no topic (no Pub of their message was found): "
                  "import the producers' traces too, or name the topic with --group-topic GROUP=TOPIC")


def run_import(path: str, store_url: str | None, fmt: str, batch_records: int, as_json: bool,
               config: Any = None) -> None:
    """Read ``path`` (``-``: stdin) in batches into the store and report: the one path of ``msgtrace
    import events|rocketmq-trace`` and ``msgtrace collect --from``."""
    from tracer.ingest import import_events, import_rocketmq_trace
    from tracer.store import Store

    stream = _open(path)
    try:
        with Store(store_url) as store:
            if fmt == "rocketmq-trace":
                stats = import_rocketmq_trace(store, stream, config, batch_records=batch_records)
            else:
                stats = import_events(store, stream, batch_records=batch_records)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    if as_json:
        click.echo(json.dumps(stats.to_dict()))
    else:
        _summary(stats, "trace records" if fmt == "rocketmq-trace" else "lines")


@import_group.command("rocketmq-trace")
@click.argument("path", metavar="FILE|-")
@store_option
@click.option("--msg-id", "msg_id_from", type=click.Choice(["key", "msg_id"]), default="key", show_default=True,
              help="Business id of a message: its RocketMQ key (keys; the smallest when several), else its "
                   "msgId; or always the msgId.")
@click.option("--consume-success", type=click.Choice(["business_done", "offset_committed"]),
              default="business_done", show_default=True,
              help="What a SubAfter success records. offset_committed when the application records its business "
                   "outcome with msgtrace's own hooks: a success returned before the work finished is then "
                   "lost_in_consumer.")
@click.option("--hooked-group", "hooked_groups", multiple=True, metavar="GROUP",
              help="A consumer group whose business outcome msgtrace's hooks record: its SubAfter success is "
                   "offset_committed (repeatable).")
@click.option("--max-reconsume", type=click.IntRange(0), default=16, show_default=True,
              help="RocketMQ's maximum reconsume times: a failure at this retry goes to %DLQ%<group>.")
@click.option("--group-max-reconsume", multiple=True, metavar="GROUP=N",
              help="The maximum reconsume times of one group (its retryMaxTimes), repeatable.")
@click.option("--group-topic", multiple=True, metavar="GROUP=TOPIC",
              help="Topic of a group's consumer records when no Pub of the message is known (repeatable).")
@click.option("--service", metavar="NAME", help="Service name of the events (default: the producer or consumer group).")
@click.option("--batch", "batch_records", type=click.IntRange(1), default=10_000, show_default=True,
              help="Records per write.")
@json_option
@handle_errors
def rocketmq_trace(path: str, store_url: str | None, msg_id_from: str, consume_success: str,
                   hooked_groups: tuple[str, ...], max_reconsume: int, group_max_reconsume: tuple[str, ...],
                   group_topic: tuple[str, ...], service: str | None, batch_records: int, as_json: bool) -> None:
    """Import RocketMQ message-trace records (TraceDataEncoder format) from FILE, or stdin with -.

    The input is the bodies of the trace topic's messages as they are (records ended by \\x02, fields
    split by \\x01), one after the other or one per line; pipe a live dump in with -.
    """
    from tracer.ingest import MsgIdFrom, RocketMQImportConfig, SuccessMeans

    config = RocketMQImportConfig(msg_id_from=MsgIdFrom(msg_id_from), success_means=SuccessMeans(consume_success),
                                  hooked_groups=frozenset(hooked_groups), max_reconsume_times=max_reconsume,
                                  group_max_reconsume=_pairs(group_max_reconsume, "--group-max-reconsume",
                                                             numeric=True),
                                  group_topics=_pairs(group_topic, "--group-topic"), service=service)
    run_import(path, store_url, "rocketmq-trace", batch_records, as_json, config)


@import_group.command("events")
@click.argument("path", metavar="FILE|-")
@store_option
@click.option("--batch", "batch_records", type=click.IntRange(1), default=10_000, show_default=True,
              help="Lines per write.")
@json_option
@handle_errors
def events(path: str, store_url: str | None, batch_records: int, as_json: bool) -> None:
    """Import msgtrace events (the audit wire format: one JSON object per line) from FILE, or stdin with -."""
    run_import(path, store_url, "events", batch_records, as_json)
