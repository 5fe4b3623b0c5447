"""The reconciler: one verdict per (message, consumer group) of a window, with evidence and remedy.

:func:`reconcile` is a short sequence of named phases, each answered by its own module:

1. the window (:mod:`~tracer.analysis.window`), built once;
2. expected ids, staged in ClickHouse by columnar inserts (:mod:`~tracer.analysis.expected`);
3. pass 1 over the window, pass 2 for its candidate messages (:mod:`~tracer.analysis.passes`);
4. the rules' verdict of each pair (:mod:`~tracer.analysis.rules`, the only place a rule is written);
5. outside evidence for the verdicts the audit leaves open (:mod:`~tracer.analysis.refine`:
   broker and consumer evidence, live Kafka with ``bootstrap``);
6. the audit's own gaps (:mod:`~tracer.analysis.gaps`);
7. the result, stored back in ClickHouse (:mod:`~tracer.analysis.result`).

All heavy work is ClickHouse SQL from ``queries/``; Python handles only the pairs that are not
plainly delivered. ``never_sent`` comes from expected ids with no event at all.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from tracer import verdicts as V
from tracer.analysis import passes, rabbitmq
from tracer.analysis.broker import (
    BrokerView,
    EvidenceContext,
    LiveKafka,
    StaticBroker,
    live_committed,
)
from tracer.analysis.evidence import TEXT, fmt_us
from tracer.analysis.expected import ExpectedSource, Staging
from tracer.analysis.facts import PairFacts
from tracer.analysis.gaps import flag_seq_gaps
from tracer.analysis.judge import judge_events, judge_message
from tracer.analysis.passes import Decided, Pass1, Scope
from tracer.analysis.refine import refine
from tracer.analysis.result import ReconcileResult, Verdict, verdict_order, write_result
from tracer.analysis.window import GRACE_S, LOOKBACK_S, Window
from tracer.store import Store

Progress = Callable[[str], None]

__all__ = ["GRACE_S", "LOOKBACK_S", "BrokerView", "LiveKafka", "ReconcileResult", "StaticBroker", "Verdict",
           "fmt_us", "judge_events", "judge_message", "live_committed", "reconcile", "write_result"]


def _say(progress: Progress | None, text: str) -> None:
    if progress:
        progress(text)


def reconcile(store: Store, window_from_us: int, window_to_us: int, grace_s: int = GRACE_S, *,
              groups: Sequence[str] | None = None, expected: ExpectedSource | Any = None,
              bootstrap: str | None = None, lookback_s: int = LOOKBACK_S, now_us: int | None = None,
              write: bool = True, progress: Progress | None = None,
              broker: BrokerView | None = None) -> ReconcileResult:
    """Judge every (msg_id, consumer group) pair of the window [from, to).

    ``groups`` names the consumer groups to judge (default: those seen receiving from each topic in
    the window). ``expected`` is an :class:`~tracer.analysis.expected.ExpectedSource` (ids that
    should have been sent). Events up to ``to + grace`` (or now, if earlier) count; events from
    ``lookback_s`` before the window are read so that a message sent earlier is not mistaken for one
    without ``sent``. ``bootstrap``: the business Kafka, asked live for committed and log start offsets;
    ``broker``: another view of them (a snapshot, :class:`~tracer.analysis.broker.StaticBroker`).
    """
    if broker is None and bootstrap:
        broker = LiveKafka(bootstrap)
    window = Window.build(window_from_us, window_to_us, grace_s, lookback_s, now_us)
    res = ReconcileResult(run_id=uuid.uuid4().hex, window=window, started_us=window.now_us)
    res.params = {"groups": list(groups or []), "lookback_s": lookback_s,
                  "expected": expected.describe() if expected is not None else None, "bootstrap": bool(bootstrap),
                  "broker": type(broker).__name__ if broker is not None else None}
    with store.session():
        with Staging(store, res.run_id) as staging:
            table = None
            if expected is not None:
                _say(progress, "loading expected ids")
                table, res.expected_count = staging.load(expected)
            scope = Scope(window, tuple(groups) if groups else None, table)
            _say(progress, "judging every message and group (pass 1)")
            first = passes.pass1(store, scope)
            for (topic, group), n in first.counts.items():
                res.count(V.DELIVERED, topic, group, n)
            if first.candidates:
                _say(progress, f"collecting evidence for {first.candidates} messages (pass 2)")
            facts = passes.pass2(store, scope, first, staging)
            never = passes.never_sent(store, window, table) if table else []
        res.rows = _judge(first, facts, never, groups, window)
        if not groups:  # groups found per topic; a RabbitMQ message's are those of its routing key
            res.rows = rabbitmq.drop_unrouted(store, window, res.rows)
        _count_plain(res)
        gaps = None
        if res.rows:
            pending = [v for v in res.rows if v.verdict == V.PENDING_IN_BROKER]
            ctx = EvidenceContext(store, window, broker, skip=frozenset(v.msg_id for v in pending)
                                  if first.by_message else None,
                                  skip_ts=frozenset(v.facts.ack_ts for v in pending
                                                    if v.facts is not None and v.facts.ack_ts > 0))
            refine(ctx, res.rows, progress)
            gaps = ctx.gaps()
        # always: a window whose messages all look delivered can still miss whole messages whose
        # events the audit lost, and the run must not then say "nothing lost" as if it knew
        _say(progress, "checking emitter seq gaps")
        res.seq_gaps = flag_seq_gaps(store, res.rows, window, gaps)
        for v in res.rows:
            res.count(v.verdict, v.topic, v.consumer_group)
        res.rows.sort(key=verdict_order)
        res.finished_us = time.time_ns() // 1000
        if write:
            _say(progress, f"writing {len(res.rows)} verdicts")
            write_result(store, res)
    return res


def _judge(first: Pass1, facts: list[Decided], never: list[tuple[str, int]], groups: Sequence[str] | None,
           window: Window) -> list[Verdict]:
    """The verdict of every pair pass 2 returned (named by the SQL generated from the rules), and of
    the expected ids never sent."""
    rows = [Verdict.judge(d.facts, (d.verdict, d.flags)) for d in facts]
    if first.pairs:
        rows = _named_pairs(first, rows)
    else:
        judged = {d.facts.msg_id for d in facts}
        for m in sorted(first.messages - judged):  # cannot happen unless events changed between the passes
            rows.append(Verdict(m, "", "", V.AUDIT_GAP, "none", [], evidence="events changed during the run"))
    for m, ts in never:  # ts: the expected time, when the source gives one (audit gaps use it)
        for g in (groups or [""]):
            f = PairFacts(m, g, msg_time=ts, cut=window.cut_us)
            rows.append(Verdict(m, g, "", V.NEVER_SENT, "none", [], evidence=TEXT[V.NEVER_SENT](f),
                                remedy=V.REMEDY[V.NEVER_SENT], facts=f))
    return rows


def _named_pairs(first: Pass1, rows: list[Verdict]) -> list[Verdict]:
    """Pass 1 per pair named the pairs to judge; pass 2 judged every pair of their messages.

    Pass 1 names a message's groups by its topic's receipts in [from, cut); pass 2 by the message's
    own events. When its consumer events lie outside [from, cut) (clock skew at the window's edge, a
    quiet topic) the two can differ. A pair pass 1 named and pass 2 did not is then a naming artifact,
    not a gap: the message is judged by pass 2's pairs (those pass 1 did not name are added, except
    plainly delivered ones, which pass 1 may have counted)."""
    named = [v for v in rows if (v.msg_id, v.consumer_group) in first.pairs]
    found = {(v.msg_id, v.consumer_group) for v in named}
    missing = sorted(first.pairs - found)
    lost_names = {m for m, _ in missing}
    named += [v for v in rows if (v.msg_id, v.consumer_group) not in first.pairs and v.msg_id in lost_names
              and not (v.verdict == V.DELIVERED and not v.flags)]
    judged = {v.msg_id for v in rows}
    for m, g in missing:  # cannot happen unless events changed between the passes
        if m not in judged:
            named.append(Verdict(m, g, "", V.AUDIT_GAP, "none", [], evidence="events changed during the run"))
    return named


def _count_plain(res: ReconcileResult) -> None:
    """Plainly delivered pairs (delivered, no flag) are counted, never listed."""
    keep = []
    for v in res.rows:
        if v.verdict == V.DELIVERED and not v.flags:
            res.count(v.verdict, v.topic, v.consumer_group)
        else:
            keep.append(v)
    res.rows = keep
