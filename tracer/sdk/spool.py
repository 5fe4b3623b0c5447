"""The local append-only spool: an event is on disk before ``record()`` returns.

Layout, one directory per emitter (= per process and Tracer) under the spool dir::

    <spool>/<emitter_id>/lock          flock'd by the live owner for its whole life
    <spool>/<emitter_id>/owner.json    pid, host, service, emitter_id, event id prefix, mq
    <spool>/<emitter_id>/seg-00000001.spool   frames (tracer.sdk.frames), one per event or batch
    <spool>/<emitter_id>/shipped       "<segment> <offset> [<last seq>]": what has been shipped
    <spool>/<emitter_id>/progress      counters: the shipper's, and the owner's drops and evictions

Shipped segments are **retained** for a while (``retention_s``, default 24 h) instead of being
deleted at once: when the audit Kafka loses what it had acknowledged (a broker that lost its log, a
recreated topic), the shipper re-ships them from here (:mod:`tracer.sdk.recovery`) and
``msgtrace ship --repair`` re-sends the seq ranges the store misses (:mod:`tracer.sdk.repair`). A
segment's modification time is set when it was shipped to its end; :func:`sweep` deletes the ones
older than the retention. The owner's spool cap counts retained segments (the oldest is evicted
first, and counted, when room is needed: :class:`tracer.sdk.emitter.Emitter`).

Writes are copies into preallocated, shared mmap segments (the kernel's page cache): a SIGKILL
cannot lose a returned write, and each frame's length is written last, so a frame cut by the kill
reads as the end of the data (counted as torn in a dead spool). A dead owner is detected by its
released flock (the kernel drops it on any death), so another process can adopt the directory and
ship what is left. Segments named ``*.ndjson`` (wire lines, written by msgtrace before the frame
format) are still read, as lines.
"""
from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tracer.sdk.frames import HEADER, HEADER_SIZE, Expander, SpoolMeta, split_frames

SEG_PREFIX, SEG_SUFFIX = "seg-", ".spool"
LEGACY_SUFFIX = ".ndjson"
#: how long shipped segments are kept by default (seconds): long enough for a nightly reconcile to
#: find an audit gap and for ``msgtrace ship --repair`` to close it
DEFAULT_RETENTION_S = 86400.0
#: errors of a full disk (or quota): events that do not fit are dropped and counted, never an error
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
#: free space a new segment must leave on the spool's filesystem: the shipper's small files (its
#: position, counters) must still be writable, or a full disk could never drain
RESERVE_BYTES = 256 << 10
#: emitter directories are named by the emitter's UUID
_EMITTER_DIR = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_pack_header = HEADER.pack_into


def default_retention() -> float:
    """``MSGTRACE_SPOOL_RETENTION`` (seconds, or e.g. ``24h``, ``30m``, ``0``), else 24 h."""
    raw = os.environ.get("MSGTRACE_SPOOL_RETENTION", "").strip()
    return parse_seconds(raw, "MSGTRACE_SPOOL_RETENTION") if raw else DEFAULT_RETENTION_S


def parse_seconds(raw: str, what: str) -> float:
    """Seconds from ``3600``, ``30s``, ``30m``, ``24h``, ``1d``; a ConfigError naming ``what`` otherwise."""
    from tracer.errors import ConfigError

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = raw.strip().lower()
    try:
        value = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except (ValueError, KeyError):
        raise ConfigError(f"{what}={raw!r}: give seconds or a duration such as 30m, 24h, 0") from None
    if value < 0 or value != value:
        raise ConfigError(f"{what}={raw!r}: must be 0 or more")
    return value


def seg_name(n: int, suffix: str = SEG_SUFFIX) -> str:
    return f"{SEG_PREFIX}{n:08d}{suffix}"


def list_segments(path: str) -> list[int]:
    """Segment numbers present in an emitter directory, ascending (either format)."""
    out = set()
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith(SEG_PREFIX) and (name.endswith(SEG_SUFFIX) or name.endswith(LEGACY_SUFFIX)):
            stem = name[len(SEG_PREFIX):name.rindex(".")]
            try:
                out.add(int(stem))
            except ValueError:
                pass
    return sorted(out)


def try_lock(path: str) -> int | None:
    """flock ``<path>/lock`` without waiting; the fd (holding it) or None if someone lives there."""
    try:
        fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def read_meta(path: str) -> SpoolMeta | None:
    """The emitter identity kept in ``owner.json`` (None for a spool written before the frame format)."""
    try:
        with open(os.path.join(path, "owner.json"), encoding="utf-8") as f:
            d = json.load(f)
        return SpoolMeta.from_json(d) if "eid_prefix" in d else None
    except (OSError, ValueError, KeyError):
        return None


