"""``msgtrace incident``: what happened in a window, for the people on call (a thin click layer over
:mod:`tracer.analysis.incident`): loss bursts with their cause in words and the ``trace-msg``
commands to drill down, consumer-side and audit signals, the stage funnel over time and hop
latencies; ``--html FILE`` writes the same as one self-contained report with charts.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from tracer.cli.reconcile import (
    _esc,
    _expected_source,
    _pct,
    parse_duration,
    resolve_window,
    window_options,
)
from tracer.cli.util import (
    EXIT_LOST,
    EXIT_OK,
    handle_errors,
    json_option,
    out,
    progress_display,
    store_option,
)
from tracer.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
_HOP_LABELS = {"sent_acked": "sent→acked", "acked_received": "acked→received", "received_done": "received→done",
               "sent_done": "sent→done"}


def _lat(q: Any) -> str:
    def f(us: Any) -> str:
        if us is None:
            return "-"
        return f"{us / 1000:.1f}ms" if us < 10_000_000 else f"{us / 1e6:.1f}s"

    return " / ".join(f(getattr(q, k)) for k in ("p50", "p90", "p99"))


def fmt_minute(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M")


def print_report(rep: Any, top: int) -> None:
    from rich.table import Table

    from tracer import verdicts as V
    from tracer.analysis.evidence import fmt_us

    res = rep.result
    w = res.window_json()
    out.print(f"[bold]incident[/] window {w['from']} .. {w['to']}: pairs {res.total}, lost {res.lost} "
              f"(loss rate {_pct(res.loss_rate)})")
    if rep.bursts:
        shown = rep.bursts[:top]
        more = "" if len(shown) == len(rep.bursts) else f" (first {len(shown)} of {len(rep.bursts)}; --top)"
        out.print(f"[bold]loss bursts{more}[/]")
        for i, b in enumerate(shown, 1):
            colour = "red" if b.lost else "yellow"
            out.print(f"[bold]{i}.[/] [{colour} bold]{b.verdict}[/] ({b.cause.value}): {_esc(b.text)}")
            if V.REMEDY.get(b.verdict):
                out.print(f"   remedy: {_esc(V.REMEDY[b.verdict])}")
            for c in b.commands()[:3]:
                out.print(f"   [dim]$[/] {_esc(c)}")
    elif res.total:
        out.print("[green]every message of the window was delivered[/]")
    else:
        out.print("no messages in the window")
    sig = rep.signals
    if sig.stopped or sig.rebalances or sig.commits_without_outcome or sig.audit_gaps:
        out.print("[bold]signals[/]")
        for i in sig.stopped:
            what = "crashed mid-work" if i.crashed else "stopped"
            left = f", left {i.left_behind} messages with no outcome" if i.left_behind else ""
            repl = f", replaced by {i.replaced_by}" if i.replaced_by else ""
            out.print(f"  instance {_esc(i.service)} {_esc(i.name)} {what}: last event {fmt_us(i.last_us)[11:23]} "
                      f"({_esc(i.last_stage)}){left}{repl}")
        for r in sig.rebalances:
            out.print(f"  rebalance in {_esc(r.group)}: {r.messages} records of {_esc(r.topic)}/{r.partition} received "
                      f"by {_esc(r.from_instance)} then by {_esc(r.to_instance)}")
        if sig.same_instance_redeliveries:
            out.print(f"  {sig.same_instance_redeliveries} records received again by the same instance")
        for (g, inst), n in sorted(sig.commits_without_outcome.items()):
            out.print(f"  {n} commits without a business outcome in {_esc(g)} on {_esc(inst)}")
        for gap in sig.audit_gaps:
            out.print(f"  [yellow]audit gap[/]: emitter {_esc(gap.gap.emitter_id)} "
                      f"({_esc(gap.owner) or 'unknown instance'}) is missing {gap.gap.missing} events")
    funnel = rep.funnel
    if funnel.totals:
        t = Table(title="stage funnel: messages reaching each stage")
        cols = ("topic", "group", "messages", "sent", "send_failed", "broker_acked", "received",
                "offset_committed", "business_done", "business_failed", "dead_lettered", "redelivered")
        for c in cols:
            t.add_column(c.replace("_", " "), justify="left" if c in ("topic", "group") else "right")
        for row in funnel.totals:
            d = row.to_json()
            t.add_row(_esc(row.topic), _esc(row.consumer_group) or "-", *[str(d[c]) for c in cols[2:]])
        out.print(t)
        if funnel.partings:
            out.print(f"[bold]where the counts part[/] (per {funnel.bucket_s} s bucket)")
            for p in funnel.partings[:top]:
                j = p.to_json()
                out.print(f"  {_esc(p.topic)} {_esc(p.consumer_group) or '-'}: {p.missing} reached {p.before} but not "
                          f"{p.after}, {j['from'][11:19]} .. {j['to'][11:19]}")
        t = Table(title="hop latencies p50 / p90 / p99")
        t.add_column("topic")
        t.add_column("group")
        for label in _HOP_LABELS.values():
            t.add_column(label)
        for row in funnel.totals:
            t.add_row(_esc(row.topic), _esc(row.consumer_group) or "-", *[_lat(row.latency[h]) for h in _HOP_LABELS])
        out.print(t)


def expected_options(fn: F) -> F:
    fn = click.option("--expected-dsn", metavar="URL", envvar="MSGTRACE_EXPECTED_DSN",
                      help="SQLAlchemy URL of the business database for --expected-sql.")(fn)
    fn = click.option("--expected-sql", metavar="QUERY",
                      help="Query on the business database whose first column is the ids.")(fn)
    fn = click.option("--expected-column", metavar="NAME", help="CSV column holding the ids.")(fn)
    fn = click.option("--expected", metavar="FILE",
                      help="Ids that should have been sent (never_sent): one per line or a CSV; '-' reads stdin.")(fn)
    return fn


@click.command("incident")
@window_options
@expected_options
@click.option("--bootstrap", envvar="MSGTRACE_BUSINESS_KAFKA_BOOTSTRAP", metavar="HOST:PORT",
              help="The business Kafka: ask it live for committed and log start offsets (as reconcile does).")
@click.option("--gap", default="5m", show_default=True, metavar="DURATION",
              help="A quiet stretch this long between two losses of one kind ends a burst.")
@click.option("--bucket", default="1m", show_default=True, metavar="DURATION",
              help="Funnel bucket (coarsened to keep a long window at most 1440 buckets).")
@click.option("--html", "html_path", metavar="FILE", help="Also write a self-contained HTML report with charts.")
@click.option("--top", default=15, show_default=True, help="How many bursts to print.")
@store_option
@json_option
@handle_errors
def incident(t_from: str | None, t_to: str | None, yesterday: bool, tz_name: str | None, grace: str,
             lookback: str, groups: tuple[str, ...], expected: str | None, expected_column: str | None,
             expected_sql: str | None, expected_dsn: str | None, bootstrap: str | None, gap: str, bucket: str,
             html_path: str | None, top: int, store_url: str | None, as_json: bool) -> None:
    """What happened in a window: loss bursts with their cause and the trace-msg commands for them,
    instances that stopped, rebalances, audit gaps, the stage funnel over time and hop latencies.

    Exit status: 0 nothing lost, 1 messages lost, 2 error.
    """
    from tracer.analysis.incident import analyse_incident
    from tracer.store import Store

    w = resolve_window(t_from, t_to, yesterday, tz_name)
    gap_s = parse_duration(gap, "--gap")
    bucket_s = parse_duration(bucket, "--bucket")
    if bucket_s < 1 or gap_s < 1:
        raise ConfigError("--gap and --bucket must be at least 1 s")
    if html_path and not html_path.lower().endswith((".html", ".htm")):
        raise ConfigError(f"--html {html_path!r}: use a .html file name")
    source = _expected_source(expected, expected_column, expected_sql, expected_dsn)
    with Store(store_url) as store, progress_display(not as_json) as progress:
        rep = analyse_incident(store, w.from_us, w.to_us, parse_duration(grace, "--grace"),
                               groups=list(groups) or None, lookback_s=parse_duration(lookback, "--lookback"),
                               progress=progress, expected=source, bootstrap=bootstrap, gap_s=gap_s,
                               bucket_s=bucket_s)
    if html_path:
        from tracer.report import write_report

        write_report(html_path, rep)
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(rep.to_json(top=None)).decode() + "\n")
    else:
        print_report(rep, top)
        if html_path:
            out.print(f"report written to {html_path}")
    sys.exit(EXIT_LOST if rep.result.lost else EXIT_OK)
