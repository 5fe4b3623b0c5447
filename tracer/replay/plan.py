"""Which lost messages a replay re-publishes, from where, and why not.

A reconcile verdict says a message is lost for a consumer group; this module turns the verdicts
(one row per (msg_id, group)) and the message's own audit events into one :class:`Item` per
message: the sources to try in order, the topic to publish to, or the reason it is skipped.

Where a message can still be had depends on where it was lost (DESIGN.md, Verdicts):

* lost in the consumer (``lost_in_consumer``, ``failed_and_committed``, ``in_flight`` past the grace):
  the broker still holds it at the partition/offset its events name (broker_acked, else received);
* ``dead_lettered``: the DLQ topic its dead_lettered event names, then the business topic;
* lost before or inside the broker (``never_sent``, ``send_failed``, ``unacked``, ``lost_in_broker``,
  ``expired_in_broker``): the broker should not have it; the source of truth rebuilds it. One that was
  acknowledged is first looked for at its acked offset (a group that skipped it by an offset reset
  leaves it there): only a record whose ``msgtrace-id`` header proves it is the message is used.

The source of truth (``--source-sql``) is the last resort for every message: a consumer-side loss
whose offset retention has deleted is rebuilt from it too. Nothing here does I/O except the store
reads of :func:`load_facts`; the decisions are plain functions (unit-tested without services).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tracer import verdicts as V
from tracer.analysis.reconcile import fmt_us
from tracer.events import REPLAY_ATTR
from tracer.identity import REPLAY_HEADER

__all__ = ["REPLAY_ATTR", "REPLAY_HEADER"]  # re-exported: tracer.replay names them too

#: the broker still has it: read it from the business topic at its offset
CONSUMER_SIDE: frozenset[str] = frozenset({V.LOST_IN_CONSUMER, V.FAILED_AND_COMMITTED, V.IN_FLIGHT})
#: the broker does not have it: rebuild it from the source of truth
PRODUCER_SIDE: frozenset[str] = frozenset({V.NEVER_SENT, V.SEND_FAILED, V.UNACKED, V.LOST_IN_BROKER,
                                           V.EXPIRED_IN_BROKER})
#: every verdict a replay re-publishes (the default of --verdict)
REPLAYABLE: frozenset[str] = CONSUMER_SIDE | PRODUCER_SIDE | {V.DEAD_LETTERED}
#: why the other verdicts are not replayed
NOT_REPLAYABLE_WHY: dict[str, str] = {
    V.DELIVERED: "delivered: nothing to replay",
    V.PENDING_IN_BROKER: "not lost yet: the group has not reached it (lag); judge again later",
    V.AUDIT_GAP: "the audit lost events of this message: check it (trace-msg) before replaying it by hand",
    V.ROLLED_BACK: "rolled back by its producer on purpose: never meant to be delivered",
}


class Source(StrEnum):
    """Where a replayed message is read from."""

    BUSINESS_TOPIC = "business_topic"
    DLQ = "dlq"
    SOURCE_OF_TRUTH = "source_of_truth"


class Result(StrEnum):
    PLANNED = "planned"      # would be / is about to be re-published (a dry run stops here)
    PUBLISHED = "published"  # the broker acknowledged the re-published message
    SKIPPED = "skipped"      # not re-published: ``why`` says why
    FAILED = "failed"        # the re-publish failed or was not acknowledged


class Why(StrEnum):
    """Stable reason codes of skipped and failed messages (stored, counted in the output)."""

    ALREADY_REPLAYED = "already_replayed"
    NOT_REPLAYABLE = "not_replayable"
    IN_FLIGHT_WITHIN_GRACE = "in_flight_within_grace"
    NO_SOURCE_OF_TRUTH = "no_source_of_truth"
    NO_BOOTSTRAP = "no_bootstrap"
    NO_LOCATION = "no_location"
    TOPIC_GONE = "topic_gone"
    BELOW_LOG_START = "below_log_start"
    BEYOND_LOG_END = "beyond_log_end"
    OFFSET_REUSED = "offset_reused"
    IDENTITY_UNVERIFIED = "identity_unverified"
    NOT_AT_OFFSET = "not_at_offset"
    NOT_IN_DLQ = "not_in_dlq"
    NOT_IN_SOURCE = "not_in_source"
    AMBIGUOUS_SOURCE = "ambiguous_source"
    NO_TARGET_TOPIC = "no_target_topic"
    READ_FAILED = "read_failed"
    SEND_FAILED = "send_failed"
    NO_ACK = "no_ack"


#: skipped for these reasons, a message is not "still lost" (exit 0 allowed)
NOT_LOST_WHY: frozenset[str] = frozenset({Why.ALREADY_REPLAYED, Why.IN_FLIGHT_WITHIN_GRACE, Why.NOT_REPLAYABLE})


@dataclass(frozen=True, slots=True)
class Location:
    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"


@dataclass(slots=True)
class VerdictRow:
    """One stored verdict: a (message, consumer group) pair a reconcile run judged."""

    msg_id: str
    consumer_group: str
    topic: str
    verdict: str
    flags: list[str] = field(default_factory=list)
    evidence: str = ""


@dataclass(frozen=True, slots=True)
class DlqHint:
    """What a dead_lettered event says about the DLQ copy: its topic, and where, if recorded."""

    topic: str
    ts_us: int
    partition: int | None = None
    offset: int | None = None


@dataclass(slots=True)
class Facts:
    """What a message's own events say, for replaying it (replay events kept apart)."""

    business_topic: str = ""
    acked: Location | None = None
    received: dict[str, Location] = field(default_factory=dict)  # group -> first receipt
    last_ts: dict[str, int] = field(default_factory=dict)  # group -> last event time
    dlq: list[DlqHint] = field(default_factory=list)
    done_groups: set[str] = field(default_factory=set)
    replays: dict[str, int] = field(default_factory=dict)  # replay run -> ack time


