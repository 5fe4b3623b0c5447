"""Loss bursts: the non-delivered pairs of a window merged into runs that share a cause, each said in
words with the evidence behind it ("312 messages acked on order-paid/2 between 10:01:05 and 10:01:40
never reached red-packet, while messages acked later on the same partition did: the broker lost
acknowledged messages").

A burst is a run of pairs with one verdict on one topic that are contiguous in time (no quiet stretch
longer than ``gap``) and share the place the verdict points at (the *locus*):

* producer side (never_sent, send_failed, unacked, rolled_back): the producer host. Partitions do not
  matter (most such messages have none) and the groups that missed the message are listed together;
* broker side (lost_in_broker, expired_in_broker, pending_in_broker): the topic. One broker crash loses
  several partitions from many producer hosts at once: one burst listing the partitions;
* consumer side (lost_in_consumer, failed_and_committed, in_flight, dead_lettered): the consumer group
  and the consumer host. One crashed consumer loses what it held on every partition it owned;
* audit_gap: the topic and group.

Every other dimension (partitions, producer hosts, consumer hosts, instances, evidence, errors) is
counted inside the burst, so "verdict x topic x partition x producer host x consumer host x time" is
all there without one cause being cut into dozens of bursts. The pairs are those the reconcile
listed (never more than the window's non-delivered pairs); where each side ran comes from
``incident_locate.sql``, read by key for those messages only.
"""
from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tracer import verdicts as V
from tracer.analysis.evidence import fmt_us
from tracer.analysis.result import Verdict
from tracer.analysis.rules import Evidence

#: default quiet stretch that ends a burst
GAP_S = 300
#: sample msg_ids (and trace-msg commands) per burst
SAMPLES = 5


class Side(StrEnum):
    PRODUCER = "producer"
    BROKER = "broker"
    CONSUMER = "consumer"
    AUDIT = "audit"


class Cause(StrEnum):
    """What a burst's evidence means, as a stable name (the words are in :func:`describe`)."""

    PRODUCER_SKIPPED_SEND = "producer_skipped_send"  # never_sent
    SEND_FAILED_NOT_RETRIED = "send_failed_not_retried"  # send_failed
    NO_BROKER_ANSWER = "no_broker_answer"  # unacked
    TRANSACTION_ABORTED = "transaction_aborted"  # rolled_back
    BROKER_LOST_ACKED = "broker_lost_acked"  # lost_in_broker
    RETENTION_DELETED = "retention_deleted"  # expired_in_broker
    GROUP_LAGS = "group_lags"  # pending_in_broker
    COMMITTED_BEFORE_DONE = "committed_before_done"  # lost_in_consumer
    HANDLER_ERROR_COMMITTED = "handler_error_committed"  # failed_and_committed
    AWAITING_REDELIVERY = "awaiting_redelivery"  # in_flight
    PARKED_IN_DLQ = "parked_in_dlq"  # dead_lettered
    AUDIT_LOST_EVENTS = "audit_lost_events"  # audit_gap


#: verdict -> (side, cause)
KIND: dict[str, tuple[Side, Cause]] = {
    V.NEVER_SENT: (Side.PRODUCER, Cause.PRODUCER_SKIPPED_SEND),
    V.SEND_FAILED: (Side.PRODUCER, Cause.SEND_FAILED_NOT_RETRIED),
    V.UNACKED: (Side.PRODUCER, Cause.NO_BROKER_ANSWER),
    V.ROLLED_BACK: (Side.PRODUCER, Cause.TRANSACTION_ABORTED),
    V.LOST_IN_BROKER: (Side.BROKER, Cause.BROKER_LOST_ACKED),
    V.EXPIRED_IN_BROKER: (Side.BROKER, Cause.RETENTION_DELETED),
    V.PENDING_IN_BROKER: (Side.BROKER, Cause.GROUP_LAGS),
    V.LOST_IN_CONSUMER: (Side.CONSUMER, Cause.COMMITTED_BEFORE_DONE),
    V.FAILED_AND_COMMITTED: (Side.CONSUMER, Cause.HANDLER_ERROR_COMMITTED),
    V.IN_FLIGHT: (Side.CONSUMER, Cause.AWAITING_REDELIVERY),
    V.DEAD_LETTERED: (Side.CONSUMER, Cause.PARKED_IN_DLQ),
    V.AUDIT_GAP: (Side.AUDIT, Cause.AUDIT_LOST_EVENTS),
}
assert set(KIND) == set(V.VERDICTS) - {V.DELIVERED}, "a side and cause for every non-delivered verdict"


