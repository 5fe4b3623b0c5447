"""``msgtrace reconcile``: the nightly job. A thin click layer over :mod:`tracer.analysis.reconcile`
(ClickHouse does the heavy work); the window options and report writers are shared with
``msgtrace incident`` (:mod:`tracer.cli.incident`).
"""
from __future__ import annotations

import html
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tracer import verdicts as V
from tracer.cli.util import EXIT_ERROR, EXIT_LOST, EXIT_OK, err, handle_errors, json_option, out, store_option
from tracer.errors import ConfigError

if TYPE_CHECKING:
    from rich.table import Table

    from tracer.analysis.expected import ExpectedSource

F = TypeVar("F", bound=Callable[..., Any])
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|min|h|d)?\s*$")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, None: 1}


# --- time options -------------------------------------------------------------------

def parse_duration(text: str, what: str) -> int:
    """Seconds from "600", "10m", "1h", "30s", "1d"."""
    m = _DURATION_RE.match(text or "")
    if not m:
        raise ConfigError(f"invalid {what} {text!r}: use a number of seconds or e.g. 30s, 10m, 1h, 1d")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def parse_tz(name: str | None) -> tzinfo:
    if not name or name.upper() in ("UTC", "Z"):
        return UTC
    if name.lower() == "local":
        return datetime.now().astimezone().tzinfo or UTC
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {name!r} (use e.g. UTC, local, Europe/Berlin, Asia/Shanghai)") from None


def parse_time(text: str, tz: tzinfo, what: str) -> tuple[datetime, bool]:
    """An ISO 8601 time or date; naive values are in ``tz``. Returns (aware datetime, was a date)."""
    t = (text or "").strip()
    try:
        if len(t) == 10 and t[4] == "-" and t[7] == "-":
            d = date.fromisoformat(t)
            return datetime(d.year, d.month, d.day, tzinfo=tz), True
        dt = datetime.fromisoformat(t.replace("z", "Z").replace(" ", "T", 1))
    except (ValueError, IndexError):
        raise ConfigError(f"invalid {what} {text!r}: use ISO 8601, e.g. 2026-11-21T00:00:00Z or 2026-11-21") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=tz)), False


def to_us(dt: datetime) -> int:
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


@dataclass(slots=True)
class Window:
    from_us: int
    to_us: int


def resolve_window(t_from: str | None, t_to: str | None, yesterday: bool, tz_name: str | None,
                   now: datetime | None = None) -> Window:
    """--from/--to (ISO 8601 times or dates) or --yesterday, in --tz (default UTC)."""
    tz = parse_tz(tz_name)
    now = now or datetime.now(UTC)
    if yesterday:
        if t_from or t_to:
            raise ConfigError("--yesterday cannot be combined with --from/--to")
        today = now.astimezone(tz).date()
        start = datetime(today.year, today.month, today.day, tzinfo=tz)
        y = today - timedelta(days=1)
        return Window(to_us(datetime(y.year, y.month, y.day, tzinfo=tz)), to_us(start))
    if not t_from:
        raise ConfigError("give the window: --from TIME [--to TIME], or --yesterday")
    start, was_date = parse_time(t_from, tz, "--from")
    if t_to:
        end, end_date = parse_time(t_to, tz, "--to")
    else:
        end = start + timedelta(days=1) if was_date else now
    w = Window(to_us(start), to_us(end))
    if w.to_us <= w.from_us:
        raise ConfigError(f"empty window: --to {end.isoformat()} is not after --from {start.isoformat()}")
    return w


# --- shared options --------------------------------------------------------------------

def window_options(fn: F) -> F:
    fn = click.option("--tz", "tz_name", default="UTC", show_default=True, envvar="MSGTRACE_TZ",
                      help="Time zone for dates and times without an offset (e.g. Asia/Shanghai, local).")(fn)
    fn = click.option("--yesterday", is_flag=True, help="The window is yesterday (00:00 to 00:00 in --tz).")(fn)
    fn = click.option("--to", "t_to", metavar="TIME",
                      help="Window end, exclusive (default: a day after a --from date, else now).")(fn)
    fn = click.option("--from", "t_from", metavar="TIME",
                      help="Window start: ISO 8601 time (2026-11-21T00:00:00Z) or date (2026-11-21).")(fn)
    fn = click.option("--grace", default="10m", show_default=True, metavar="DURATION",
                      help="How late a stage may arrive after the window's end (e.g. 600, 10m, 1h).")(fn)
    fn = click.option("--lookback", default="1d", show_default=True, metavar="DURATION",
                      help="How far before the window to read events of messages judged in it.")(fn)
    fn = click.option("--group", "groups", multiple=True, metavar="GROUP",
                      help="Consumer group to judge (repeatable); default: the groups seen receiving from "
                           "each topic in the window.")(fn)
    return fn


