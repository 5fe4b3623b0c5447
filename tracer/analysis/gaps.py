"""The audit's own gaps, and what they do to verdicts: msgtrace never turns its missing evidence into a loss.

Each emitter numbers its events 1, 2, 3, ... (DESIGN.md, wire format); a hole means audit events
were lost: a spool that overflowed or a full disk (dropped, counted by the emitter), or records the
audit Kafka acknowledged and then lost. The emitters retain shipped segments and ship again what the
topic lost (``tracer.sdk.recovery``), and ``msgtrace ship --repair`` re-sends what the store still
misses; a hole left after that is **unrepaired**, and this module charges it to the verdicts that
rest on the missing events (the rows of :data:`tracer.analysis.rules.AUDIT_GAP_REFINEMENTS`):

- a **producer** emitter's hole (an emitter that recorded producer stages): an expected id with no
  event (``never_sent``) could have been sent during it, when the id's expected time (if the source
  gives one) lies in the hole's time range, give or take :data:`EXPECTED_TIME_SLACK_S`; a
  ``send_failed`` could have been acked on a retry during a hole of the emitter that recorded it,
  after the failure;
- a **consumer** emitter's hole: a message acked but never received by the group
  (``lost_in_broker``, ``expired_in_broker``) may have been received during a hole, after the ack,
  of an emitter of that group that receives from the message's partition; a message received but
  without outcome (``lost_in_consumer``) or failed (``failed_and_committed``) may have had its
  outcome in a hole of the emitter that received it, within :func:`horizon_us` of the receipt (the
  grace period, at least :data:`OUTCOME_HORIZON_S`).

Such a verdict becomes ``audit_gap``, with evidence naming the hole (emitter, service, host, seq
range, time range) and the command that would close it. A hole's time range is the time of the
stored event just before it and just after it (seq order is emit order). Holes are found per emitter
in two steps (blocks of :data:`BUCKET` seq numbers, then the numbers of blocks with holes inside),
over the scanned range and :data:`MARGIN_S` beyond the window's cut, so a hole near the window's end
is seen from the events after it. A hole at an emitter's very end, with nothing stored after it
(events in flight, or a process that died), is not visible in the store: ``msgtrace audit-health
--spool`` shows it from the spool.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracer import verdicts as V
from tracer.analysis import rules as R
from tracer.analysis.evidence import fmt_us
from tracer.analysis.result import SeqGap, Verdict
from tracer.analysis.sql import render
from tracer.analysis.window import Window
from tracer.store import Store

#: seq numbers per block of the first step (a block's numbers are read only when it has a hole inside)
BUCKET = 8192
#: how far past the window's cut holes are looked for (their right edge may be after the cut)
MARGIN_S = 3600
#: an expected id's time may be this far outside a hole and still count as "could have been sent
#: during it" (the business time of an order vs. the moment its message is handed to the client)
EXPECTED_TIME_SLACK_S = 60
#: a business outcome is looked for this long after its receipt at least (else the grace period)
OUTCOME_HORIZON_S = 600
_US = 1_000_000
_PRODUCER_STAGES = R.stage_list_sql(R.PRODUCER_STAGES)


@dataclass(slots=True, frozen=True)
class Hole:
    """Seq numbers lo..hi of one emitter are not stored; the events around them were stored at
    ``after_ts`` (seq lo - 1) and ``before_ts`` (seq hi + 1), 0 where unknown."""

    lo: int
    hi: int
    after_ts: int = 0
    before_ts: int = 0

    @property
    def missing(self) -> int:
        return self.hi - self.lo + 1

    def overlaps(self, start_us: int, end_us: int) -> bool:
        """Could events stamped in [start_us, end_us] be in the hole?"""
        lo = self.after_ts or 0
        hi = self.before_ts or 2**63
        return lo <= end_us and start_us <= hi

    def words(self) -> str:
        times = f"{fmt_us(self.after_ts)} .. {fmt_us(self.before_ts)}"
        return f"seq {self.lo}-{self.hi} ({self.missing} events, {times})"


@dataclass(slots=True)
class EmitterAudit:
    """One emitter as the store holds it in a range: its numbering, its roles, its holes."""

    emitter_id: str
    service: str = ""
    host: str = ""
    pid: int = 0
    n: int = 0          # distinct seq numbers stored
    lo: int = 0
    hi: int = 0
    rows: int = 0
    first_ts: int = 0
    last_ts: int = 0
    producer_topics: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    #: (topic, partition or -1, group) it received from
    lanes: set[tuple[str, int, str]] = field(default_factory=set)
    holes: list[Hole] = field(default_factory=list)

    def receives(self, topic: str, partition: int, group: str) -> bool:
        """Did it receive from ``topic``/``partition`` (any partition when -1) for ``group``?"""
        if partition < 0:
            return any(t == topic and g == group for t, _, g in self.lanes)
        return (topic, partition, group) in self.lanes

    @property
    def missing(self) -> int:
        return self.hi - self.lo + 1 - self.n if self.n else 0

    @property
    def producer(self) -> bool:
        return bool(self.producer_topics)

    def repair_command(self, hole: Hole | None = None) -> str:
        h = f" --from {fmt_us(hole.after_ts)}" if hole is not None and hole.after_ts else ""
        return f"msgtrace ship --repair --emitter {self.emitter_id}{h} (on host {self.host or '?'}, in the spool dir " \
               f"of {self.service or 'the service'})"

    def to_json(self) -> dict[str, Any]:
        return {"emitter_id": self.emitter_id, "service": self.service, "host": self.host, "pid": self.pid,
                "stored": self.n, "lo": self.lo, "hi": self.hi, "rows": self.rows, "missing": self.missing,
                "first_event": fmt_us(self.first_ts), "last_event": fmt_us(self.last_ts),
                "producer_topics": sorted(self.producer_topics), "groups": sorted(self.groups),
                "holes": [{"lo": h.lo, "hi": h.hi, "missing": h.missing, "after": fmt_us(h.after_ts),
                           "before": fmt_us(h.before_ts)} for h in self.holes]}


def _distinct(store: Store) -> str:
    # groupBitmap: an exact distinct count ~2x cheaper than uniqExact on chDB; not on 18.16
    return "groupBitmap(seq)" if store.engine == "chdb" else "uniqExact(seq)"


def emitters(store: Store, from_us: int, to_us: int, only: Sequence[str] | None = None,
             with_holes: bool = True) -> list[EmitterAudit]:
    """Every emitter with events in [from_us, to_us) (or the ones in ``only``), with its holes."""
    rows = store.query(render("audit_emitters", distinct_seq=_distinct(store), producer_stages=_PRODUCER_STAGES),
                       {"from_us": from_us, "to_us": to_us, "all_emitters": 0 if only is not None else 1,
                        "emitters": list(only) if only else [""]}, small=True)
    out = [EmitterAudit(r["emitter_id"], r["service"], r["host"], int(r["pid"]), int(r["n"]), int(r["lo"]),
                        int(r["hi"]), int(r["rows"]), int(r["first_ts"]), int(r["last_ts"]),
                        list(r["producer_topics"]), list(r["groups"]), _lanes(r["lanes"])) for r in rows]
    if with_holes:
        find_holes(store, from_us, to_us, [e for e in out if e.missing])
    return out


def _lanes(values: Iterable[str]) -> set[tuple[str, int, str]]:
    out = set()
    for v in values:
        topic, part, group = v.split("\0", 2)
        out.add((topic, int(part), group))
    return out


def find_holes(store: Store, from_us: int, to_us: int, gapped: list[EmitterAudit]) -> None:
    """Fill in the holes of emitters known to have some (exact seq ranges, with their time ranges)."""
    if not gapped:
        return
    rows = store.query(render("audit_seq_buckets"), {"from_us": from_us, "to_us": to_us, "bucket": BUCKET,
                                                     "emitters": [e.emitter_id for e in gapped]})
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["emitter_id"], []).append(r)
    for e in gapped:
        blocks = sorted(by.get(e.emitter_id, []), key=lambda r: int(r["b"]))
        inner = [int(b["b"]) for b in blocks if int(b["n"]) < int(b["hi"]) - int(b["lo"]) + 1]
        points: list[tuple[int, int]] = []
        if inner:
            points = [(int(p["seq"]), int(p["ts"])) for p in store.query(render("audit_seq_points"), {
                "from_us": from_us, "to_us": to_us, "emitter": e.emitter_id, "bucket": BUCKET, "buckets": inner})]
        e.holes = _holes(blocks, set(inner), points)


def _holes(blocks: list[dict[str, Any]], inner: set[int], points: list[tuple[int, int]]) -> list[Hole]:
    """Holes between the stored numbers: those of the blocks listed in ``inner`` (from ``points``),
    and the first and last of every other block (whose numbers in between are all stored)."""
    known: list[tuple[int, int, int]] = []  # (seq, ts, block if the block is full else -1)
    for seq, ts in points:
        known.append((seq, ts, -1))
    for b in blocks:
        k = int(b["b"])
        if k not in inner:
            known.append((int(b["lo"]), int(b["lo_ts"]), k))
            known.append((int(b["hi"]), int(b["hi_ts"]), k))
    known.sort()
    out: list[Hole] = []
    for (s1, t1, b1), (s2, t2, b2) in zip(known, known[1:]):
        if s2 > s1 + 1 and not (b1 == b2 and b1 >= 0):
            out.append(Hole(s1 + 1, s2 - 1, t1, t2))
    return out


# --- the reconciler's gap phase ---------------------------------------------------------------------

class SeqGaps(list[SeqGap]):
    """The window's :class:`SeqGap` list, plus the emitters whose numbering has holes up to
    :data:`MARGIN_S` past the cut (a hole inside the window may end after it)."""

    candidates: list[str]

    def __init__(self, gaps: Iterable[SeqGap] = (), candidates: Iterable[str] = ()) -> None:
        super().__init__(gaps)
        self.candidates = list(candidates)


def seq_gaps(store: Store, window: Window) -> SeqGaps:
    """Emitters with seq gaps in the window's scanned range (exact, duplicates included); one scan
    that also names the emitters with holes reaching past the cut (``.candidates``)."""
    d = _distinct(store)
    params = {**window.scan(), "scan_to": window.cut_us + MARGIN_S * _US}
    rows = store.query(render("reconcile_seq_gaps", distinct_seq=d, distinct_seq_after=_distinct_if(store, ">=")),
                       params, small=True)
    again = sorted(r["emitter_id"] for r in rows if not r["exact"])
    if again:  # seq numbers before and after the cut interleave: count those emitters exactly
        rows = [r for r in rows if r["exact"]] + store.query(
            render("reconcile_seq_gaps_exact", distinct_seq=d, distinct_seq_window=_distinct_if(store, "<")),
            {**params, "emitters": again}, small=True)
    gaps = [SeqGap(r["emitter_id"], r["lo"], r["hi"], r["n"], r["missing"]) for r in rows if r["missing"] > 0]
    return SeqGaps(gaps, [r["emitter_id"] for r in rows])


def _distinct_if(store: Store, op: str) -> str:
    cond = f"ts_us {op} {{cut:UInt64}}"
    return f"groupBitmapIf(seq, {cond})" if store.engine == "chdb" else f"uniqExactIf(seq, {cond})"


def gap_emitters(store: Store, window: Window, gaps: Sequence[SeqGap]) -> list[EmitterAudit]:
    """The gapped emitters of a run with their holes, looked for up to :data:`MARGIN_S` past the cut."""
    names = sorted({g.emitter_id for g in gaps} | set(getattr(gaps, "candidates", ())))
    if not names:
        return []
    end = window.cut_us + MARGIN_S * _US
    found = emitters(store, window.scan_from_us, end, names)
    return [e for e in found if e.holes and any(h.overlaps(window.scan_from_us, window.cut_us) for h in e.holes)]


@dataclass(slots=True)
class GapContext:
    """What the audit-gap checkers of one run share: the gapped emitters with their holes, which of
    them recorded each message's producer stages and each pair's consumer stages, the window."""

    found: list[EmitterAudit]
    window: Window
    producers: dict[str, set[str]] = field(default_factory=dict)             # msg_id -> emitters
    consumers: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (msg_id, group) -> emitters

    def horizon_us(self) -> int:
        """How long after a receipt its outcome is looked for."""
        return max(self.window.grace_s, OUTCOME_HORIZON_S) * _US


#: checker(verdict row, context) -> the (emitter, hole) the verdict may rest on, or None
GapChecker = Callable[[Verdict, GapContext], "tuple[EmitterAudit, Hole] | None"]


def _first(pairs: Iterable[tuple[EmitterAudit, Hole]]) -> tuple[EmitterAudit, Hole] | None:
    return next(iter(pairs), None)


def _producer_gap(v: Verdict, ctx: GapContext) -> tuple[EmitterAudit, Hole] | None:
    f = v.facts
    cut = f.cut if f is not None and f.cut else ctx.window.cut_us
    if v.verdict == V.NEVER_SENT:
        t = f.msg_time if f is not None else 0
        slack = EXPECTED_TIME_SLACK_S * _US
        return _first((e, h) for e in ctx.found if e.producer for h in e.holes
                      if (h.overlaps(t - slack, t + slack) if t else h.overlaps(ctx.window.scan_from_us, cut)))
    since = (f.sfail_ts or f.sent_ts) if f is not None else 0
    mine = ctx.producers.get(v.msg_id, set())
    return _first((e, h) for e in ctx.found if e.emitter_id in mine for h in e.holes if h.overlaps(since, cut))


def _consumer_gap(v: Verdict, ctx: GapContext) -> tuple[EmitterAudit, Hole] | None:
    f = v.facts
    if f is None:
        return None
    cut = f.cut or ctx.window.cut_us
    if v.verdict in (V.LOST_IN_BROKER, V.EXPIRED_IN_BROKER):  # never received: any receiver of its partition
        since = f.ack_ts or f.sent_ts or f.msg_time
        part = f.ack_p if f.ack_p >= 0 else f.loc_p
        return _first((e, h) for e in ctx.found if e.receives(f.topic or v.topic, part, v.consumer_group)
                      for h in e.holes if h.overlaps(since, cut))
    since = (f.bfail_ts or f.recv_ts) if v.verdict == V.FAILED_AND_COMMITTED else f.recv_ts
    mine = ctx.consumers.get((v.msg_id, v.consumer_group), set())
    until = min(cut, since + ctx.horizon_us())
    return _first((e, h) for e in ctx.found if e.emitter_id in mine for h in e.holes if h.overlaps(since, until))


CHECKERS: dict[R.Evidence, GapChecker] = {
    R.Evidence.PRODUCER_SEQ_GAP: _producer_gap,
    R.Evidence.CONSUMER_SEQ_GAP: _consumer_gap,
}
assert {r.evidence for r in R.AUDIT_GAP_REFINEMENTS} <= set(CHECKERS), "a checker for every audit-gap row"

_WOULD = {V.NEVER_SENT: "its sent", V.SEND_FAILED: "a retry's broker_acked",
          V.LOST_IN_BROKER: "the group's received", V.EXPIRED_IN_BROKER: "the group's received",
          V.LOST_IN_CONSUMER: "its business outcome", V.FAILED_AND_COMMITTED: "a retry's business_done"}


def refine_audit_gaps(rows: list[Verdict], ctx: GapContext) -> int:
    """Turn the loss verdicts that rest on an unrepaired hole into ``audit_gap``; how many."""
    if not ctx.found:
        return 0
    n = 0
    for v in rows:
        for r in R.AUDIT_GAP_REFINEMENTS:
            if r.before != v.verdict:
                continue
            hit = CHECKERS[r.evidence](v, ctx)
            if hit is None:
                continue
            e, h = hit
            was = v.verdict
            words = (f"emitter {e.emitter_id} (service {e.service or '?'}, host {e.host or '?'}) lost audit events "
                     f"{h.words()}; {_WOULD.get(was, 'the missing stage')} may be among them, so this is not "
                     f"{was} on the audit's word (it would be: {v.evidence}); repair: {e.repair_command(h)}")
            v.refine(V.AUDIT_GAP, r.evidence.value, words)
            if V.EMITTER_SEQ_GAP not in v.flags:
                v.flags.append(V.EMITTER_SEQ_GAP)
            n += 1
            break
    return n


def flag_seq_gaps(store: Store, rows: list[Verdict], window: Window,
                  gaps: list[SeqGap] | None = None) -> list[SeqGap]:
    """The gap phase of a run: find the emitters with seq gaps (``gaps``: already read, e.g. by
    :meth:`tracer.analysis.broker.EvidenceContext.gaps`), turn the loss verdicts resting on their
    unrepaired holes into ``audit_gap`` (:func:`refine_audit_gaps`), and flag the other non-delivered
    verdicts of their messages ``emitter_seq_gap``; return the gaps."""
    if gaps is None:
        gaps = seq_gaps(store, window)
    if not rows or (not gaps and not getattr(gaps, "candidates", None)):
        return list(gaps)
    ctx = GapContext(gap_emitters(store, window, gaps), window)
    names = sorted({g.emitter_id for g in gaps} | {e.emitter_id for e in ctx.found})
    touched = store.query(render("reconcile_gap_msgs", producer_stages=_PRODUCER_STAGES),
                          {**window.scan(), "emitters": names}) if names else []
    for t in touched:
        if t["consumer_group"]:
            ctx.consumers.setdefault((t["msg_id"], t["consumer_group"]), set()).add(t["emitter_id"])
        else:
            ctx.producers.setdefault(t["msg_id"], set()).add(t["emitter_id"])
    refine_audit_gaps(rows, ctx)
    if not gaps:
        return []
    window_gapped = {g.emitter_id for g in gaps}
    msgs = {t["msg_id"] for t in touched if t["emitter_id"] in window_gapped}
    for r in rows:
        if r.verdict != V.DELIVERED and r.msg_id in msgs and V.EMITTER_SEQ_GAP not in r.flags:
            r.flags.append(V.EMITTER_SEQ_GAP)
            r.evidence += "; an emitter of this message shows seq gaps in the window (audit events lost)"
    return gaps


__all__ = ["BUCKET", "EXPECTED_TIME_SLACK_S", "MARGIN_S", "OUTCOME_HORIZON_S", "EmitterAudit", "GapContext", "Hole",
           "SeqGaps", "emitters", "find_holes", "flag_seq_gaps", "gap_emitters", "refine_audit_gaps", "seq_gaps"]