@dataclass(slots=True)
class Located:
    """Where one message's sides ran (``incident_locate.sql``): side '' the producer, else a group."""

    host: dict[str, str] = field(default_factory=dict)  # side -> host
    instance: dict[str, str] = field(default_factory=dict)  # side -> host/pid
    service: dict[str, str] = field(default_factory=dict)
    receivers: dict[str, list[str]] = field(default_factory=dict)  # group -> host/pid that received it
    first_receiver: dict[str, str] = field(default_factory=dict)
    last_receiver: dict[str, str] = field(default_factory=dict)
    first_recv_ts: dict[str, int] = field(default_factory=dict)
    last_recv_ts: dict[str, int] = field(default_factory=dict)


def located(rows: Iterable[Mapping[str, Any]]) -> dict[str, Located]:
    out: dict[str, Located] = {}
    for r in rows:
        loc = out.setdefault(r["msg_id"], Located())
        g = r["g"]
        loc.host[g] = r["last_host"]
        loc.instance[g] = f"{r['last_host']}/{r['last_pid']}"
        loc.service[g] = r["last_service"]
        if g:
            loc.receivers[g] = sorted(r["receivers"])
            loc.first_receiver[g] = r["first_receiver"]
            loc.last_receiver[g] = r["last_receiver"]
            loc.first_recv_ts[g] = int(r["first_recv_ts"])
            loc.last_recv_ts[g] = int(r["last_recv_ts"])
    return out


@dataclass(slots=True)
class Burst:
    """A run of non-delivered pairs with one cause (see the module docstring)."""

    verdict: str
    side: Side
    cause: Cause
    topic: str
    locus: str  # producer host, consumer group @ consumer host, or '' (broker side: the topic)
    start_us: int = 0  # 0: no time known (expected ids never sent)
    end_us: int = 0
    pairs: int = 0
    msg_ids: set[str] = field(default_factory=set, repr=False)
    groups: Counter[str] = field(default_factory=Counter)
    partitions: Counter[int] = field(default_factory=Counter)
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> (lowest, highest)
    producer_hosts: Counter[str] = field(default_factory=Counter)
    consumer_hosts: Counter[str] = field(default_factory=Counter)
    instances: Counter[str] = field(default_factory=Counter)  # host/pid at the locus
    evidence: Counter[str] = field(default_factory=Counter)  # decided_by -> pairs ('' : the audit alone)
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    text: str = ""
    stopped_instances: list[str] = field(default_factory=list)  # locus instances whose events stopped

    @property
    def messages(self) -> int:
        return len(self.msg_ids)

    @property
    def lost(self) -> bool:
        return self.verdict in V.LOST

    def add(self, v: Verdict, ts: int, loc: Located | None) -> None:
        f = v.facts
        self.pairs += 1
        self.msg_ids.add(v.msg_id)
        if ts:
            self.start_us = min(self.start_us or ts, ts)
            self.end_us = max(self.end_us, ts)
        if v.consumer_group:
            self.groups[v.consumer_group] += 1
        if f is not None and f.loc_p >= 0:
            self.partitions[f.loc_p] += 1
            if f.loc_o >= 0:
                lo, hi = self.offsets.get(f.loc_p, (f.loc_o, f.loc_o))
                self.offsets[f.loc_p] = (min(lo, f.loc_o), max(hi, f.loc_o))
        if loc is not None:
            if "" in loc.host:
                self.producer_hosts[loc.host[""]] += 1
            if v.consumer_group in loc.host:
                self.consumer_hosts[loc.host[v.consumer_group]] += 1
            inst = loc.instance.get("" if self.side is Side.PRODUCER else v.consumer_group, "")
            if inst and self.side in (Side.PRODUCER, Side.CONSUMER):
                self.instances[inst] += 1
        self.evidence[v.decided_by] += 1
        if f is not None and (err := (f.c_error if self.side is Side.CONSUMER else f.p_error)):
            self.errors[err] += 1
        if v.msg_id not in self.samples and len(self.samples) < SAMPLES:
            self.samples.append(v.msg_id)

    def commands(self) -> list[str]:
        """The exact ``trace-msg`` command for each sample (with the groups of the burst, which the
        message alone may not name: a group that never received it)."""
        groups = "".join(f" --group {shlex.quote(g)}" for g in sorted(self.groups))
        return [f"trace-msg {shlex.quote(m)}{groups}" for m in self.samples]

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict, "lost": V.LOST_LABEL[self.verdict], "side": self.side.value,
            "cause": self.cause.value, "text": self.text, "topic": self.topic, "locus": self.locus,
            "start": fmt_us(self.start_us) if self.start_us else None,
            "end": fmt_us(self.end_us) if self.end_us else None,
            "messages": self.messages, "pairs": self.pairs, "groups": dict(sorted(self.groups.items())),
            "partitions": {str(p): n for p, n in sorted(self.partitions.items())},
            "offsets": {str(p): list(r) for p, r in sorted(self.offsets.items())},
            "producer_hosts": dict(self.producer_hosts.most_common()),
            "consumer_hosts": dict(self.consumer_hosts.most_common()),
            "instances": dict(self.instances.most_common()),
            "stopped_instances": list(self.stopped_instances),
            "evidence": {k or "audit": n for k, n in self.evidence.most_common()},
            "errors": dict(self.errors.most_common(3)),
            "samples": list(self.samples), "commands": self.commands(),
            "remedy": V.REMEDY.get(self.verdict, ""),
        }


