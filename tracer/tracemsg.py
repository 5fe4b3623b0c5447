"""``trace-msg <id>``: one message's timeline across stages, services and groups."""
from __future__ import annotations

import sys
from datetime import datetime, timezone

import click
import orjson
from rich.table import Table

from .cliutil import EXIT_OK, EXIT_UNKNOWN, handle_errors, json_option, out, store_option
from .events import Event


def fmt_ts(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1e6, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def timeline_table(events: list[Event]) -> Table:
    t = Table(title=None, show_lines=False)
    for col in ("time (UTC)", "+Δ", "stage", "service", "host/pid", "topic/p/offset", "group", "error"):
        t.add_column(col, overflow="fold")
    prev = None
    for e in events:
        delta = "" if prev is None else f"{(e.ts_us - prev) / 1000:.1f} ms"
        prev = e.ts_us
        where = e.topic + (f"/{e.partition}" if e.partition is not None else "") + \
            (f"@{e.offset}" if e.offset is not None else "")
        t.add_row(fmt_ts(e.ts_us), delta, e.stage, e.service, f"{e.host}/{e.pid}", where,
                  e.consumer_group or "", e.error or "")
    return t


@click.command("trace-msg")
@click.argument("msg_id")
@store_option
@json_option
@handle_errors
def trace_msg(msg_id: str, store_url: str | None, as_json: bool) -> None:
    """Show the timeline of message MSG_ID: every recorded stage in time order."""
    from .store import Store

    with Store(store_url) as store:
        events = store.select_events(msg_id)
    if as_json:
        sys.stdout.write(orjson.dumps({"msg_id": msg_id, "verdicts": [],
                                       "events": [e.to_dict() for e in events]}).decode() + "\n")
    elif events:
        out.print(f"[bold]{msg_id}[/]: {len(events)} events")
        out.print(timeline_table(events))
    else:
        out.print(f"no events for message id {msg_id!r}")
    sys.exit(EXIT_OK if events else EXIT_UNKNOWN)
