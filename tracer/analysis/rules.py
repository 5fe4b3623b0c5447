"""The verdict rules: the one place a verdict rule is written.

A verdict is decided in two steps, and both are tables here:

1. :data:`RULES`, first match wins, over the facts of one (message, consumer group) pair that the
   audit events give (:class:`tracer.analysis.facts.PairFacts`: stage bitmasks, counts, rollback
   and replay facts). The SQL's decision expressions are generated from this table
   (:func:`verdict_sql`, :func:`flags_sql`, :func:`condition_sql`) and the one-message judge behind
   ``trace-msg`` evaluates the same table in Python (:func:`decide`), so the two cannot drift apart.
2. :data:`REFINEMENTS`: a verdict the audit alone leaves open (``pending_in_broker``,
   ``in_flight``) becomes a loss when outside evidence shows the group moved past the message. Each
   row names the evidence (:class:`Evidence`); the code that looks for it is in
   :mod:`tracer.analysis.broker` and :mod:`tracer.analysis.consumer`, registered by evidence name.
   New evidence (RabbitMQ queues, audit gaps of an emitter) is a new row and a new checker.
3. :data:`AUDIT_GAP_REFINEMENTS`: a loss verdict that rests on events the audit itself may have lost
   (an emitter's unrepaired seq gap) becomes ``audit_gap``; checked by :mod:`tracer.analysis.gaps`.

Stages and their bits come from :data:`tracer.events.STAGE_BITS`; verdict names from
:mod:`tracer.verdicts`. Verdicts cross the SQL boundary by name (checked against the contract on
the way back: :func:`checked`), never by a position in a tuple.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from tracer import verdicts as V
from tracer.events import STAGE_BITS, Stage

# --- stages and bits -----------------------------------------------------------------

#: Stages recorded on the producer side (judged once per message, shared by every group).
PRODUCER_STAGES: tuple[Stage, ...] = (Stage.SENT, Stage.SEND_FAILED, Stage.BROKER_ACKED, Stage.ROLLED_BACK)
#: Stages recorded by a consumer group.
CONSUMER_STAGES: tuple[Stage, ...] = tuple(s for s in Stage if s not in PRODUCER_STAGES)


def bit(*stages: Stage) -> int:
    """The OR of the stages' bits (tracer.events.STAGE_BITS)."""
    m = 0
    for s in stages:
        m |= STAGE_BITS[s.value]
    return m


SENT, SEND_FAILED, BROKER_ACKED, ROLLED_BACK = (bit(s) for s in PRODUCER_STAGES)
RECEIVED, OFFSET_COMMITTED, BUSINESS_DONE, BUSINESS_FAILED, DEAD_LETTERED = (
    bit(Stage.RECEIVED), bit(Stage.OFFSET_COMMITTED), bit(Stage.BUSINESS_DONE), bit(Stage.BUSINESS_FAILED),
    bit(Stage.DEAD_LETTERED))
PRODUCER_MASK = bit(*PRODUCER_STAGES)
CONSUMER_MASK = bit(*CONSUMER_STAGES)
ALL_STAGES_MASK = PRODUCER_MASK | CONSUMER_MASK
#: Pseudo-bit above every stage: an event of a ``msgtrace replay`` run (attrs ``replay_run``).
REPLAY_BIT = 1 << len(STAGE_BITS)
#: The attribute that marks an event of a replay run (tracer.replay.plan.REPLAY_ATTR).
REPLAY_ATTR = "replay_run"
#: Pipeline order for "the furthest stage reached" (an outcome is further than a commit).
ORDER: tuple[Stage, ...] = (Stage.SENT, Stage.SEND_FAILED, Stage.BROKER_ACKED, Stage.ROLLED_BACK, Stage.RECEIVED,
                            Stage.OFFSET_COMMITTED, Stage.BUSINESS_FAILED, Stage.DEAD_LETTERED, Stage.BUSINESS_DONE)
