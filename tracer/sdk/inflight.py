"""What a wrapped consumer received and has not yet settled: the in-flight bookkeeping.

Two questions are answered here, for every client adapter alike:

- *which received messages does this commit / ack cover?* -- :meth:`InFlight.covered` (all below a
  position: a Kafka commit, a RabbitMQ ``basic_ack(multiple=True)``) and :meth:`InFlight.take`
  (exactly one: a single ack);
- *which message is this record?* -- :meth:`InFlight.find`, for ``processing(record)``: the entry
  of the very object the consumer returned, so a tracer wrapping consumers of several groups names
  the group that received it.

A delivery is one plain tuple, :data:`Delivery` ``(position, key, headers, msg_id, attrs)``, built
once per received message by the adapter and shared, unchanged, by the ``received`` event, the
``offset_committed`` event and the lookup (no per-message object, no per-message dict entry:
receiving a batch costs one list extend and one deque append). ``position`` is the offset (Kafka)
or the delivery tag (RabbitMQ); positions of one *lane* (a Kafka partition, a RabbitMQ channel) grow
in receive order, so coverage is a bisection. A lane that receives out of order (a seek back) falls
back to a scan.

Memory is bounded: at most ``max_uncommitted`` entries per lane (the oldest are forgotten and
counted) and about ``max_recent`` entries in the lookup window.
"""
from __future__ import annotations

import bisect
import collections
import threading
from collections.abc import Hashable, Sequence
from typing import Any

#: ``(position, key, headers, msg_id, attrs)``: position int or None; key as the client gave it
#: (bytes, str or None); headers the client's carrier (list of pairs, mapping or None); msg_id str
#: when the adapter already knows it (an id function, no header), else None (derived from the headers,
#: else from the position); attrs a dict of str -> str or None.
Delivery = tuple[Any, Any, Any, Any, Any]
#: uncommitted received messages remembered per lane (oldest forgotten beyond it)
MAX_UNCOMMITTED_PER_LANE = 200_000
#: received messages remembered for ``processing(record)`` lookups
MAX_RECENT = 100_000


