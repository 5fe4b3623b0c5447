"""Fast unit tests of the collector's parts (no services): the columnar decoder
against the strict validator, and the steps with fakes IN ADDITION to the
end-to-end tests in test_collector.py."""
from __future__ import annotations

import logging
import time

import orjson
import pytest
from conftest import unavailable

from collectors.decode import decode_record, store_columns
from collectors.steps import Backoff, BatchStep, CommitStep, DecodeStep, WriteStep
from collectors.testing import make_events
from collectors.types import CollectorStats, Message, MessageRejected, Offsets, Partition, RawRecord
from collectors.writer import StoreWriter
from tracer.errors import StoreUnavailable
from tracer.events import COLUMNS, STORE_COLUMNS, decode_batch, encode_batch, record_headers, to_columns

H = record_headers()
P = Partition("audit", 0)


def _good_lines(n: int = 5) -> list[bytes]:
    return encode_batch(make_events(n)).split(b"\n")


def _mutate(field: str, value) -> bytes:
    d = orjson.loads(_good_lines(1)[0])
    d[field] = value
    return orjson.dumps(d)


def _drop(field: str) -> bytes:
    d = orjson.loads(_good_lines(1)[0])
    del d[field]
    return orjson.dumps(d)


BAD_LINES = [
    b"\xff\xfe garbage", b'{"event_id": "x"', b"[1, 2]", b"42", b"null",
    _mutate("stage", "teleported"), _mutate("ts_us", "yesterday"), _mutate("ts_us", -1), _mutate("pid", 2**32),
    _mutate("pid", True), _mutate("partition", 1.5), _mutate("partition", 2**31), _mutate("offset", "7"),
    _mutate("event_id", "not-a-uuid"), _mutate("event_id", None), _mutate("msg_id", ""), _mutate("msg_id", 3),
    _mutate("trace_id", "ABCDEF" * 6), _mutate("trace_id", "0" * 31), _mutate("span_id", "0" * 17),
    _mutate("attrs", {"a": 1}), _mutate("attrs", ["a"]), _mutate("attrs", None), _mutate("consumer_group", 5),
    _mutate("extra", "x"), _drop("partition"), _drop("attrs"), _drop("event_id"), _mutate("key", {"a": "b"}),
    _mutate("seq", 2**63 + 5).replace(b"9223372036854775813", b"18446744073709551616"), _mutate("ts_us", 1.0),
]


def _as_columns(events) -> list[list]:
    cols = to_columns(events)
    return [cols[c] for c in STORE_COLUMNS]


@pytest.fixture(params=["c", "python"], autouse=True)
def decoder(request, monkeypatch) -> str:
    """Every test runs with the C decoder (collectors._fastjson) and with the Python paths alone."""
    import collectors.decode as dec

    if request.param == "python":
        monkeypatch.setattr(dec, "_fastjson", None)
    elif dec._fastjson is None:
        unavailable("collectors._fastjson (the C decoder)", "not built: `pip install -e .` compiles it (needs gcc)")
    return request.param


def _stored(got) -> list[list]:
    """Decoded events as the store gets them (every form: lists, Arrow arrays, C-decoded batches)."""
    if got.arrow is not None:
        assert got.columns is None
        return [got.arrow.column(c).to_pylist() for c in STORE_COLUMNS]
    columns = got.columns
    lists = store_columns(columns)
    arrow = store_columns(columns, arrow=True)
    for c in ("attr_keys", "attr_values"):
        assert arrow[c].to_pylist() == lists[c]
    return [list(lists[c]) for c in STORE_COLUMNS]


@pytest.mark.parametrize("bad", BAD_LINES, ids=range(len(BAD_LINES)))
def test_fast_decoder_matches_the_strict_validator(bad: bytes) -> None:
    good = _good_lines(4)
    raw = b"\n".join(good[:2] + [bad] + good[2:])
    ref = decode_batch(raw, H)
    got = decode_record(raw, H)
    assert not got.fast
    assert [(b.line, b.error, b.field, b.raw) for b in got.bad] == [(b.line, b.error, b.field, b.raw) for b in ref.bad]
    assert got.n_events == len(ref.events) == 4
    assert _stored(got) == _as_columns(ref.events)


