"""``replay()``: from verdicts to re-published messages, and the run stored.

1. the verdicts: a stored reconcile run (``run_id``), a window judged now through the reconciler
   (stored as a reconcile run too), or explicit ids judged one by one (as ``trace-msg`` does);
2. the plan (:mod:`tracer.replay.plan`): per message, the sources to try or why it is skipped;
   a message an earlier replay run published is skipped unless ``again``;
3. the fetch (:mod:`tracer.replay.fetch`): read-only, a dry run does it too;
4. only with ``execute``: publish (:mod:`tracer.replay.publish`), rate limited, with the replay's
   own audit events;
5. the replay run and its per-message results are stored (:mod:`tracer.replay.runs`), dry runs too.

The chDB store is held only while reading and writing, never while publishing: the replay's tracer
may write its audit events into the same embedded store from its own thread.
"""
from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracer import verdicts as V
from tracer.analysis.reconcile import fmt_us
from tracer.errors import ConfigError, QueryError
from tracer.replay.fetch import Fetcher
from tracer.replay.plan import (
    REPLAYABLE,
    Item,
    PlanOptions,
    Result,
    VerdictRow,
    Why,
    by_message,
    facts_from_events,
    plan_item,
)
from tracer.replay.publish import Publisher
from tracer.replay.runs import (
    ReplayRun,
    RunInfo,
    ensure_schema,
    events_of,
    prior_replays,
    reconcile_run,
    run_verdicts,
    who,
    write_run,
)
from tracer.replay.sources import BusinessKafka, SourceOfTruth
from tracer.store import Store

Progress = Callable[..., None]  # (text, total=None)
#: messages read (and published) at a time
CHUNK = 5000


@dataclass(slots=True)
class Selection:
    """Which verdicts to replay: of a stored run, of a window judged now, or of explicit ids."""

    run_id: str | None = None
    window: tuple[int, int] | None = None
    grace_s: int = 600
    lookback_s: int = 86400
    verdicts: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    ids: list[str] | None = None

    def check(self) -> None:
        if self.run_id and self.window:
            raise ConfigError("give either --run ID or --from/--to, not both")
        if not (self.run_id or self.window or self.ids):
            raise ConfigError("say what to replay: --run ID (a stored reconcile run, or 'latest'), "
                              "--from/--to (judged now), or --id/--ids")
        bad = [v for v in self.verdicts if v not in V.VERDICTS]
        if bad:
            raise ConfigError(f"unknown verdict {bad[0]!r} (one of {', '.join(V.VERDICTS)})")


@dataclass(slots=True)
class ReplayOptions:
    execute: bool = False
    bootstrap: str | None = None
    to_topic: str | None = None
    source: SourceOfTruth | None = None
    rate: float = 100.0
    again: bool = False
    dlq_scan_limit: int = 50_000
    timeout_s: float = 30.0
    note: str = ""
    #: where the replay's own audit events go (``Tracer`` arguments): audit Kafka, else the store
    audit_bootstrap: str | None = None
    audit_topic: str = "msgtrace.audit"
    spool_dir: str | None = None
    tracer_factory: Callable[[], Any] | None = None
    now_us: int | None = None


@dataclass(slots=True)
class ReplayResult:
    run: ReplayRun
    items: list[Item]
    to_topic: str | None = None
    audit_shipped: bool | None = None  # None: nothing was published (no events to ship)

    @property
    def counts(self) -> dict[str, int]:
        return self.run.counts(self.items)

    @property
    def still_lost(self) -> int:
        return sum(1 for i in self.items if i.still_lost)

    def by_reason(self, result: Result) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in self.items:
            if i.result == result:
                out[i.why] = out.get(i.why, 0) + 1
        return dict(sorted(out.items()))

    def to_json(self) -> dict[str, Any]:
        r = self.run
        return {
            "replay_run": r.run_id, "mode": r.mode, "reconcile_run": r.reconcile.run_id or None,
            "window": {"from": fmt_us(r.reconcile.window_from_us), "to": fmt_us(r.reconcile.window_to_us)}
            if r.reconcile.window_to_us else None,
            "user": r.user, "host": r.host, "started": fmt_us(r.started_us), "finished": fmt_us(r.finished_us),
            "to_topic": self.to_topic, "counts": self.counts, "skipped_by_reason": self.by_reason(Result.SKIPPED),
            "failed_by_reason": self.by_reason(Result.FAILED), "still_lost": self.still_lost,
            "audit_events_shipped": self.audit_shipped,
            "messages": [item_json(i) for i in self.items],
        }


