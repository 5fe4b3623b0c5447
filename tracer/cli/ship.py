"""``msgtrace ship``: drain the spools that dead processes left behind.

A process killed before its shipper caught up leaves its spool directory; the
next traced process adopts it on its own, and this command does it from
outside (cron, a sidecar, after an incident). Live owners are left alone.
"""
from __future__ import annotations

import json

import click

from tracer.cli.util import audit_topic_option, bootstrap_option, handle_errors, json_option, out, store_option
from tracer.errors import ConfigError, MsgtraceError, describe


@click.command("ship")
@click.option("--spool", "spool_dir", envvar="MSGTRACE_SPOOL_DIR", metavar="DIR",
              help="Spool directory to drain (default: the user's data dir). Env: MSGTRACE_SPOOL_DIR.")
@bootstrap_option
@audit_topic_option
@store_option
@click.option("--timeout", type=float, default=None, metavar="SECONDS", help="Stop after this long.")
@json_option
@handle_errors
def ship(spool_dir: str | None, bootstrap: str | None, audit_topic: str, store_url: str | None,
         timeout: float | None, as_json: bool) -> None:
    """Ship the audit events in dead processes' spools: to the audit topic with --bootstrap,
    else straight into the store."""
    import os

    from tracer.sdk.emitter import KafkaSink, StoreSink, default_spool_dir, drain_spools

    spool_dir = spool_dir or default_spool_dir()
    if not os.path.isdir(spool_dir):
        raise ConfigError(f"--spool: no such directory: {spool_dir}")
    sink = KafkaSink(bootstrap, audit_topic) if bootstrap else StoreSink(store_url)
    try:
        try:
            stats = drain_spools(spool_dir, sink, timeout)
        except MsgtraceError:
            raise
        except Exception as e:  # a sink that is down: one line, exit 2, spools kept
            raise MsgtraceError(f"shipping to {sink.name} failed, spools kept: {describe(e)}") from None
    finally:
        sink.close()
    stats["sink"] = sink.name
    if as_json:
        click.echo(json.dumps(stats))
    else:
        out.print(f"shipped {stats['events']} events from {stats['spools']} dead spool(s) to {sink.name}"
                  + (f"; {stats['torn']} torn line(s) skipped" if stats["torn"] else "")
                  + (f"; {stats['left']} spool(s) not finished" if stats["left"] else ""))