assert set(ORDER) == set(Stage), "every stage has a place in ORDER"


def stages_of(mask: int) -> list[str]:
    """Stage names whose bits are set in ``mask``, in pipeline order."""
    return [s.value for s in ORDER if mask & STAGE_BITS[s.value]]


def furthest(mask: int) -> str:
    reached = stages_of(mask)
    return reached[-1] if reached else "none"


# --- conditions over pair facts ---------------------------------------------------------

class Facts(Protocol):
    """What the rules read (tracer.analysis.facts.PairFacts has these attributes)."""

    pmask: int
    cmask: int
    any_cmask: int
    n_recv: int
    n_done: int
    rb_open: bool
    replay_mask: int


#: fact name -> SQL expression giving it (a column name, or an expression in a lean scan)
Names = Mapping[str, str]


class Cond:
    """A condition over pair facts that renders as SQL and evaluates in Python."""

    def sql(self, names: Names) -> str:
        raise NotImplementedError

    def holds(self, f: Facts) -> bool:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Has(Cond):
    """``fact`` has any of ``bits`` set."""

    fact: str
    bits: int

    def sql(self, names: Names) -> str:
        return f"bitAnd({names[self.fact]}, {self.bits}) != 0"

    def holds(self, f: Facts) -> bool:
        return bool(int(getattr(f, self.fact)) & self.bits)


@dataclass(frozen=True, slots=True)
class Lacks(Cond):
    """``fact`` has none of ``bits`` set (``Lacks(f, ALL)`` = nothing recorded)."""

    fact: str
    bits: int

    def sql(self, names: Names) -> str:
        return f"bitAnd({names[self.fact]}, {self.bits}) = 0"

    def holds(self, f: Facts) -> bool:
        return not int(getattr(f, self.fact)) & self.bits


@dataclass(frozen=True, slots=True)
class Above(Cond):
    """The count ``fact`` is above ``n``."""

    fact: str
    n: int = 0

    def sql(self, names: Names) -> str:
        return f"{names[self.fact]} > {self.n}"

    def holds(self, f: Facts) -> bool:
        return int(getattr(f, self.fact)) > self.n


@dataclass(frozen=True, slots=True)
class IsTrue(Cond):
    """The boolean fact ``fact``."""

    fact: str

    def sql(self, names: Names) -> str:
        return f"({names[self.fact]}) != 0"

    def holds(self, f: Facts) -> bool:
        return bool(getattr(f, self.fact))


@dataclass(frozen=True, slots=True)
class All(Cond):
    parts: tuple[Cond, ...]

    def sql(self, names: Names) -> str:
        return "(" + " AND ".join(p.sql(names) for p in self.parts) + ")" if self.parts else "1"

    def holds(self, f: Facts) -> bool:
        return all(p.holds(f) for p in self.parts)


@dataclass(frozen=True, slots=True)
class Not(Cond):
    part: Cond

    def sql(self, names: Names) -> str:
        return f"NOT ({self.part.sql(names)})"

    def holds(self, f: Facts) -> bool:
        return not self.part.holds(f)


def every(*parts: Cond) -> All:
    return All(tuple(parts))


ALWAYS = All(())

# --- the verdict rules ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """``verdict`` when ``when`` holds (and no earlier rule did)."""

    verdict: str
    when: Cond
    why: str


