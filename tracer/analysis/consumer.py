"""Evidence about the consumer side of a pair the audit left ``in_flight``.

A pair is in flight when the group received the message and neither committed it nor recorded an
outcome. It is a loss (``lost_in_consumer``, or ``failed_and_committed`` after a business_failed)
when the group's committed offset passed it after it was received: the group moved on and will not
redeliver it, though no ``offset_committed`` names this message -- a consumer killed after its
commit reached the broker but before it read the answer, or another member that took over past it.
The rows of :data:`tracer.analysis.rules.REFINEMENTS` for ``in_flight`` name the evidence:

* ``committed_offset_passed``: an ``offset_committed`` of the group on the partition beyond the
  message's offset, later than its receipt, in the same log epoch;
* ``live_committed_offset``: with a live Kafka view and no log reset since, the group's committed
  offset read live.
"""
from __future__ import annotations

from tracer import verdicts as V
from tracer.analysis.broker import CONSUMER_STAGES, EvidenceContext
from tracer.analysis.evidence import consumer_loss_text, fmt_us
from tracer.analysis.result import Verdict
from tracer.analysis.rules import Evidence, consumer_loss


def _in_flight(ctx: EvidenceContext, rows: list[Verdict]) -> dict[tuple[str, int], list[Verdict]]:
    by_part: dict[tuple[str, int], list[Verdict]] = {}
    for r in rows:
        f = r.facts
        if r.verdict == V.IN_FLIGHT and r.consumer_group and not r.decided_by and f is not None \
                and f.loc_p >= 0 and f.loc_o >= 0:
            by_part.setdefault((r.topic, f.loc_p), []).append(r)
    out = {}
    for (topic, part), rs in sorted(by_part.items()):
        if ctx.allowed(topic, part):
            out[(topic, part)] = rs
        else:
            for r in rs:
                r.decided_by = "not checked (too many partitions)"
    return out


def _mark(r: Verdict, by: Evidence, text: str) -> None:
    assert r.facts is not None
    r.refine(consumer_loss(bool(r.facts.bfail_ts)), by.value, consumer_loss_text(r.facts, by.value, text))


def committed_offset_passed(ctx: EvidenceContext, rows: list[Verdict], after: str) -> None:
    for (topic, part), rs in _in_flight(ctx, rows).items():
        hist = ctx.history(topic, part, CONSUMER_STAGES, (r.consumer_group for r in rs))
        for r in rs:
            f = r.facts
            assert f is not None
            recv_ts = f.recv_ts or f.cand_ts
            p = hist.progress.get((r.consumer_group, hist.epoch(recv_ts)))
            if p and p.max_off > f.loc_o and p.at_ts >= recv_ts:
                _mark(r, Evidence.COMMITTED_OFFSET_PASSED,
                      f"the group committed offset {p.max_off} on partition {part} ({p.by_msg!r} at "
                      f"{fmt_us(p.at_ts)}) in the same log epoch")


def live_committed_offset(ctx: EvidenceContext, rows: list[Verdict], after: str) -> None:
    if ctx.broker is None:
        return
    for (topic, part), rs in _in_flight(ctx, rows).items():
        hist = ctx.history(topic, part, CONSUMER_STAGES, (r.consumer_group for r in rs))
        for r in rs:
            f = r.facts
            assert f is not None
            if hist.reset_after(f.recv_ts or f.cand_ts):
                continue
            c = ctx.broker.committed(r.consumer_group, topic, part)
            if c is not None and c > f.loc_o:
                _mark(r, Evidence.LIVE_COMMITTED_OFFSET,
                      f"Kafka reports the group's committed offset {c} on partition {part} (live)")
