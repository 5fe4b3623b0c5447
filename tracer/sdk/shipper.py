"""Shipping: spool frames -> wire lines -> sink, and adopting the spools of dead processes.

:class:`ShipLoop` is one shipper's work, the same wherever it runs:

- in a **shipper process** (the default for the audit topic): ``python -m tracer.sdk.shipper``,
  started by the emitter, reads the live spool through the page cache, so expanding frames into JSON
  and running kafka-python's producer take nothing from the business process's GIL. The owner wakes
  it through its stdin; its counters are in ``<spool>/<emitter>/progress`` (:class:`FileCounters`).
  When stdin closes (the owner closed, or died) it ships what is left; an owner that died has
  released its spool lock, so the shipper adopts the spool, ships it to the end and removes it;
- on a **thread** of the business process (the store sink, custom sinks, or ``ship_process=False``);
- in ``msgtrace ship`` (:func:`drain_spools`) for spools nobody will come back for.

Every shipper also adopts the spools of dead processes in its spool directory (their owner's flock
is gone): the lines keep their original emitter_id and seq, and what was shipped before is not
shipped again (the ``shipped`` position).
"""
from __future__ import annotations

import json
import logging
import mmap
import os
import select
import shutil
import signal
import struct
import sys
import time
from typing import Protocol

from tracer.errors import describe
from tracer.sdk.frames import Expander
from tracer.sdk.recovery import JOURNAL_FILE, AckJournal, Range, merge, pack, unpack
from tracer.sdk.sinks import Sink, sink_from_spec
from tracer.sdk.spool import (
    SEG_SUFFIX,
    Chunk,
    SpoolReader,
    dead_spools,
    default_retention,
    expander_for,
    list_segments,
    read_at,
    seg_name,
    ship_chunk_data,
    sweep,
    try_lock,
)

log = logging.getLogger("msgtrace.emitter")

COUNTERS = ("shipped_bytes", "shipped", "ship_failures", "adopted_spools", "adopted_events", "bad_frames",
            "heartbeat_ms", "pid", "rounds",
            # added with retention and recovery (the file layout only grows at the end)
            "torn", "dropped", "evicted_segments", "evicted_events", "expired_segments", "reshipped",
            "reship_lost", "audit_losses", "seq_high")


class Counters(Protocol):
    def add(self, name: str, n: int = 1) -> None: ...

    def get(self, name: str) -> int: ...

    def set(self, name: str, value: int) -> None: ...

    def error(self, text: str | None) -> None: ...

    @property
    def last_error(self) -> str | None: ...


class DictCounters:
    """Counters of a shipper thread (in the owner's process)."""

    def __init__(self) -> None:
        self._d = dict.fromkeys(COUNTERS, 0)
        self._error: str | None = None

    def add(self, name: str, n: int = 1) -> None:
        self._d[name] += n

    def get(self, name: str) -> int:
        return self._d[name]

    def set(self, name: str, value: int) -> None:
        self._d[name] = value

    def error(self, text: str | None) -> None:
        self._error = text

    @property
    def last_error(self) -> str | None:
        return self._error


class FileCounters:
    """Counters in ``<emitter dir>/progress``: written by the shipper process, read by the owner.

    Aligned 8-byte slots in a shared mapping (a read never sees a torn value on the platforms we
    run on); the last error text in ``last_error`` (rare, written by rename).
    """

    _SLOT = struct.Struct("<Q")

    def __init__(self, dir_path: str) -> None:
        self.path = os.path.join(dir_path, "progress")
        self._err_path = os.path.join(dir_path, "last_error")
        size = 8 * len(COUNTERS)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._index = {n: i * 8 for i, n in enumerate(COUNTERS)}
        self._error: str | None = None
        self._final: dict[str, int] | None = None  # the values at close(), still readable after it

    def add(self, name: str, n: int = 1) -> None:
        i = self._index[name]
        self._SLOT.pack_into(self._mm, i, self._SLOT.unpack_from(self._mm, i)[0] + n)

    def get(self, name: str) -> int:
        if self._final is not None:
            return self._final[name]
        try:
            return int(self._SLOT.unpack_from(self._mm, self._index[name])[0])
        except ValueError:  # closed by another thread meanwhile
            return self._final[name] if self._final is not None else 0

    def set(self, name: str, value: int) -> None:
        self._SLOT.pack_into(self._mm, self._index[name], value)

    def error(self, text: str | None) -> None:
        if text == self._error:
            return
        self._error = text
        try:
            tmp = self._err_path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text or "")
            os.replace(tmp, self._err_path)
        except OSError:
            pass

    @property
    def last_error(self) -> str | None:
        try:
            with open(self._err_path, encoding="utf-8") as f:
                return f.read() or None
        except OSError:
            return None

    def close(self) -> None:
        if self._final is None:
            self._final = {n: self.get(n) for n in COUNTERS}
        try:
            self._mm.close()
        except (OSError, ValueError):
            pass