def _progress_ctx(enabled: bool) -> AbstractContextManager[Callable[[str], None]]:
    """A status line on stderr for long runs (only on a terminal); yields an update(text) function."""
    import contextlib

    @contextlib.contextmanager
    def ctx() -> Iterator[Callable[[str], None]]:
        if not enabled or not err.is_terminal:
            yield lambda text: None
            return
        with err.status("reconciling") as st:
            yield lambda text: st.update(text)

    return ctx()


def _expected_source(expected: str | None, column: str | None, sql: str | None, dsn: str | None,
                     time_column: str | None = None, tz_name: str | None = None) -> ExpectedSource | None:
    if expected is None and sql is None:
        if column or dsn or time_column:
            raise ConfigError("--expected-column/--expected-time-column/--expected-dsn need --expected or "
                              "--expected-sql")
        return None
    from tracer.analysis.expected import ExpectedSource

    return ExpectedSource(path=expected, column=column, sql=sql, dsn=dsn, time_column=time_column,
                          tz=parse_tz(tz_name))


# --- rendering ---------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{x * 100:.4f}%" if x and x < 0.0001 else f"{x * 100:.2f}%"


def summary_table(res: Any) -> Table:
    from rich.table import Table

    t = Table(title="verdicts by topic and consumer group")
    for c in ("verdict", "lost?", "topic", "group", "pairs"):
        t.add_column(c, justify="right" if c == "pairs" else "left")
    for (v, topic, g), n in sorted(res.counts.items(), key=lambda kv: (V.VERDICTS.index(kv[0][0]), kv[0][1:])):
        style = "green" if v == V.DELIVERED else ("red" if v in V.LOST else "yellow")
        t.add_row(f"[{style}]{v}[/]", V.LOST_LABEL.get(v, ""), _esc(topic), _esc(g) or "-", str(n))
    return t


def _esc(s: str) -> str:
    from rich.markup import escape

    return escape(s)


def messages_table(rows: list[Any], title: str) -> Table:
    from rich.table import Table

    t = Table(title=title)
    for c in ("msg_id", "group", "topic", "verdict", "stopped at", "flags", "evidence"):
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(_esc(r.msg_id), _esc(r.consumer_group) or "-", _esc(r.topic), r.verdict, r.stopped_at,
                  ", ".join(r.flags), _esc(r.evidence))
    return t


def print_result(res: Any, limit: int | None) -> None:
    w = res.to_json()["window"]
    out.print(f"[bold]reconcile[/] run {res.run_id}: window {w['from']} .. {w['to']} "
              f"(grace {res.grace_s} s, events until {w['judged_until']})")
    if res.expected_count:
        out.print(f"expected ids loaded: {res.expected_count}")
    if not res.total:
        out.print("no messages in the window")
        return
    out.print(summary_table(res))
    s = res.summary
    out.print("  ".join(f"{v}: {n}" for v, n in s.items()))
    colour = "red" if res.lost else "green"
    out.print(f"pairs judged: {res.total}, lost: [{colour} bold]{res.lost}[/] (loss rate {_pct(res.loss_rate)})")
    if res.seq_gaps:
        out.print(f"[yellow]emitters with seq gaps: {len(res.seq_gaps)} "
                  f"({sum(g.missing for g in res.seq_gaps)} audit events missing)[/]")
    if res.audit_gaps:
        out.print(f"[yellow]audit gaps: {res.audit_gaps} pairs (audit_gap: the audit lost their events; not counted "
                  "as lost)[/]")
    listed = [r for r in res.rows if r.verdict != V.DELIVERED or r.flags]
    if listed:
        shown = listed if limit is None else listed[:limit]
        more = "" if len(shown) == len(listed) else f" (first {len(shown)} of {len(listed)}; --all for every one)"
        out.print(messages_table(shown, f"messages not plainly delivered{more}"))
        remedies = sorted({r.verdict for r in listed if r.remedy}, key=V.VERDICTS.index)
        for v in remedies:
            out.print(f"[bold]{v}[/]: {V.REMEDY[v]}")