@dataclass(slots=True)
class Message:
    """The bytes to re-publish."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass(slots=True)
class Item:
    """One message of a replay run: the plan, then what happened."""

    msg_id: str
    groups: list[str]
    verdicts: list[str]
    chain: list[Source] = field(default_factory=list)
    location: Location | None = None
    dlq: list[DlqHint] = field(default_factory=list)
    business_topic: str = ""
    target_topic: str = ""
    result: Result = Result.PLANNED
    why: str = ""
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    message: Message | None = field(default=None, repr=False)
    source: Source | None = None
    source_loc: Location | None = None
    published: Location | None = None
    #: a record read at ``location`` must prove it is this message (msgtrace-id header)
    strict: bool = False

    def skip(self, why: Why, reason: str) -> None:
        self.result, self.why, self.reason = Result.SKIPPED, why.value, reason

    def fail(self, why: Why, reason: str) -> None:
        self.result, self.why, self.reason = Result.FAILED, why.value, reason

    def found(self, source: Source, message: Message, loc: Location | None, note: str = "") -> None:
        self.source, self.message, self.source_loc = source, message, loc
        if note:
            self.notes.append(note)

    @property
    def open(self) -> bool:
        """Planned, and no source has supplied the message yet."""
        return self.result == Result.PLANNED and self.message is None

    @property
    def still_lost(self) -> bool:
        """Not re-published (or not acknowledged) though it is lost."""
        if self.result == Result.PUBLISHED:
            return False
        return not (self.result == Result.SKIPPED and self.why in NOT_LOST_WHY)

    def from_where(self) -> str:
        if self.source == Source.SOURCE_OF_TRUTH:
            return "the source of truth"
        if self.source is not None and self.source_loc is not None:
            return f"{'the DLQ ' if self.source == Source.DLQ else ''}{self.source_loc}"
        where = {Source.BUSINESS_TOPIC: str(self.location) if self.location else "the business topic",
                 Source.DLQ: f"the DLQ {self.dlq[-1].topic}" if self.dlq and self.dlq[-1].topic else "the DLQ",
                 Source.SOURCE_OF_TRUTH: "the source of truth"}
        return " or ".join(where[s] for s in self.chain) or "-"


# --- facts from events ---------------------------------------------------------------

def attrs_of(row: Mapping[str, Any]) -> dict[str, str]:
    return dict(zip(row.get("attr_keys") or (), row.get("attr_values") or ()))


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def facts_from_events(rows: Sequence[Mapping[str, Any]]) -> Facts:
    """Facts of one message from its event rows (``queries/replay_events.sql``, in time order)."""
    f = Facts()
    own = [r for r in rows if REPLAY_ATTR not in (r.get("attr_keys") or ())]
    for r in own:  # the business topic: where the producer sent it
        if r["stage"] in ("sent", "broker_acked", "send_failed") and r["topic"]:
            f.business_topic = r["topic"]
    for r in own:
        stage, g = r["stage"], r["g"]
        loc = Location(r["topic"], int(r["part"]), int(r["off"])) if r["part"] >= 0 and r["off"] >= 0 else None
        if g:
            f.last_ts[g] = max(f.last_ts.get(g, 0), int(r["ts_us"]))
        if stage == "broker_acked" and loc is not None:
            f.acked = loc
        elif stage == "received" and loc is not None and g not in f.received:
            if not f.business_topic:
                f.business_topic = loc.topic
            if loc.topic == f.business_topic:
                f.received[g] = loc
        elif stage == "business_done" and g:
            f.done_groups.add(g)
        elif stage == "dead_lettered":
            f.dlq.append(dlq_hint(r, f.business_topic))
    for r in rows:
        if r["stage"] == "business_done" and r["g"]:
            f.done_groups.add(r["g"])
        if r["stage"] == "broker_acked" and REPLAY_ATTR in (r.get("attr_keys") or ()):
            run = attrs_of(r)[REPLAY_ATTR]
            f.replays[run] = max(f.replays.get(run, 0), int(r["ts_us"]))
    return f


def dlq_hint(r: Mapping[str, Any], business_topic: str) -> DlqHint:
    """The DLQ of a dead_lettered event: attrs ``dlq_topic`` (or ``dlq``), else the event's topic when it
    is not the business topic (``record("dead_lettered", id, topic=DLQ)``, as the demo does). Where its
    copy is: attrs ``dlq_partition`` and ``dlq_offset`` only; the event's own partition/offset are the
    business record's when it was recorded from the consumer record (``record(stage, record, ...)``)."""
    a = attrs_of(r)
    named = a.get("dlq_topic") or a.get("dlq") or ""
    topic = named or (r["topic"] if r["topic"] and r["topic"] != business_topic else "")
    part, off = _int_or_none(a.get("dlq_partition")), _int_or_none(a.get("dlq_offset"))
    if part is None or off is None:
        part = off = None
    return DlqHint(topic, int(r["ts_us"]), part, off)