def test_fast_path_accepts_valid_records_with_the_same_columns() -> None:
    events = make_events(50)
    events[3].trace_id, events[3].span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    events[4].attrs = {}
    raw = encode_batch(events)
    got = decode_record(raw, H)
    assert got.fast and not got.bad
    assert _stored(got) == _as_columns(decode_batch(raw, H).events)


@pytest.mark.parametrize("value,headers,reason", [
    (b"x", None, "missing header 'msgtrace-format'"),
    (b"x", [("msgtrace-format", b"2")], "unknown format version '2'"),
    (b"  \n ", H, "empty record"),
    (None, H, "empty record"),
])
def test_whole_record_errors(value, headers, reason) -> None:
    got = decode_record(value, headers)
    assert got.n_events == 0 and len(got.bad) == 1 and reason in got.bad[0].error


def test_oversized_record_is_refused_before_parsing() -> None:
    raw = encode_batch(make_events(10))
    got = decode_record(raw, H, max_record_bytes=100)
    assert got.n_events == 0 and f"record of {len(raw)} bytes exceeds the limit of 100" == got.bad[0].error


def test_blank_lines_take_the_strict_path_and_keep_line_numbers() -> None:
    good = _good_lines(2)
    raw = b"\n" + good[0] + b"\n\n" + b"oops" + b"\n" + good[1] + b"\n"
    got = decode_record(raw, H)
    ref = decode_batch(raw, H)
    assert got.n_events == 2 and [b.line for b in got.bad] == [b.line for b in ref.bad] == [4]


# --- steps with fakes ------------------------------------------------------------------

class FakeStore:
    def __init__(self) -> None:
        self.rows: dict[str, list] = {"trace_events": [], "quarantine": []}
        self.down = False
        self.log: list[str] = []

    def session(self):
        import contextlib

        return contextlib.nullcontext()

    def insert(self, table, columns):
        if self.down:
            raise StoreUnavailable("cannot reach ClickHouse at test:9000: refused")
        n = len(next(iter(columns.values())))
        self.rows[table].extend(zip(*columns.values()))
        self.log.append(f"insert {table} {n}")
        return n

    def query(self, sql, params=None):
        return [{"n": 0}]


def _chain(store, *, max_events=100, max_wait=60.0, threaded=False):
    stats = CollectorStats()
    committed: list[dict] = []

    def commit(offsets):
        store.log.append(f"commit {dict((str(p), o) for p, o in offsets.items())}")
        committed.append(dict(offsets))

    c = CommitStep(commit, stats)
    w = WriteStep(StoreWriter(store), c, stats, backoff=Backoff(0.01, 0.02), threaded=threaded)
    b = BatchStep(w, max_events=max_events, max_wait=max_wait)
    d = DecodeStep(b, 1 << 20)
    return d, b, w, c, stats, committed


def _msg(offset: int, n: int = 10) -> Message[RawRecord]:
    return Message(P, offset, RawRecord(encode_batch(make_events(n)), H))


def test_commit_follows_the_write_and_batches_close_by_size() -> None:
    store = FakeStore()
    d, b, w, c, stats, committed = _chain(store, max_events=30)
    for off in range(3):
        d.submit(_msg(off))
    assert store.log == ["insert trace_events 30", "commit {'audit/0': 3}"]
    d.submit(_msg(3))
    assert d.join(5)
    assert store.log[-2:] == ["insert trace_events 10", "commit {'audit/0': 4}"]
    assert stats.inserted == 40 and stats.commits == 2


def test_batches_close_by_time() -> None:
    store = FakeStore()
    d, b, w, c, stats, committed = _chain(store, max_events=10_000, max_wait=0.05)
    d.submit(_msg(0))
    d.poll()
    assert store.log == []
    time.sleep(0.06)  # the batch must be older than max_wait
    d.poll()
    assert store.log == ["insert trace_events 10", "commit {'audit/0': 1}"]


