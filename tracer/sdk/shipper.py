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
from tracer.sdk.sinks import Sink, sink_from_spec
from tracer.sdk.spool import (SEG_SUFFIX, Chunk, SpoolReader, dead_spools, expander_for, list_segments, seg_name,
                              ship_chunk_data, try_lock)

log = logging.getLogger("msgtrace.emitter")

COUNTERS = ("shipped_bytes", "shipped", "ship_failures", "adopted_spools", "adopted_events", "bad_frames",
            "heartbeat_ms", "pid", "rounds")


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


class Adopted:
    """A dead process's spool that this shipper now owns (lock held until drained)."""

    __slots__ = ("path", "lock_fd", "reader", "expander", "shipped")

    def __init__(self, path: str, lock_fd: int) -> None:
        self.path, self.lock_fd = path, lock_fd
        self.reader = SpoolReader(path)
        self.expander = expander_for(path)
        self.shipped = 0

    def release(self, remove: bool) -> None:
        self.reader.close()
        if remove:
            shutil.rmtree(self.path, ignore_errors=True)
        os.close(self.lock_fd)


class ShipLoop:
    """One shipper's work on one spool directory: its own emitter's spool (if any) and adopted ones."""

    def __init__(self, spool_dir: str, sink: Sink, counters: Counters, own_path: str | None = None,
                 own_expander: Expander | None = None, adopt: bool = True, adopt_interval: float = 5.0) -> None:
        self.spool_dir, self.sink, self.counters = spool_dir, sink, counters
        self.own_path = own_path
        self.reader = SpoolReader(own_path) if own_path else None
        self.expander = own_expander or (expander_for(own_path) if own_path else None)
        self.adopt, self.adopt_interval = adopt, adopt_interval
        self.adopted: list[Adopted] = []
        self._next_adopt = 0.0

    def ship_own(self, head: tuple[int, int] | None = None, dead: bool = False) -> int:
        """Ship one chunk of the own spool; the spool bytes it covered (0: nothing to ship)."""
        if self.reader is None:
            return 0
        chunk = self.reader.read(self.sink.chunk_bytes, dead=dead, head=head)
        if chunk is None:
            return 0
        self._ship(self.expander, chunk)
        self.reader.advance(chunk)
        n = len(chunk.data)
        self.counters.add("shipped_bytes", n)
        return n

    def _ship(self, expander: Expander | None, chunk: Chunk) -> int:
        data, events, bad, err = ship_chunk_data(expander, chunk)
        if bad:
            self.counters.add("bad_frames", bad)
            self.counters.error(err)
            log.error("msgtrace: %s", err)
        if events:
            self.sink.ship(data, events)
        self.counters.add("shipped", events)
        return events

    def scan_dead(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.adopt or (not force and now < self._next_adopt):
            return
        self._next_adopt = now + self.adopt_interval
        skip = {os.path.basename(a.path) for a in self.adopted}
        if self.own_path:
            skip.add(os.path.basename(self.own_path))
        for path, fd in dead_spools(self.spool_dir, skip):
            self.adopted.append(Adopted(path, fd))
            self.counters.add("adopted_spools")
            log.info("msgtrace: adopted the spool of a dead process: %s", path)

    def ship_adopted(self) -> bool:
        busy = False
        for a in list(self.adopted):
            chunk = a.reader.read(self.sink.chunk_bytes, dead=True)
            if chunk is None:
                a.release(remove=True)
                self.adopted.remove(a)
                continue
            n = self._ship(a.expander, chunk)
            a.reader.advance(chunk)
            a.shipped += n
            self.counters.add("adopted_events", n)
            busy = True
        return busy

    def round(self, head: tuple[int, int] | None = None) -> bool:
        """One pass: adoption scan (when due), a chunk of the own spool, a chunk of each adopted one.
        True when there is more to ship right away (a backlog filling whole chunks). Raises on a sink
        failure (the caller counts it and backs off)."""
        self.scan_dead()
        busy = self.ship_own(head) >= self.sink.chunk_bytes // 2
        return self.ship_adopted() or busy

    def release_adopted(self) -> None:
        for a in self.adopted:
            a.release(remove=False)
        self.adopted.clear()

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        self.release_adopted()


def drain_spools(spool_dir: str, sink: Sink, timeout: float | None = None) -> dict[str, int]:
    """Ship every dead spool in ``spool_dir`` to ``sink`` (``msgtrace ship``). Live ones are left alone."""
    stats = {"spools": 0, "events": 0, "torn": 0, "left": 0}
    deadline = None if timeout is None else time.monotonic() + timeout
    for path, fd in dead_spools(spool_dir):
        a = Adopted(path, fd)
        stats["spools"] += 1
        drained = False
        try:
            while deadline is None or time.monotonic() < deadline:
                chunk = a.reader.read(sink.chunk_bytes, dead=True)
                if chunk is None:
                    drained = True
                    break
                data, events, bad, err = ship_chunk_data(a.expander, chunk)
                if bad:
                    log.error("msgtrace: %s", err)
                if events:
                    sink.ship(data, events)
                a.reader.advance(chunk)
                stats["events"] += events
        finally:
            stats["torn"] += a.reader.torn
            stats["left"] += 0 if drained else 1
            a.release(remove=drained)
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
    logging.basicConfig(level=cfg.get("log_level", logging.WARNING),
                        format=f"msgtrace-shipper[{os.getpid()}] %(levelname)s %(message)s")
    own = cfg["own"]
    counters = FileCounters(own)
    counters.set("pid", os.getpid())
    sink = sink_from_spec(cfg["sink"])
    loop = ShipLoop(cfg["spool_dir"], sink, counters, own_path=own, adopt=cfg.get("adopt", True),
                    adopt_interval=cfg.get("adopt_interval", 5.0))
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
            log.warning("msgtrace: shipping to %s failed (%s); events stay in the spool", sink.name, describe(e))
            backoff = min(5.0, max(0.2, backoff * 2))
    _final(loop, sink, counters, own, closing, float(cfg.get("orphan_seconds", 30.0)))


def _final(loop: ShipLoop, sink: Sink, counters: FileCounters, own: str, closing: float | None,
           orphan_seconds: float) -> None:
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
            while loop.ship_own(dead=owner_dead):
                pass
            loop.ship_adopted()
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
        if drained:
            shutil.rmtree(own, ignore_errors=True)
        os.close(lock_fd)


if __name__ == "__main__":
    main()