# --- the plan ------------------------------------------------------------------------

@dataclass(slots=True)
class PlanOptions:
    to_topic: str | None = None
    has_source_of_truth: bool = False
    again: bool = False
    grace_s: int = 600
    now_us: int = 0


def plan_item(msg_id: str, rows: Sequence[VerdictRow], facts: Facts, prior: Mapping[str, int],
              opts: PlanOptions) -> Item:
    """The plan of one message from its verdict rows, its events and earlier replay runs
    (run id -> time)."""
    groups = sorted({r.consumer_group for r in rows if r.consumer_group})
    item = Item(msg_id, groups, sorted({r.verdict for r in rows}, key=_verdict_order), dlq=list(facts.dlq),
                business_topic=facts.business_topic or next((r.topic for r in rows
                                                             if r.topic and r.verdict != V.DEAD_LETTERED), ""))
    live = [r for r in rows if r.verdict in REPLAYABLE]
    if not live:
        v = item.verdicts[0] if item.verdicts else "?"
        item.skip(Why.NOT_REPLAYABLE, NOT_REPLAYABLE_WHY.get(v, f"verdict {v} is not replayed"))
        return item
    before = {**facts.replays, **prior}
    if before and not opts.again:
        run, at = max(before.items(), key=lambda kv: kv[1])
        item.skip(Why.ALREADY_REPLAYED, f"already re-published by replay run {run} at {fmt_us(at)} "
                                        "(--again replays it anyway)")
        return item
    waiting = [r for r in live if r.verdict == V.IN_FLIGHT
               and opts.now_us - facts.last_ts.get(r.consumer_group, 0) < opts.grace_s * 1_000_000]
    if waiting and len(waiting) == len(live):
        g = waiting[0].consumer_group
        age = (opts.now_us - facts.last_ts.get(g, 0)) // 1_000_000
        item.skip(Why.IN_FLIGHT_WITHIN_GRACE, f"in flight for {g} since {age} s, within the grace of {opts.grace_s} s: "
                                              "not committed, so the group may still redeliver it")
        return item
    kinds = {r.verdict for r in live}
    if kinds & {V.DEAD_LETTERED}:
        item.chain.append(Source.DLQ)
    acked = facts.acked if facts.acked and facts.acked.topic == item.business_topic else None
    if kinds & (CONSUMER_SIDE | {V.DEAD_LETTERED}):
        item.chain.append(Source.BUSINESS_TOPIC)
        item.location = acked or next((facts.received[g] for g in groups if g in facts.received), None) \
            or next(iter(facts.received.values()), None)
    elif acked is not None:
        # lost or expired in the broker: does the broker still hold it after all (a group that skipped
        # it by an offset reset)? Only a record proven to be it by its msgtrace-id header counts
        item.chain.append(Source.BUSINESS_TOPIC)
        item.location, item.strict = acked, True
    if opts.has_source_of_truth:
        item.chain.append(Source.SOURCE_OF_TRUTH)
    if not item.chain:
        v = min(kinds, key=_verdict_order)
        item.skip(Why.NO_SOURCE_OF_TRUTH, f"{v}: the broker does not have it; give --source-sql and --source-dsn "
                                          "to rebuild it from the source of truth (e.g. an outbox table)")
        return item
    item.target_topic = opts.to_topic or item.business_topic
    if not opts.to_topic:
        others = sorted(facts.done_groups - set(groups))
        if others:
            item.notes.append(f"re-published to the shared topic: also re-delivered to {', '.join(others)}, "
                              "which already processed it (use --to-topic)")
    if V.IN_FLIGHT in kinds:
        item.notes.append("in flight past the grace: not committed, so the group may still redeliver the "
                          "original too; the handler must be idempotent")
    return item


def _verdict_order(v: str) -> int:
    return V.VERDICTS.index(v) if v in V.VERDICTS else len(V.VERDICTS)


def by_message(rows: Iterable[VerdictRow]) -> dict[str, list[VerdictRow]]:
    out: dict[str, list[VerdictRow]] = {}
    for r in rows:
        out.setdefault(r.msg_id, []).append(r)
    return out
