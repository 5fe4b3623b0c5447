"""One message's events in causal order, and the clock skew between the services that stamped them.

``ts_us`` is each service's own clock. Across hosts (or a process with a wrong clock) those clocks
disagree, by minutes at times: sorted by ``ts_us`` alone, a consumer whose clock is behind shows
``received`` and ``business_done`` before the ``sent`` that caused them, and the SRE reading the
timeline is sent the wrong way. So the timeline is ordered by what the events themselves prove:

* within one emitter (one process's audit stream), its ``seq`` (the order it recorded them in);
* a delivery follows its publication: a ``received`` at (topic, partition, offset) comes after the
  ``broker_acked`` of that place, and after a ``sent`` (the send attempt that ack answers, else the
  first send of the message to that topic, else its first send);
* every other stage of a consumer group (commit, business outcome, dead letter) comes after a
  ``received`` of the group: its own stream's, else the group's first.

Where nothing orders two events, their stamps do (a stable topological order, earliest stamp
first). Edges between events of one clock (one emitter, or one service, host and pid) are left to
that clock, so a contradiction in the data cannot make a cycle; if the data contradict themselves
anyway, the earliest stamped of the events left goes first.

The same edges give the **skew**: a ``sent`` stamped after the ``received`` it caused proves the
receiving clock behind by at least the difference (a strict lower bound). A ``broker_acked``
stamped after a ``received`` of its place says the same less strictly (a consumer may fetch a
record before the producer has read the broker's answer), so it counts only past
:data:`ACK_SLACK_US`. Module kept free of heavy imports: ``trace-msg`` starts in well under a second.
"""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tracer.events import Event

_PRODUCER = frozenset({"sent", "send_failed", "broker_acked", "rolled_back"})
#: an ack stamped after a receipt of its place by less than this is ack latency, not skew
ACK_SLACK_US = 1_000_000
#: a strict bound below this is not reported (microsecond stamps of two processes on one host)
MIN_SKEW_US = 1_000


def clock_of(e: Event) -> tuple[str, str, int]:
    """The clock that stamped an event: its process (service, host, pid)."""
    return (e.service, e.host, e.pid)


def _domain(e: Event) -> tuple[Any, ...]:
    """Events whose order one counter or one clock knows: the emitter, else the process."""
    return ("e", e.emitter_id) if e.emitter_id else ("p", *clock_of(e))


def _place(e: Event) -> tuple[str, int, int] | None:
    if e.partition is None or e.offset is None or e.partition < 0 or e.offset < 0:
        return None
    return (e.topic, e.partition, e.offset)


@dataclass(frozen=True, slots=True)
class Skew:
    """One clock found behind another by at least ``at_least_us``, and the pair of events that shows it."""

    behind: str  # "service@host" of the clock found behind
    ahead: str
    at_least_us: int
    effect: str  # the stage stamped too early (e.g. received)
    cause: str  # the stage it must follow (e.g. broker_acked)
    consumer: bool  # the clock behind stamped consumer stages

    def text(self) -> str:
        who = "consumer service" if self.consumer else "service"
        return (f"{who} {self.behind} appears {_dur(self.at_least_us)} behind {self.ahead}: "
                f"{self.effect} stamped before {self.cause}")

    def to_json(self) -> dict[str, Any]:
        return {"behind": self.behind, "ahead": self.ahead, "at_least_us": self.at_least_us,
                "at_least_s": round(self.at_least_us / 1e6, 3),
                "evidence": f"{self.effect} stamped before {self.cause}",
                "text": self.text()}


@dataclass(slots=True)
class Timeline:
    """The events in causal order and the skews found."""

    events: list[Event]
    skews: list[Skew] = field(default_factory=list)
    #: the order differs from sorting by ts_us
    reordered: bool = False


def _dur(us: int) -> str:
    s = us / 1e6
    if s >= 120:
        return f"{s / 60:.1f} min" if s >= 600 else f"{s:.0f} s"
    if s >= 1:
        return f"{s:.1f} s"
    return f"{us / 1000:.1f} ms"


def _labels(events: Sequence[Event]) -> dict[tuple[str, str, int], str]:
    """``service@host`` per clock, with ``/pid`` where one service runs several processes on a host."""
    clocks = {clock_of(e) for e in events}
    count: dict[tuple[str, str], int] = {}
    for s, h, _ in clocks:
        count[(s, h)] = count.get((s, h), 0) + 1
    return {c: f"{c[0]}@{c[1]}" + (f"/{c[2]}" if count[(c[0], c[1])] > 1 else "") for c in clocks}


@dataclass(slots=True)
class _Edge:
    a: int
    b: int
    strict: bool  # a truly precedes b (for the skew); else only likely (an ack before a receipt)


