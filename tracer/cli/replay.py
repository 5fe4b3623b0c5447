"""``msgtrace replay``: a thin click layer over :func:`tracer.replay.replay`."""
from __future__ import annotations

import sys
from typing import Any, Self

import click

from tracer.cli.reconcile import parse_duration, resolve_window, window_options
from tracer.cli.util import (
    EXIT_LOST,
    EXIT_OK,
    audit_topic_option,
    err,
    handle_errors,
    json_option,
    out,
    store_option,
)
from tracer.errors import ConfigError

SHARED_TOPIC_HELP = (
    "Topic to re-publish to (default: the message's own topic). Kafka delivers a topic's records to every "
    "consumer group subscribed to it, so a message re-published to the shared topic reaches every group "
    "again, also those that already processed it (a second red packet unless they de-duplicate). Give a "
    "retry topic that only the affected group reads.")


def read_ids(path: str | None, ids: tuple[str, ...]) -> list[str] | None:
    """--id values and --ids FILE (one id per line, '-' = stdin, '#' comments); None if neither."""
    if path is None and not ids:
        return None
    out = list(ids)
    if path is not None:
        try:
            if path == "-":
                text = sys.stdin.read()
            else:
                with open(path, encoding="utf-8-sig") as f:
                    text = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read --ids {path}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"--ids {path} is not UTF-8 (byte {e.start})") from None
        out += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not out:
        raise ConfigError(f"--ids {path} holds no ids")
    return list(dict.fromkeys(out))


