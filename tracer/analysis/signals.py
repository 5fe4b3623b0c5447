"""Consumer-side and audit signals of a window, beside the bursts:

* instances (service, host, pid) whose events stop while the window's traffic goes on: stopped or
  crashed; crashed when they left work behind (pairs of a consumer-side burst whose last stage they
  recorded);
* rebalances seen from the audit: one record received by two instances of a group;
* commits without a business outcome, per consumer group and instance;
* the audit's own gaps (an emitter's seq holes), named by the instance that owns the emitter.

Instances come from one GROUP BY over low-cardinality columns (``incident_instances.sql``); the rest
from the pairs the reconcile listed and where they ran (:mod:`tracer.analysis.bursts`).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracer import verdicts as V
from tracer.analysis.bursts import Located
from tracer.analysis.evidence import fmt_us
from tracer.analysis.result import SeqGap, Verdict
from tracer.analysis.sql import render
from tracer.analysis.window import Window
from tracer.store import Store

#: an instance counts as stopped when it is silent this long before the window's last event...
STOP_MIN_S = 5
#: ... and for this many times its own usual spacing between events
STOP_SPACING = 10


@dataclass(slots=True)
class Instance:
    service: str
    host: str
    pid: int
    first_us: int
    last_us: int
    events: int
    last_stage: str
    emitters: list[str]
    groups: list[str]
    stopped: bool = False
    left_behind: int = 0  # pairs it held when it stopped (received / committed, no outcome)
    replaced_by: str = ""  # a later instance of the same service on the same host

    @property
    def name(self) -> str:
        return f"{self.host}/{self.pid}"

    @property
    def crashed(self) -> bool:
        return self.stopped and self.left_behind > 0

    def to_json(self) -> dict[str, Any]:
        return {"service": self.service, "instance": self.name, "first": fmt_us(self.first_us),
                "last": fmt_us(self.last_us), "events": self.events, "last_stage": self.last_stage,
                "groups": self.groups, "emitters": self.emitters, "stopped": self.stopped,
                "crashed": self.crashed, "left_behind": self.left_behind, "replaced_by": self.replaced_by or None}


@dataclass(slots=True)
class Rebalance:
    """Records of (group, topic, partition) received first by one instance, then by another."""

    group: str
    topic: str
    partition: int
    from_instance: str
    to_instance: str
    messages: int = 0
    first_us: int = 0
    last_us: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"consumer_group": self.group, "topic": self.topic, "partition": self.partition,
                "from": self.from_instance, "to": self.to_instance, "messages": self.messages,
                "first_receipt": fmt_us(self.first_us), "second_receipt": fmt_us(self.last_us)}


@dataclass(slots=True)
class GapOwner:
    gap: SeqGap
    owner: str  # "service host/pid" of the emitter, or ""

    def to_json(self) -> dict[str, Any]:
        g = self.gap
        return {"emitter_id": g.emitter_id, "instance": self.owner or None, "seq_from": g.lo, "seq_to": g.hi,
                "missing": g.missing}


@dataclass(slots=True)
class Signals:
    instances: list[Instance] = field(default_factory=list)
    rebalances: list[Rebalance] = field(default_factory=list)
    same_instance_redeliveries: int = 0
    #: (group, instance) -> pairs committed with no business outcome
    commits_without_outcome: dict[tuple[str, str], int] = field(default_factory=dict)
    audit_gaps: list[GapOwner] = field(default_factory=list)

    @property
    def stopped(self) -> list[Instance]:
        return [i for i in self.instances if i.stopped]

    def to_json(self) -> dict[str, Any]:
        return {
            "stopped_instances": [i.to_json() for i in self.stopped],
            "instances": len(self.instances),
            "rebalances": [r.to_json() for r in self.rebalances],
            "redelivered_to_same_instance": self.same_instance_redeliveries,
            "commits_without_outcome": [{"consumer_group": g, "instance": i, "pairs": n}
                                        for (g, i), n in sorted(self.commits_without_outcome.items())],
            "audit_gaps": [g.to_json() for g in self.audit_gaps],
        }


def instances(store: Store, window: Window) -> list[Instance]:
    rows = store.query(render("incident_instances"), {"from_us": window.from_us, "cut": window.cut_us}, small=True)
    out = [Instance(r["service"], r["host"], int(r["pid"]), int(r["first_ts"]), int(r["last_ts"]), int(r["events"]),
                    r["last_stage"], sorted(r["emitters"]), sorted(r["groups"])) for r in rows]
    mark_stopped(out)
    return out


def mark_stopped(found: list[Instance]) -> None:
    """Mark the instances whose events stop while the window's traffic goes on (and their successors)."""
    if not found:
        return
    end = max(i.last_us for i in found)
    for i in found:
        spacing = (i.last_us - i.first_us) / max(1, i.events - 1)
        silent = end - i.last_us
        i.stopped = silent > max(STOP_MIN_S * 1_000_000, STOP_SPACING * spacing)
    for i in found:
        if i.stopped:
            later = [j for j in found if j.service == i.service and j.host == i.host and j.first_us >= i.last_us
                     and j is not i]
            if later:
                i.replaced_by = min(later, key=lambda j: j.first_us).name


def collect(inst: list[Instance], rows: Iterable[Verdict], where: Mapping[str, Located],
            gaps: list[SeqGap]) -> Signals:
    """The signals of a window from its instances, its listed pairs and where they ran."""
    sig = Signals(inst)
    by_name = {i.name: i for i in inst}
    left: Counter[str] = Counter()
    rebal: dict[tuple[str, str, int, str, str], Rebalance] = {}
    for v in rows:
        loc = where.get(v.msg_id)
        g = v.consumer_group
        if loc is None or not g:
            continue
        holder = loc.instance.get(g, "")
        if v.verdict in (V.LOST_IN_CONSUMER, V.IN_FLIGHT) and holder:
            left[holder] += 1
        if v.verdict == V.LOST_IN_CONSUMER and holder:
            key = (g, holder)
            sig.commits_without_outcome[key] = sig.commits_without_outcome.get(key, 0) + 1
        if V.REDELIVERED in v.flags:
            recv = loc.receivers.get(g, [])
            if len(recv) > 1:
                a, b = loc.first_receiver.get(g, ""), loc.last_receiver.get(g, "")
                part = v.facts.loc_p if v.facts is not None else -1
                r = rebal.setdefault((g, v.topic, part, a, b), Rebalance(g, v.topic, part, a, b))
                r.messages += 1
                t0, t1 = loc.first_recv_ts.get(g, 0), loc.last_recv_ts.get(g, 0)
                r.first_us = min(r.first_us or t0, t0)
                r.last_us = max(r.last_us, t1)
            else:
                sig.same_instance_redeliveries += 1
    for name, n in left.items():
        if name in by_name:
            by_name[name].left_behind = n
    sig.rebalances = sorted(rebal.values(), key=lambda r: (r.first_us, r.group, r.partition))
    owners = {e: f"{i.service} {i.name}" for i in inst for e in i.emitters}
    sig.audit_gaps = [GapOwner(g, owners.get(g.emitter_id, "")) for g in gaps]
    return sig