def read_counters(dir_path: str) -> dict[str, int]:
    """The counters in ``<emitter dir>/progress`` read from outside (``msgtrace audit-health``);
    empty when there is none."""
    try:
        with open(os.path.join(dir_path, "progress"), "rb") as f:
            data = f.read()
    except OSError:
        return {}
    return {n: struct.unpack_from("<Q", data, i * 8)[0] for i, n in enumerate(COUNTERS) if len(data) >= i * 8 + 8}


class Adopted:
    """One spool directory a shipper ships other than its own: a dead process's, adopted (its lock
    held by this shipper until it is drained and, with a retention, until its retained segments
    expire, so that what the audit topic may still lose of it can be shipped again)."""

    __slots__ = ("path", "lock_fd", "reader", "expander", "shipped", "journal", "pending", "drained", "_torn")

    def __init__(self, path: str, lock_fd: int, retention_s: float = 0.0, recover: bool = True) -> None:
        self.path, self.lock_fd = path, lock_fd
        self.reader = SpoolReader(path, retention_s)
        self.expander = expander_for(path)
        self.shipped = 0
        # on disk beside the segments: a successor adopting this spool sees what its records became
        self.journal: AckJournal | None = (AckJournal(os.path.join(path, JOURNAL_FILE))
                                           if retention_s > 0 and recover else None)
        self.pending: list[Range] = []  # spool ranges to ship again (the audit topic lost them)
        self.drained = False
        self._torn = 0

    def torn_delta(self) -> int:
        """Torn frames found since the last call (a frame the dead owner was writing when killed)."""
        d, self._torn = self.reader.torn - self._torn, self.reader.torn
        return d

    def release(self, remove: bool) -> None:
        self.reader.close()
        if self.journal is not None:
            self.journal.close()
        if remove:
            shutil.rmtree(self.path, ignore_errors=True)
        os.close(self.lock_fd)


class _Own(Adopted):
    """The shipper's own emitter's spool (never locked here: its owner holds the lock)."""

    __slots__ = ()

    def __init__(self, path: str, expander: Expander | None, retention_s: float, recover: bool = True) -> None:
        super().__init__(path, -1, retention_s, recover)
        if expander is not None:
            self.expander = expander

    def release(self, remove: bool) -> None:
        self.reader.close()
        if self.journal is not None:
            self.journal.close()


class _Limited:
    """One log line per ``every`` seconds for a repeated failure, with how often it happened."""

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self._next = 0.0
        self._n = 0

    def warn(self, msg: str, *args: object) -> None:
        self._n += 1
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every
            n, self._n = self._n, 0
            log.warning(msg + (f" ({n} failures since the last message)" if n > 1 else ""), *args)


