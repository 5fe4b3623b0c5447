"""``trace-msg <id>``: one message's timeline across stages, services and groups, with its verdicts.

Kept light on imports (the whole command should take well under a second): the reconciler's SQL does
the judging; this module only prints.
"""
from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from tracer.cli.util import EXIT_LOST, EXIT_OK, EXIT_UNKNOWN, err, handle_errors, json_option, out, store_option
from tracer.events import Event, cap_msg_id

if TYPE_CHECKING:
    from rich.table import Table

_SEPARATORS = ":-_./#|@ "


def fmt_ts(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


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


def timeline_table(events: list[Event]) -> Table:
    """The events as given (trace-msg passes them in causal order: tracer.analysis.timeline); +Δ is
    each row's stamp minus the previous row's (negative where two clocks disagree)."""
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


def _lookup(store: Any, key: str | None, at: str | None, topic: str | None, t_from: str | None, t_to: str | None,
            tz_name: str | None, limit: int) -> tuple[str, list[Any]]:
    """Messages found without a msg_id (tracer.analysis.lookup): a description of the question and
    the matches (at most ``limit``)."""
    from tracer.analysis import lookup as L

    if sum(x is not None for x in (key, at)) > 1 or (at is not None and topic is not None):
        raise click.UsageError("give one of --key, --at TOPIC/PARTITION@OFFSET, or --topic with --from/--to")
    if (t_from or t_to) and (key is not None or at is not None or not topic):
        raise click.UsageError("--from/--to go with --topic (and no --key or --at)")
    if key is None and at is None and not t_from:
        raise click.UsageError("--topic needs --from (and --to), or --key")
    if L.ensure_lookup(store, progress=lambda text: err.print(f"[dim]{text}[/]")):
        err.print("[dim]lookup tables built; they are kept up to date from now on[/]")
    if at is not None:
        t, p, o = L.parse_at(at)
        return f"stored at {t}/{p}@{o}", L.describe(store, L.by_offset(store, t, p, o, limit))
    if key is not None:
        where = f" on {topic}" if topic else ""
        return f"with key {key!r}{where}", L.describe(store, L.by_key(store, key, topic, limit))
    from datetime import datetime, timedelta

    from tracer.cli.reconcile import parse_time, parse_tz, to_us

    tz = parse_tz(tz_name)
    start, was_date = parse_time(t_from or "", tz, "--from")
    end = parse_time(t_to, tz, "--to")[0] if t_to else (start + timedelta(days=1) if was_date else
                                                       datetime.now(UTC))
    if end <= start:
        raise click.UsageError("--to must be after --from")
    return (f"sent to {topic} in [{start.isoformat()}, {end.isoformat()})",
            L.describe(store, L.by_time(store, topic or "", to_us(start), to_us(end), limit)))


def print_matches(question: str, found: list[Any], limit: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    from tracer.verdicts import DELIVERED, LOST

    more = f" (the first {limit}; --limit for more)" if len(found) >= limit else ""
    t = Table(title=f"{len(found)} messages {escape(question)}{more}")
    for c in ("time (UTC)", "msg_id", "topic/p@offset", "key", "verdicts"):
        t.add_column(c, overflow="fold")
    for m in found:
        vs = ", ".join(f"[{'green' if v.verdict == DELIVERED else ('red' if v.verdict in LOST else 'yellow')}]"
                       f"{escape(v.consumer_group or '-')}: {v.verdict}[/]" for v in m.verdicts) or "-"
        t.add_row(fmt_ts(m.ts_us), escape(m.msg_id), escape(m.where), escape(m.key), vs)
    out.print(t)
    if found:
        out.print(f"drill down: trace-msg {escape(_quote(found[0].msg_id))}")


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


@click.command("trace-msg")
@click.argument("msg_id", required=False)
@click.option("--key", metavar="KEY", help="Find the messages sent with this key (no msg_id needed).")
@click.option("--at", "at", metavar="TOPIC/PARTITION@OFFSET",
              help="Find the message(s) the broker stored at this offset (several if offsets were reused).")
@click.option("--topic", metavar="TOPIC", help="With --from/--to: the messages sent to TOPIC then; with --key: "
                                              "only on TOPIC.")
@click.option("--from", "t_from", metavar="TIME", help="With --topic: from this time (ISO 8601, or a date).")
@click.option("--to", "t_to", metavar="TIME", help="With --topic: until this time (exclusive; default now).")
@click.option("--tz", "tz_name", default="UTC", show_default=True, envvar="MSGTRACE_TZ",
              help="Time zone of --from/--to without an offset.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000),
              help="At most this many messages are listed and judged.")
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
def trace_msg(msg_id: str | None, key: str | None, at: str | None, topic: str | None, t_from: str | None,
              t_to: str | None, tz_name: str | None, limit: int, groups: tuple[str, ...], topic_groups: bool,
              bootstrap: str | None, store_url: str | None, as_json: bool) -> None:
    """Show where message MSG_ID went: its timeline, its verdict per consumer group and the remedy.

    Without a msg_id: --key K, --at TOPIC/PARTITION@OFFSET, or --topic T --from A --to B find the
    messages (through small lookup tables, built on first use) and list them with their verdicts; a
    --key or --at that finds one message shows it in full.
    The groups judged: those seen for the message, those a `msgtrace reconcile` run judged it for,
    --group, and with --topic-groups those receiving from its topic around its time.
    Exit status: 0 delivered to every expected group, 1 not, 3 unknown id (or nothing found), 2 error.
    """
    from tracer.analysis.judge import judge_message
    from tracer.store import Store

    lookup = key is not None or at is not None or topic is not None or bool(t_from or t_to)
    if lookup and msg_id:
        raise click.UsageError("give MSG_ID or a lookup (--key, --at, --topic), not both")
    if not lookup and not msg_id:
        raise click.UsageError("give MSG_ID, or find messages with --key, --at or --topic --from/--to")
    if lookup:
        with Store(store_url) as store, store.session():
            question, found = _lookup(store, key, at, topic, t_from, t_to, tz_name, limit)
            if len(found) == 1 and (key is not None or at is not None):
                msg_id = found[0].msg_id  # one message: shown in full below
                if not as_json:
                    out.print(f"[dim]1 message {question}:[/]")
            else:
                for m in found:
                    m.verdicts = judge_message(store, m.msg_id, groups, bootstrap=bootstrap)
        if not msg_id:
            bad = any(v.verdict != "delivered" for m in found for v in m.verdicts)
            code = EXIT_UNKNOWN if not found else (EXIT_LOST if bad else EXIT_OK)
            if as_json:
                import orjson

                sys.stdout.write(orjson.dumps({"query": question, "matches": [m.to_json() for m in found]}).decode()
                                 + "\n")
            else:
                print_matches(question, found, limit)
            sys.exit(code)
    assert msg_id is not None
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
    from tracer.analysis.timeline import causal

    line = causal(events)  # causes before effects where the events prove it; the clocks' skew
    events = line.events
    if as_json:
        import orjson

        doc = {"msg_id": msg_id, "verdicts": [verdict_json(v) for v in verdicts],
               "events": [e.to_dict() for e in events], "skew": [s.to_json() for s in line.skews]}
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
    for skew in line.skews:
        out.print(f"[yellow]clock skew[/]: {escape(skew.text())}")
    if line.reordered:
        out.print("[dim]ordered by causality (each process's seq, acks before receipts of their offset, receipts "
                  "before the group's later stages); times are as each service stamped them[/]")
    print_verdicts(verdicts)
    sys.exit(code)