@pytest.mark.parametrize("threaded", [False, True])
def test_store_down_pushes_back_keeps_offsets_and_logs_once(caplog, threaded) -> None:
    store = FakeStore()
    store.down = True
    d, b, w, c, stats, committed = _chain(store, max_events=10, threaded=threaded)
    caplog.set_level(logging.INFO, logger="msgtrace.collector")
    d.submit(_msg(0))  # batch 1 -> write step (fails, kept)
    d.submit(_msg(1))  # batch 2 -> ready in the batch step
    d.submit(_msg(2))  # decoded record pending in the decode step
    with pytest.raises(MessageRejected):
        d.submit(_msg(3))
    for _ in range(10):
        time.sleep(0.03)
        d.poll()
    assert committed == [] and stats.store_failures >= 3
    downs = [r for r in caplog.records if r.getMessage() == "store unavailable"]
    assert len(downs) == 1
    store.down = False
    assert d.join(5)
    assert [list(x.values())[0] for x in committed][-1] == 3
    assert stats.inserted == 30
    assert [r.getMessage() for r in caplog.records].count("store ok") == 1
    w.close()


def test_threaded_writes_commit_in_order_after_each_write() -> None:
    store = FakeStore()
    d, b, w, c, stats, committed = _chain(store, max_events=10, threaded=True)
    for off in range(20):
        while True:
            try:
                d.submit(_msg(off))
                break
            except MessageRejected:
                d.poll()
                time.sleep(0.001)
    assert d.join(5)
    w.close()
    inserts = [x for x in store.log if x.startswith("insert")]
    commits = [x for x in store.log if x.startswith("commit")]
    assert len(inserts) == 20 and stats.inserted == 200
    assert commits[-1] == "commit {'audit/0': 20}"
    # every commit comes after the insert of the batch it covers
    for i, line in enumerate(store.log):
        if line.startswith("commit"):
            upto = int(line.rsplit(" ", 1)[1].rstrip("}"))
            assert sum(1 for x in store.log[:i] if x.startswith("insert")) >= upto


def test_quarantine_rows_carry_position_reason_and_raw_prefix() -> None:
    store = FakeStore()
    d, b, w, c, stats, committed = _chain(store)
    b.raw_limit = 8
    d.submit(Message(P, 7, RawRecord(b"\xffgarbage-garbage", H)))
    assert d.join(5)
    (row,) = store.rows["quarantine"]
    received, source, part, off, line, field, error, raw_size, raw = row
    assert (source, part, off, line, raw_size) == ("audit", 0, 7, 1, 16)
    assert raw == "\\xffgarbage" and error.startswith("line 1: invalid JSON")
    assert committed[-1] == {P: 8}


def test_commit_step_merges_offsets_and_retries() -> None:
    stats = CollectorStats()
    calls: list[dict] = []
    fail = [True]

    def commit(offsets):
        if fail[0]:
            from collectors.types import AuditSourceUnavailable

            raise AuditSourceUnavailable("broker gone")
        calls.append(dict(offsets))

    c = CommitStep(commit, stats, backoff=Backoff(0.01, 0.01))
    c.submit(Offsets({P: 5}))
    c.submit(Offsets({P: 3, Partition("audit", 1): 9}))
    fail[0] = False
    assert c.join(2)
    assert calls == [{P: 5, Partition("audit", 1): 9}]
    assert stats.kafka_failures == 2


def test_batch_columns_become_store_columns() -> None:
    from collectors.steps import BatchStep as _B

    b = _B(None)._new()  # type: ignore[arg-type]
    assert len(b.columns) == len(COLUMNS)  # attrs kept as dicts until the write
    assert list(store_columns(b.columns)) == list(STORE_COLUMNS)


def test_logs_are_structured_and_status_line_names_the_figures() -> None:
    from collectors.cli import LogFormatter, _status_text

    rec = logging.LogRecord("msgtrace.collector", logging.WARNING, __file__, 1, "store unavailable", None, None)
    rec.fields = {"error": "cannot reach ClickHouse at h:9000: refused", "retry_in_s": 0.5}
    text = LogFormatter(False).format(rec)
    assert 'level=warning' in text and 'event="store unavailable"' in text and "retry_in_s=0.5" in text
    assert 'error="cannot reach ClickHouse at h:9000: refused"' in text
    js = orjson.loads(LogFormatter(True).format(rec))
    assert js["event"] == "store unavailable" and js["retry_in_s"] == 0.5
    stats = CollectorStats(inserted=1000, duplicates=10, quarantined=2, lag=5)
    line = _status_text(stats, "running", 1234.0)
    for part in ("1,234 events/s", "stored 990", "lag 5", "quarantined 2", "last commit never"):
        assert part in line