class InFlight:
    """The in-flight book of one wrapped consumer (or channel). Thread-safe: the commit hook runs on
    the client's IO thread, ``find`` on any worker thread, ``add`` on the polling thread."""

    __slots__ = ("__weakref__", "_growing", "_lock", "_meta", "_recent", "_recent_n", "_uncommitted", "_unsorted",
                 "forgotten_ref", "group", "max_recent", "max_uncommitted")

    def __init__(self, group: str | None, max_uncommitted: int = MAX_UNCOMMITTED_PER_LANE,
                 max_recent: int = MAX_RECENT) -> None:
        self.group = group
        self._uncommitted: dict[Hashable, list[Delivery]] = {}
        self._unsorted: set[Hashable] = set()
        # (lane, first position, entries) per received batch, newest last
        self._recent: collections.deque[tuple[Hashable, Any, Sequence[Delivery]]] = collections.deque()
        self._recent_n = 0
        self._meta: dict[Hashable, tuple[Any, ...]] = {}
        self._growing: list[Delivery] | None = None  # the newest recent batch add_one() may extend
        self._lock = threading.Lock()
        #: [uncommitted entries dropped by the bound] (a list: readable after the book is gone)
        self.forgotten_ref = [0]
        self.max_uncommitted, self.max_recent = max_uncommitted, max_recent

    @property
    def forgotten(self) -> int:
        """Uncommitted entries dropped by the bound (their commit is not recorded)."""
        return self.forgotten_ref[0]

    def meta(self, lane: Hashable) -> tuple[Any, ...]:
        """What the adapter said about ``lane`` when it received on it (the core's fields for its events)."""
        return self._meta[lane]

    # --- receive ----------------------------------------------------------------------------------
    def add(self, lane: Hashable, entries: Sequence[Delivery], track_commit: bool = True,
            meta: tuple[Any, ...] | None = None) -> None:
        """Remember a received batch of one lane (``track_commit``: a later commit / ack covers it;
        ``meta``: kept for the lane, see :meth:`meta`)."""
        if not entries:
            return
        with self._lock:
            if meta is not None and self._meta.get(lane) != meta:
                self._meta[lane] = meta
            self._recent.append((lane, entries[0][0], entries))
            self._recent_n += len(entries)
            while self._recent_n > self.max_recent and len(self._recent) > 1:
                self._recent_n -= len(self._recent.popleft()[2])
            if not track_commit:
                return
            lst = self._uncommitted.get(lane)
            if lst is None:
                self._uncommitted[lane] = list(entries)
                if not _ascending(entries):
                    self._unsorted.add(lane)
                return
            first = entries[0][0]
            if lst and first is not None and lst[-1][0] is not None and first <= lst[-1][0] \
                    and lane not in self._unsorted:
                # received again from an earlier position (a seek back, a rejoin after a commit that
                # failed): these receipts replace the older ones at the same positions, so one commit
                # gives one offset_committed per message
                del lst[bisect.bisect_left(lst, (first,)):]
            if lst and (lst[-1][0] is None or first is None or first < lst[-1][0] or not _ascending(entries)):
                self._unsorted.add(lane)
            lst.extend(entries)
            if len(lst) > self.max_uncommitted:
                cut = len(lst) - self.max_uncommitted
                del lst[:cut]
                self.forgotten_ref[0] += cut

    def add_one(self, lane: Hashable, entry: Delivery, track_commit: bool = True,
                meta: tuple[Any, ...] | None = None) -> None:
        """:meth:`add` for one message (a consumer iterated record by record): consecutive receipts of a
        lane extend one recent batch and one uncommitted list, with no per-message bookkeeping object."""
        pos = entry[0]
        with self._lock:
            if meta is not None and self._meta.get(lane) != meta:
                self._meta[lane] = meta
            g = self._growing
            recent = self._recent
            if (g is not None and recent and recent[-1][2] is g and recent[-1][0] == lane and len(g) < 1024
                    and pos is not None and g[-1][0] is not None and pos == g[-1][0] + 1):
                g.append(entry)
            else:
                g = self._growing = [entry]
                recent.append((lane, pos, g))
            self._recent_n += 1
            if self._recent_n > self.max_recent and len(recent) > 1:
                self._recent_n -= len(recent.popleft()[2])
            if not track_commit:
                return
            lst = self._uncommitted.get(lane)
            if lst is None:
                self._uncommitted[lane] = [entry]
                if pos is None:
                    self._unsorted.add(lane)
                return
            last = lst[-1][0] if lst else None
            if pos is not None and last is not None and pos <= last and lane not in self._unsorted:
                del lst[bisect.bisect_left(lst, (pos,)):]  # received again from an earlier position
            elif lst and (pos is None or last is None):
                self._unsorted.add(lane)
            lst.append(entry)
            if len(lst) > self.max_uncommitted:
                cut = len(lst) - self.max_uncommitted
                del lst[:cut]
                self.forgotten_ref[0] += cut

    # --- commit / ack -----------------------------------------------------------------------------
    def covered(self, lane: Hashable, position: int) -> list[Delivery]:
        """Remove and return the uncommitted entries of ``lane`` below ``position`` (Kafka's committed
        offset is the next one to read; for ``basic_ack(tag, multiple=True)`` pass ``tag + 1``)."""
        with self._lock:
            lst = self._uncommitted.get(lane)
            if not lst:
                return []
            if lane not in self._unsorted:
                k = bisect.bisect_left(lst, (position,))
                if k == 0:
                    return []
                head = lst[:k]
                del lst[:k]
                return head
            out: list[Delivery] = []
            keep: list[Delivery] = []
            for e in lst:
                (out if e[0] is not None and e[0] < position else keep).append(e)
            self._uncommitted[lane] = keep
            if _ascending(keep):
                self._unsorted.discard(lane)
            return out

    def take(self, lane: Hashable, position: Any) -> Delivery | None:
        """Remove and return the uncommitted entry of ``lane`` at exactly ``position`` (a single ack)."""
        with self._lock:
            lst = self._uncommitted.get(lane)
            if not lst:
                return None
            if lane not in self._unsorted:
                k = bisect.bisect_left(lst, (position,))
                if k < len(lst) and lst[k][0] == position:
                    return lst.pop(k)
                return None
            for i, e in enumerate(lst):
                if e[0] == position:
                    return lst.pop(i)
            return None

    def uncommitted(self) -> int:
        """How many received entries wait for a commit / ack (all lanes)."""
        with self._lock:
            return sum(len(v) for v in self._uncommitted.values())

    def forget(self, lane: Hashable) -> list[Delivery]:
        """Drop a lane's uncommitted entries (e.g. a partition revoked); returns them."""
        with self._lock:
            self._unsorted.discard(lane)
            return self._uncommitted.pop(lane, [])

    # --- lookup -----------------------------------------------------------------------------------
    def find(self, lane: Hashable, position: Any, headers: Any) -> tuple[Delivery | None, bool]:
        """The entry received at (lane, position): ``(entry, True)`` if it is the very record whose
        ``headers`` object is given (the object the client handed out), ``(entry, False)`` for another
        record at that position, ``(None, False)`` if nothing there was received recently."""
        other = None
        with self._lock:  # the deque only changes under this lock: iterate it in place
            for b_lane, first, entries in reversed(self._recent):
                if b_lane != lane:
                    continue
                e = _at(entries, first, position)
                if e is None:
                    continue
                if headers is not None and e[2] is headers:
                    return e, True
                if other is None:
                    other = e
        return other, False


def _ascending(entries: Sequence[Delivery]) -> bool:
    prev = None
    for e in entries:
        p = e[0]
        if p is None or (prev is not None and p < prev):
            return False
        prev = p
    return True


def _at(entries: Sequence[Delivery], first: Any, position: Any) -> Delivery | None:
    """The entry at ``position`` in one received batch (positions ascending, usually contiguous)."""
    last = entries[-1][0]
    if first is not None and position is not None and last is not None and last >= first:
        if position < first or position > last:
            return None
        i = position - first
        if i < len(entries) and entries[i][0] == position:
            found: Delivery = entries[i]
            return found
        k = bisect.bisect_left(entries, (position,))  # gaps (transaction markers, compaction)
        if k < len(entries) and entries[k][0] == position:
            return entries[k]
    for e in entries:  # positions unknown or out of order
        if e[0] == position:
            return e
    return None


__all__ = ["InFlight", "Delivery", "MAX_UNCOMMITTED_PER_LANE", "MAX_RECENT"]