def result_markdown(res: Any) -> str:
    j = res.to_json()
    w = j["window"]
    lines = [f"# msgtrace reconcile {res.run_id}", "",
             f"Window {w['from']} .. {w['to']}, grace {res.grace_s} s, events until {w['judged_until']}.", "",
             f"Pairs judged: {res.total}; lost: {res.lost} (loss rate {_pct(res.loss_rate)}).", "",
             "| verdict | lost? | topic | group | pairs |", "|---|---|---|---|---:|"]
    for c in j["by_topic_group"]:
        lines.append(f"| {c['verdict']} | {V.LOST_LABEL.get(c['verdict'], '')} | {_md(c['topic'])} | "
                     f"{_md(c['consumer_group']) or '-'} | {c['count']} |")
    if res.rows:
        lines += ["", "## Messages not plainly delivered", "",
                  "| msg_id | group | topic | verdict | stopped at | flags | evidence |",
                  "|---|---|---|---|---|---|---|"]
        for r in res.rows:
            lines.append(f"| {_md(r.msg_id)} | {_md(r.consumer_group)} | {_md(r.topic)} | {r.verdict} | "
                         f"{r.stopped_at} | {', '.join(r.flags)} | {_md(r.evidence)} |")
        lines += ["", "## Remedies", ""]
        for v in sorted({r.verdict for r in res.rows if r.remedy}, key=V.VERDICTS.index):
            lines.append(f"- **{v}**: {V.REMEDY[v]}")
    return "\n".join(lines) + "\n"