def item_json(i: Item) -> dict[str, Any]:
    return {"msg_id": i.msg_id, "consumer_groups": i.groups, "verdicts": i.verdicts, "result": i.result.value,
            "reason_code": i.why or None, "reason": i.reason or None, "notes": i.notes,
            "source": i.source.value if i.source else None, "from": i.from_where(),
            "to_topic": i.target_topic or None,
            "published": None if i.published is None else {"topic": i.published.topic,
                                                           "partition": i.published.partition,
                                                           "offset": i.published.offset}}


def _now() -> int:
    return time.time_ns() // 1000


def _verdict_rows(store: Store, sel: Selection, opts: ReplayOptions, progress: Progress | None) -> tuple[
        RunInfo, list[VerdictRow]]:
    wanted = sel.verdicts or sorted(REPLAYABLE)
    if sel.window:
        from tracer.analysis.reconcile import reconcile

        res = reconcile(store, sel.window[0], sel.window[1], sel.grace_s, groups=sel.groups or None,
                        bootstrap=opts.bootstrap, lookback_s=sel.lookback_s, write=True, progress=progress)
        info = RunInfo(res.run_id, res.window_from_us, res.window_to_us, res.grace_s, res.finished_us)
        rows = [VerdictRow(v.msg_id, v.consumer_group, v.topic, v.verdict, list(v.flags), v.evidence)
                for v in res.rows]
    elif sel.run_id:
        info = reconcile_run(store, sel.run_id)
        rows = run_verdicts(store, info.run_id, wanted, sel.groups, sel.topics)
    else:
        from tracer.analysis.reconcile import judge_message

        info = RunInfo("", grace_s=sel.grace_s)
        rows = []
        for mid in sel.ids or ():
            vs = judge_message(store, mid, groups=sel.groups, bootstrap=opts.bootstrap)
            rows += [VerdictRow(v.msg_id, v.consumer_group, v.topic, v.verdict, list(v.flags), v.evidence)
                     for v in vs] or [VerdictRow(mid, "", "", V.NEVER_SENT, [], "no event recorded at all")]
    keep = set(wanted)
    rows = [r for r in rows if r.verdict in keep and (not sel.groups or r.consumer_group in sel.groups)
            and (not sel.topics or r.topic in sel.topics)]
    if sel.ids is not None:
        ids = set(sel.ids)
        rows = [r for r in rows if r.msg_id in ids]
    return info, rows


@contextlib.contextmanager
def _no_schema_hint() -> Iterator[None]:
    try:
        yield
    except QueryError as e:
        if e.code == 60:  # UNKNOWN_TABLE
            raise ConfigError("the store has no msgtrace tables: run `msgtrace db init` first") from None
        raise


def plan(store: Store, sel: Selection, opts: ReplayOptions, progress: Progress | None = None) -> tuple[
        RunInfo, list[Item]]:
    """The verdicts and the plan of each message (store reads only)."""
    sel.check()
    now = opts.now_us or _now()
    with store.session(), _no_schema_hint():
        info, rows = _verdict_rows(store, sel, opts, progress)
        grouped = by_message(rows)
        ids = sorted(grouped)
        if progress and ids:
            progress(f"reading the events of {len(ids)} messages")
        events = events_of(store, ids) if ids else {}
        prior = prior_replays(store, ids) if ids else {}
    popts = PlanOptions(to_topic=opts.to_topic, has_source_of_truth=opts.source is not None, again=opts.again,
                        grace_s=info.grace_s, now_us=now)
    items = [plan_item(m, grouped[m], facts_from_events(events.get(m, [])), prior.get(m, {}), popts) for m in ids]
    return info, items