def pair_time(v: Verdict, side: Side) -> int:
    """The time a pair's loss happened at, by side (0: unknown)."""
    f = v.facts
    if f is None:
        return 0
    if side is Side.PRODUCER:
        return f.sfail_ts or f.rb_ts or f.sent_ts or f.msg_time
    if side is Side.BROKER:
        return f.ack_ts or f.cand_ts
    return f.last_ts or f.recv_ts or f.msg_time


def _locus(v: Verdict, side: Side, loc: Located | None) -> str:
    if side is Side.PRODUCER:
        return (loc.host.get("", "") if loc else "") or ""
    if side is Side.CONSUMER:
        host = (loc.host.get(v.consumer_group, "") if loc else "") or "?"
        return f"{v.consumer_group}@{host}"
    if side is Side.AUDIT:
        return v.consumer_group
    return ""


def make_bursts(rows: Iterable[Verdict], where: Mapping[str, Located], gap_s: int = GAP_S) -> list[Burst]:
    """Merge the non-delivered pairs into bursts (see the module docstring), oldest first."""
    keyed: dict[tuple[str, str, str], list[tuple[int, Verdict]]] = {}
    for v in rows:
        if v.verdict == V.DELIVERED:
            continue
        side, _ = KIND[v.verdict]
        loc = where.get(v.msg_id)
        keyed.setdefault((v.verdict, v.topic, _locus(v, side, loc)), []).append((pair_time(v, side), v))
    out: list[Burst] = []
    gap = gap_s * 1_000_000
    for (verdict, topic, locus), items in keyed.items():
        side, cause = KIND[verdict]
        items.sort(key=lambda tv: (tv[0], tv[1].msg_id, tv[1].consumer_group))
        cur: Burst | None = None
        last = 0
        for ts, v in items:
            if cur is None or (ts and last and ts - last > gap):
                cur = Burst(verdict, side, cause, topic, locus)
                out.append(cur)
            cur.add(v, ts, where.get(v.msg_id))
            last = ts or last
    out.sort(key=lambda b: (b.start_us, V.VERDICTS.index(b.verdict), b.topic, b.locus))
    return out


# --- words -------------------------------------------------------------------------------------

def _hms(us: int) -> str:
    return fmt_us(us)[11:19] if us else "?"


def _when(b: Burst) -> str:
    if not b.start_us:
        return "in the window"
    if b.end_us - b.start_us < 1_000_000:
        return f"at {_hms(b.start_us)}"
    day = fmt_us(b.start_us)[:10]
    same_day = fmt_us(b.end_us)[:10] == day
    end = _hms(b.end_us) if same_day else fmt_us(b.end_us)[:19].replace("T", " ")
    return f"between {day} {_hms(b.start_us)} and {end}"


def _n(k: int, one: str, many: str | None = None) -> str:
    return f"{k} {one if k == 1 else (many or one + 's')}"


def _pl(b: Burst, one: str, many: str) -> str:
    """``one`` or ``many`` by the burst's message count (was/were, its offset/their offsets)."""
    return one if b.messages == 1 else many


def _where(b: Burst) -> str:
    parts = sorted(b.partitions)
    if not parts:
        return b.topic or "(no topic)"
    return f"{b.topic}/{','.join(str(p) for p in parts)}"


def _groups(b: Burst) -> str:
    return ", ".join(sorted(b.groups)) or "any consumer group"


def _error(b: Burst) -> str:
    if not b.errors:
        return ""
    err, n = b.errors.most_common(1)[0]
    err = err if len(err) <= 120 else err[:117] + "..."
    more = "" if n == b.pairs else f", {n} of {b.pairs}"
    return f" (error: {err}{more})"


