"""Evidence about the broker side of a pair the audit left at ``pending_in_broker``.

The rows of :data:`tracer.analysis.rules.REFINEMENTS` for ``pending_in_broker`` name the evidence;
this module finds it:

* ``log_start_passed`` -> ``expired_in_broker``: with a live view of the business Kafka, the
  partition's log start offset is past the message's offset (same log epoch), and the group never
  read the part of the log between them while it was there;
* ``later_acked_received`` -> ``lost_in_broker``: the group received a message acked later on the
  same partition (holds even when offsets were reused after a broker lost its log);
* ``offset_passed_same_epoch``: the group received or committed a higher offset in the same log
  epoch (between detected resets);
* ``live_committed_offset``: the group's committed offset read live from Kafka, used only when no
  reset followed.

:class:`EvidenceContext` holds what the checks share within one run: the scanned range, the live
Kafka view (each offset read once) and the per-partition history (resets, progress per epoch).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tracer import verdicts as V
from tracer.analysis.evidence import fmt_us
from tracer.analysis.result import SeqGap, Verdict
from tracer.analysis.rules import Evidence
from tracer.analysis.sql import render
from tracer.analysis.window import Window
from tracer.errors import ConfigError, describe
from tracer.store import Store

log = logging.getLogger("msgtrace.reconcile")
_NO_LIMIT = 2**62


class BrokerView(Protocol):
    """What the business broker says now (None: unknown)."""

    def committed(self, group: str, topic: str, part: int) -> int | None: ...

    def log_start(self, topic: str, part: int) -> int | None: ...


def live_committed(bootstrap: str, group: str, topic: str, part: int, timeout_s: float = 10.0) -> int | None:
    """The group's committed offset on (topic, partition), asked live from Kafka; None if unknown."""
    from tracer.kafka_config import business_kafka_python

    security = business_kafka_python()  # TLS / SASL; a wrong setting is a ConfigError, not a warning
    try:
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                          request_timeout_ms=int(timeout_s * 1000),
                          # kafka-python waits 30 s for a first broker by default, whatever the request timeout
                          bootstrap_timeout_ms=int(timeout_s * 1000), **security)
        try:
            value = c.committed(TopicPartition(topic, part))
            return int(value) if value is not None else None
        finally:
            c.close()
    except Exception as e:  # live evidence is optional: without it the verdict stays as the audit says
        log.warning("cannot read the committed offset of group %s on %s/%s from %s: %s", group, topic, part,
                    bootstrap, describe(e))
        return None


def live_log_start(bootstrap: str, topic: str, part: int, timeout_s: float = 10.0) -> int | None:
    """The partition's log start offset (earliest offset still in the log), asked live; None if unknown."""
    from tracer.kafka_config import business_kafka_python

    security = business_kafka_python()
    try:
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                          request_timeout_ms=int(timeout_s * 1000),
                          # kafka-python waits 30 s for a first broker by default, whatever the request timeout
                          bootstrap_timeout_ms=int(timeout_s * 1000), **security)
        try:
            tp = TopicPartition(topic, part)
            value = c.beginning_offsets([tp], timeout_ms=int(timeout_s * 1000)).get(tp)
            return int(value) if value is not None else None
        finally:
            c.close()
    except Exception as e:
        log.warning("cannot read the log start offset of %s/%s from %s: %s", topic, part, bootstrap, describe(e))
        return None


@dataclass(slots=True)
class LiveKafka:
    """The business Kafka, asked live; each offset at most once per run."""

    bootstrap: str
    timeout_s: float = 10.0
    _committed: dict[tuple[str, str, int], int | None] = field(default_factory=dict, repr=False)
    _starts: dict[tuple[str, int], int | None] = field(default_factory=dict, repr=False)

    def committed(self, group: str, topic: str, part: int) -> int | None:
        key = (group, topic, part)
        if key not in self._committed:
            self._committed[key] = live_committed(self.bootstrap, group, topic, part, self.timeout_s)
        return self._committed[key]

    def log_start(self, topic: str, part: int) -> int | None:
        key = (topic, part)
        if key not in self._starts:
            self._starts[key] = live_log_start(self.bootstrap, topic, part, self.timeout_s)
        return self._starts[key]