#: First match wins. Consumer-side evidence outranks producer-side failure (DESIGN.md, Verdicts).
RULES: tuple[Rule, ...] = (
    Rule(V.DELIVERED, Has("replay_mask", BUSINESS_DONE),
         "a replay of the message (msgtrace replay) reached business_done in this group"),
    Rule(V.NEVER_SENT, every(Lacks("pmask", ALL_STAGES_MASK), Lacks("any_cmask", ALL_STAGES_MASK)),
         "expected, and no event recorded at all"),
    Rule(V.AUDIT_GAP, Lacks("pmask", SENT | SEND_FAILED), "a later stage without any sent or send_failed"),
    Rule(V.AUDIT_GAP, every(Has("pmask", BROKER_ACKED), Lacks("pmask", SENT)), "broker_acked without sent"),
    Rule(V.AUDIT_GAP, every(Has("cmask", CONSUMER_MASK), Lacks("cmask", RECEIVED)),
         "a consumer stage of the group without received"),
    Rule(V.DELIVERED, Above("n_done"), "business_done"),
    Rule(V.DEAD_LETTERED, Has("cmask", DEAD_LETTERED), "dead_lettered, no business_done"),
    Rule(V.FAILED_AND_COMMITTED, every(Has("cmask", BUSINESS_FAILED), Has("cmask", OFFSET_COMMITTED)),
         "business_failed and offset_committed, no business_done"),
    Rule(V.LOST_IN_CONSUMER, Has("cmask", OFFSET_COMMITTED), "received and committed, no business outcome"),
    Rule(V.IN_FLIGHT, Has("cmask", RECEIVED), "received, not committed, no outcome"),
    Rule(V.ROLLED_BACK, IsTrue("rb_open"), "rolled_back, and no later sent that was acked"),
    Rule(V.PENDING_IN_BROKER, Has("pmask", BROKER_ACKED), "broker_acked, not received by the group"),
    Rule(V.PENDING_IN_BROKER, Has("any_cmask", CONSUMER_MASK),
         "another group received it: the broker stored it (its ack was lost)"),
    Rule(V.SEND_FAILED, Has("pmask", SEND_FAILED), "send_failed, never broker_acked"),
    Rule(V.UNACKED, ALWAYS, "sent, neither broker_acked nor send_failed"),
)

#: The flags beside a verdict, each with its condition.
FLAG_RULES: tuple[Rule, ...] = (
    Rule(V.REDELIVERED, Above("n_recv", 1), "received more than once"),
    Rule(V.DUPLICATE_PROCESSING, Above("n_done", 1), "business_done more than once"),
    Rule(V.ACK_LOST, every(Has("pmask", SEND_FAILED), Lacks("pmask", BROKER_ACKED), Has("any_cmask", CONSUMER_MASK)),
         "the producer saw a failure, but the broker had stored it"),
    Rule(V.REPLAYED, Has("replay_mask", ALL_STAGES_MASK), "re-published by msgtrace replay"),
)


def checked(verdict: str, flags: list[str]) -> tuple[str, list[str]]:
    """A verdict and flags as SQL named them, refused unless they are contract names."""
    if verdict not in V.VERDICTS or any(fl not in V.FLAGS for fl in flags):
        raise ValueError(f"not a verdict of the contract: {verdict!r} {flags!r}")
    return verdict, list(flags)


def decide(f: Facts) -> tuple[str, list[str]]:
    """The verdict and flags of one pair (the Python twin of :func:`verdict_sql` / :func:`flags_sql`)."""
    verdict = next(r.verdict for r in RULES if r.when.holds(f))
    return verdict, [r.verdict for r in FLAG_RULES if r.when.holds(f)]


def stopped_at(verdict: str, f: Facts) -> str:
    """The stage the pair stopped at: fixed per verdict, except audit_gap (the furthest stage
    recorded) and in_flight after a business_failed."""
    if verdict == V.AUDIT_GAP:
        return furthest(f.pmask | f.cmask)
    if verdict == V.IN_FLIGHT and f.cmask & BUSINESS_FAILED:
        return Stage.BUSINESS_FAILED.value
    return V.STOPPED_AT.get(verdict, "none")


# --- SQL generated from the rules ------------------------------------------------------------

def _quote(s: str) -> str:
    assert "'" not in s and "\\" not in s, s  # names from the contract, never input
    return f"'{s}'"