def test_collect_without_bootstrap_is_one_clear_line(monkeypatch, tmp_path) -> None:
    from click.testing import CliRunner

    from tracer.cli import main

    monkeypatch.delenv("MSGTRACE_KAFKA_BOOTSTRAP", raising=False)
    for name in ("msgtrace", "kafka"):  # the command configures these loggers; restore them after
        lg = logging.getLogger(name)
        monkeypatch.setattr(lg, "handlers", list(lg.handlers))
        monkeypatch.setattr(lg, "propagate", lg.propagate)
        monkeypatch.setattr(lg, "level", lg.level)
    r = CliRunner().invoke(main, ["collect", "--store", f"chdb://{tmp_path}/s", "--until-idle"])
    assert r.exit_code == 2
    assert "no audit Kafka bootstrap servers" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _adversarial_records() -> list[bytes]:
    """Records whose lines are not one event each but whose lines, joined, parse to the right
    number of valid-looking events: the one-call parse must not accept them."""
    a, b, c, d = _good_lines(4)
    # a string value spanning a line break: "x}\n{y" (each line invalid alone)
    i = a.index(b'"msg_id":"') + len(b'"msg_id":"')
    split_in_string = a[:i] + b"x}\n{y" + a[i:]
    # an object spanning a line break between two members, plus a line holding two events
    j = a.index(b',"ts_us"')
    split_between_members = a[:j] + b"\n" + a[j + 1:]
    two_on_one_line = c + b"," + d
    arr = orjson.loads(a)
    arr["attrs"] = {"k": "v"}
    nested = orjson.dumps(arr).replace(b'"v"}', b'["v",\n{"z":"w"}]}')
    return [
        split_in_string + b"\n" + two_on_one_line,
        split_between_members + b"\n" + two_on_one_line,
        b + b"\n" + two_on_one_line + b"\n" + b"{" + c[1:],
        c + b"," + d + b"\n" + b,  # two on the first line
        b"[" + c + b"," + d + b"]\n" + b,
        b + b"\n " + c,  # leading blank on a line (valid per line)
        b + b"\r\n" + c,  # CR before the break (valid per line)
        nested + b"\n" + two_on_one_line,
        a + b"\n" + b"{}" + b"\n" + b,
        a + b"\n" + b + b"]",
        a + b"\n" + b + b"\n" + b"{" + b"\n" + b"}",
    ]


@pytest.mark.parametrize("raw", _adversarial_records(), ids=range(len(_adversarial_records())))
def test_one_call_parse_equals_a_parse_per_line(raw: bytes) -> None:
    ref = decode_batch(raw, H)
    got = decode_record(raw, H)
    assert [(b.line, b.error, b.field, b.raw) for b in got.bad] == [(b.line, b.error, b.field, b.raw) for b in ref.bad]
    assert got.n_events == len(ref.events)
    if ref.events:
        assert _stored(got) == _as_columns(ref.events)
    else:
        assert got.columns is None and got.arrow is None


def test_fast_path_takes_a_single_line_record_and_unicode() -> None:
    events = make_events(3)
    events[0].attrs = {"ключ": "значение, \u2028 \"q\" \\ }\n{"}
    events[1].msg_id = "order-\u00e9:paid},{"
    for raw in (encode_batch(events[:1]), encode_batch(events)):
        got = decode_record(raw, H)
        assert got.fast and _stored(got) == _as_columns(decode_batch(raw, H).events)


