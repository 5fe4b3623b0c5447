"""The emitter: spool first, survive SIGKILL, remember what was shipped, bound the spool."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from kafka import KafkaProducer
from test_hooks import assert_gap_free, by_msg, new_topic, read_audit

from tracer import Tracer
from tracer.errors import ConfigError
from tracer.events import MSG_ID_HEADER, decode_batch
from tracer.localsvc import wait_until
from tracer.sdk.emitter import Emitter, NullSink, drain_spools


class ListSink:
    """Collects shipped lines; ``down`` makes it fail like an unreachable Kafka."""

    name = "list"
    chunk_bytes = 1 << 16
    interval = 0.02

    def __init__(self) -> None:
        self.events = []
        self.down = False
        self.calls = 0

    def ship(self, data: bytes, lines: int) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionError("audit broker down")
        batch = decode_batch(data, check_header=False)
        assert batch.bad == [] and len(batch.events) == lines
        self.events.extend(batch.events)

    def close(self) -> None:
        pass


CHILD = textwrap.dedent("""
    import os, signal, sys
    from tracer.sdk.emitter import Emitter
    from tracer.events import decode_batch

    class FileSink:
        name, chunk_bytes, interval = "file", 1 << 16, 0.02
        down = False
        def ship(self, data, lines):
            if self.down:
                raise ConnectionError("down")
            with open(sys.argv[2], "ab") as f:
                f.write(data)
        def close(self):
            pass

    sink = FileSink()
    e = Emitter("child", sink, sys.argv[1], adopt=False)
    for i in range(50):
        e.emit("sent", f"m{i}", "orders")
    assert e.flush(10)
    sink.down = True
    for i in range(50, 80):
        e.emit("sent", f"m{i}", "orders")
    print(e.emitter_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_sigkilled_spool_is_adopted_and_only_the_rest_shipped(tmp_path):
    spool, shipped = tmp_path / "spool", tmp_path / "shipped.ndjson"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run([sys.executable, str(script), str(spool), str(shipped)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    dead_id = proc.stdout.strip()
    before = decode_batch(shipped.read_bytes(), check_header=False).events
    assert [e.seq for e in before] == list(range(1, 51))

    sink = ListSink()
    e = Emitter("adopter", sink, str(spool))  # a new process adopts the dead one's spool at start
    wait_until(lambda: e.stats["adopted_events"] == 30 and e.flush(0), 20, "the dead spool to be shipped")
    assert [ev.seq for ev in sink.events] == list(range(51, 81))  # what was shipped is not shipped again
    assert {ev.emitter_id for ev in sink.events} == {dead_id}  # original stamps: the seq stays gap-free
    e.close()
    # both spools shipped to their end and retained (default 24 h: the audit topic may still lose them)
    assert sorted(os.listdir(spool)) == sorted([dead_id, e.emitter_id])
    assert drain_spools(str(spool), ListSink(), retention_s=0) == {"spools": 0, "events": 0, "torn": 0, "left": 0}
    assert os.listdir(spool) == []  # without a retention, shipped spools are removed


def test_only_emitter_directories_are_adopted(tmp_path):
    """A spool dir may share its parent with other things (a chDB store): those are never touched."""
    other = tmp_path / "store"
    other.mkdir()
    (other / "data.bin").write_bytes(b"keep me")
    e = Emitter("x", ListSink(), str(tmp_path))
    e.emit("sent", "m1")
    assert e.flush(10) and e.stats["adopted_spools"] == 0
    e.close()
    assert drain_spools(str(tmp_path), ListSink())["spools"] == 0
    assert sorted(os.listdir(other)) == ["data.bin"]


def test_live_spool_is_not_adopted(tmp_path):
    a = Emitter("a", NullSink(), str(tmp_path))
    a.emit("sent", "m1")
    sink = ListSink()
    assert drain_spools(str(tmp_path), sink) == {"spools": 0, "events": 0, "torn": 0, "left": 0}
    b = Emitter("b", sink, str(tmp_path))
    assert b.flush(5) and b.stats["adopted_spools"] == 0
    a.close(0)  # a dies with its event unshipped; b adopts it
    b._adopt_interval = 0
    wait_until(lambda: b.stats["adopted_events"] == 1, 20, "adoption after a closed")
    assert [ev.msg_id for ev in sink.events] == ["m1"]
    b.close()


def test_torn_last_line_is_skipped(tmp_path):
    from tracer.sdk.frames import split_frames

    e = Emitter("torn", NullSink(), str(tmp_path))
    e.emit("sent", "m1")
    e.emit("sent", "m2")
    path = e.stats["spool"]
    e.close(0)
    with open(os.path.join(path, "seg-00000001.spool"), "r+b") as f:
        _, end = split_frames(f.read())  # segments are preallocated: the frames end at a zero length
        f.seek(end + 4)
        f.write(b'\x05\0\0\0\0\0\0\0half a fra')  # a frame cut by the kill: its length never written
    sink = ListSink()
    stats = drain_spools(str(tmp_path), sink)
    assert stats == {"spools": 1, "events": 2, "torn": 1, "left": 0}
    assert [ev.msg_id for ev in sink.events] == ["m1", "m2"]


def test_spool_is_bounded_drops_are_counted_and_leave_a_seq_gap(tmp_path):
    sink = ListSink()
    sink.down = True
    e = Emitter("bounded", sink, str(tmp_path), max_spool_bytes=20_000)
    for i in range(400):  # frames are compact (~75 bytes): 400 overflow 20 KB
        e.emit("sent", f"m{i}", "orders")
    s = e.stats
    assert s["dropped"] > 0 and s["recorded"] + s["dropped"] == 400
    assert 0 < s["spooled_bytes"] <= 20_000
    assert e.flush(0.3) is False
    sink.down = False  # the broker is back: the spool drains
    assert e.flush(20)
    assert len(sink.events) == s["recorded"]
    seqs = [ev.seq for ev in sink.events]
    assert seqs == list(range(1, s["recorded"] + 1))  # dropped events are the missing seq tail
    e.emit("sent", "after")
    assert e.flush(10) and sink.events[-1].seq == 401  # the gap stays visible to the audit
    e.close()


def test_emit_never_raises_and_is_thread_safe(tmp_path):
    sink = ListSink()
    e = Emitter("threads", sink, str(tmp_path), fsync="batch")
    threads = [threading.Thread(target=lambda k=k: [e.emit("sent", f"{k}-{i}") for i in range(500)])
               for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    e.emit_many([("received", f"r{i}", "t", 0, i, "g", None, None, None, None) for i in range(100)])
    e.emit("sent", None)  # type: ignore[arg-type]  # garbage in: still no exception
    assert e.flush(20)
    good = [ev for ev in sink.events]
    assert len(good) == 2100
    assert sorted(ev.seq for ev in good) == list(range(1, 2101))
    e.close()
    with pytest.raises(ConfigError):
        Emitter("x", sink, str(tmp_path), fsync="sometimes")


def test_fsync_always_writes_through(tmp_path):
    sink = ListSink()
    e = Emitter("fsync", sink, str(tmp_path), fsync="always")
    e.emit("sent", "m1")
    assert e.flush(10) and [ev.msg_id for ev in sink.events] == ["m1"]
    e.close()


def test_direct_store_sink(store, store_url, tmp_path):
    """No Kafka: the tracer writes straight into trace_events (both engines)."""
    t = Tracer(service="direct", store=store_url, spool_dir=str(tmp_path / "spool"))
    t.record("sent", "order-1:paid", topic="order-paid", key=b"user-7")
    t.record("broker_acked", "order-1:paid", topic="order-paid", partition=0, offset=41)
    with t.processing("order-1:paid", consumer_group="red-packet"):
        pass
    assert t.flush(60), t.stats
    t.close()
    events = store.select_events("order-1:paid")
    assert [e.stage for e in events] == ["sent", "broker_acked", "business_done"]
    assert events[0].key == "user-7" and events[1].offset == 41 and events[2].consumer_group == "red-packet"
    assert [e.seq for e in events] == [1, 2, 3]


def test_audit_broker_down_business_goes_on_and_nothing_is_lost(kafka_bootstrap, tansu, tmp_path):
    """Audit broker stopped: business sends still work, events wait in the spool; after the restart
    (a memory broker: the topic is gone) every event arrives, none twice after de-duplication."""
    business = new_topic(kafka_bootstrap, 1)
    audit_topic = "msgtrace.audit"
    t = Tracer(service="orders", bootstrap=tansu.bootstrap, audit_topic=audit_topic, spool_dir=str(tmp_path))
    producer = t.wrap_producer(KafkaProducer(bootstrap_servers=kafka_bootstrap))
    for i in range(50):
        producer.send(business, b"x", msg_id=f"a{i}").get(timeout=30)
    assert t.flush(30)
    first = read_audit(tansu.bootstrap, audit_topic, expect=100)

    tansu.kill()
    futures = [producer.send(business, b"x", msg_id=f"b{i}") for i in range(200)]
    producer.flush(30)
    assert all(f.get(0).offset >= 50 for f in futures)  # the business path did not notice
    assert t.flush(0.5) is False and t.stats["spooled_bytes"] > 0 and t.stats["dropped"] == 0

    tansu.start()  # same port, empty broker
    assert t.flush(90), t.stats
    second = read_audit(tansu.bootstrap, audit_topic, expect=400)
    producer.close()
    everything = first + second
    unique = {e.event_id: e for e in everything}
    assert len(unique) == t.stats["recorded"] == 500
    assert_gap_free(list(unique.values()))
    msgs = by_msg(everything)
    assert all(sorted(e.stage for e in evs) == ["broker_acked", "sent"] for evs in msgs.values())
    assert len(msgs) == 250
    t.close()


def test_ship_command_drains_a_dead_spool_into_the_store(chdb_url, tmp_path):
    e = Emitter("dead", NullSink(), str(tmp_path / "spool"))
    for i in range(20):
        e.emit("received", f"m{i}", "orders", 0, i, "g")
    e.close(0)  # leaves the spool behind, like a killed process
    cmd = [sys.executable, "-m", "tracer", "ship", "--spool", str(tmp_path / "spool"), "--store", chdb_url, "--json"]
    env = {k: v for k, v in os.environ.items() if k != "MSGTRACE_KAFKA_BOOTSTRAP"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"spools": 1, "events": 20, "torn": 0, "left": 0,
                                                                "sink": "store"}
    from tracer.store import Store

    with Store(chdb_url) as s:
        assert s.query("SELECT uniqExact(event_id) AS n FROM {db:Identifier}.trace_events")[0]["n"] == 20
    proc = subprocess.run(cmd[:5] + [str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no such directory" in proc.stderr


class FileSink(ListSink):
    """Appends shipped lines to a file (works across fork)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def ship(self, data: bytes, lines: int) -> None:
        super().ship(data, lines)
        with open(self.path, "ab") as f:
            f.write(data)


def test_forked_child_becomes_its_own_emitter(tmp_path):
    out = str(tmp_path / "shipped.ndjson")
    e = Emitter("parent", FileSink(out), str(tmp_path / "spool"))
    e.emit("sent", "p1")
    pid = os.fork()
    if pid == 0:  # child
        ok = False
        try:
            e.emit("sent", "c1")
            e.emit("sent", "c2")
            ok = e.flush(20) and e.stats["recorded"] == 2
            e.close()
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    e.emit("sent", "p2")
    assert e.flush(20)
    e.close()
    events = decode_batch(open(out, "rb").read(), check_header=False).events
    by_emitter: dict[str, list] = {}
    for ev in events:
        by_emitter.setdefault(ev.emitter_id, []).append((ev.seq, ev.msg_id, ev.pid))
    assert sorted(sorted(v) for v in by_emitter.values()) == [
        [(1, "c1", pid), (2, "c2", pid)], [(1, "p1", os.getpid()), (2, "p2", os.getpid())]]


def test_from_env_without_kafka_writes_to_the_store(monkeypatch, chdb_url, tmp_path):
    monkeypatch.delenv("MSGTRACE_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("MSGTRACE_SERVICE", "red-packet")
    monkeypatch.setenv("MSGTRACE_STORE", chdb_url)
    monkeypatch.setenv("MSGTRACE_SPOOL_DIR", str(tmp_path / "spool"))
    t = Tracer.from_env()
    assert t.stats["sink"] == "store" and t.stats["spool"].startswith(str(tmp_path / "spool"))
    t.record("received", "order-3:paid", topic="order-paid", partition=1, offset=7, group="red-packet")
    assert t.flush(60)
    t.close()
    from tracer.store import Store

    with Store(chdb_url) as s:
        [e] = s.select_events("order-3:paid")
    assert (e.service, e.consumer_group, e.partition, e.offset) == ("red-packet", "red-packet", 1, 7)
    monkeypatch.setenv("MSGTRACE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    k = Tracer.from_env(adopt=False)
    assert k.stats["sink"] == "kafka"
    k.close(0)


def test_ship_command_to_the_audit_topic(kafka_bootstrap, tmp_path):
    e = Emitter("dead", NullSink(), str(tmp_path / "spool"))
    for i in range(30):
        e.emit("sent", f"m{i}", "orders")
    e.close(0)
    topic = f"audit-{os.getpid()}-{id(e)}"
    proc = subprocess.run([sys.executable, "-m", "tracer", "ship", "--spool", str(tmp_path / "spool"),
                           "--bootstrap", kafka_bootstrap, "--audit-topic", topic, "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["events"] == 30
    events = read_audit(kafka_bootstrap, topic, expect=30)
    assert sorted(ev.seq for ev in events) == list(range(1, 31))
    assert os.listdir(tmp_path / "spool") == [e.emitter_id]  # shipped, retained (default 24 h)
    again = subprocess.run([sys.executable, "-m", "tracer", "ship", "--spool", str(tmp_path / "spool"),
                            "--bootstrap", kafka_bootstrap, "--audit-topic", topic, "--json", "--retention", "0"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["events"] == 0  # nothing shipped twice
    assert os.listdir(tmp_path / "spool") == []  # --retention 0: a shipped spool is removed


def test_emit_deliveries_lines_are_valid_and_share_the_seq(tmp_path):
    """Batch spooling (a poll's received, a commit's offset_committed): valid wire lines, one gap-free seq;
    ids and trace context read from the entries' headers at shipping time."""
    sink = ListSink()
    e = Emitter("rows", sink, str(tmp_path))
    e.emit("sent", "m0", "orders", key="k\"0\n")  # JSON escaping still done by orjson
    tp = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    e.emit_deliveries("received", "orders", 2, "g1", None, None,
                      [(10 + i, None, [("traceparent", tp), (MSG_ID_HEADER, f"m{i}".encode())], None, None)
                       for i in range(1, 4)])
    e.emit("offset_committed", "")  # type: ignore[arg-type]  # invalid: counted, no seq used
    e.emit_deliveries("offset_committed", "orders", 2, "g1", None, 13,
                      [(11, b"k", [(MSG_ID_HEADER, b"m1")], None, None)])
    e.emit_deliveries("received", "orders", 0, "g1", None, None, [])  # nothing to do
    e.emit_many([("received", "m9", "other", 1, 5, None, "k", None, None, None)])
    assert e.flush(10)
    evs = sink.events
    assert [ev.seq for ev in evs] == [1, 2, 3, 4, 5, 6]
    assert evs[0].key == "k\"0\n" and evs[0].consumer_group is None
    rec = evs[1:4]
    assert [(ev.stage, ev.msg_id, ev.partition, ev.offset, ev.consumer_group) for ev in rec] == [
        ("received", f"m{i}", 2, 10 + i, "g1") for i in range(1, 4)]
    assert {ev.trace_id for ev in rec} == {"0af7651916cd43dd8448eb211c80319c"}
    com = evs[4]
    assert (com.stage, com.msg_id, com.partition, com.offset, com.attrs, com.key, com.trace_id) == (
        "offset_committed", "m1", 2, 13, {"record_offset": "11"}, None, None)
    assert evs[5].topic == "other" and evs[5].consumer_group is None
    assert len({ev.event_id for ev in evs}) == 6 and {ev.emitter_id for ev in evs} == {e.emitter_id}
    assert e.stats["invalid"] == 1
    e.close()


def test_emit_deliveries_respects_the_spool_bound(tmp_path):
    """A batch that does not fit is dropped whole and counted per event; its seqs are the gap."""
    sink = ListSink()
    sink.down = True
    e = Emitter("rows-bounded", sink, str(tmp_path), max_spool_bytes=5_000)
    for b in range(50):
        e.emit_deliveries("received", "orders", 0, "g", None, None,
                          [(b * 10 + i, None, [(MSG_ID_HEADER, b"m%d" % (b * 10 + i))], None, None)
                           for i in range(10)])
    s = e.stats
    assert s["dropped"] > 0 and s["recorded"] + s["dropped"] == 500 and s["spooled_bytes"] <= 5_000
    assert s["recorded"] % 10 == 0 and s["dropped"] % 10 == 0  # whole batches
    sink.down = False
    assert e.flush(20)
    assert [ev.seq for ev in sink.events] == list(range(1, s["recorded"] + 1))
    e.close()


def test_line_heads_cache_is_bounded_and_correct(tmp_path):
    sink = ListSink()
    e = Emitter("heads", sink, str(tmp_path), max_spool_bytes=1 << 30)
    for i in range(5000):
        e.emit("sent", f"m{i}", f"topic-{i}")
    assert e.flush(30)
    assert e._loop.expander.heads <= 4096  # the shipper's cache of constant line starts
    assert [(ev.msg_id, ev.topic) for ev in sink.events] == [(f"m{i}", f"topic-{i}") for i in range(5000)]
    e.close()


def test_shipper_lingers_when_caught_up_but_flush_is_prompt(tmp_path):
    """Steady traffic ships in few large chunks; flush() still wakes the shipper at once."""
    sink = ListSink()
    sink.interval = 3600.0  # lingering forever unless woken
    e = Emitter("linger", sink, str(tmp_path))
    e.emit("sent", "m1")
    assert e.flush(5)  # woken, not waiting an hour
    for i in range(4000):  # a backlog of several chunks: shipped chunk after chunk
        e.emit("sent", f"x{i}")
    assert e.pending_bytes() > 3 * sink.chunk_bytes
    calls = sink.calls
    assert e.flush(10) and len(sink.events) == 4001
    assert sink.calls - calls >= 3
    assert [ev.seq for ev in sink.events] == list(range(1, 4002))
    e.close()


def test_deliveries_with_odd_ids_and_no_id_at_all(tmp_path):
    """Ids that need JSON escaping survive; an entry with no usable id is named by its position."""
    sink = ListSink()
    e = Emitter("frag", sink, str(tmp_path))
    odd = 'a "quoted"\nid'
    e.emit_deliveries("received", "orders", 1, "g", None, None,
                      [(3, None, [(MSG_ID_HEADER, odd.encode())], None, None), (4, None, [(MSG_ID_HEADER, b"")], "", None),
                       (5, "ключ", None, odd, {"x": "1"})])
    e.emit_deliveries("offset_committed", "orders", 1, "g", None, 4, [(3, None, None, odd, None)])
    assert e.flush(10)
    assert [(ev.stage, ev.msg_id, ev.offset, ev.seq, ev.key) for ev in sink.events] == [
        ("received", odd, 3, 1, None), ("received", "orders/1/4", 4, 2, None), ("received", odd, 5, 3, "ключ"),
        ("offset_committed", odd, 4, 4, None)]
    assert sink.events[2].attrs == {"x": "1"} and sink.events[3].attrs == {"record_offset": "3"}
    e.close()


def test_record_caps_huge_fields_so_every_audit_line_stays_shippable(tmp_path):
    from tracer.sdk.emitter import NullSink
    from tracer.sdk.kafka_python import MAX_ERROR_CHARS
    from tracer.sdk.tracer import MAX_ATTR_CHARS, Tracer

    t = Tracer(service="svc", sink=NullSink(), spool_dir=str(tmp_path / "spool"))
    try:
        t.record("business_failed", "order-1:paid", error="x" * 5_000_000, note="y" * 5_000_000)
        assert t.stats["recorded"] == 1 and t.stats["hook_errors"] == 0
        data = b"".join(p.read_bytes() for p in (tmp_path / "spool").rglob("*") if p.is_file())
        assert b"x" * MAX_ERROR_CHARS in data and b"x" * (MAX_ERROR_CHARS + 1) not in data
        assert b"y" * MAX_ATTR_CHARS in data and b"y" * (MAX_ATTR_CHARS + 1) not in data
    finally:
        t.close(timeout=5)


def test_a_closed_emitter_can_be_garbage_collected(tmp_path):
    import gc
    import weakref

    e = Emitter("svc", ListSink(), str(tmp_path / "spool"))
    e.emit("sent", "m1")
    assert e.flush(10)
    e.close()
    ref = weakref.ref(e)
    del e
    gc.collect()
    assert ref() is None  # fork handling holds emitters weakly