def verdict_sql(names: Names) -> str:
    """``multiIf`` naming the verdict of a pair (first matching rule of :data:`RULES`)."""
    arms = [f"{r.when.sql(names)}, {_quote(r.verdict)}" for r in RULES[:-1]]
    return "multiIf(" + ", ".join(arms) + f", {_quote(RULES[-1].verdict)})"


def flags_sql(names: Names) -> str:
    """The pair's flags as ``Array(String)``, in :data:`FLAG_RULES` order."""
    arms = ", ".join(f"if({r.when.sql(names)}, {_quote(r.verdict)}, '')" for r in FLAG_RULES)
    return f"arrayFilter(x -> x != '', [{arms}])"


def condition_sql(verdict: str, names: Names) -> str:
    """True where :data:`RULES` give ``verdict``: no earlier rule holds and one of its rules does."""
    parts: list[str] = []
    earlier: list[Cond] = []
    for r in RULES:
        if r.verdict == verdict:
            parts.append(every(*(Not(c) for c in earlier), r.when).sql(names))
        earlier.append(r.when)
    if not parts:
        raise ValueError(f"no rule gives {verdict!r}")
    return "(" + " OR ".join(parts) + ")"


def no_flags_sql(names: Names) -> str:
    """True where no flag of :data:`FLAG_RULES` holds."""
    return every(*(Not(r.when) for r in FLAG_RULES)).sql(names)


def plain_sql(names: Names) -> str:
    """A plainly delivered pair (only counted, never listed): delivered and no flag."""
    return f"({condition_sql(V.DELIVERED, names)} AND {no_flags_sql(names)})"


def stage_bit_sql(column: str = "stage") -> str:
    """The stage bit of an event (0 for an unknown stage), from tracer.events.STAGE_BITS."""
    names = ", ".join(_quote(s) for s in STAGE_BITS)
    bits = ", ".join(str(b) for b in STAGE_BITS.values())
    return f"toUInt16(transform({column}, [{names}], [{bits}], 0))"


def stage_list_sql(stages: tuple[Stage, ...]) -> str:
    """``('sent', ...)`` for ``stage IN ...``."""
    return "(" + ", ".join(_quote(s.value) for s in stages) + ")"


def popcount_sql(expr: str, bits: int) -> str:
    """How many of ``bits`` are set in ``expr`` (18.16 has no bitCount)."""
    terms = [f"bitAnd(bitShiftRight({expr}, {i}), 1)" for i in range(bits.bit_length()) if bits >> i & 1]
    return "(" + " + ".join(terms) + ")"


# --- evidence refinements ------------------------------------------------------------------------

class Evidence(StrEnum):
    """Outside evidence that decides a verdict the audit alone leaves open (``decided_by``)."""

    LOG_START_PASSED = "log_start_passed"
    LATER_ACKED_RECEIVED = "later_acked_received"
    OFFSET_PASSED_SAME_EPOCH = "offset_passed_same_epoch"
    LIVE_COMMITTED_OFFSET = "live_committed_offset"
    COMMITTED_OFFSET_PASSED = "committed_offset_passed"
    QUEUE_DELIVERED_LATER = "queue_delivered_later"
    QUEUE_NEVER_REDELIVERED = "queue_never_redelivered"
    #: the audit's own gaps (tracer.analysis.gaps): not evidence of a loss, evidence that the audit
    #: cannot tell (AUDIT_GAP_REFINEMENTS)
    PRODUCER_SEQ_GAP = "producer_seq_gap"
    CONSUMER_SEQ_GAP = "consumer_seq_gap"


@dataclass(frozen=True, slots=True)
class Refinement:
    """``before`` becomes ``after`` when ``evidence`` is found (rows of one ``before`` tried in order)."""

    before: str
    after: str
    evidence: Evidence
    why: str


