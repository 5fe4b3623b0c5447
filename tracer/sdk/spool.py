"""The local append-only spool: an event is on disk before ``record()`` returns.

Layout, one directory per emitter (= per process and Tracer) under the spool dir::

    <spool>/<emitter_id>/lock          flock'd by the live owner for its whole life
    <spool>/<emitter_id>/owner.json    pid, host, service (for people and `msgtrace ship`)
    <spool>/<emitter_id>/seg-00000001.ndjson   wire-format lines, one event each
    <spool>/<emitter_id>/shipped       "<segment> <offset>": what has been shipped

Lines are exactly the audit wire format (NDJSON), so shipping is a read and a
join, never a re-encode. Writes are copies into preallocated, shared mmap
segments (the kernel's page cache): a SIGKILL cannot lose a returned write,
and each line's newline is written last, so a line cut by the kill is skipped
on reading. A dead owner
is detected by its released flock (the kernel drops it on any death), so a
new process can adopt the directory and ship what is left.
"""
from __future__ import annotations

import fcntl
import json
import mmap
import os
import re
import shutil
import socket
from dataclasses import dataclass
from typing import Iterator

SEG_PREFIX, SEG_SUFFIX = "seg-", ".ndjson"
#: emitter directories are named by the emitter's UUID
_EMITTER_DIR = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def seg_name(n: int) -> str:
    return f"{SEG_PREFIX}{n:08d}{SEG_SUFFIX}"


def list_segments(path: str) -> list[int]:
    """Segment numbers present in an emitter directory, ascending."""
    out = []
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith(SEG_PREFIX) and name.endswith(SEG_SUFFIX):
            try:
                out.append(int(name[len(SEG_PREFIX):-len(SEG_SUFFIX)]))
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


class SpoolWriter:
    """The owner's side: append lines into memory-mapped segments, hold the liveness lock.

    A segment is preallocated (``posix_fallocate``: a full disk fails here, at
    rotation, not later as SIGBUS) and mapped shared, so appending a line is a
    memory copy into the file's page cache: on disk as far as a SIGKILL is
    concerned, with no system call and no GIL release on the business thread.
    Each line's body is copied before its newline, so a line cut by a kill has
    no newline and is recognised as torn.
    """

    def __init__(self, root: str, emitter_id: str, service: str, fsync: str = "never",
                 segment_bytes: int = 8 << 20) -> None:
        # Built under a hidden name and renamed once locked, so a scanning process never
        # mistakes a directory being born for one whose owner died.
        self.path = os.path.join(root, emitter_id)
        tmp = os.path.join(root, f".new-{emitter_id}")
        os.makedirs(tmp)
        fd = try_lock(tmp)
        if fd is None:
            raise OSError(f"cannot lock the new spool directory {tmp}")
        self._lock_fd = fd
        with open(os.path.join(tmp, "owner.json"), "w", encoding="utf-8") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "service": service,
                       "emitter_id": emitter_id}, f)
        os.rename(tmp, self.path)
        self.fsync_always = fsync == "always"
        self.segment_bytes = segment_bytes
        self.segno = 0
        self.seg_size = 0
        self.seg_cap = 0
        self._mm: mmap.mmap | None = None
        self._rotate(0)

    def _rotate(self, need: int) -> None:
        n = self.segno + 1
        cap = max(self.segment_bytes, need)
        fd = os.open(os.path.join(self.path, seg_name(n)), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, cap)
            mm = mmap.mmap(fd, cap, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        old, self._mm = self._mm, mm
        self.segno, self.seg_size, self.seg_cap = n, 0, cap
        if old is not None:
            old.close()

    def sync(self) -> None:
        """msync the current segment (the ``batch`` policy calls this from the shipper)."""
        try:
            mm = self._mm
            if mm is not None:
                mm.flush()
        except (OSError, ValueError):
            pass

    def close(self, remove: bool) -> None:
        """Unmap; ``remove`` deletes the directory (everything shipped)."""
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except (OSError, ValueError):
                pass
        if remove:
            shutil.rmtree(self.path, ignore_errors=True)
        try:
            os.close(self._lock_fd)  # drops the flock: a leftover dir becomes adoptable
        except OSError:
            pass


@dataclass(slots=True)
class Chunk:
    """Complete lines read from the spool and where reading them ends."""

    data: bytes          # lines, each ending with b"\n"
    lines: int
    end: tuple[int, int]  # (segment, offset) just past the chunk


class SpoolReader:
    """The shipper's side: read complete lines from a position, remember what was shipped."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pos = self._load_pos()
        self._fd: int | None = None
        self._fd_seg = 0
        self.torn = 0  # incomplete trailing lines skipped in a dead spool

    def _load_pos(self) -> tuple[int, int]:
        try:
            with open(os.path.join(self.path, "shipped"), encoding="ascii") as f:
                seg, off = f.read().split()
                return int(seg), int(off)
        except (OSError, ValueError):
            segs = list_segments(self.path)
            return (segs[0] if segs else 1), 0

    def _seg_fd(self, seg: int) -> int | None:
        if self._fd is not None and self._fd_seg == seg:
            return self._fd
        self._close_fd()
        try:
            self._fd = os.open(os.path.join(self.path, seg_name(seg)), os.O_RDONLY)
        except FileNotFoundError:
            return None
        self._fd_seg = seg
        return self._fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read(self, max_bytes: int, dead: bool = False, head: tuple[int, int] | None = None) -> Chunk | None:
        """The next complete lines after the shipped position (None when there are none).

        ``head`` is the live writer's (segment, size): nothing beyond it is read.
        Finished segments are deleted on the way; segments are preallocated, so a
        segment ends at its zero tail. In a ``dead`` spool bytes after the last
        newline (a line cut by the kill) are skipped and counted as torn.
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
            data = os.pread(fd, want, off)
            cut = data.rfind(b"\n") + 1
            if cut:
                data = data[:cut]
                return Chunk(data, data.count(b"\n"), (seg, off + cut))
            if head is not None and seg == head[0]:
                return None  # the writer is inside a line (cannot happen under its lock)
            rest = data.strip(b"\0")
            if rest and len(data) >= want:  # one line longer than max_bytes: read it whole
                whole = os.pread(fd, os.fstat(fd).st_size - off, off)
                cut = whole.find(b"\n") + 1
                if cut:
                    return Chunk(whole[:cut], 1, (seg, off + cut))
            later = [s for s in list_segments(self.path) if s > seg]
            if rest and not later and not dead:
                return None
            if rest:
                self.torn += 1
            if not later:
                return None
            self._close_fd()
            os.unlink(os.path.join(self.path, seg_name(seg)))
            self.pos = (later[0], 0)
            self.save()

    def advance(self, chunk: Chunk) -> None:
        """Mark a chunk shipped and persist the position (write + rename: atomic)."""
        self.pos = chunk.end
        self.save()

    def save(self) -> None:
        tmp = os.path.join(self.path, "shipped.tmp")
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{self.pos[0]} {self.pos[1]}\n")
        os.replace(tmp, os.path.join(self.path, "shipped"))

    def close(self) -> None:
        self._close_fd()


def dead_spools(root: str, skip: set[str] = frozenset()) -> Iterator[tuple[str, int]]:
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