#: madvise(MADV_POPULATE_WRITE) (Linux >= 5.14): fault a mapping's pages in, writable, ahead of use
_MADV_POPULATE_WRITE = 23 if sys.platform.startswith("linux") else None
_populate_ok = [True]


def _populate_later(mm: mmap.mmap) -> None:
    """Fault a new segment's pages in on a short-lived thread (madvise releases the GIL), so the
    business thread's appends find them mapped: the first write to each page of a fresh shared file
    mapping costs a page fault (allocation, zeroing, dirty tracking: ~6 us per 4 KiB page on this
    kind of VM, ~170 ns per 112-byte frame), which this moves off the business thread. Best effort:
    a kernel without MADV_POPULATE_WRITE just leaves the faults where they were."""
    if _MADV_POPULATE_WRITE is None or not _populate_ok[0]:
        return

    def run() -> None:
        try:
            mm.madvise(_MADV_POPULATE_WRITE)
        except OSError:
            _populate_ok[0] = False  # not supported here: not tried again
        except (ValueError, TypeError):
            pass  # closed meanwhile

    try:
        threading.Thread(target=run, daemon=True, name="msgtrace-spool-populate").start()
    except RuntimeError:  # interpreter shutting down
        pass


class SpoolWriter:
    """The owner's side: append frames into memory-mapped segments, hold the liveness lock.

    A segment is preallocated (``posix_fallocate``: a full disk fails here, at rotation, not later
    as SIGBUS) and mapped shared, so appending is a memory copy into the file's page cache: on disk
    as far as a SIGKILL is concerned, with no system call and no GIL release on the business thread.
    The emitter inlines :meth:`append` on its hot path; this is the reference implementation.
    """

    def __init__(self, root: str, meta: SpoolMeta, fsync: str = "never", segment_bytes: int = 8 << 20) -> None:
        # Built under a hidden name and renamed once locked, so a scanning process never
        # mistakes a directory being born for one whose owner died.
        self.path = os.path.join(root, meta.emitter_id)
        tmp = os.path.join(root, f".new-{meta.emitter_id}")
        os.makedirs(tmp)
        fd = try_lock(tmp)
        if fd is None:
            raise OSError(f"cannot lock the new spool directory {tmp}")
        self._lock_fd = fd
        with open(os.path.join(tmp, "owner.json"), "w", encoding="utf-8") as f:
            json.dump({**meta.to_json(), "hostname": socket.gethostname()}, f)
        os.rename(tmp, self.path)
        self.fsync_always = fsync == "always"
        self.segment_bytes = segment_bytes
        self.segno = 0
        self.seg_size = 0
        self.seg_cap = 0
        self._mm: mmap.mmap | None = None
        self._rotate(0)

    def _rotate(self, need: int) -> tuple[int, int]:
        """Start the next segment; returns (finished segment, its bytes). Raises OSError (ENOSPC on a
        full disk) with nothing left behind: a half-made segment file would make a reader believe the
        current one finished while small frames may still go into it."""
        n = self.segno + 1
        cap = max(self.segment_bytes, need + HEADER_SIZE)  # room for a zero length after the last frame
        if self._mm is not None:
            st = os.statvfs(self.path)
            if st.f_bavail * st.f_frsize < cap + RESERVE_BYTES:
                raise OSError(errno.ENOSPC, "No space left on device (a segment would leave less than "
                                            f"{RESERVE_BYTES >> 10} KiB free)")
        path = os.path.join(self.path, seg_name(n))
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, cap)
            mm = mmap.mmap(fd, cap, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        finally:
            os.close(fd)
        _populate_later(mm)
        old, self._mm = self._mm, mm
        finished = (self.segno, self.seg_size)
        self.segno, self.seg_size, self.seg_cap = n, 0, cap
        if old is not None:
            old.close()
            self._trim(*finished)
        return finished

    def _trim(self, segno: int, size: int) -> None:
        """Give back the preallocated tail of a finished segment (it is retained after shipping)."""
        try:
            os.truncate(os.path.join(self.path, seg_name(segno)), size)
        except OSError:
            pass

    def append(self, seq: int, payload: bytes) -> int:
        """Append one frame (payload first, its length last); the bytes it took."""
        n = HEADER_SIZE + len(payload)
        pos = self.seg_size
        if pos + n + HEADER_SIZE > self.seg_cap:
            self._rotate(n)
            pos = 0
        mm = self._mm
        assert mm is not None
        mm[pos + HEADER_SIZE:pos + n] = payload
        _pack_header(mm, pos, len(payload), seq)  # seq, and the length that makes the frame visible
        self.seg_size = pos + n
        if self.fsync_always:
            start = pos - pos % mmap.ALLOCATIONGRANULARITY
            mm.flush(start, pos + n - start)
        return n

    def sync(self) -> None:
        """msync the current segment (the ``batch`` policy calls this from the shipper)."""
        try:
            mm = self._mm
            if mm is not None:
                mm.flush()
        except (OSError, ValueError):
            pass

    def close(self, remove: bool) -> None:
        """Unmap; ``remove`` deletes the directory (everything shipped, nothing to retain); else the
        current segment is trimmed to its data and the directory stays (retained, or for adoption)."""
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except (OSError, ValueError):
                pass
            if not remove:
                self._trim(self.segno, self.seg_size)
        if remove:
            shutil.rmtree(self.path, ignore_errors=True)
        try:
            os.close(self._lock_fd)  # drops the flock: a leftover dir becomes adoptable
        except OSError:
            pass


@dataclass(slots=True)
class Chunk:
    """Complete frames (or legacy lines) read from the spool and where reading them ends."""

    data: bytes
    frames: list[tuple[int, int, int]] = field(default_factory=list)  # (seq, start, end) in data
    end: tuple[int, int] = (1, 0)  # (segment, offset) just past the chunk
    legacy: bool = False           # data are wire lines (a ``.ndjson`` segment)

    @property
    def lines(self) -> int:
        """Events in a legacy chunk; frames in a frame chunk (a batch frame holds several events)."""
        return self.data.count(b"\n") if self.legacy else len(self.frames)


class SpoolReader:
    """The shipper's side: read complete frames from a position, remember what was shipped.

    ``retention_s`` > 0: a segment shipped to its end is kept (its mtime set to now, for
    :func:`sweep`); 0: deleted at once.
    """

    def __init__(self, path: str, retention_s: float = 0.0) -> None:
        self.path = path
        self.retention_s = retention_s
        self.last_seq = 0  # the last seq shipped (0: unknown)
        self.pos = self._load_pos()
        self._fd: int | None = None
        self._fd_seg = 0
        self._fd_legacy = False
        self.torn = 0  # incomplete frames / lines skipped in a dead spool

    def _load_pos(self) -> tuple[int, int]:
        try:
            with open(os.path.join(self.path, "shipped"), encoding="ascii") as f:
                parts = f.read().split()
                if len(parts) > 2:
                    self.last_seq = int(parts[2])
                return int(parts[0]), int(parts[1])
        except (OSError, ValueError, IndexError):
            segs = list_segments(self.path)
            return (segs[0] if segs else 1), 0

    def _seg_fd(self, seg: int) -> int | None:
        if self._fd is not None and self._fd_seg == seg:
            return self._fd
        self._close_fd()
        for suffix, legacy in ((SEG_SUFFIX, False), (LEGACY_SUFFIX, True)):
            try:
                self._fd = os.open(os.path.join(self.path, seg_name(seg, suffix)), os.O_RDONLY)
            except FileNotFoundError:
                continue
            self._fd_seg, self._fd_legacy = seg, legacy
            return self._fd
        return None

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _finish_segment(self, seg: int) -> bool:
        """A segment shipped to its end: retain it (mtime = now) or delete it, and move to the next
        one; False if there is none yet."""
        later = [s for s in list_segments(self.path) if s > seg]
        if not later:
            return False
        self._close_fd()
        for suffix in (SEG_SUFFIX, LEGACY_SUFFIX):
            p = os.path.join(self.path, seg_name(seg, suffix))
            try:
                if self.retention_s > 0:
                    os.utime(p)  # shipped now: the retention counts from here
                else:
                    os.unlink(p)
            except FileNotFoundError:
                pass
            except OSError:
                pass
        self.pos = (later[0], 0)
        self.save()
        return True

    def read(self, max_bytes: int, dead: bool = False, head: tuple[int, int] | None = None) -> Chunk | None:
        """The next complete frames after the shipped position (None when there are none).

        ``head`` is the live writer's (segment, size) when read in its process: nothing beyond it is
        read. Without it (another process) reading stops at the first frame whose length is not set.
        Finished segments are deleted on the way. In a ``dead`` spool (or a finished segment) bytes
        after the last complete frame are skipped and counted as torn.
        """
        while True:
            seg, off = self.pos
            if head is not None and seg == head[0]:
                want = min(max_bytes, head[1] - off)
                if want <= 0:
                    return None
            else:
                want = max_bytes
            fd = self._seg_fd(seg)
            if fd is None:
                later = [s for s in list_segments(self.path) if s > seg]
                if not later:
                    return None
                self.pos = (later[0], 0)
                continue
            if self._fd_legacy:
                chunk = self._read_lines(fd, seg, off, want, dead)
            else:
                chunk = self._read_frames(fd, seg, off, want, dead, head)
            if chunk is not None:
                return chunk
            if self.pos != (seg, off):  # moved on to a later segment
                continue
            return None

    def _read_frames(self, fd: int, seg: int, off: int, want: int, dead: bool,
                     head: tuple[int, int] | None) -> Chunk | None:
        data = os.pread(fd, want, off)
        frames, cut = split_frames(data)
        if frames:
            return Chunk(data[:cut], frames, (seg, off + cut))
        live_tail = head is not None and seg == head[0]
        if live_tail:
            return None  # the writer has not finished a frame past here (cannot happen under its lock)
        if len(data) >= HEADER_SIZE:
            length = HEADER.unpack_from(data)[0]
            if length:  # a frame longer than max_bytes: read it whole if it is all there
                size = os.fstat(fd).st_size
                if off + HEADER_SIZE + length <= size:
                    whole = os.pread(fd, HEADER_SIZE + length, off)
                    frames, cut = split_frames(whole)
                    if frames:
                        return Chunk(whole[:cut], frames, (seg, off + cut))
        rest = data[:4096].strip(b"\0")
        later = [s for s in list_segments(self.path) if s > seg]
        if not later and not dead:
            return None  # the live writer's last segment: more may come
        if rest:
            self.torn += 1
        self._finish_segment(seg)
        return None

    def _read_lines(self, fd: int, seg: int, off: int, want: int, dead: bool) -> Chunk | None:
        """A legacy ``.ndjson`` segment: complete lines (the newline was written last)."""
        data = os.pread(fd, want, off)
        cut = data.rfind(b"\n") + 1
        if cut:
            return Chunk(data[:cut], [], (seg, off + cut), legacy=True)
        rest = data.strip(b"\0")
        if rest and len(data) >= want:  # one line longer than max_bytes: read it whole
            whole = os.pread(fd, os.fstat(fd).st_size - off, off)
            cut = whole.find(b"\n") + 1
            if cut:
                return Chunk(whole[:cut], [], (seg, off + cut), legacy=True)
        later = [s for s in list_segments(self.path) if s > seg]
        if rest and not later and not dead:
            return None
        if rest:
            self.torn += 1
        self._finish_segment(seg)
        return None

    def advance(self, chunk: Chunk, last_seq: int = 0) -> None:
        """Mark a chunk shipped and persist the position (write + rename: atomic)."""
        self.pos = chunk.end
        if last_seq:
            self.last_seq = last_seq
        self.save()

    def save(self) -> None:
        tmp = os.path.join(self.path, "shipped.tmp")
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{self.pos[0]} {self.pos[1]} {self.last_seq}\n")
        os.replace(tmp, os.path.join(self.path, "shipped"))

    def close(self) -> None:
        self._close_fd()


def dead_spools(root: str, skip: set[str] | frozenset[str] = frozenset()) -> Iterator[tuple[str, int]]:
    """Emitter directories under ``root`` whose owner is gone, each with its lock fd now held by us."""
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(root, name)
        if name in skip or not _EMITTER_DIR.match(name) or not os.path.isdir(path):
            continue  # only emitter directories: a spool dir may hold other things (never touch them)
        fd = try_lock(path)
        if fd is not None:
            yield path, fd


def expander_for(path: str) -> Expander | None:
    meta = read_meta(path)
    return Expander(meta) if meta is not None else None


def spooled_wire_lines(path: str) -> bytes:
    """Every event still in one emitter's spool directory, as wire lines (shipped or not; read-only).

    For tests and inspection: a NullSink tracer's events, a dead spool before it is shipped.
    """
    ex = expander_for(path)
    out = []
    for seg in list_segments(path):
        for suffix in (SEG_SUFFIX, LEGACY_SUFFIX):
            p = os.path.join(path, seg_name(seg, suffix))
            if not os.path.exists(p):
                continue
            with open(p, "rb") as f:
                data = f.read()
            if suffix == LEGACY_SUFFIX:
                out.append(data.rstrip(b"\0"))
            elif ex is not None:
                frames, _ = split_frames(data)
                out.append(ex.expand(data, frames).data)
    return b"".join(out)


def read_at(path: str, seg: int, off: int, max_bytes: int, stop: int | None = None) -> Chunk | None:
    """Complete frames (or lines) of segment ``seg`` from ``off``, at most ``max_bytes`` and not past
    offset ``stop``; None when the segment is gone or holds nothing there (re-shipping, repair)."""
    for suffix, legacy in ((SEG_SUFFIX, False), (LEGACY_SUFFIX, True)):
        try:
            fd = os.open(os.path.join(path, seg_name(seg, suffix)), os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            want = max_bytes if stop is None else min(max_bytes, stop - off)
            if want <= 0:
                return None
            data = os.pread(fd, want, off)
            if legacy:
                cut = data.rfind(b"\n") + 1
                return Chunk(data[:cut], [], (seg, off + cut), legacy=True) if cut else None
            frames, cut = split_frames(data)
            if not frames and len(data) >= HEADER_SIZE:  # one frame longer than max_bytes
                length = HEADER.unpack_from(data)[0]
                if length and (stop is None or off + HEADER_SIZE + length <= stop):
                    data = os.pread(fd, HEADER_SIZE + length, off)
                    frames, cut = split_frames(data)
            return Chunk(data[:cut], frames, (seg, off + cut)) if frames else None
        finally:
            os.close(fd)
    return None


@dataclass(slots=True, frozen=True)
class Segment:
    """One segment file of an emitter directory, as inspection and retention see it."""

    segno: int
    path: str
    size: int          # bytes on disk (a finished segment is trimmed to its frames)
    mtime: float       # for a shipped segment: when it was shipped to its end
    first_seq: int     # seq of its first frame (0: empty or unreadable)
    legacy: bool = False


def _first_seq(path: str, legacy: bool) -> int:
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE if not legacy else 65536)
    except OSError:
        return 0
    if legacy:
        line = head.split(b"\n", 1)[0]
        m = re.search(rb'"seq":(\d+)', line)
        return int(m.group(1)) if m else 0
    if len(head) < HEADER_SIZE:
        return 0
    length, seq = HEADER.unpack_from(head)
    return int(seq) if length else 0


def segments(path: str) -> list[Segment]:
    """The segments of one emitter directory, ascending, with their first seq."""
    out = []
    for n in list_segments(path):
        for suffix, legacy in ((SEG_SUFFIX, False), (LEGACY_SUFFIX, True)):
            p = os.path.join(path, seg_name(n, suffix))
            try:
                st = os.stat(p)
            except OSError:
                continue
            out.append(Segment(n, p, st.st_size, st.st_mtime, _first_seq(p, legacy), legacy))
    return out


def shipped_position(path: str) -> tuple[int, int, int]:
    """(segment, offset, last seq) of what has been shipped from an emitter directory ((first
    segment, 0, 0) when nothing was)."""
    r = SpoolReader.__new__(SpoolReader)
    r.path, r.last_seq = path, 0
    seg, off = r._load_pos()
    return seg, off, r.last_seq


def sweep(path: str, retention_s: float, keep_from: int | None = None, now: float | None = None) -> tuple[int, int]:
    """Delete the retained segments of ``path`` that were shipped to their end (number below
    ``keep_from``, default: the shipped position's segment) more than ``retention_s`` ago;
    returns (segments, bytes) deleted. Never touches a segment that is not wholly shipped."""
    if keep_from is None:
        keep_from = shipped_position(path)[0]
    now = time.time() if now is None else now
    n = freed = 0
    for s in segments(path):
        if s.segno >= keep_from:
            break
        if s.mtime + retention_s <= now:
            try:
                os.unlink(s.path)
            except OSError:
                continue
            n += 1
            freed += s.size
    return n, freed


def ship_chunk_data(expander: Expander | None, chunk: Chunk) -> tuple[bytes, int, int, str | None]:
    """(wire lines, events, bad frames, error) of a chunk, whichever format it is in."""
    if chunk.legacy:
        return chunk.data, chunk.data.count(b"\n"), 0, None
    if expander is None:
        return b"", 0, len(chunk.frames), "spool without owner.json metadata: frames cannot be expanded"
    ex = expander.expand(chunk.data, chunk.frames)
    return ex.data, ex.events, ex.bad_frames, ex.last_error


__all__ = ["SpoolWriter", "SpoolReader", "Chunk", "Segment", "dead_spools", "list_segments", "seg_name", "try_lock",
           "read_meta", "expander_for", "spooled_wire_lines", "ship_chunk_data", "segments", "shipped_position",
           "read_at", "sweep", "SEG_SUFFIX", "LEGACY_SUFFIX", "DEFAULT_RETENTION_S", "DISK_FULL", "default_retention",
           "parse_seconds"]
