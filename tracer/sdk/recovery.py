"""Finding what the audit topic lost after acknowledging it, so the shipper can ship it again.

The audit Kafka can lose records it acknowledged: a broker restarted without replication (page
cache gone), an unclean leader election (the log's tail cut), a topic deleted and recreated, or a
memory broker (Tansu) restarted empty. The collector then never sees those events: the audit has a
gap, and without this module the reconciler could take the missing events for lost messages.

The shipper keeps, for each spool it ships, an :class:`AckJournal`: for every audit record the
broker acknowledged, its (partition, offset) and the spool range it came from (while that range is
retained on disk, :mod:`tracer.sdk.spool`). The loss shows in three ways, all checked here:

- the topic is gone, or has another topic id (recreated): everything acknowledged before is lost;
- a new acknowledgement on a partition is at or below an offset acknowledged before (same topic):
  the log was cut there, and our records from that offset on are lost (seen at ship time, free);
- the partition's log end offset is below the first record of our last shipment to it (a periodic
  check, for an emitter that does not ship again soon). A log end inside our last shipment is not
  taken as a loss: Tansu reports the end of a multi-record batch as its base offset + 1.

What was lost is returned as spool ranges; the shipper re-reads them from the retained segments and
ships them again (the same event ids: the store de-duplicates). Events whose segments are no longer
retained cannot come back: they stay a seq gap, which ``msgtrace audit-health`` and the reconciler
report (``audit_gap``), never a loss of the business's messages.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

#: spool positions are (segment, offset) packed into one int, so ranges compare and merge cheaply
_SEG_SHIFT = 40
#: a journal keeps at most this many records per partition; beyond, neighbours are merged (a lost
#: merged entry re-ships a little more than was lost, which de-duplication absorbs)
MAX_ENTRIES = 50_000


def pack(seg: int, off: int) -> int:
    return (seg << _SEG_SHIFT) | off


def unpack(pos: int) -> tuple[int, int]:
    return pos >> _SEG_SHIFT, pos & ((1 << _SEG_SHIFT) - 1)


@dataclass(slots=True, frozen=True)
class Range:
    """Spool bytes [start, end) of one emitter directory, as packed positions."""

    start: int
    end: int

    @property
    def first_segment(self) -> int:
        return unpack(self.start)[0]


@dataclass(slots=True, frozen=True)
class TopicState:
    """The audit topic as the broker describes it now."""

    exists: bool
    topic_id: str | None = None
    #: partition -> log end offset (only for the partitions asked about)
    end_offsets: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Partition:
    offsets: list[int] = field(default_factory=list)   # ascending (one incarnation of the topic)
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    last_first: int = -1  # first offset of the last shipment to this partition

    def add(self, offset: int, start: int, end: int) -> None:
        self.offsets.append(offset)
        self.starts.append(start)
        self.ends.append(end)
        if len(self.offsets) > MAX_ENTRIES:
            self._coarsen()

    def _coarsen(self) -> None:
        """Merge neighbours in the older half (keeps the newest entries exact)."""
        half = len(self.offsets) // 2
        o, s, e = self.offsets, self.starts, self.ends
        no, ns, ne = [], [], []
        for i in range(0, half - 1, 2):
            no.append(o[i])
            ns.append(min(s[i], s[i + 1]))
            ne.append(max(e[i], e[i + 1]))
        k = len(no) * 2
        self.offsets, self.starts, self.ends = no + o[k:], ns + s[k:], ne + e[k:]

    def take_from(self, offset: int) -> list[Range]:
        """Remove and return the ranges of the records at ``offset`` or above."""
        i = bisect.bisect_left(self.offsets, offset)
        out = [Range(s, e) for s, e in zip(self.starts[i:], self.ends[i:])]
        del self.offsets[i:], self.starts[i:], self.ends[i:]
        return out

    def forget_below(self, pos: int) -> None:
        """Drop entries whose spool range ends at or before ``pos`` (no longer retained)."""
        keep = [i for i, e in enumerate(self.ends) if e > pos]
        if len(keep) != len(self.ends):
            self.offsets = [self.offsets[i] for i in keep]
            self.starts = [self.starts[i] for i in keep]
            self.ends = [self.ends[i] for i in keep]


class AckJournal:
    """The acknowledged audit records of one spool directory (see the module docstring)."""

    def __init__(self) -> None:
        self.topic_id: str | None = None
        self.parts: dict[int, _Partition] = {}

    def __len__(self) -> int:
        return sum(len(p.offsets) for p in self.parts.values())

    @property
    def partitions(self) -> list[int]:
        return sorted(p for p, v in self.parts.items() if v.offsets)

    def acked(self, acks: list[tuple[int, int]], start: int, end: int) -> list[Range]:
        """Note one shipment (its records' (partition, offset)) of spool range [start, end).

        Returns what an acknowledgement shows lost: records of ours at or above a new offset on the
        same partition (the log was cut and its offsets reused)."""
        lost: list[Range] = []
        firsts: dict[int, int] = {}
        for p, o in acks:
            part = self.parts.get(p)
            if part is None:
                part = self.parts[p] = _Partition()
            if part.offsets and o <= part.offsets[-1] and p not in firsts:
                lost += part.take_from(o)
            firsts.setdefault(p, o)
            part.add(o, start, end)
        for p, o in firsts.items():
            self.parts[p].last_first = o
        return lost

    def check(self, state: TopicState) -> tuple[str, list[Range]]:
        """Compare with the topic as it is now: (why, lost ranges); why is "" when nothing was lost."""
        if not len(self):
            if state.exists and state.topic_id:
                self.topic_id = state.topic_id
            return "", []
        if not state.exists:
            return "the audit topic is gone (deleted, or the broker lost it)", self.take_all()
        if self.topic_id and state.topic_id and state.topic_id != self.topic_id:
            self.topic_id = state.topic_id
            return "the audit topic was recreated (a new topic id)", self.take_all()
        if state.topic_id:
            self.topic_id = state.topic_id
        lost: list[Range] = []
        for p, end in state.end_offsets.items():
            part = self.parts.get(p)
            if part is None or not part.offsets:
                continue
            if end <= part.last_first or (part.last_first < 0 and end <= part.offsets[-1]):
                lost += part.take_from(end)
        return ("the audit topic's log was cut below offsets it had acknowledged" if lost else ""), lost

    def take_all(self) -> list[Range]:
        out = [Range(s, e) for part in self.parts.values() for s, e in zip(part.starts, part.ends)]
        self.parts.clear()
        return out

    def forget_below(self, pos: int) -> None:
        for part in self.parts.values():
            part.forget_below(pos)


def merge(ranges: list[Range]) -> list[Range]:
    """Sorted, overlapping or touching ranges joined."""
    out: list[Range] = []
    for r in sorted(ranges, key=lambda r: r.start):
        if out and r.start <= out[-1].end:
            if r.end > out[-1].end:
                out[-1] = Range(out[-1].start, r.end)
        else:
            out.append(r)
    return out


__all__ = ["AckJournal", "Range", "TopicState", "merge", "pack", "unpack", "MAX_ENTRIES"]