class ShipLoop:
    """One shipper's work on one spool directory: its own emitter's spool (if any) and adopted ones.

    With ``retention_s`` > 0 shipped segments are retained and an :class:`~tracer.sdk.recovery.AckJournal`
    per spool remembers where the audit topic put each record; every ``verify_interval`` seconds
    (and at every ship, from the acknowledgements) the topic is compared with it, and what it lost
    is shipped again from the retained segments.
    """

    def __init__(self, spool_dir: str, sink: Sink, counters: Counters, own_path: str | None = None,
                 own_expander: Expander | None = None, adopt: bool = True, adopt_interval: float = 5.0,
                 retention_s: float = 0.0, verify_interval: float = 5.0, recover: bool = True) -> None:
        self.spool_dir, self.sink, self.counters = spool_dir, sink, counters
        self.own_path = own_path
        self.retention_s = retention_s
        self.recover = recover
        self.own: _Own | None = (_Own(own_path, own_expander or expander_for(own_path), retention_s, recover)
                                 if own_path else None)
        self.adopt, self.adopt_interval = adopt, adopt_interval
        self.adopted: list[Adopted] = []
        self._next_adopt = 0.0
        self.verify_interval = verify_interval
        self._next_verify = 0.0 if verify_interval > 0 else float("inf")
        self._sweep_every = max(0.5, min(60.0, retention_s / 4)) if retention_s > 0 else float("inf")
        self._next_sweep = time.monotonic() + self._sweep_every
        self._verify_log = _Limited(60.0)

    # the own spool's reader and expander under their former names (the emitter reads them)
    @property
    def reader(self) -> SpoolReader | None:
        return self.own.reader if self.own is not None else None

    @property
    def expander(self) -> Expander | None:
        return self.own.expander if self.own is not None else None

    def spools(self) -> list[Adopted]:
        return ([self.own] if self.own is not None else []) + self.adopted

    def ship_own(self, head: tuple[int, int] | None = None, dead: bool = False) -> int:
        """Ship one chunk of the own spool; the spool bytes it covered (0: nothing to ship)."""
        own = self.own
        if own is None:
            return 0
        chunk = own.reader.read(self.sink.chunk_bytes, dead=dead, head=head)
        if chunk is None:
            self._count_torn(own)
            return 0
        start = (chunk.end[0], chunk.end[1] - len(chunk.data))  # a chunk lies within one segment
        _, last = self._ship(own, chunk, start)
        own.reader.advance(chunk, last)
        n = len(chunk.data)
        self.counters.add("shipped_bytes", n)
        return n

    def _count_torn(self, spool: Adopted) -> None:
        d = spool.torn_delta()
        if d:
            self.counters.add("torn", d)

    def _ship(self, spool: Adopted, chunk: Chunk, start: tuple[int, int], again: bool = False) -> tuple[int, int]:
        """Ship one chunk of ``spool`` read at ``start``; (events, last seq)."""
        data, events, bad, err, last = _chunk_data(spool.expander, chunk)
        if bad and not again:
            self.counters.add("bad_frames", bad)
            self.counters.error(err)
            log.error("msgtrace: %s", err)
        if events:
            self.sink.ship(data, events)
            self._journal(spool, start, chunk.end)
        if again:
            self.counters.add("reshipped", events)
        else:
            self.counters.add("shipped", events)
        return events, last

    def _journal(self, spool: Adopted, start: tuple[int, int], end: tuple[int, int]) -> None:
        """Note where the audit topic put the records just shipped; schedule what that shows lost."""
        recreated = getattr(self.sink, "recreated", "")
        if recreated:  # the topic had vanished: whatever any spool shipped before went with it
            for s in self.spools():
                if s.journal is not None:
                    self._lost(s, recreated, s.journal.take_all())
        acks = getattr(self.sink, "last_acks", None)
        if spool.journal is None or not acks:
            return
        lost = spool.journal.acked(list(acks), pack(*start), pack(*end))
        if lost:
            self._lost(spool, "the audit topic reused offsets it had acknowledged (its log was cut)", lost)

    def _lost(self, spool: Adopted, why: str, ranges: list[Range]) -> None:
        if not ranges:
            return
        spool.pending = merge(spool.pending + ranges)
        self.counters.add("audit_losses", len(ranges))
        log.warning("msgtrace: %s: %d acknowledged audit record(s) of %s are gone; shipping them again from "
                    "the retained spool", why, len(ranges), os.path.basename(spool.path))

    # --- recovery ------------------------------------------------------------------------------------
    def verify(self, force: bool = False) -> None:
        """Compare the audit topic with what it acknowledged (when due); never raises."""
        now = time.monotonic()
        if not force and now < self._next_verify:
            return
        self._next_verify = now + self.verify_interval
        state_of = getattr(self.sink, "topic_state", None)
        if state_of is None:
            return
        spools = [s for s in self.spools() if s.journal is not None]
        parts = sorted({p for s in spools for p in s.journal.partitions})  # type: ignore[union-attr]
        try:
            state = state_of(parts)
            if not state.exists:
                self.sink.ensure_topic()  # type: ignore[attr-defined]  # before anything is shipped into the void
        except Exception as e:  # the audit Kafka is away: shipping itself reports that
            self._verify_log.warn("msgtrace: cannot check the audit topic (%s)", describe(e))
            return
        for s in spools:
            why, lost = s.journal.check(state)  # type: ignore[union-attr]
            self._lost(s, why, lost)

    def reship(self) -> bool:
        """Ship one chunk of each spool's pending ranges again; True if any was shipped."""
        busy = False
        for s in self.spools():
            if not s.pending:
                continue
            r = s.pending[0]
            seg, off = unpack(r.start)
            end_seg, end_off = unpack(r.end)
            chunk = read_at(s.path, seg, off, self.sink.chunk_bytes, end_off if seg == end_seg else None)
            if chunk is None:
                nxt = [n for n in list_segments(s.path) if seg < n <= end_seg]
                if seg == end_seg or not nxt:
                    s.pending.pop(0)
                    if not os.path.exists(os.path.join(s.path, seg_name(seg))):
                        self.counters.add("reship_lost")
                        log.error("msgtrace: audit events of %s lost by the audit topic are no longer retained "
                                  "(segment %d gone): they stay a seq gap (msgtrace audit-health)",
                                  os.path.basename(s.path), seg)
                else:
                    s.pending[0] = Range(pack(nxt[0], 0), r.end)
                continue
            self._ship(s, chunk, (seg, off), again=True)
            if pack(*chunk.end) >= r.end:
                s.pending.pop(0)
            else:
                s.pending[0] = Range(pack(*chunk.end), r.end)
            busy = True
        return busy

    def sweep(self, force: bool = False) -> None:
        """Delete retained segments older than the retention; release retained dead spools left empty."""
        now = time.monotonic()
        if not force and now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_every
        for s in self.spools():
            keep_from = s.reader.pos[0]
            n, _ = sweep(s.path, self.retention_s, keep_from)
            if n:
                self.counters.add("expired_segments", n)
            if s.journal is not None:
                left = list_segments(s.path)
                s.journal.forget_below(pack(left[0], 0) if left else pack(keep_from, 0))
        for a in list(self.adopted):
            if a.drained and not a.pending and not list_segments(a.path):
                a.release(remove=True)
                self.adopted.remove(a)

    # --- adoption ----------------------------------------------------------------------------------------
    def scan_dead(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.adopt or (not force and now < self._next_adopt):
            return
        self._next_adopt = now + self.adopt_interval
        skip = {os.path.basename(a.path) for a in self.adopted}
        if self.own_path:
            skip.add(os.path.basename(self.own_path))
        for path, fd in dead_spools(self.spool_dir, skip):
            a = Adopted(path, fd, self.retention_s, self.recover)
            if _nothing_to_ship(a):  # a retained spool shipped to its end (its owner closed, say)
                a.drained = True
                if self.retention_s <= 0:
                    a.release(remove=True)
                    continue
            else:
                self.counters.add("adopted_spools")
                log.info("msgtrace: adopted the spool of a dead process: %s", path)
            self.adopted.append(a)

    def ship_adopted(self) -> bool:
        busy = False
        for a in list(self.adopted):
            if a.drained:
                continue
            chunk = a.reader.read(self.sink.chunk_bytes, dead=True)
            self._count_torn(a)
            if chunk is None:
                a.drained = True
                if self.retention_s <= 0:
                    a.release(remove=True)
                    self.adopted.remove(a)
                continue
            start = (chunk.end[0], chunk.end[1] - len(chunk.data))
            n, last = self._ship(a, chunk, start)
            a.reader.advance(chunk, last)
            a.shipped += n
            self.counters.add("adopted_events", n)
            busy = True
        return busy

    @property
    def adopted_pending(self) -> bool:
        """Adopted spools not yet shipped to their end (retained ones do not count)."""
        return any(not a.drained for a in self.adopted)

    def round(self, head: tuple[int, int] | None = None) -> bool:
        """One pass: adoption scan (when due), the audit topic's check (when due), a chunk of what it
        lost, a chunk of the own spool, a chunk of each adopted one, the retention sweep (when due).
        True when there is more to ship right away (a backlog filling whole chunks). Raises on a sink
        failure (the caller counts it and backs off)."""
        self.scan_dead()
        self.verify()
        again = self.reship()
        busy = self.ship_own(head) >= self.sink.chunk_bytes // 2
        adopted = self.ship_adopted()
        self.sweep()
        return adopted or busy or again or any(s.pending for s in self.spools())

    def release_adopted(self) -> None:
        for a in self.adopted:
            a.release(remove=False)
        self.adopted.clear()

    def close(self) -> None:
        if self.own is not None:
            self.own.release(False)
        self.release_adopted()


def _nothing_to_ship(a: Adopted) -> bool:
    """Peek whether a dead spool has anything left to ship (without moving its position)."""
    seg, off = a.reader.pos
    later = [n for n in list_segments(a.path) if n >= seg]
    if not later:
        return True
    if len(later) > 1:
        return False
    return read_at(a.path, seg, off, 1 << 16) is None


def _chunk_data(expander: Expander | None, chunk: Chunk) -> tuple[bytes, int, int, str | None, int]:
    """(wire lines, events, bad frames, error, last seq) of a chunk, whichever format it is in."""
    if chunk.legacy or expander is None:
        data, events, bad, err = ship_chunk_data(expander, chunk)
        return data, events, bad, err, 0
    ex = expander.expand(chunk.data, chunk.frames)
    return ex.data, ex.events, ex.bad_frames, ex.last_error, ex.last_seq


def drain_spools(spool_dir: str, sink: Sink, timeout: float | None = None,
                 retention_s: float | None = None) -> dict[str, int]:
    """Ship every dead spool in ``spool_dir`` to ``sink`` (``msgtrace ship``). Live ones are left alone.

    A drained spool is kept while it has shipped segments younger than ``retention_s`` (None: the
    default retention, :func:`tracer.sdk.spool.default_retention`), then removed; a spool with
    nothing left to ship is not counted."""
    retention = default_retention() if retention_s is None else retention_s
    stats = {"spools": 0, "events": 0, "torn": 0, "left": 0}
    deadline = None if timeout is None else time.monotonic() + timeout
    for path, fd in dead_spools(spool_dir):
        a = Adopted(path, fd, retention)
        drained = False
        counted = not _nothing_to_ship(a)
        try:
            drained = not counted
            while not drained and (deadline is None or time.monotonic() < deadline):
                chunk = a.reader.read(sink.chunk_bytes, dead=True)
                if chunk is None:
                    drained = True
                    break
                data, events, bad, err, last = _chunk_data(a.expander, chunk)
                if bad:
                    log.error("msgtrace: %s", err)
                if events:
                    sink.ship(data, events)
                a.reader.advance(chunk, last)
                stats["events"] += events
        finally:
            if counted:
                stats["spools"] += 1
                stats["torn"] += a.reader.torn
                stats["left"] += 0 if drained else 1
            remove = drained
            if drained and retention > 0:
                sweep(path, retention)
                remove = not list_segments(path)
            a.release(remove=remove)
    return stats


# --- the shipper process -------------------------------------------------------------------------

def _fsync_current(path: str) -> None:
    """The ``batch`` fsync policy from another process: flush the newest segment file to disk."""
    segs = list_segments(path)
    if not segs:
        return
    try:
        fd = os.open(os.path.join(path, seg_name(segs[-1], SEG_SUFFIX)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fdatasync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def main() -> None:
    """``python -m tracer.sdk.shipper``: one JSON line of configuration on stdin, then wake bytes.

    ``c<seconds>`` on stdin: the owner is closing; ship what is there within that time and exit.
    EOF without it: the owner died; adopt its spool, ship it to the end (at most ``orphan_seconds``)
    and exit, leaving anything unshipped for the next process's adoption.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner decides when shipping ends
    fd = sys.stdin.fileno()
    line = b""
    while not line.endswith(b"\n"):  # unbuffered: the wake bytes after it stay in the pipe
        b = os.read(fd, 1)
        if not b:
            return
        line += b
    cfg = json.loads(line)
    level = cfg.get("log_level", logging.WARNING)
    logging.basicConfig(level=level, format=f"msgtrace-shipper[{os.getpid()}] %(levelname)s %(message)s")
    if level > logging.DEBUG:
        # kafka-python logs every failed connection attempt (several a second while the audit Kafka is
        # down) on the business service's stderr; the rate-limited line below says it once instead
        logging.getLogger("kafka").setLevel(logging.CRITICAL + 1)
    own = cfg["own"]
    counters = FileCounters(own)
    counters.set("pid", os.getpid())
    sink = sink_from_spec(cfg["sink"])
    retention_s = float(cfg.get("retention_s", 0.0))
    loop = ShipLoop(cfg["spool_dir"], sink, counters, own_path=own, adopt=cfg.get("adopt", True),
                    adopt_interval=cfg.get("adopt_interval", 5.0), retention_s=retention_s,
                    verify_interval=float(cfg.get("verify_interval", 5.0)), recover=bool(cfg.get("recover", True)))
    failures = _Limited(float(cfg.get("failure_log_interval", 60.0)))
    interval = float(cfg.get("interval", sink.interval))
    fsync_batch = cfg.get("fsync") == "batch"
    backoff = 0.0
    closing: float | None = None  # seconds the owner gave us at close
    eof = False
    busy = True
    while True:
        r, _, _ = select.select([fd], [], [], 0 if busy and not backoff else (backoff or interval))
        if r:
            data = os.read(fd, 4096)
            if not data:
                eof = True
            elif b"c" in data:
                try:
                    closing = float(data[data.rindex(b"c") + 1:].split(b"\n")[0] or 5.0)
                except ValueError:
                    closing = 5.0
        counters.set("heartbeat_ms", int(time.monotonic() * 1000))
        if eof or closing is not None:
            break
        try:
            if fsync_batch:
                _fsync_current(own)
            busy = loop.round()
            counters.add("rounds")
            backoff = 0.0
            counters.error(None)
        except Exception as e:
            busy = False
            counters.add("ship_failures")
            counters.error(describe(e))
            failures.warn("msgtrace: shipping to %s failed (%s); events stay in the spool", sink.name, describe(e))
            backoff = min(5.0, max(0.2, backoff * 2))
    _final(loop, sink, counters, own, closing, float(cfg.get("orphan_seconds", 30.0)), retention_s)


def _final(loop: ShipLoop, sink: Sink, counters: FileCounters, own: str, closing: float | None,
           orphan_seconds: float, retention_s: float = 0.0) -> None:
    """Ship what is left: within the owner's close timeout, or (owner dead) as its adopter."""
    owner_dead = closing is None
    deadline = time.monotonic() + (orphan_seconds if owner_dead else max(closing or 0.0, 0.0))
    lock_fd = None
    if owner_dead:
        lock_fd = try_lock(own)  # the owner's flock went with it: the spool is ours now
        if lock_fd is None:
            owner_dead = False  # still held: the owner lives (e.g. a fork inherited the pipe)
    drained = False
    backoff = 0.2
    while time.monotonic() < deadline:
        try:
            loop.reship()
            while loop.ship_own(dead=owner_dead):
                pass
            while loop.ship_adopted():
                pass
            drained = True
            break
        except Exception as e:
            counters.add("ship_failures")
            counters.error(describe(e))
            time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
            backoff = min(5.0, backoff * 2)
    loop.close()
    try:
        sink.close()
    except Exception:
        pass
    counters.close()
    if lock_fd is not None:
        if drained and retention_s <= 0:
            shutil.rmtree(own, ignore_errors=True)
        os.close(lock_fd)  # retained: the next shipper in this spool dir adopts it (and sweeps it)


if __name__ == "__main__":
    main()
