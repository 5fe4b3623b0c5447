"""The emitter's side of the audit's integrity: retained segments, a cap that counts them, a full
disk, the acknowledgement journal that finds what the audit topic lost, and the repair reader.

Real spools in temp dirs and a sink that keeps what it is given (the audit topic and the store are
exercised end to end in tests/test_audit_recovery.py and tests/faults/).
"""
from __future__ import annotations

import errno
import os
import time

import pytest

from tracer.events import decode_batch
from tracer.localsvc import wait_until
from tracer.sdk import spool as spool_mod
from tracer.sdk.emitter import Emitter, NullSink, drain_spools
from tracer.sdk.recovery import AckJournal, Range, TopicState, merge, pack
from tracer.sdk.repair import merge_ranges, missing_after, repair, retained_lines, spool_states
from tracer.sdk.spool import list_segments, parse_seconds, segments, sweep

pytestmark = pytest.mark.unit


class ListSink:
    name = "list"
    chunk_bytes = 1 << 14
    interval = 0.01

    def __init__(self) -> None:
        self.events: list = []
        self.down = False

    def ship(self, data: bytes, lines: int) -> None:
        if self.down:
            raise ConnectionError("audit broker down")
        batch = decode_batch(data, check_header=False)
        assert not batch.bad and len(batch.events) == lines
        self.events.extend(batch.events)

    def close(self) -> None:
        pass


