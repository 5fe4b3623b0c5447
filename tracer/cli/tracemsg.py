"""``trace-msg <id>``: one message's timeline across stages, services and groups, with its verdicts.

Kept light on imports (the whole command should take well under a second): the reconciler's SQL does
the judging; this module only prints.
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Any

import click

from tracer.cli.util import EXIT_LOST, EXIT_OK, EXIT_UNKNOWN, err, handle_errors, json_option, out, store_option
from tracer.events import Event, cap_msg_id

_SEPARATORS = ":-_./#|@ "


def fmt_ts(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1e6, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def fmt_delta(us: int) -> str:
    sign = "-" if us < 0 else "+"
    us = abs(us)
    if us < 1000:
        return f"{sign}{us} µs"
    if us < 1_000_000:
        return f"{sign}{us / 1000:.1f} ms"
    if us < 120_000_000:
        return f"{sign}{us / 1e6:.2f} s"
    return f"{sign}{us / 60e6:.1f} min"


def timeline_table(events: list[Event]):  # -> rich.table.Table
    from rich.table import Table

    t = Table(title=None, show_lines=False)
    for col in ("time (UTC)", "+Δ", "stage"):
        t.add_column(col, no_wrap=True)
    for col in ("service", "host/pid", "topic/p@offset", "group", "error"):
        t.add_column(col, overflow="fold")
    prev = None
    for e in events:
        delta = "" if prev is None else fmt_delta(e.ts_us - prev)
        prev = e.ts_us
        where = e.topic + (f"/{e.partition}" if e.partition is not None else "") + \
            (f"@{e.offset}" if e.offset is not None else "")
        t.add_row(fmt_ts(e.ts_us), delta, e.stage, e.service, f"{e.host}/{e.pid}", where,
                  e.consumer_group or "", e.error or "", style="red" if e.error else None)
    return t


def similar_prefixes(msg_id: str, most: int = 3) -> list[str]:
    """Prefixes to look for similar ids, longest first: up to each separator, else the first two thirds."""
    cuts = sorted({i for i, c in enumerate(msg_id) if c in _SEPARATORS and 0 < i < len(msg_id) - 1},
                  reverse=True)
    out = [msg_id[:i + 1] for i in cuts][:most]
    if not out and len(msg_id) > 1:
        out = [msg_id[: max(1, len(msg_id) * 2 // 3)]]
    return out


def similar_prefix(msg_id: str) -> str:
    p = similar_prefixes(msg_id)
    return p[0] if p else ""


def similar_ids(store: Any, msg_id: str, limit: int = 10) -> list[str]:
    """Ids sharing the longest prefix (up to a separator) with an unknown id."""
    for prefix in similar_prefixes(msg_id):
        rows = store.query_file("trace_msg_similar", {"prefix": prefix}, small=True)
        found = [r["msg_id"] for r in rows if r["msg_id"] != msg_id][:limit]
        if found:
            return found
    return []


def verdict_json(v: Any) -> dict[str, Any]:
    return {"consumer_group": v.consumer_group, "verdict": v.verdict, "stopped_at": v.stopped_at,
            "flags": list(v.flags), "evidence": v.evidence}


def print_verdicts(verdicts: list[Any]) -> None:
    from rich.markup import escape

    from tracer.verdicts import DELIVERED, LOST, LOST_LABEL, stopped_words

    for v in verdicts:
        colour = "green" if v.verdict == DELIVERED else ("red" if v.verdict in LOST else "yellow")
        group = escape(v.consumer_group) if v.consumer_group else "(no consumer group known)"
        flags = f"  [magenta]{', '.join(v.flags)}[/]" if v.flags else ""
        out.print(f"group [bold]{group}[/]: [{colour} bold]{v.verdict}[/] (lost: {LOST_LABEL[v.verdict]}){flags}")
        out.print(f"  stopped at: {v.stopped_at} -- {escape(stopped_words(v.stopped_at))}")
        out.print(f"  evidence:   {escape(v.evidence)}")
        if v.remedy:
            out.print(f"  remedy:     {escape(v.remedy)}")


@click.command("trace-msg")
@click.argument("msg_id")
@click.option("--group", "groups", multiple=True, metavar="GROUP",
              help="A consumer group expected to process the message (repeatable); judged even if it never "
                   "received it. Default: the groups seen for this message.")
@click.option("--topic-groups", is_flag=True,
              help="Also judge the message for every group that received from its topic within an hour of "
                   "it (scans that hour: slower on big stores).")
@click.option("--bootstrap", envvar="MSGTRACE_BUSINESS_KAFKA_BOOTSTRAP", metavar="HOST:PORT",
              help="The business Kafka: ask it live for the groups' committed offsets (lost_in_broker vs "
                   "pending_in_broker, lost_in_consumer vs in_flight).")
@store_option
@json_option
@handle_errors
def trace_msg(msg_id: str, groups: tuple[str, ...], topic_groups: bool, bootstrap: str | None,
              store_url: str | None, as_json: bool) -> None:
    """Show where message MSG_ID went: its timeline, its verdict per consumer group and the remedy.

    The groups judged: those seen for the message, those a `msgtrace reconcile` run judged it for,
    --group, and with --topic-groups those receiving from its topic around its time.
    Exit status: 0 delivered to every expected group, 1 not, 3 unknown id, 2 error.
    """
    from tracer.analysis.judge import judge_message
    from tracer.store import Store

    if not msg_id:
        raise click.UsageError("MSG_ID must not be empty")
    with Store(store_url) as store, store.session():
        events = store.select_events(msg_id)
        if not events and (capped := cap_msg_id(msg_id)) != msg_id:  # the hooks cap ids over 1024 characters
            events = store.select_events(capped)
            if events:
                msg_id = capped
        verdicts = judge_message(store, msg_id, groups, bootstrap=bootstrap, events=events,
                                 topic_groups_window_s=3600 if topic_groups else 0) if events else []
        similar = similar_ids(store, msg_id) if not events else []
    delivered = bool(verdicts) and all(v.verdict == "delivered" for v in verdicts)
    code = EXIT_UNKNOWN if not events else (EXIT_OK if delivered else EXIT_LOST)
    if as_json:
        import orjson

        doc = {"msg_id": msg_id, "verdicts": [verdict_json(v) for v in verdicts],
               "events": [e.to_dict() for e in events]}
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        if not events and similar:
            err.print("unknown message id; ids with the same prefix: " + ", ".join(repr(s) for s in similar))
        sys.exit(code)
    from rich.markup import escape

    if not events:
        out.print(f"no events for message id {escape(repr(msg_id))}")
        if similar:
            out.print("ids with the same prefix:")
            for s in similar:
                out.print(f"  {escape(s)}")
        sys.exit(code)
    trace_ids = sorted({e.trace_id for e in events if e.trace_id})
    head = f"[bold]{escape(msg_id)}[/]: {len(events)} events"
    if trace_ids:
        head += f", trace id {', '.join(trace_ids)}"
    out.print(head)
    out.print(timeline_table(events))
    print_verdicts(verdicts)
    sys.exit(code)

