"""``msgtrace ship --repair``: re-send exactly the seq ranges the store misses, from retained segments.

An audit gap the emitters could not heal themselves (the audit topic lost records while nothing was
watching, a collector that lost a batch, a shipper restarted without its acknowledgement journal)
stays a hole in an emitter's seq numbers; ``msgtrace audit-health`` lists the holes, and this module
closes them: for each emitter of the spool directory (live or dead, read-only, without taking its
lock) it reads the retained segments that hold the missing seq numbers, expands only the frames
that overlap them, keeps the lines whose seq is missing and ships those (to the audit topic, or
straight into the store). The lines are the same as the first time (event_id = the emitter's
prefix + seq), so a line shipped twice is absorbed by de-duplication. What is not retained any more
(expired, evicted to make room, dropped when the spool was full, or recorded on another host) is
reported, never invented.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from tracer.sdk.frames import Expander, split_frames
from tracer.sdk.sinks import Sink
from tracer.sdk.spool import read_meta, segments

#: one seq range, inclusive
SeqRange = tuple[int, int]
_SEQ_RE = re.compile(rb'"seq":(\d+)')
_SHIP_BYTES = 4 << 20


@dataclass(slots=True)
class Repaired:
    """What a repair did for one emitter."""

    emitter_id: str
    service: str = ""
    found: bool = False                 # its spool directory is in this spool dir
    wanted: int = 0                     # seq numbers asked for
    sent: int = 0                       # found in the retained segments and shipped again
    ranges: list[SeqRange] = field(default_factory=list)        # asked for
    not_retained: list[SeqRange] = field(default_factory=list)  # not found here

    @property
    def complete(self) -> bool:
        return self.found and not self.not_retained

    def to_json(self) -> dict[str, object]:
        return {"emitter_id": self.emitter_id, "service": self.service, "found": self.found,
                "wanted": self.wanted, "sent": self.sent, "ranges": [list(r) for r in self.ranges],
                "not_retained": [list(r) for r in self.not_retained]}


def merge_ranges(ranges: Sequence[SeqRange]) -> list[SeqRange]:
    out: list[SeqRange] = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _overlaps(lo: int, hi: int, ranges: Sequence[SeqRange]) -> bool:
    return any(a <= hi and lo <= b for a, b in ranges)


def _inside(seq: int, ranges: Sequence[SeqRange]) -> bool:
    return any(a <= seq <= b for a, b in ranges)


def missing_after(ranges: Sequence[SeqRange], got: set[int]) -> list[SeqRange]:
    """The parts of ``ranges`` whose seq numbers are not in ``got``."""
    out: list[SeqRange] = []
    for lo, hi in ranges:
        start = None
        for s in range(lo, hi + 1):
            if s in got:
                if start is not None:
                    out.append((start, s - 1))
                    start = None
            elif start is None:
                start = s
        if start is not None:
            out.append((start, hi))
    return out


def retained_lines(path: str, ranges: Sequence[SeqRange]) -> Iterator[tuple[int, bytes]]:
    """(seq, wire line) of every retained event of one emitter directory whose seq is in ``ranges``."""
    meta = read_meta(path)
    ex = Expander(meta) if meta is not None else None
    segs = segments(path)
    for i, seg in enumerate(segs):
        last = (segs[i + 1].first_seq - 1) if i + 1 < len(segs) and segs[i + 1].first_seq else 2**62
        if seg.first_seq and not _overlaps(seg.first_seq, last, ranges):
            continue
        try:
            with open(seg.path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if seg.legacy:
            for line in data.rstrip(b"\0").splitlines(keepends=True):
                m = _SEQ_RE.search(line)
                if m and _inside(int(m.group(1)), ranges):
                    yield int(m.group(1)), line if line.endswith(b"\n") else line + b"\n"
            continue
        if ex is None:
            continue
        frames, _ = split_frames(data)
        for j, (seq, start, end) in enumerate(frames):
            nxt = frames[j + 1][0] - 1 if j + 1 < len(frames) else last
            if not _overlaps(seq, max(seq, nxt), ranges):
                continue
            out = ex.expand(data, [(seq, start, end)])
            for k, line in enumerate(out.data.splitlines(keepends=True)):
                if _inside(seq + k, ranges):
                    yield seq + k, line


def repair(spool_dir: str, wanted: dict[str, list[SeqRange]], sink: Sink | None,
           dry_run: bool = False) -> list[Repaired]:
    """Re-send the ``wanted`` seq ranges of each emitter from ``spool_dir`` through ``sink``
    (nothing is sent with ``dry_run``, or with no sink)."""
    out = []
    for emitter_id in sorted(wanted):
        ranges = merge_ranges(wanted[emitter_id])
        r = Repaired(emitter_id, ranges=ranges, wanted=sum(hi - lo + 1 for lo, hi in ranges))
        out.append(r)
        path = os.path.join(spool_dir, emitter_id)
        if not ranges or not os.path.isdir(path):
            r.not_retained = list(ranges)
            continue
        r.found = True
        meta = read_meta(path)
        r.service = meta.service if meta is not None else ""
        got: set[int] = set()
        buf: list[bytes] = []
        size = 0
        for seq, line in retained_lines(path, ranges):
            if seq in got:
                continue
            got.add(seq)
            buf.append(line)
            size += len(line)
            if size >= _SHIP_BYTES:
                _ship(sink, buf, dry_run)
                buf, size = [], 0
        _ship(sink, buf, dry_run)
        r.sent = len(got)
        r.not_retained = missing_after(ranges, got)
    return out


def _ship(sink: Sink | None, lines: list[bytes], dry_run: bool) -> None:
    if lines and sink is not None and not dry_run:
        sink.ship(b"".join(lines), len(lines))


# --- the spool side of msgtrace audit-health -------------------------------------------------------

@dataclass(slots=True)
class SpoolState:
    """One emitter directory of a spool dir, as ``msgtrace audit-health --spool`` shows it."""

    emitter_id: str
    service: str = ""
    host: str = ""
    pid: int = 0
    state: str = "stopped"      # running (its owner holds the lock), adopted (another shipper does), stopped
    recorded: int = 0           # the highest seq written to the spool (events recorded, dropped ones included)
    shipped: int = 0            # the last seq shipped
    retained_from: int = 0      # the first seq still on disk (0: none)
    segments: int = 0
    bytes: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None

    @property
    def unshipped(self) -> int:
        return max(0, self.recorded - self.shipped)

    def to_json(self) -> dict[str, object]:
        c = self.counters
        return {"emitter_id": self.emitter_id, "service": self.service, "host": self.host, "pid": self.pid,
                "state": self.state, "recorded": self.recorded, "shipped": self.shipped,
                "unshipped": self.unshipped, "retained_from_seq": self.retained_from, "segments": self.segments,
                "spool_bytes": self.bytes, "dropped": c.get("dropped", 0), "evicted_events": c.get("evicted_events", 0),
                "torn": c.get("torn", 0), "audit_losses": c.get("audit_losses", 0),
                "reshipped": c.get("reshipped", 0), "reship_lost": c.get("reship_lost", 0),
                "last_error": self.last_error}


def spool_states(spool_dir: str) -> list[SpoolState]:
    """Every emitter directory in ``spool_dir`` (read-only; a dead one's lock is taken for an instant)."""
    from tracer.events import local_identity
    from tracer.sdk.shipper import read_counters
    from tracer.sdk.spool import _EMITTER_DIR, shipped_position, try_lock

    here = local_identity()[0]
    out = []
    try:
        names = sorted(os.listdir(spool_dir))
    except OSError:
        return []
    for name in names:
        path = os.path.join(spool_dir, name)
        if not _EMITTER_DIR.match(name) or not os.path.isdir(path):
            continue
        meta = read_meta(path)
        st = SpoolState(name, meta.service if meta else "", meta.host if meta else "", meta.pid if meta else 0)
        fd = try_lock(path)
        if fd is not None:
            os.close(fd)
        elif meta is not None and meta.host == here and _alive(meta.pid):
            st.state = "running"
        else:
            st.state = "adopted"
        segs = segments(path)
        st.segments = len(segs)
        st.bytes = sum(s.size for s in segs)
        st.retained_from = next((s.first_seq for s in segs if s.first_seq), 0)
        st.shipped = shipped_position(path)[2]
        st.counters = read_counters(path)
        st.recorded = max(_last_seq(path, segs, meta), st.counters.get("seq_high", 0))
        try:
            with open(os.path.join(path, "last_error"), encoding="utf-8") as f:
                st.last_error = f.read() or None
        except OSError:
            pass
        out.append(st)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _last_seq(path: str, segs: list, meta: object) -> int:  # type: ignore[type-arg]
    """The highest seq in the newest segment that holds any frame."""
    for seg in reversed(segs):
        try:
            with open(seg.path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if seg.legacy:
            seqs = [int(m.group(1)) for m in _SEQ_RE.finditer(data)]
            if seqs:
                return max(seqs)
            continue
        frames, _ = split_frames(data)
        if not frames:
            continue
        seq, start, end = frames[-1]
        m = read_meta(path)
        if m is None:
            return seq
        n = Expander(m).expand(data, [frames[-1]]).events
        return seq + max(n, 1) - 1
    return 0


__all__ = ["Repaired", "SeqRange", "SpoolState", "merge_ranges", "missing_after", "repair", "retained_lines",
           "spool_states"]