class _Progress:
    """A rich progress line on stderr (only on a terminal): phases, then a bar while publishing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and err.is_terminal
        self._p: Any = None
        self._task: Any = None

    def __enter__(self) -> Self:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
            )

            self._p = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               console=err, transient=True)
            self._p.start()
            self._task = self._p.add_task("replay", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()

    def __call__(self, text: str, total: int | None = None) -> None:
        if self._p is not None:
            self._p.update(self._task, description=text, total=total, completed=0)

    def advance(self) -> None:
        if self._p is not None:
            self._p.advance(self._task)


def _esc(s: str) -> str:
    from rich.markup import escape

    return escape(s)


_STYLE = {"planned": "yellow", "published": "green", "skipped": "red", "failed": "red bold"}


def print_result(res: Any, limit: int | None) -> None:
    from rich.table import Table

    from tracer.replay import Result

    j = res.to_json()
    mode = "[yellow]dry run[/]: nothing is published (--execute does it)" if j["mode"] == "dry_run" else "executed"
    src = f"reconcile run {j['reconcile_run']}" if j["reconcile_run"] else "the messages given"
    win = f" (window {j['window']['from']} .. {j['window']['to']})" if j["window"] else ""
    out.print(f"[bold]replay[/] run {j['replay_run']}, {mode}; verdicts of {src}{win}; by {_esc(j['user'])}@"
              f"{_esc(j['host'])}")
    items = res.items
    if not items:
        out.print("[green]nothing to replay[/]: no lost message matches the filters")
    else:
        shown = items if limit is None else items[:limit]
        more = "" if len(shown) == len(items) else f" (first {len(shown)} of {len(items)}; --all for every one)"
        t = Table(title=f"messages{more}")
        for c in ("msg_id", "groups", "verdict", "from", "to", "result", "why"):
            t.add_column(c, overflow="fold")
        for i in shown:
            r = i.result.value
            label = "would publish" if (r == "planned" and j["mode"] == "dry_run") else r
            if i.published is not None:
                label += f" {i.published.partition}@{i.published.offset}"
            why = "; ".join(filter(None, [i.reason, *i.notes]))
            t.add_row(_esc(i.msg_id), _esc(", ".join(i.groups)) or "-", ", ".join(i.verdicts), _esc(i.from_where()),
                      _esc(i.target_topic) or "-", f"[{_STYLE[r]}]{label}[/]", _esc(why))
        out.print(t)
    c = j["counts"]
    skipped = ", ".join(f"{k}: {n}" for k, n in j["skipped_by_reason"].items())
    failed = ", ".join(f"{k}: {n}" for k, n in j["failed_by_reason"].items())
    out.print(f"planned: {c[Result.PLANNED]}  published: [green]{c[Result.PUBLISHED]}[/]  "
              f"skipped: {c[Result.SKIPPED]}{f' ({skipped})' if skipped else ''}  "
              f"failed: {c[Result.FAILED]}{f' ({failed})' if failed else ''}")
    if j["audit_events_shipped"] is False:
        out.print("[yellow]the replay's own audit events are not shipped yet: they stay in the spool "
                  "(`msgtrace ship` sends them)[/]")
    lost = j["still_lost"]
    colour = "red" if lost else "green"
    out.print(f"still lost: [{colour} bold]{lost}[/]" + (" (reconcile again after the group processed the "
                                                         "replays)" if c[Result.PUBLISHED] else ""))


@click.command("replay")
@click.option("--run", "run_id", metavar="ID",
              help="Replay the verdicts of this stored reconcile run ('latest': the newest run).")
@window_options
@click.option("--verdict", "verdicts", multiple=True, metavar="VERDICT",
              help="Only these verdicts (repeatable). Default: every lost one (never_sent, send_failed, unacked, "
                   "lost_in_broker, expired_in_broker, lost_in_consumer, failed_and_committed, in_flight past the "
                   "grace, dead_lettered).")
@click.option("--topic", "topics", multiple=True, metavar="TOPIC", help="Only messages of this topic (repeatable).")
@click.option("--id", "ids", multiple=True, metavar="MSG_ID",
              help="Only this message (repeatable); without --run or --from it is judged now.")
@click.option("--ids", "ids_file", metavar="FILE", help="Only the message ids in FILE (one per line; '-' = stdin).")
@click.option("--bootstrap", envvar="MSGTRACE_BUSINESS_KAFKA_BOOTSTRAP", metavar="HOST:PORT",
              help="The business Kafka: where lost messages are read (topic at its offset, DLQ) and re-published. "
                   "Env: MSGTRACE_BUSINESS_KAFKA_BOOTSTRAP.")
@click.option("--to-topic", metavar="TOPIC", help=SHARED_TOPIC_HELP)
@click.option("--source-sql", metavar="QUERY",
              help="Rebuild messages the broker does not have (never_sent, send_failed, unacked, lost_in_broker, "
                   "expired_in_broker, or below the log start) from the source of truth: a query returning id, key "
                   "and payload (optionally topic), with the ids bound as :ids (WHERE id IN :ids) or :id, e.g. "
                   "\"SELECT msg_id AS id, key, payload FROM outbox WHERE msg_id IN :ids\". Never pasted into the SQL.")
@click.option("--source-dsn", envvar="MSGTRACE_SOURCE_DSN", metavar="URL",
              help="SQLAlchemy URL of the business database (sqlite:///f.db, postgresql://..., mysql+pymysql://...). "
                   "Env: MSGTRACE_SOURCE_DSN.")
@click.option("--execute", is_flag=True,
              help="Re-publish. Without it, a dry run: prints per message what would be re-published from where; "
                   "reads only, never connects a producer.")
@click.option("--rate", default=100.0, show_default=True, metavar="PER_S",
              help="At most this many messages re-published per second (0: no limit).")
@click.option("--again", is_flag=True, help="Also replay messages an earlier replay run already re-published.")
@click.option("--dlq-scan-limit", default=50_000, show_default=True, metavar="N",
              help="A DLQ copy whose offset its dead_lettered event does not record is looked for in at most N "
                   "records per DLQ partition, from shortly before it was dead-lettered.")
@click.option("--timeout", "timeout", default="30s", show_default=True, metavar="DURATION",
              help="How long to wait for the broker's acknowledgements.")
@click.option("--note", default="", metavar="TEXT", help="Why (a ticket, an incident): stored with the run.")
@click.option("--audit-bootstrap", envvar="MSGTRACE_KAFKA_BOOTSTRAP", metavar="HOST:PORT",
              help="Audit Kafka for the replay's own events (default: straight into the store). "
                   "Env: MSGTRACE_KAFKA_BOOTSTRAP.")
@audit_topic_option
@click.option("--spool-dir", envvar="MSGTRACE_SPOOL_DIR", metavar="DIR",
              help="Spool of the replay's own events. Env: MSGTRACE_SPOOL_DIR.")
@click.option("--limit", default=100, show_default=True, help="How many messages to print.")
@click.option("--all", "show_all", is_flag=True, help="Print every message.")
@store_option
@json_option
@handle_errors
def replay(run_id: str | None, t_from: str | None, t_to: str | None, yesterday: bool, tz_name: str | None,
           grace: str, lookback: str, groups: tuple[str, ...], verdicts: tuple[str, ...], topics: tuple[str, ...],
           ids: tuple[str, ...], ids_file: str | None, bootstrap: str | None, to_topic: str | None,
           source_sql: str | None, source_dsn: str | None, execute: bool, rate: float, again: bool,
           dlq_scan_limit: int, timeout: str, note: str, audit_bootstrap: str | None, audit_topic: str,
           spool_dir: str | None, limit: int, show_all: bool, store_url: str | None, as_json: bool) -> None:
    """Re-publish lost messages from where they can still be had, with their original msgtrace-id and a
    msgtrace-replay header naming the replay run.

    \b
    Verdicts come from a stored reconcile run (--run), a window judged now (--from/--to, as reconcile;
    stored as a reconcile run), or --id/--ids. From where:
      lost_in_consumer, failed_and_committed, in_flight past the grace: the business topic at the
        message's partition/offset (unless retention deleted it: below the log start);
      dead_lettered: the DLQ topic named by its dead_lettered event;
      never_sent, send_failed, unacked, lost_in_broker, expired_in_broker: the broker does not have it;
        rebuilt from the source of truth (--source-sql/--source-dsn) or skipped with the reason (an acked
        one is first looked for at its offset: used only if its msgtrace-id header proves it is it).
    A dry run unless --execute. A message an earlier replay run re-published is skipped unless --again.
    Every run is stored (replay_runs, replay_messages). Reconcile again once the group processed the
    replays: a replay that was processed makes its message delivered.

    Exit status: 0 nothing left lost, 1 messages still lost (not re-published, or failed), 2 error.
    """
    from tracer.replay import ReplayOptions, Selection, SourceOfTruth
    from tracer.replay import replay as run_replay
    from tracer.store import Store

    sel = Selection(run_id=run_id, grace_s=parse_duration(grace, "--grace"),
                    lookback_s=parse_duration(lookback, "--lookback"), verdicts=list(verdicts),
                    groups=list(groups), topics=list(topics), ids=read_ids(ids_file, ids))
    if t_from or t_to or yesterday:
        w = resolve_window(t_from, t_to, yesterday, tz_name)
        sel.window = (w.from_us, w.to_us)
    if rate < 0:
        raise ConfigError(f"--rate {rate}: give a positive rate, or 0 for no limit")
    if dlq_scan_limit <= 0:
        raise ConfigError("--dlq-scan-limit must be positive")
    if bool(source_sql) != bool(source_dsn):
        raise ConfigError("--source-sql and --source-dsn go together (the query and the business database URL)")
    source = SourceOfTruth(source_sql, source_dsn) if source_sql and source_dsn else None
    opts = ReplayOptions(execute=execute, bootstrap=bootstrap or None, to_topic=to_topic or None, source=source,
                         rate=rate, again=again, dlq_scan_limit=dlq_scan_limit,
                         timeout_s=float(max(1, parse_duration(timeout, "--timeout"))), note=note,
                         audit_bootstrap=audit_bootstrap or None, audit_topic=audit_topic, spool_dir=spool_dir)
    with Store(store_url) as store, _Progress(not as_json) as progress:
        res = run_replay(store, sel, opts, progress=progress, advance=progress.advance)
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(res.to_json()).decode() + "\n")
    else:
        print_result(res, None if show_all else limit)
    sys.exit(EXIT_LOST if res.still_lost else EXIT_OK)

