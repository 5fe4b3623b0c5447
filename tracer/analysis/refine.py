"""Apply :data:`tracer.analysis.rules.REFINEMENTS`: each row names evidence, and the checker
registered here for (verdict, evidence) looks for it in batches over the pairs still undecided.

Adding evidence (RabbitMQ's queues, an emitter's audit gap) = a row in the rules table and a
checker registered in :data:`CHECKERS`; nothing else changes shape.
"""
from __future__ import annotations

from collections.abc import Callable

from tracer import verdicts as V
from tracer.analysis import broker, consumer, rabbitmq
from tracer.analysis.broker import EvidenceContext
from tracer.analysis.result import Verdict
from tracer.analysis.rules import REFINEMENTS, Evidence

#: checker(ctx, rows, after): refines the rows (still ``before``, undecided) it finds evidence for
Checker = Callable[[EvidenceContext, list[Verdict], str], None]

CHECKERS: dict[tuple[str, Evidence], Checker] = {
    (V.PENDING_IN_BROKER, Evidence.LOG_START_PASSED): broker.log_start_passed,
    (V.PENDING_IN_BROKER, Evidence.LATER_ACKED_RECEIVED): broker.later_acked_received,
    (V.PENDING_IN_BROKER, Evidence.OFFSET_PASSED_SAME_EPOCH): broker.offset_passed_same_epoch,
    (V.PENDING_IN_BROKER, Evidence.LIVE_COMMITTED_OFFSET): broker.live_committed_offset,
    (V.PENDING_IN_BROKER, Evidence.QUEUE_DELIVERED_LATER): rabbitmq.queue_delivered_later,
    (V.IN_FLIGHT, Evidence.COMMITTED_OFFSET_PASSED): consumer.committed_offset_passed,
    (V.IN_FLIGHT, Evidence.LIVE_COMMITTED_OFFSET): consumer.live_committed_offset,
    (V.IN_FLIGHT, Evidence.QUEUE_NEVER_REDELIVERED): rabbitmq.queue_never_redelivered,
}
assert set(CHECKERS) == {(r.before, r.evidence) for r in REFINEMENTS}, "a checker for every refinement"

Progress = Callable[[str], None]


def refine(ctx: EvidenceContext, rows: list[Verdict], progress: Progress | None = None) -> None:
    """Try every refinement, in table order, on the rows still at its ``before`` verdict."""
    for r in REFINEMENTS:
        open_rows = [v for v in rows if v.verdict == r.before and not v.decided_by]
        if not open_rows:
            continue
        if progress:
            progress(f"looking for {r.evidence.value} evidence for {len(open_rows)} {r.before} pairs")
        CHECKERS[(r.before, r.evidence)](ctx, open_rows, r.after)
    broker.explain_pending(ctx, rows)