def _edge_lines() -> list[bytes]:
    """Lines at the edges of JSON and of the contract: each record must decode exactly as the
    strict validator decodes it, whether the fast path takes it or not."""
    g = _good_lines(1)[0]
    return [
        g[:-1] + b',"stage":"received"}',  # duplicate key: orjson keeps the last, both paths agree
        g.replace(b'"pid":4242', b'"pid":NaN'), g.replace(b'"pid":4242', b'"pid":4.242e3'),
        g.replace(b'"msg_id":"', b'"msg_id":"\\ud800'),  # lone surrogate
        g.replace(b'"msg_id":"', b'"msg_id":"\\u0000\\n\\t'),  # escapes are fine
        g[:-1] + b",}", b"{" + g[1:].replace(b",", b" ,", 1), b" " + g, g + b" ",
        g.replace(b'"attrs":{', b'"attrs":{"n":["x"],'), g.replace(b'"attrs":{', b'"attrs":{"n":{"x":"y"},'),
        _mutate("offset", -(2**63)), _mutate("offset", 7).replace(b'"offset":7', b'"offset":-9223372036854775809'), _mutate("partition", -(2**31)),
        _mutate("seq", 0), _mutate("ts_us", 2**64 - 1), _mutate("event_id", "9501EC62-47DA-435D-91B5-EDFDD0E0F42A"),
        _mutate("stage", "SENT"), _mutate("msg_id", " "), _mutate("attrs", {}), _mutate("attrs", {"": ""}),
        g.replace(b"{", b"{\n", 1), b"\t", g + b"\x00", "{\"é\":1}".encode("latin-1"),
    ]


@pytest.mark.parametrize("line", _edge_lines(), ids=range(len(_edge_lines())))
def test_edge_lines_decode_as_the_strict_validator_does(line: bytes) -> None:
    good = _good_lines(3)
    for raw in (line, b"\n".join(good[:1] + [line] + good[1:]), b"\n".join(good + [line])):
        ref = decode_batch(raw, H)
        got = decode_record(raw, H)
        assert [(b.line, b.error, b.field, b.raw) for b in got.bad] == \
            [(b.line, b.error, b.field, b.raw) for b in ref.bad]
        assert got.n_events == len(ref.events)
        if ref.events:
            assert _stored(got) == _as_columns(ref.events)
        assert not (got.fast and ref.bad)  # the fast path only takes records the validator takes whole


def test_fast_decoders_agree_with_the_strict_validator_on_mutated_records(decoder: str) -> None:
    """Differential fuzz: thousands of byte-edited records decode exactly as decode_batch decodes
    them; whatever a fast path (the C decoder, or the columnar Python one) accepts, the validator
    accepts with the same values (a fast path may only refuse more)."""
    import random

    import collectors.decode as dec

    events = make_events(3)
    events[0].attrs = {"k\u00e9y": "v\u2028\"\\/\u00ff\U0001f600", "": ""}
    events[1].trace_id, events[1].span_id, events[1].error = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "x\ty"
    base = encode_batch(events).replace(b"\\u2028", "\u2028".encode())  # also raw multi-byte UTF-8
    alphabet = b'"\\{}[],:-.eE+0123456789 \t\r\nnultrfa/\x00\x1f\x7f\x80\xbf\xc3\xe2\xed\xf0\xf4\xff'
    rng = random.Random(20261122)
    accepted = 0
    for _ in range(20000):
        raw = bytearray(base)
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            i = rng.randrange(len(raw))
            op = rng.random()
            if op < 0.4:
                raw[i:i + 1] = b""
            elif op < 0.8:
                raw[i:i] = bytes([rng.choice(alphabet)])
            else:
                raw[i] = rng.choice(alphabet)
        raw = bytes(raw)
        ref = decode_batch(raw, H)
        got = decode_record(raw, H)
        assert [(b.line, b.error, b.field, b.raw) for b in got.bad] == \
            [(b.line, b.error, b.field, b.raw) for b in ref.bad], raw
        if ref.events:
            assert _stored(got) == _as_columns(ref.events), raw
        if decoder == "c" and dec._fastjson.decode(raw) is not None:
            accepted += 1
            assert not ref.bad, f"C decoder accepted a record the validator refuses: {raw!r}"
        elif decoder == "python" and got.fast:
            accepted += 1
            assert not ref.bad, f"columnar fast path accepted a record the validator refuses: {raw!r}"
    assert accepted > 100  # the mutations also hit values the decoder must take (digits, text)


def test_client_errors_name_their_class_once() -> None:
    from kafka.errors import KafkaTimeoutError

    from tracer.errors import describe

    assert describe(KafkaTimeoutError("no broker")) == "KafkaTimeoutError: no broker"
    assert describe(ConnectionRefusedError("refused")) == "ConnectionRefusedError: refused"
    assert describe(KafkaTimeoutError()) == "KafkaTimeoutError"