REFINEMENTS: tuple[Refinement, ...] = (
    Refinement(V.PENDING_IN_BROKER, V.EXPIRED_IN_BROKER, Evidence.LOG_START_PASSED,
               "the partition's log start (read live) is past the offset, in the same log epoch, and the group "
               "never read that part of the log while the message was in it: retention deleted it"),
    Refinement(V.PENDING_IN_BROKER, V.LOST_IN_BROKER, Evidence.LATER_ACKED_RECEIVED,
               "the group received a message acked later on the same partition (holds across offset reuse)"),
    Refinement(V.PENDING_IN_BROKER, V.LOST_IN_BROKER, Evidence.OFFSET_PASSED_SAME_EPOCH,
               "the group received or committed a higher offset on the partition in the same log epoch"),
    Refinement(V.PENDING_IN_BROKER, V.LOST_IN_BROKER, Evidence.LIVE_COMMITTED_OFFSET,
               "Kafka reports the group's committed offset past it (live; no log reset since)"),
    Refinement(V.PENDING_IN_BROKER, V.LOST_IN_BROKER, Evidence.QUEUE_DELIVERED_LATER,
               "RabbitMQ (no offsets): the queue delivered a message sent after this one was acked, from the same "
               "host to the same exchange and routing key; a queue delivers in order"),
    Refinement(V.IN_FLIGHT, V.LOST_IN_CONSUMER, Evidence.COMMITTED_OFFSET_PASSED,
               "the group committed past it after receiving it, in the same log epoch"),
    Refinement(V.IN_FLIGHT, V.LOST_IN_CONSUMER, Evidence.LIVE_COMMITTED_OFFSET,
               "Kafka reports the group's committed offset past it (live; no log reset since)"),
    Refinement(V.IN_FLIGHT, V.LOST_IN_CONSUMER, Evidence.QUEUE_NEVER_REDELIVERED,
               "RabbitMQ (no offsets): the delivery was neither acked nor redelivered for longer than the grace "
               "while its queue went on delivering; RabbitMQ requeues an unacked delivery when its channel "
               "closes, so its consumer settled it outside the hooks or still holds it unprocessed"),
)


#: msgtrace never turns its own missing evidence into a loss (DESIGN.md, audit_gap): a loss verdict
#: that rests on the absence of events an emitter may have lost (an unrepaired seq gap, found and
#: checked by tracer.analysis.gaps after the refinements above) is ``audit_gap`` instead. Rows of
#: one ``before`` are tried in order.
AUDIT_GAP_REFINEMENTS: tuple[Refinement, ...] = (
    Refinement(V.NEVER_SENT, V.AUDIT_GAP, Evidence.PRODUCER_SEQ_GAP,
               "a producer emitter lost events while the id could have been sent (its expected time, when the "
               "source gives one, lies in the gap's time range)"),
    Refinement(V.SEND_FAILED, V.AUDIT_GAP, Evidence.PRODUCER_SEQ_GAP,
               "an emitter producing to the topic lost events after the failure: a retry's broker_acked may be "
               "among them"),
    Refinement(V.LOST_IN_BROKER, V.AUDIT_GAP, Evidence.CONSUMER_SEQ_GAP,
               "an emitter of the group lost events after the message was acked: its received may be among them"),
    Refinement(V.EXPIRED_IN_BROKER, V.AUDIT_GAP, Evidence.CONSUMER_SEQ_GAP,
               "an emitter of the group lost events after the message was acked: its received may be among them"),
    Refinement(V.LOST_IN_CONSUMER, V.AUDIT_GAP, Evidence.CONSUMER_SEQ_GAP,
               "an emitter of the group lost events after the message was received: its outcome may be among them"),
    Refinement(V.FAILED_AND_COMMITTED, V.AUDIT_GAP, Evidence.CONSUMER_SEQ_GAP,
               "an emitter of the group lost events after the failure: a retry's business_done may be among them"),
)


def consumer_loss(failed: bool) -> str:
    """A refined in_flight: failed_and_committed after a business_failed, else lost_in_consumer."""
    return V.FAILED_AND_COMMITTED if failed else V.LOST_IN_CONSUMER
