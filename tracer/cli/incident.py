"""``msgtrace incident``: where losses cluster in a window (a thin click layer over
:mod:`tracer.analysis.incident`)."""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Any

import click

from tracer.cli.reconcile import _esc, _pct, _progress_ctx, parse_duration, resolve_window, window_options
from tracer.cli.util import EXIT_LOST, EXIT_OK, handle_errors, json_option, out, store_option


def _lat(q: dict[str, Any]) -> str:
    def f(us: Any) -> str:
        if us is None:
            return "-"
        return f"{us / 1000:.1f}ms" if us < 10_000_000 else f"{us / 1e6:.1f}s"

    return " / ".join(f(q[k]) for k in ("p50", "p90", "p99"))


def print_report(rep: Any, top: int) -> None:
    from rich.table import Table

    res = rep.result
    w = res.window_json()
    out.print(f"[bold]incident[/] window {w['from']} .. {w['to']}: pairs {res.total}, lost {res.lost} "
              f"(loss rate {_pct(res.loss_rate)})")
    if rep.clusters:
        t = Table(title=f"where messages stopped (top {min(top, len(rep.clusters))} of {len(rep.clusters)} clusters)")
        for c in ("verdict", "stopped at", "topic", "partition", "host/pid", "minute (UTC)", "pairs"):
            t.add_column(c, justify="right" if c == "pairs" else "left")
        for (v, s, topic, p, host, minute), n in rep.clusters[:top]:
            t.add_row(v, s, _esc(topic), str(p) if p >= 0 else "-", _esc(host),
                      fmt_minute(minute), str(n))
        out.print(t)
    else:
        out.print("[green]every message of the window was delivered[/]")
    if rep.funnel:
        t = Table(title="stage funnel: messages reaching each stage")
        cols = ("topic", "group", "messages", "sent", "send_failed", "broker_acked", "received",
                "offset_committed", "business_done", "business_failed", "dead_lettered")
        for c in cols:
            t.add_column(c.replace("_", " "), justify="left" if c in ("topic", "group") else "right")
        for row in rep.funnel:
            t.add_row(_esc(row["topic"]), _esc(row["consumer_group"]) or "-", *[str(row[c]) for c in cols[2:]])
        out.print(t)
        t = Table(title="hop latencies p50 / p90 / p99")
        t.add_column("topic")
        t.add_column("group")
        hops = {"sent_acked": "sent→acked", "acked_received": "acked→received", "received_done": "received→done",
                "sent_done": "sent→done"}
        for label in hops.values():
            t.add_column(label)
        for row in rep.funnel:
            t.add_row(_esc(row["topic"]), _esc(row["consumer_group"]) or "-",
                      *[_lat(row[f"latency_{h}_us"]) for h in hops])
        out.print(t)


def fmt_minute(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


@click.command("incident")
@window_options
@click.option("--top", default=15, show_default=True, help="How many loss clusters to show.")
@store_option
@json_option
@handle_errors
def incident(t_from: str | None, t_to: str | None, yesterday: bool, tz_name: str | None, grace: str,
             lookback: str, groups: tuple[str, ...], top: int, store_url: str | None, as_json: bool) -> None:
    """Where losses cluster in a window: stage x topic x partition x host x minute, the stage funnel
    and hop latencies.

    Exit status: 0 nothing lost, 1 messages lost, 2 error.
    """
    from tracer.analysis.incident import analyse_incident
    from tracer.store import Store

    w = resolve_window(t_from, t_to, yesterday, tz_name)
    with Store(store_url) as store, _progress_ctx(not as_json) as progress:
        rep = analyse_incident(store, w.from_us, w.to_us, parse_duration(grace, "--grace"), groups=list(groups) or None,
                      lookback_s=parse_duration(lookback, "--lookback"), progress=progress)
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(rep.to_json(top=None)).decode() + "\n")
    else:
        print_report(rep, top)
    sys.exit(EXIT_LOST if rep.result.lost else EXIT_OK)