def _edges(events: Sequence[Event]) -> list[_Edge]:
    dom = [_domain(e) for e in events]
    out: list[_Edge] = []
    by_dom: dict[tuple[Any, ...], list[int]] = {}
    for i, d in enumerate(dom):
        by_dom.setdefault(d, []).append(i)
    pos: dict[int, int] = {}  # index -> rank within its domain
    for d, idx in by_dom.items():
        use_seq = d[0] == "e" and all(events[i].seq > 0 for i in idx)
        idx.sort(key=lambda i: (events[i].seq if use_seq else 0, events[i].ts_us, i))
        for r, i in enumerate(idx):
            pos[i] = r
        out += [_Edge(a, b, True) for a, b in itertools.pairwise(idx)]

    def cross(a: int, b: int, strict: bool) -> None:
        if dom[a] != dom[b]:
            out.append(_Edge(a, b, strict))

    producer = [i for i, e in enumerate(events) if e.stage in _PRODUCER]
    sends = [i for i in producer if events[i].stage == "sent"]
    acks: dict[tuple[str, int, int], list[int]] = {}
    for i in producer:
        p = _place(events[i])
        if events[i].stage == "broker_acked" and p is not None:
            acks.setdefault(p, []).append(i)

    def earliest(idx: list[int]) -> int:
        return min(idx, key=lambda i: (events[i].ts_us, i))

    def send_of(ack: int) -> int | None:
        """The send attempt an ack answers: the latest sent before it on its own stream."""
        mine = [i for i in sends if dom[i] == dom[ack] and pos[i] < pos[ack]]
        return max(mine, key=lambda i: pos[i]) if mine else None

    def anchor(c: int) -> None:
        """Edges into a consumer event from the publication it follows."""
        e = events[c]
        p = _place(e)
        matched = acks.get(p, []) if p is not None and e.stage == "received" else []
        for a in matched:
            cross(a, c, False)
            s = send_of(a)
            if s is not None:
                cross(s, c, True)
        if not matched and sends:
            same = [i for i in sends if events[i].topic == e.topic]
            cross(earliest(same or sends), c, True)

    groups: dict[str, list[int]] = {}
    for i, e in enumerate(events):
        if e.stage not in _PRODUCER:
            groups.setdefault(e.consumer_group or "", []).append(i)
    for idx in groups.values():
        recvs = [i for i in idx if events[i].stage == "received"]
        for r in recvs:
            anchor(r)
        first = earliest(recvs) if recvs else None
        for i in idx:
            if events[i].stage == "received" or any(dom[r] == dom[i] and pos[r] < pos[i] for r in recvs):
                continue  # a receipt of its own stream comes before it already
            if first is not None:
                cross(first, i, True)
            else:
                anchor(i)  # no receipt recorded (an audit gap): after the publication itself
    return out


def _order(events: Sequence[Event], edges: list[_Edge]) -> list[int]:
    n = len(events)
    succ: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    for ed in edges:
        succ[ed.a].append(ed.b)
        indeg[ed.b] += 1
    key = [(events[i].ts_us, events[i].seq, events[i].event_id, i) for i in range(n)]
    ready = [key[i] for i in range(n) if indeg[i] == 0]
    heapq.heapify(ready)
    done = [False] * n
    out: list[int] = []
    while len(out) < n:
        if not ready:  # contradicting data (a cycle): the earliest stamped of the rest goes first
            i = min((i for i in range(n) if not done[i]), key=lambda i: key[i])
            indeg[i] = 0
            heapq.heappush(ready, key[i])
        i = heapq.heappop(ready)[3]
        if done[i]:
            continue
        done[i] = True
        out.append(i)
        for j in succ[i]:
            indeg[j] -= 1
            if indeg[j] == 0 and not done[j]:
                heapq.heappush(ready, key[j])
    return out


def _skews(events: Sequence[Event], edges: list[_Edge]) -> list[Skew]:
    labels = _labels(events)
    best: dict[tuple[tuple[str, str, int], tuple[str, str, int]], tuple[int, int, int]] = {}
    for ed in edges:
        a, b = events[ed.a], events[ed.b]
        ca, cb = clock_of(a), clock_of(b)
        if ca == cb:
            continue
        gap = a.ts_us - b.ts_us
        if gap < (MIN_SKEW_US if ed.strict else ACK_SLACK_US):
            continue
        k = (cb, ca)
        if k not in best or gap > best[k][0]:
            best[k] = (gap, ed.b, ed.a)
    out: list[Skew] = []
    for (cb, ca), (gap, ib, ia) in best.items():
        eb, ea = events[ib], events[ia]
        out.append(Skew(labels[cb], labels[ca], gap, eb.stage, ea.stage, eb.stage not in _PRODUCER))
    out.sort(key=lambda s: -s.at_least_us)
    return out


def causal(events: Sequence[Event]) -> Timeline:
    """The events ordered so that causes come before effects where the events prove it, and the skews."""
    evs = list(events)
    if len(evs) < 2:
        return Timeline(evs)
    edges = _edges(evs)
    order = _order(evs, edges)
    ordered = [evs[i] for i in order]
    by_ts = sorted(range(len(evs)), key=lambda i: (evs[i].ts_us, evs[i].seq, evs[i].event_id, i))
    return Timeline(ordered, _skews(evs, edges), order != by_ts)