def _fill(e: Emitter, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        e.emit("sent", f"order-{i}:paid", "orders", key=f"k{i}", attrs={"pad": "x" * 200})


def test_shipped_segments_are_retained_then_swept(tmp_path):
    sink = ListSink()
    e = Emitter("svc", sink, str(tmp_path), segment_bytes=16 << 10, retention=3600)
    _fill(e, 400)
    assert e.flush(20)
    path = e.stats["spool"]
    segs = list_segments(path)
    assert len(segs) > 3  # rotated, and the shipped ones are still there
    shipped_to = spool_mod.shipped_position(path)
    assert shipped_to[2] == 400  # the shipped position names the last seq shipped
    done = [s for s in segments(path) if s.segno < shipped_to[0]]
    assert done and all(s.size < 16 << 10 for s in done)  # finished segments trimmed to their frames
    assert [s.first_seq for s in segments(path)][0] == 1
    # nothing expires within the retention; everything shipped to its end does after it
    assert sweep(path, 3600) == (0, 0)
    n, freed = sweep(path, 3600, now=time.time() + 7200)
    assert n == len(done) and freed == sum(s.size for s in done)
    assert list_segments(path) == [shipped_to[0]]  # the segment being written is never swept
    e.close()
    assert os.path.isdir(path)  # closed with a retention: kept (retained, adoptable)
    assert drain_spools(str(tmp_path), ListSink(), retention_s=0) == {"spools": 0, "events": 0, "torn": 0, "left": 0}
    assert not os.path.exists(path)


def test_retention_zero_deletes_as_it_ships(tmp_path):
    e = Emitter("svc", ListSink(), str(tmp_path), segment_bytes=16 << 10, retention=0)
    _fill(e, 400)
    assert e.flush(20)
    wait_until(lambda: len(list_segments(e.stats["spool"])) == 1, 10, "shipped segments to be deleted")
    path = e.stats["spool"]
    e.close()
    assert not os.path.exists(path)


def test_the_cap_counts_retained_segments_and_evicts_the_oldest_shipped_first(tmp_path):
    sink = ListSink()
    e = Emitter("svc", sink, str(tmp_path), segment_bytes=16 << 10, max_spool_bytes=64 << 10, retention=3600)
    for k in range(6):  # far more than the cap, shipped as it goes: no event is dropped, old segments go
        _fill(e, 200, k * 200)
        assert e.flush(20)
    s = e.stats
    assert s["dropped"] == 0 and s["recorded"] == 1200 and len(sink.events) == 1200
    assert s["evicted_segments"] > 0 and s["evicted_events"] > 0
    on_disk = sum(x.size for x in segments(s["spool"]))
    assert on_disk <= (64 << 10) + (16 << 10)  # the cap (and the segment being written)
    retained = {seq for seq, _ in retained_lines(s["spool"], [(1, 1200)])}
    assert retained and max(retained) == 1200 and min(retained) > 1  # the oldest went first
    assert len(retained) == 1200 - s["evicted_events"]
    # the audit sink down: unshipped events are never evicted; beyond the cap they are dropped, counted
    sink.down = True
    _fill(e, 2000, 1200)
    s = e.stats
    assert s["dropped"] > 0 and s["recorded"] + s["dropped"] == 3200 and s["errors"] == 0
    e.close(0)


def test_a_full_disk_drops_per_event_without_retrying_each_time(tmp_path, monkeypatch):
    """ENOSPC when a new segment is allocated (the real disk-full run is tests/faults/test_spool_full.py):
    every event that does not fit is counted dropped, none is an error, and the allocation is not
    tried again for every event while nothing changes."""
    e = Emitter("svc", NullSink(), str(tmp_path), segment_bytes=8 << 10, retention=3600)
    calls = []
    real = os.posix_fallocate

    def full(fd: int, off: int, n: int) -> None:
        calls.append(n)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    _fill(e, 2000)
    monkeypatch.setattr(os, "posix_fallocate", real)
    s = e.stats
    assert s["errors"] == 0 and s["dropped"] > 1000 and s["recorded"] + s["dropped"] == 2000
    assert len(calls) <= 3, len(calls)  # not once per dropped event
    assert "disk is full" in (s["last_error"] or "")
    assert len(list_segments(s["spool"])) == 1  # no half-made segment left behind
    e.close(0)


def test_the_progress_file_tells_audit_health_what_the_owner_dropped(tmp_path):
    sink = ListSink()
    sink.down = True
    e = Emitter("svc", sink, str(tmp_path), max_spool_bytes=8 << 10, retention=3600)
    _fill(e, 200)
    [st] = spool_states(str(tmp_path))
    assert st.state == "running" and st.service == "svc"
    assert st.counters["dropped"] == e.stats["dropped"] > 0
    assert st.recorded == 200 and st.shipped == 0
    e.close(0)
    [st] = spool_states(str(tmp_path))
    assert st.state == "stopped"


def test_repair_reader_returns_exactly_the_asked_seqs(tmp_path):
    e = Emitter("svc", NullSink(), str(tmp_path), segment_bytes=8 << 10)
    _fill(e, 300)
    eid = e.stats["emitter_id"]
    e.emit_rows("broker_acked", "orders", 0, None, None,
                [(f"order-{i}:paid", i, None, None, None, None, None) for i in range(5)])  # seq 301..305
    path = e.stats["spool"]
    got = dict(retained_lines(path, [(5, 9), (120, 120), (302, 304)]))
    assert sorted(got) == [5, 6, 7, 8, 9, 120, 302, 303, 304]
    evs = decode_batch(b"".join(got.values()), check_header=False).events
    assert [ev.seq for ev in evs] == sorted(got) and {ev.emitter_id for ev in evs} == {eid}
    sink = ListSink()
    [r] = repair(str(tmp_path), {eid: [(5, 9), (400, 410)]}, sink)
    assert (r.found, r.wanted, r.sent, r.not_retained) == (True, 16, 5, [(400, 410)])
    assert [ev.seq for ev in sink.events] == [5, 6, 7, 8, 9]
    [r] = repair(str(tmp_path), {"0000": [(1, 2)]}, sink)
    assert not r.found and r.not_retained == [(1, 2)]
    e.close(0)


def test_seq_range_helpers():
    assert merge_ranges([(5, 9), (1, 3), (4, 4), (20, 21)]) == [(1, 9), (20, 21)]
    assert missing_after([(1, 10)], {1, 2, 5, 10}) == [(3, 4), (6, 9)]


def test_the_journal_finds_what_the_topic_lost():
    j = AckJournal()
    r1, r2, r3 = (pack(1, 0), pack(1, 100)), (pack(1, 100), pack(1, 200)), (pack(2, 0), pack(2, 50))
    assert j.acked([(0, 10), (0, 11)], *r1) == []
    assert j.acked([(0, 12)], *r2) == []
    assert j.acked([(1, 3)], *r3) == []
    assert j.check(TopicState(True, "id-1", {0: 13, 1: 4})) == ("", [])
    assert j.topic_id == "id-1"
    # a log end inside our last shipment is not a loss (Tansu reports a batch's base + 1)
    assert j.check(TopicState(True, "id-1", {0: 13, 1: 4}))[1] == []
    # the log of partition 0 cut below our last shipment: that shipment and later are lost
    why, lost = j.check(TopicState(True, "id-1", {0: 11}))
    assert "cut" in why and merge(lost) == [Range(r1[0], r2[1])]  # offsets 11 and 12
    # a new acknowledgement at an offset we had: the log was cut and reused
    assert j.acked([(0, 10)], *r1) == [Range(*r1)]
    assert j.acked([(1, 2)], *r3) == [Range(*r3)]
    # the topic recreated (a new topic id) or gone: everything acknowledged before is lost
    why, lost = j.check(TopicState(True, "id-2", {}))
    assert "recreated" in why and merge(lost) == merge([Range(*r1), Range(*r3)])
    j.acked([(0, 0)], *r2)
    why, lost = j.check(TopicState(False))
    assert "gone" in why and lost == [Range(*r2)] and len(j) == 0


def _state(j: AckJournal) -> tuple:
    return j.topic_id, {p: (v.offsets, v.starts, v.ends, v.last_first) for p, v in j.parts.items() if v.offsets}


def test_the_journal_outlives_its_process(tmp_path):
    """A successor adopting a stopped emitter's retained spool reads its journal back from disk (the
    deploy case: the audit topic lost what the previous instance shipped) and finds the same losses."""
    path = str(tmp_path / "acks.journal")
    r1, r2 = (pack(1, 0), pack(1, 100)), (pack(1, 100), pack(1, 200))
    j = AckJournal(path)
    j.acked([(0, 10), (0, 11)], *r1)
    j.acked([(1, 4)], *r2)
    j.check(TopicState(True, "id-1", {0: 12, 1: 5}))
    j.acked([(0, 12)], *r2)
    assert j.acked([(0, 11)], *r2) == [Range(*r1), Range(*r2)]  # offsets 11, 12 reused: lost, 11 added again
    j.forget_below(pack(1, 50))
    want = _state(j)
    j.close()
    again = AckJournal(path)
    assert _state(again) == want and want[1]  # replayed from the file, then compacted
    assert len(open(path).read().splitlines()) == 1 + len(again) + len(again.partitions)
    # a torn last line (the process killed mid-write) is skipped
    again.close()
    with open(path, "a") as f:
        f.write("a 0 9")
    third = AckJournal(path)
    assert _state(third) == want
    why, lost = third.check(TopicState(True, "id-2", {}))  # recreated after the predecessor stopped
    everything = [Range(st, e) for _, starts, ends, _ in want[1].values() for st, e in zip(starts, ends)]
    assert "recreated" in why and merge(lost) == merge(everything) == [Range(r1[0], r2[1])]
    third.close()
    assert _state(AckJournal(path)) == ("id-2", {})


def test_an_unwritable_journal_stays_in_memory(tmp_path, caplog):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        j = AckJournal(str(d / "acks.journal"))
        if os.access(str(d), os.W_OK):  # root ignores the mode: make the file itself a directory instead
            d.chmod(0o700)
            (d / "acks.journal.tmp").mkdir()
            j = AckJournal(str(d / "acks.journal"))
        assert j.acked([(0, 1)], pack(1, 0), pack(1, 10)) == [] and len(j) == 1
        assert "kept in memory only" in caplog.text
    finally:
        d.chmod(0o700)


def test_retention_settings_are_checked():
    assert parse_seconds("24h", "x") == 86400 and parse_seconds("0", "x") == 0 and parse_seconds("90", "x") == 90
    from tracer.errors import ConfigError

    for bad in ("soon", "-1h", "nan"):
        with pytest.raises(ConfigError, match="x="):
            parse_seconds(bad, "x")