def _md(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def result_html(res: Any) -> str:
    j = res.to_json()
    w = j["window"]
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>msgtrace reconcile {e(res.run_id)}</title>",
             "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:2px 6px}.lost{color:#b00}</style></head><body>",
             f"<h1>msgtrace reconcile {e(res.run_id)}</h1>",
             f"<p>Window {e(w['from'])} .. {e(w['to'])}, grace {res.grace_s} s. Pairs judged: {res.total}; "
             f"lost: <b class='lost'>{res.lost}</b> (loss rate {_pct(res.loss_rate)}).</p>",
             "<table><tr><th>verdict</th><th>lost?</th><th>topic</th><th>group</th><th>pairs</th></tr>"]
    for c in j["by_topic_group"]:
        parts.append(f"<tr><td>{e(c['verdict'])}</td><td>{e(V.LOST_LABEL.get(c['verdict'], ''))}</td>"
                     f"<td>{e(c['topic'])}</td><td>{e(c['consumer_group'])}</td><td>{c['count']}</td></tr>")
    parts.append("</table>")
    if res.rows:
        parts.append("<h2>Messages not plainly delivered</h2><table><tr><th>msg_id</th><th>group</th><th>topic</th>"
                     "<th>verdict</th><th>stopped at</th><th>flags</th><th>evidence</th><th>remedy</th></tr>")
        for r in res.rows:
            parts.append(f"<tr><td>{e(r.msg_id)}</td><td>{e(r.consumer_group)}</td><td>{e(r.topic)}</td>"
                         f"<td>{e(r.verdict)}</td><td>{e(r.stopped_at)}</td><td>{e(', '.join(r.flags))}</td>"
                         f"<td>{e(r.evidence)}</td><td>{e(r.remedy)}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_out(path: str, res: Any, html_report: str | None = None) -> None:
    """Write the report; ``html_report``: the page of tracer.report (charts), else the plain table."""
    import orjson

    low = path.lower()
    if low.endswith(".json"):
        data = orjson.dumps(res.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n"
    elif low.endswith(".md"):
        data = result_markdown(res)
    elif low.endswith((".html", ".htm")):
        data = html_report if html_report is not None else result_html(res)
    else:
        raise ConfigError(f"--out {path!r}: use a .json, .md or .html file name")
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(data)
    except OSError as e:
        raise ConfigError(f"cannot write --out {path}: {e.strerror}") from None


# --- commands --------------------------------------------------------------------------

@click.command("reconcile")
@window_options
@click.option("--expected", metavar="FILE",
              help="Ids that should have been sent (never_sent): one per line, or a CSV (see "
                   "--expected-column); '-' reads stdin.")
@click.option("--expected-column", metavar="NAME", help="CSV column holding the ids (default msg_id, else the first).")
@click.option("--expected-time-column", metavar="NAME",
              help="CSV column holding the time each id should have been sent (ISO 8601 or epoch; naive times in "
                   "--tz): only ids whose time lies in an audit gap become audit_gap, the rest stay never_sent.")
@click.option("--expected-sql", metavar="QUERY",
              help="Query on the business database whose first column is the ids; a second column, if any, is the "
                   "time each should have been sent (as --expected-time-column).")
@click.option("--expected-dsn", metavar="URL", envvar="MSGTRACE_EXPECTED_DSN",
              help="SQLAlchemy URL of the business database (sqlite:///f.db, postgresql://..., mysql+pymysql://...).")
@click.option("--bootstrap", envvar="MSGTRACE_BUSINESS_KAFKA_BOOTSTRAP", metavar="HOST:PORT",
              help="The business Kafka (where the consumer groups commit): ask it live for the groups' committed "
                   "offsets (lost_in_broker vs pending_in_broker, lost_in_consumer vs in_flight).")
@click.option("--broker-snapshot", metavar="FILE",
              help="The business Kafka's offsets taken elsewhere, as JSON: {\"log_start\": [{\"topic\", "
                   "\"partition\", \"offset\"}], \"committed\": [{\"group\", \"topic\", \"partition\", "
                   "\"offset\"}]}; used like --bootstrap's live reads (expired_in_broker, lost_in_broker).")
@click.option("--limit", default=20, show_default=True, help="How many non-delivered messages to print.")
@click.option("--all", "show_all", is_flag=True, help="Print every non-delivered message.")
@click.option("--out", "out_path", metavar="FILE", help="Also write the report to FILE (.json, .md or .html).")
@click.option("--no-write", is_flag=True, help="Do not store the run and its verdicts in ClickHouse.")
@store_option
@json_option
@handle_errors
def reconcile(t_from: str | None, t_to: str | None, yesterday: bool, tz_name: str | None, grace: str,
              lookback: str, groups: tuple[str, ...], expected: str | None, expected_column: str | None,
              expected_time_column: str | None, expected_sql: str | None, expected_dsn: str | None,
              bootstrap: str | None, broker_snapshot: str | None, limit: int,
              show_all: bool, out_path: str | None, no_write: bool, store_url: str | None, as_json: bool) -> None:
    """Judge every message of a window per consumer group; store and print the verdicts.

    The nightly job (cron, systemd timer, Kubernetes CronJob): `msgtrace reconcile --yesterday`.
    Exit status: 0 nothing lost and the audit complete; 1 messages lost (real losses, whatever else);
    2 usage or infrastructure error, or the audit incomplete with no real loss (audit_gap verdicts or
    emitters with seq gaps: the audit lost events; a line on stderr says so; run `msgtrace
    audit-health` and `msgtrace ship --repair`, then reconcile again). A run whose only
    non-delivered verdicts are audit gaps never exits 1.
    """
    from tracer.analysis.reconcile import reconcile as run_reconcile
    from tracer.store import Store

    w = resolve_window(t_from, t_to, yesterday, tz_name)
    grace_s = parse_duration(grace, "--grace")
    lookback_s = parse_duration(lookback, "--lookback")
    source = _expected_source(expected, expected_column, expected_sql, expected_dsn, expected_time_column, tz_name)
    broker = None
    if broker_snapshot:
        if bootstrap:
            raise ConfigError("give --bootstrap (live offsets) or --broker-snapshot (offsets taken elsewhere), "
                              "not both")
        from tracer.analysis.broker import StaticBroker

        broker = StaticBroker.from_json(broker_snapshot)
    with Store(store_url) as store, _progress_ctx(not as_json) as progress:
        res = run_reconcile(store, w.from_us, w.to_us, grace_s, groups=list(groups) or None, expected=source,
                            bootstrap=bootstrap, lookback_s=lookback_s, write=not no_write, progress=progress,
                            broker=broker)
        html_report = None
        if out_path and out_path.lower().endswith((".html", ".htm")):  # the incident report's renderer
            from tracer.report import reconcile_html

            html_report = reconcile_html(store, res, progress)
    if out_path:
        write_out(out_path, res, html_report)
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(res.to_json()).decode() + "\n")
    else:
        print_result(res, None if show_all else limit)
        if out_path:
            out.print(f"report written to {out_path}")
    if res.lost:
        sys.exit(EXIT_LOST)
    if not res.audit_complete:
        missing = sum(g.missing for g in res.seq_gaps)
        err.print(f"audit incomplete: {res.audit_gaps} audit_gap pairs, {len(res.seq_gaps)} emitters with seq gaps "
                  f"({missing} audit events missing); no real loss found. Repair: msgtrace audit-health, then "
                  "msgtrace ship --repair on the emitters' hosts, and reconcile again (exit 2)", markup=False)
        sys.exit(EXIT_ERROR)
    sys.exit(EXIT_OK)