_BROKER_WHY: dict[str, str] = {
    Evidence.LATER_ACKED_RECEIVED.value: "while messages acked later on the same partition did",
    Evidence.OFFSET_PASSED_SAME_EPOCH.value: "while the group read past their offsets in the same log epoch",
    Evidence.LIVE_COMMITTED_OFFSET.value: "while Kafka reports the group's committed offset past them",
    Evidence.QUEUE_DELIVERED_LATER.value: ("while the queue delivered messages published after them from the "
                                           "same host"),
}


def _stopped(b: Burst) -> str:
    if not b.stopped_instances:
        return ""
    return f"; its instance {', '.join(b.stopped_instances)} stopped right after (crashed)" \
        if len(b.stopped_instances) == 1 else \
        f"; its instances {', '.join(b.stopped_instances)} stopped right after (crashed)"


def describe(b: Burst, stopped_producers: list[str] | None = None) -> str:
    """The burst's cause in words, from its verdict and the evidence its pairs carry."""
    n, when = b.messages, _when(b)
    host = b.locus or "an unknown host"
    if b.cause is Cause.PRODUCER_SKIPPED_SEND:
        stop = (f"; producer instances whose events stopped in the window: {', '.join(stopped_producers)}"
                if stopped_producers else "")
        return (f"{_n(n, 'expected message')} never sent (no event recorded at all) {when}, missing in "
                f"{_groups(b)}{stop}: the producer committed the business change and stopped or skipped the send")
    if b.cause is Cause.SEND_FAILED_NOT_RETRIED:
        return (f"{_n(n, 'message')} to {b.topic} from {host} failed to send {when}{_error(b)} and "
                f"{_pl(b, 'was', 'were')} never acked, so {_groups(b)} never got them: the producer could not reach "
                "the broker and did not retry")
    if b.cause is Cause.NO_BROKER_ANSWER:
        return (f"{_n(n, 'message')} to {b.topic} from {host} sent {when} got neither an ack nor a failure"
                f"{_stopped(b)}: the producer stopped, or lost its send callbacks, before the broker answered")
    if b.cause is Cause.TRANSACTION_ABORTED:
        return (f"{_n(n, 'message')} to {b.topic} from {host} rolled back {when}: "
                f"{_pl(b, 'its', 'their')} transaction was aborted, so by design no consumer saw them")
    if b.cause is Cause.BROKER_LOST_ACKED:
        why = [w for k, w in _BROKER_WHY.items() if b.evidence.get(k)]
        return (f"{_n(n, 'message')} acked on {_where(b)} {when} never reached {_groups(b)}"
                f"{', ' + ' / '.join(why) if why else ''}: the broker lost acknowledged messages")
    if b.cause is Cause.RETENTION_DELETED:
        return (f"{_n(n, 'message')} acked on {_where(b)} {when} {_pl(b, 'was', 'were')} deleted by retention "
                f"before {_groups(b)} reached them (the partition's log start moved past them): "
                "the group lagged longer than retention")
    if b.cause is Cause.GROUP_LAGS:
        return (f"{_n(n, 'message')} acked on {_where(b)} {when} {_pl(b, 'has', 'have')} not reached "
                f"{_groups(b)} yet, and nothing later on those partitions has "
                "either: the group lags or its consumers are down")
    group, _, chost = b.locus.partition("@")
    if b.cause is Cause.COMMITTED_BEFORE_DONE:
        return (f"{_n(n, 'message')} of {_where(b)} received by {group} on {chost} {when} had "
                f"{_pl(b, 'its offset', 'their offsets')} committed with no business outcome{_stopped(b)}: "
                "the consumer committed before the work was done")
    if b.cause is Cause.HANDLER_ERROR_COMMITTED:
        return (f"{_n(n, 'message')} of {_where(b)} failed in {group}'s handler on {chost} {when}"
                f"{_error(b)} and {_pl(b, 'its offset was', 'their offsets were')} committed anyway: "
                "the handler's errors are swallowed")
    if b.cause is Cause.AWAITING_REDELIVERY:
        return (f"{_n(n, 'message')} of {_where(b)} received by {group} on {chost} {when} "
                f"{_pl(b, 'is', 'are')} neither committed nor done{_stopped(b)}: "
                "they should be redelivered; check the consumer")
    if b.cause is Cause.PARKED_IN_DLQ:
        return (f"{_n(n, 'message')} of {_where(b)} {_pl(b, 'was', 'were')} dead-lettered by {group} on "
                f"{chost} {when}{_error(b)}: parked in the dead-letter queue, not processed since")
    return (f"{_n(n, 'message')} of {b.topic or '(no topic)'} {when} {_pl(b, 'has', 'have')} later stages "
            f"recorded without the earlier ones{' in ' + group if group else ''}: the audit lost events")