def replay(store: Store, sel: Selection, opts: ReplayOptions, progress: Progress | None = None,
           advance: Callable[[], None] | None = None) -> ReplayResult:
    """Plan, read, publish (``opts.execute``) and store one replay run."""
    sel.check()
    if opts.execute and not opts.bootstrap:
        raise ConfigError("--execute needs the business Kafka: --bootstrap HOST:PORT "
                          "(env MSGTRACE_BUSINESS_KAFKA_BOOTSTRAP)")
    ensure_schema(store)
    user, host = who()
    run = ReplayRun(uuid.uuid4().hex, opts.now_us or _now(), "execute" if opts.execute else "dry_run",
                    RunInfo(""), user=user, host=host, note=opts.note)
    run.params = {"selection": {"run": sel.run_id, "window": list(sel.window) if sel.window else None,
                                "verdicts": sel.verdicts, "groups": sel.groups, "topics": sel.topics,
                                "ids": len(sel.ids) if sel.ids is not None else None},
                  "to_topic": opts.to_topic, "rate": opts.rate, "again": opts.again,
                  "source": opts.source.describe() if opts.source else None, "bootstrap": bool(opts.bootstrap)}
    run.reconcile, items = plan(store, sel, opts, progress)
    result = ReplayResult(run, items, opts.to_topic)
    try:
        _fetch_and_publish(store, run, items, opts, result, progress, advance)
    finally:  # what was published is stored even when a later step fails
        run.finished_us = _now()
        with store.session():
            write_run(store, run, items)
    return result


def _fetch_and_publish(store: Store, run: ReplayRun, items: list[Item], opts: ReplayOptions, result: ReplayResult,
                       progress: Progress | None, advance: Callable[[], None] | None) -> None:
    """Read the messages and (``execute``) re-publish them, CHUNK at a time: the bytes of one chunk
    are held in memory at once, not those of the whole run."""
    todo = [i for i in items if i.open]
    kafka = BusinessKafka(opts.bootstrap, timeout_s=min(opts.timeout_s, 10.0)) if todo and opts.bootstrap else None
    fetcher = Fetcher(kafka, opts.source, opts.dlq_scan_limit, progress)
    tracer: Any = None
    publisher: Publisher | None = None
    try:
        for k in range(0, len(todo), CHUNK):
            chunk = todo[k:k + CHUNK]
            fetcher.resolve(chunk)
            ready = [i for i in chunk if i.result == Result.PLANNED and i.message is not None]
            if kafka is not None and ready:
                _check_targets(kafka, ready, opts)
                ready = [i for i in ready if i.result == Result.PLANNED]
            if opts.execute and ready:
                if publisher is None:
                    tracer = (opts.tracer_factory or _tracer_factory(store, opts))()
                    publisher = Publisher(opts.bootstrap or "", run.run_id, tracer, opts.rate, opts.timeout_s)
                if progress:
                    progress(f"re-publishing {len(ready)} messages", len(ready))
                publisher.publish(ready, advance)
            for i in chunk:
                i.message = None  # published or not, its bytes are no longer needed
    finally:
        if kafka is not None:
            kafka.close()
        if opts.source is not None:
            opts.source.close()
        if publisher is not None:
            publisher.close()
        if tracer is not None:
            result.audit_shipped = bool(tracer.close(timeout=opts.timeout_s))


def _check_targets(kafka: BusinessKafka, ready: Sequence[Item], opts: ReplayOptions) -> None:
    """Every target topic must exist: a replay never creates topics (nor lets a broker auto-create one)."""
    missing = {t for t in {i.target_topic for i in ready} if not kafka.topic_exists(t)}
    if not missing:
        return
    if opts.execute and opts.to_topic and opts.to_topic in missing:
        raise ConfigError(f"--to-topic {opts.to_topic} does not exist on {opts.bootstrap}: create it first "
                          "(a retry topic that only the affected group reads)")
    for i in ready:
        if i.target_topic in missing:
            i.skip(Why.TOPIC_GONE, f"the target topic {i.target_topic} does not exist on {opts.bootstrap}: "
                                   "create it first (replay never creates topics)")


def _tracer_factory(store: Store, opts: ReplayOptions) -> Callable[[], Any]:
    def make() -> Any:
        from tracer.sdk.tracer import Tracer

        return Tracer(service="msgtrace-replay", bootstrap=opts.audit_bootstrap or None,
                      audit_topic=opts.audit_topic, store=None if opts.audit_bootstrap else _store_url(store),
                      spool_dir=opts.spool_dir, adopt=False)

    return make


def _store_url(store: Store) -> str:
    """The store's URL for the tracer's direct sink (the password is only kept in memory)."""
    u = store.url
    if u.engine == "chdb":
        return f"chdb://{u.path}?database={u.database}"
    from urllib.parse import quote

    auth = f"{quote(u.user, safe='')}:{quote(u.password, safe='')}@" if u.password else f"{quote(u.user, safe='')}@"
    return f"{'clickhouses' if u.secure else 'clickhouse'}://{auth}{u.host}:{u.port}/{u.database}"