def test_c_decoder_takes_the_contract_from_tracer_events() -> None:
    """One source of truth: the C decoder's columns and stages are the ones tracer.events defines."""
    import importlib

    import collectors.decode as dec
    from tracer.events import SCHEMA, Stage

    try:  # the module itself (the "python" variant only hides it from collectors.decode)
        fj = importlib.import_module("collectors._fastjson")
    except ImportError as e:
        unavailable("collectors._fastjson (the C decoder)", e)
    cols, stages = fj.contract()
    assert (cols, stages) == dec.c_contract()
    assert tuple(c[0] for c in cols) == COLUMNS and stages == tuple(s.value for s in Stage)
    assert [c[1] for c in cols if c[0] in ("ts_us", "pid", "partition", "offset", "seq")] == ["int"] * 5
    assert {c[0]: c[4] for c in cols if c[1] == "int"} == {"ts_us": 8, "pid": 4, "partition": 4, "offset": 8, "seq": 8}
    assert [c[0] for c in cols if c[3]] == ["msg_id"] and SCHEMA["attrs"][0] == "attrs"
    for stage in Stage:  # every stage of the enum, rolled_back included, is decoded in C
        events = make_events(2)
        for e in events:
            e.stage = stage.value
        assert fj.decode(encode_batch(events)) is not None, stage
    bad = make_events(1)
    bad[0].stage = "teleported"
    assert fj.decode(encode_batch(bad)) is None
    with pytest.raises(ValueError, match="different contract"):
        fj.configure(cols[:-1], stages)
    fj.configure(cols, stages)  # the same again is fine


class _FakeConsumer:
    """Just enough of KafkaConsumer for the processor's rebalance handling (no broker)."""

    def __init__(self, processor_box: list, committed: dict) -> None:
        self.box, self._committed = processor_box, committed
        self.seeks: dict = {}
        self.rebalance_on_poll: tuple | None = None

    def committed(self, tp, metadata=False):
        from kafka.structs import OffsetAndMetadata

        o = self._committed.get(tp.partition)
        return None if o is None else OffsetAndMetadata(o, None, -1)

    def beginning_offsets(self, tps):
        return {tp: 0 for tp in tps}

    def seek(self, tp, offset):
        self.seeks[tp.partition] = offset

    def poll(self, timeout_ms=0, max_records=None):
        recs: dict = {}
        if self.rebalance_on_poll is not None:  # kafka-python calls the listener inside poll()
            revoked, assigned = self.rebalance_on_poll
            self.rebalance_on_poll = None
            self.box[0].on_revoked(revoked)
            self.box[0].on_assigned(assigned)
            recs = {assigned[0]: [object()] * 3}  # fetched at the kept position, before the rewind
        return recs


def test_a_rebalance_rewinds_kept_partitions_to_the_committed_offset() -> None:
    """kafka-python keeps the position of a partition that stays assigned; what the collector
    dropped at the revocation must be read again, so every partition is sought back."""
    import threading

    from kafka import TopicPartition

    from collectors.consumer import CollectorConfig, Processor

    box: list = []
    consumer = _FakeConsumer(box, committed={0: 40})  # partition 1 never committed
    proc = Processor(consumer, "audit", FakeStore(), CollectorConfig(threaded_writes=False), CollectorStats(),
                     until_idle=True, stop=threading.Event())
    box.append(proc)
    tp0, tp1 = TopicPartition("audit", 0), TopicPartition("audit", 1)
    proc.on_assigned([tp0])
    assert proc._after_rebalance() is False and consumer.seeks == {}  # a first assignment: no rewind
    proc.held.extend([object()] * 5)  # read, not yet stored
    consumer.rebalance_on_poll = ([tp0], [tp0, tp1])
    assert proc._poll_kafka(0) == 0  # the records of the rebalancing poll are dropped ...
    assert not proc.held and consumer.seeks == {0: 40, 1: 0}  # ... and read again from the commits
    assert proc.committed_at == {Partition("audit", 0): 40, Partition("audit", 1): 0}
    proc.strategy.close()