@dataclass(slots=True)
class StaticBroker:
    """A broker view taken elsewhere (a snapshot of committed and log start offsets)."""

    committed_offsets: dict[tuple[str, str, int], int] = field(default_factory=dict)  # (group, topic, part)
    log_starts: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, part)

    def committed(self, group: str, topic: str, part: int) -> int | None:
        return self.committed_offsets.get((group, topic, part))

    def log_start(self, topic: str, part: int) -> int | None:
        return self.log_starts.get((topic, part))

    @classmethod
    def from_json(cls, path: str) -> StaticBroker:
        """A snapshot file: ``{"log_start": [{"topic", "partition", "offset"}, ...], "committed":
        [{"group", "topic", "partition", "offset"}, ...]}`` (both lists optional)."""
        import orjson

        try:
            with open(path, "rb") as fh:
                doc = orjson.loads(fh.read())
            starts = {(str(x["topic"]), int(x["partition"])): int(x["offset"]) for x in doc.get("log_start", [])}
            done = {(str(x["group"]), str(x["topic"]), int(x["partition"])): int(x["offset"])
                    for x in doc.get("committed", [])}
        except OSError as e:
            raise ConfigError(f"cannot read broker snapshot {path}: {e.strerror}") from None
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"invalid broker snapshot {path}: {type(e).__name__}: {e} (expected "
                              '{"log_start": [{"topic", "partition", "offset"}], "committed": [{"group", '
                              '"topic", "partition", "offset"}]})') from None
        return cls(done, starts)


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a group got on a partition within one log epoch (reconcile_progress.sql)."""

    max_off: int
    max_below: int  # the highest offset below the partition's live log start (-1: none)
    by_msg: str
    by_stage: str
    at_ts: int


@dataclass(slots=True)
class History:
    """A partition's log resets and each group's progress per epoch, by the stages asked."""

    resets: list[int]
    progress: dict[tuple[str, int], Progress]

    def epoch(self, ts_us: int) -> int:
        return sum(1 for x in self.resets if x <= ts_us)

    def reset_after(self, ts_us: int) -> bool:
        return self.epoch(ts_us) < len(self.resets)


BROKER_STAGES = ("received", "offset_committed")
CONSUMER_STAGES = ("offset_committed",)


@dataclass(slots=True)
class EvidenceContext:
    """What the evidence checks of one run share."""

    store: Store
    window: Window
    broker: BrokerView | None = None
    #: messages known not to be received by their topic's group (pending after pass 1 by message):
    #: lets the frontier be found from the latest acks (see _frontier); None: the full query
    skip: frozenset[str] | None = None
    #: the ack times of the ``skip`` messages (their facts' ack_ts): the latest acks are found
    #: leaving these times out, without reading msg_id (see _latest_acks)
    skip_ts: frozenset[int] = frozenset()
    max_partitions: int = 500
    _history: dict[tuple[str, int, tuple[str, ...]], History] = field(default_factory=dict, repr=False)
    _asked: set[tuple[str, int]] = field(default_factory=set, repr=False)
    _gaps: list[SeqGap] | None = field(default=None, repr=False)

    def gaps(self) -> list[SeqGap]:
        """The emitters with seq gaps in the scanned range (read once per run; checkers of audit-gap
        evidence and the gap flags share it)."""
        if self._gaps is None:
            from tracer.analysis.gaps import seq_gaps

            self._gaps = seq_gaps(self.store, self.window)
        return self._gaps

    def allowed(self, topic: str, part: int) -> bool:
        """At most ``max_partitions`` partitions get per-partition queries in a run."""
        if (topic, part) not in self._asked:
            if len(self._asked) >= self.max_partitions:
                return False
            self._asked.add((topic, part))
        return True

    def history(self, topic: str, part: int, stages: tuple[str, ...], groups: Iterable[str]) -> History:
        key = (topic, part, stages)
        if key not in self._history:
            base = {"topic": topic, "part": part, **self.window.scan()}
            resets = [int(x) for x in self.store.query(render("reconcile_resets"), base, small=True)[0]["resets"]]
            start = self.broker.log_start(topic, part) if self.broker is not None and stages == BROKER_STAGES else None
            rows = self.store.query(render("reconcile_progress"), {
                **base, "resets": resets, "groups": sorted(set(groups)), "stages": list(stages),
                "below": start if start is not None else _NO_LIMIT}, small=True)
            self._history[key] = History(resets, {(p["consumer_group"], p["seg"]): Progress(
                p["max_off"], p["max_below"], p["by_msg"], p["by_stage"], p["at_ts"]) for p in rows})
        return self._history[key]


def _pending(rows: Iterable[Verdict]) -> list[Verdict]:
    return [r for r in rows if r.verdict == V.PENDING_IN_BROKER and r.consumer_group and r.facts is not None
            and r.facts.located and not r.decided_by]


def _by_partition(ctx: EvidenceContext, rows: list[Verdict]) -> dict[tuple[str, int], list[Verdict]]:
    out: dict[tuple[str, int], list[Verdict]] = {}
    for r in rows:
        assert r.facts is not None
        out.setdefault((r.topic, r.facts.loc_p), []).append(r)
    for (topic, part), rs in sorted(out.items()):
        if not ctx.allowed(topic, part):
            for r in rs:
                r.decided_by = "not checked (too many partitions)"
    return {k: [r for r in rs if not r.decided_by] for k, rs in sorted(out.items())}


def _mark_lost(r: Verdict, after: str, by: Evidence, text: str) -> None:
    r.refine(after, by.value, f"{r.evidence}; decided by {by.value}: {text}")


def log_start_passed(ctx: EvidenceContext, rows: list[Verdict], after: str) -> None:
    if ctx.broker is None:
        return
    for (topic, part), rs in _by_partition(ctx, _pending(rows)).items():
        start = ctx.broker.log_start(topic, part)
        if start is None:
            continue
        hist = ctx.history(topic, part, BROKER_STAGES, (r.consumer_group for r in rs))
        for r in rs:
            f = r.facts
            assert f is not None
            if start <= f.loc_o or hist.reset_after(f.cand_ts):
                continue
            p = hist.progress.get((r.consumer_group, hist.epoch(f.cand_ts)))
            if p is not None and p.max_below > f.loc_o:
                continue  # the group read that part of the log while the message was in it
            _mark_lost(r, after, Evidence.LOG_START_PASSED,
                       f"the partition's log starts at offset {start} (live), past offset {f.loc_o}, and the group "
                       "never read the offsets between them: retention deleted it before the group got there")


def later_acked_received(ctx: EvidenceContext, rows: list[Verdict], after: str) -> None:
    cands = _pending(rows)
    if not cands:
        return
    frontier = _frontier(ctx, cands)
    for r in cands:
        f = r.facts
        assert f is not None
        fr = frontier.get((r.topic, f.loc_p, r.consumer_group))
        if fr and fr.ack_ts > f.cand_ts:
            reused = " (its offset is not higher: the broker's log was reset and offsets reused)" \
                if fr.offset <= f.loc_o else ""
            _mark_lost(r, after, Evidence.LATER_ACKED_RECEIVED,
                       f"the group received {fr.msg_id!r}, acked later on the same partition at offset {fr.offset} "
                       f"at {fmt_us(fr.ack_ts)}{reused}")


def offset_passed_same_epoch(ctx: EvidenceContext, rows: list[Verdict], after: str) -> None:
    for (topic, part), rs in _by_partition(ctx, _pending(rows)).items():
        hist = ctx.history(topic, part, BROKER_STAGES, (r.consumer_group for r in rs))
        for r in rs:
            f = r.facts
            assert f is not None
            p = hist.progress.get((r.consumer_group, hist.epoch(f.cand_ts)))
            if p and p.max_off > f.loc_o:
                _mark_lost(r, after, Evidence.OFFSET_PASSED_SAME_EPOCH,
                           f"the group's {p.by_stage} reached offset {p.max_off} on partition {part} "
                           f"({p.by_msg!r} at {fmt_us(p.at_ts)}) in the same log epoch")


def live_committed_offset(ctx: EvidenceContext, rows: list[Verdict], after: str) -> None:
    if ctx.broker is None:
        return
    for (topic, part), rs in _by_partition(ctx, _pending(rows)).items():
        hist = ctx.history(topic, part, BROKER_STAGES, (r.consumer_group for r in rs))
        for r in rs:
            f = r.facts
            assert f is not None
            if hist.reset_after(f.cand_ts):
                continue
            c = ctx.broker.committed(r.consumer_group, topic, part)
            if c is not None and c > f.loc_o:
                _mark_lost(r, after, Evidence.LIVE_COMMITTED_OFFSET,
                           f"Kafka reports the group's committed offset {c} on partition {part} (live)")


def explain_pending(ctx: EvidenceContext, rows: list[Verdict]) -> None:
    """Why a pair stays pending_in_broker, in its evidence (after every check)."""
    for r in rows:
        if r.verdict != V.PENDING_IN_BROKER or r.decided_by:
            continue
        if not r.consumer_group:
            r.decided_by = "no consumer group seen on the topic"
            r.evidence += "; no consumer group is known for this topic (name one with --group)"
            continue
        f = r.facts
        if f is None or not f.located:
            continue
        hist = ctx._history.get((r.topic, f.loc_p, BROKER_STAGES))
        later_reset = hist is not None and hist.reset_after(f.cand_ts)
        why = "the broker's log was reset after the ack (offsets reused); no later evidence" if later_reset \
            else "the group has not reached this offset yet"
        r.decided_by = "no_evidence_of_passing"
        r.evidence += f"; {why}"


# --- the frontier: the latest ack among the messages a group received --------------------------

@dataclass(frozen=True, slots=True)
class Frontier:
    ack_ts: int
    msg_id: str
    offset: int


def _frontier(ctx: EvidenceContext, cands: list[Verdict]) -> dict[tuple[str, int, str], Frontier]:
    """``reconcile_frontier.sql``'s answer: per (topic, partition, group), the latest ack among the
    messages the group received on the given partitions.

    With ``ctx.skip`` and one group per topic, first from the latest ack per partition among the
    other messages (``reconcile_frontier_latest.sql``), checked against that message's own events:
    if the group received it on these partitions and its latest ack is that one, every message acked
    later on the partition is in ``skip`` (never received by the group), so it is the answer. Any
    answer that fails the check sends the whole question to ``reconcile_frontier.sql``.
    """
    topics = sorted({r.topic for r in cands})
    parts = sorted({r.facts.loc_p for r in cands if r.facts is not None})
    base = {**ctx.window.scan(), "topics": topics, "parts": parts}
    group_of: dict[str, set[str]] = {}
    for r in cands:
        group_of.setdefault(r.topic, set()).add(r.consumer_group)
    if ctx.skip is not None and all(len(g) == 1 for g in group_of.values()):
        found = _frontier_from_latest(ctx, cands, base, group_of)
        if found is not None:
            return found
    rows = ctx.store.query(render("reconcile_frontier"), {**base, "groups": sorted({r.consumer_group for r in cands})},
                           small=True)
    return {(f["topic"], f["part"], f["consumer_group"]): Frontier(f["frontier_ack_ts"], f["frontier_msg"],
                                                                   f["frontier_off"]) for f in rows}


def _frontier_from_latest(ctx: EvidenceContext, cands: list[Verdict], base: dict[str, Any],
                          group_of: dict[str, set[str]]) -> dict[tuple[str, int, str], Frontier] | None:
    latest = _latest_acks(ctx, base)
    if latest is None:
        return None
    ids = sorted({x["msg"] for x in latest})
    evs: dict[str, list[dict[str, Any]]] = {}
    if ids:
        for e in ctx.store.query(render("reconcile_frontier_check"), {**base, "ids": ids}, small=True):
            if e["topic"] in base["topics"] and e["part"] in base["parts"]:  # reconcile_frontier.sql's filter
                evs.setdefault(e["msg_id"], []).append(e)
    out: dict[tuple[str, int, str], Frontier] = {}
    asked = {(r.topic, r.facts.loc_p) for r in cands if r.facts is not None}
    for x in latest:
        if (x["topic"], x["part"]) not in asked:  # another topic's partition: not in question
            continue
        (g,) = group_of[x["topic"]]
        f = _message_frontier(evs.get(x["msg"], []))
        if f is None or f[0] != x["topic"] or f[1] != x["part"] or f[2] != x["ack_ts"] or g not in f[4]:
            return None
        out[(x["topic"], x["part"], g)] = Frontier(f[2], x["msg"], f[3])
    return out


def _latest_acks(ctx: EvidenceContext, base: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Per (topic, partition) of ``base``, the latest ack among the messages not in ``ctx.skip``
    and its message ({topic, part, ack_ts, msg}); None when that cannot be told this way.

    reconcile_frontier_latest.sql leaves out the acks stamped at the skipped messages' ack times
    (``ctx.skip_ts``) instead of the messages themselves, so that msg_id is read only where
    reconcile_frontier_acks.sql looks up the acks at the times found. Leaving out by time may hide an
    ack of another message at one of those times: the acks at every left-out time later than a
    partition's answer are read as well, and any of them by a message not skipped, or an answer
    stamped by several messages or by a skipped one (another of its acks), gives None (the caller
    then runs reconcile_frontier.sql)."""
    skip = ctx.skip or frozenset()
    never = ctx.window.cut_us  # outside [scan_from, cut): keeps the array non-empty (ClickHouse 18.16)
    best = {(x["topic"], int(x["part"])): int(x["ack_ts"]) for x in ctx.store.query(
        render("reconcile_frontier_latest"), {**base, "skip_ts": sorted(ctx.skip_ts | {never})}, small=True)}
    floor = min((best.get((t, p), 0) for t in base["topics"] for p in base["parts"]), default=0)
    times = set(best.values()) | {t for t in ctx.skip_ts if t > floor}
    if not times:
        return []
    acks: dict[tuple[str, int], dict[int, set[str]]] = {}
    for a in ctx.store.query(render("reconcile_frontier_acks"), {**base, "ts": sorted(times)}, small=True):
        acks.setdefault((a["topic"], int(a["part"])), {}).setdefault(int(a["ts_us"]), set()).add(a["msg_id"])
    out = []
    for key, by_ts in sorted(acks.items()):
        top = best.get(key, 0)
        if any(m not in skip for ts, ms in by_ts.items() if ts > top for m in ms):
            return None  # left out by its time only, acked later than the answer
        if key not in best:
            continue
        at = by_ts.get(top, set())
        if len(at) != 1 or at & skip:
            return None
        out.append({"topic": key[0], "part": key[1], "ack_ts": top, "msg": next(iter(at))})
    if any(key not in acks for key in best):
        return None  # an answer whose ack was not found again (events changed during the run)
    return out


def _message_frontier(events: list[dict[str, Any]]) -> tuple[str, int, int, int, set[str]] | None:
    """(topic, partition, ack time, ack offset, groups that received it) of one message as
    reconcile_frontier.sql sees it; None when it has no ack or the SQL's pick would be arbitrary."""
    acks = [e for e in events if e["stage"] == "broker_acked"]
    if not acks:
        return None
    ack = max(e["ts_us"] for e in acks)
    top = {(e["part"], e["off"]) for e in acks if e["ts_us"] == ack}
    named = {e["topic"] for e in events if e["topic"] != ""}
    if len(top) != 1 or len(named) > 1:
        return None
    (part, off), = top
    return (next(iter(named), ""), part, ack, off, {e["g"] for e in events if e["stage"] == "received"})
