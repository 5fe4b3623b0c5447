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

The journal is kept on disk too, beside the segments it describes (``acks.journal`` in the spool
directory, appended by the shipper process, compacted when loaded): an emitter that stopped or died
takes its memory with it, and a successor that adopts its retained spool (the next instance of the
service after a deploy, say) must still see that the audit topic lost what the predecessor had
shipped. Writing it is not on the business thread (the shipper writes one short line per audit
record, each a batch of events); a failing write only turns persistence off for that spool.

What was lost is returned as spool ranges; the shipper re-reads them from the retained segments and
ships them again (the same event ids: the store de-duplicates). Events whose segments are no longer
retained cannot come back: they stay a seq gap, which ``msgtrace audit-health`` and the reconciler
report (``audit_gap``), never a loss of the business's messages.
"""
from __future__ import annotations

import bisect
import logging
import os
from dataclasses import dataclass, field
from typing import IO

log = logging.getLogger("msgtrace")

#: the acknowledgement journal's file in a spool directory
JOURNAL_FILE = "acks.journal"

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
    """The acknowledged audit records of one spool directory (see the module docstring).

    With ``path``, every change is appended to that file as one line (``T id``: the topic id; ``a p o
    start end``: a record acknowledged; ``L p o``: the first offset of the last shipment to a
    partition; ``F p o``: records at or above an offset taken as lost; ``C``: all taken as lost;
    ``B pos``: entries below a spool position forgotten) and replayed when the journal is opened
    again, so that it outlives the process that wrote it."""

    def __init__(self, path: str | None = None) -> None:
        self.topic_id: str | None = None
        self.parts: dict[int, _Partition] = {}
        self._path = path
        self._file: IO[str] | None = None
        if path is not None:
            self._load(path)

    # --- persistence ---------------------------------------------------------------------------------
    def _load(self, path: str) -> None:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                for line in f:
                    self._replay(line.split())
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("msgtrace: cannot read the audit acknowledgement journal %s (%s): starting empty",
                        path, e.strerror)
        self._compact(path)

    def _replay(self, op: list[str]) -> None:
        """One journal line (a torn last line, or anything unreadable, is skipped)."""
        try:
            kind = op[0]
            if kind == "T":
                self.topic_id = op[1]
            elif kind == "a":
                self._part(int(op[1])).add(int(op[2]), int(op[3]), int(op[4]))
            elif kind == "L":
                self._part(int(op[1])).last_first = int(op[2])
            elif kind == "F":
                self._part(int(op[1])).take_from(int(op[2]))
            elif kind == "C":
                self.parts.clear()
            elif kind == "B":
                for part in self.parts.values():
                    part.forget_below(int(op[1]))
        except (IndexError, ValueError):
            pass

    def _compact(self, path: str) -> None:
        """Rewrite the file as the current state only, then keep appending to it."""
        lines = [f"T {self.topic_id}\n"] if self.topic_id else []
        for p, part in sorted(self.parts.items()):
            lines += [f"a {p} {o} {st} {e}\n" for o, st, e in zip(part.offsets, part.starts, part.ends)]
            if part.last_first >= 0:
                lines.append(f"L {p} {part.last_first}\n")
        tmp = path + ".tmp"
        try:
            with open(tmp, "w", encoding="ascii") as f:
                f.writelines(lines)
            os.replace(tmp, path)
            self._file = open(path, "a", encoding="ascii")  # noqa: SIM115 (open while the journal lives)
        except OSError as e:
            self._file = None
            log.warning("msgtrace: cannot write the audit acknowledgement journal %s (%s): it is kept in "
                        "memory only (a successor will not see what this spool's records became)",
                        path, e.strerror)

    def _write(self, text: str) -> None:
        f = self._file
        if f is None:
            return
        try:
            f.write(text)
            f.flush()
        except OSError as e:
            self._file = None
            log.warning("msgtrace: audit acknowledgement journal %s: %s; kept in memory only", self._path,
                        e.strerror)

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    def _part(self, p: int) -> _Partition:
        part = self.parts.get(p)
        if part is None:
            part = self.parts[p] = _Partition()
        return part

    def _set_topic(self, topic_id: str) -> None:
        if topic_id != self.topic_id:
            self.topic_id = topic_id
            self._write(f"T {topic_id}\n")

    def _take_from(self, p: int, offset: int) -> list[Range]:
        self._write(f"F {p} {offset}\n")
        return self.parts[p].take_from(offset)

    # --- the journal ---------------------------------------------------------------------------------
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
        lines: list[str] = []
        for p, o in acks:
            part = self._part(p)
            if part.offsets and o <= part.offsets[-1] and p not in firsts:
                lost += self._take_from(p, o)
            firsts.setdefault(p, o)
            part.add(o, start, end)
            lines.append(f"a {p} {o} {start} {end}\n")
        for p, o in firsts.items():
            self.parts[p].last_first = o
            lines.append(f"L {p} {o}\n")
        self._write("".join(lines))
        return lost

    def check(self, state: TopicState) -> tuple[str, list[Range]]:
        """Compare with the topic as it is now: (why, lost ranges); why is "" when nothing was lost."""
        if not len(self):
            if state.exists and state.topic_id:
                self._set_topic(state.topic_id)
            return "", []
        if not state.exists:
            return "the audit topic is gone (deleted, or the broker lost it)", self.take_all()
        if self.topic_id and state.topic_id and state.topic_id != self.topic_id:
            self._set_topic(state.topic_id)
            return "the audit topic was recreated (a new topic id)", self.take_all()
        if state.topic_id:
            self._set_topic(state.topic_id)
        lost: list[Range] = []
        for p, end in state.end_offsets.items():
            part = self.parts.get(p)
            if part is None or not part.offsets:
                continue
            if end <= part.last_first or (part.last_first < 0 and end <= part.offsets[-1]):
                lost += self._take_from(p, end)
        return ("the audit topic's log was cut below offsets it had acknowledged" if lost else ""), lost

    def take_all(self) -> list[Range]:
        out = [Range(s, e) for part in self.parts.values() for s, e in zip(part.starts, part.ends)]
        self.parts.clear()
        self._write("C\n")
        return out

    def forget_below(self, pos: int) -> None:
        changed = False
        for part in self.parts.values():
            n = len(part.ends)
            part.forget_below(pos)
            changed = changed or len(part.ends) != n
        if changed:
            self._write(f"B {pos}\n")


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


__all__ = ["AckJournal", "Range", "TopicState", "merge", "pack", "unpack", "MAX_ENTRIES", "JOURNAL_FILE"]
