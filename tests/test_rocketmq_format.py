"""RocketMQ's trace-record format (tracer.ingest.rocketmq_format) and its mapping to events, no store.

Records are written out literally from the documented field order (TraceDataEncoder: fields joined by
\\x01, records ended by \\x02), not only through our own encoder, so the parser is checked against the
format rather than against itself.
"""
from __future__ import annotations

import os
import threading
import time

import pytest

from tracer.errors import DecodeError
from tracer.events import validate_event
from tracer.ingest.rocketmq import (
    MsgIdFrom,
    RocketMQImportConfig,
    SuccessMeans,
    TraceMapper,
    business_id,
    map_records,
)
from tracer.ingest.rocketmq_format import (
    LAYOUTS,
    ConsumeReturnType,
    EndTransactionRecord,
    MessageType,
    PubRecord,
    RawRecord,
    RecallRecord,
    SubAfterRecord,
    SubBeforeRecord,
    TraceType,
    TransactionState,
    encode_record,
    iter_raw_records,
    parse_record,
)

S = "\x01"
T = 1_795_255_200_000  # ms
MID = "0A00000B03E918B4AAC2000000000078"


def rec(*fields: object) -> str:
    return S.join(str(f) for f in fields)


# --- every type and layout, written literally --------------------------------------------------

def test_pub_layouts_13_14_15():
    base = ["Pub", T, "DefaultRegion", "order-service", "order-paid", MID, "paid", "order-1:paid",
            "10.0.0.11:10911", 180, 4, 0]
    p13 = parse_record(rec(*base, "true"))
    p14 = parse_record(rec(*base, "0A00000B00002A9F0000000000001000", "false"))
    p15 = parse_record(rec(*base, "0A00000B00002A9F0000000000001000", "true", "10.0.1.5"))
    assert isinstance(p13, PubRecord) and p13.offset_msg_id is None and p13.success and p13.n_fields == 13
    assert p14.offset_msg_id == "0A00000B00002A9F0000000000001000" and not p14.success
    assert p15.client_host == "10.0.1.5" and p15.success
    assert (p14.ts_ms, p14.group, p14.topic, p14.msg_id, p14.tags, p14.keys, p14.store_host, p14.body_length,
            p14.cost_ms, p14.msg_type) == (T, "order-service", "order-paid", MID, "paid", "order-1:paid",
                                          "10.0.0.11:10911", 180, 4, MessageType.Normal_Msg)


def test_sub_before_layouts_and_java_nulls():
    b8 = parse_record(rec("SubBefore", T, "null", "red-packet", "REQ", MID, 3, "order-1:paid"))
    b9 = parse_record(rec("SubBefore", T, "R", "red-packet", "REQ", MID, 0, "order-1:paid", "10.0.2.7"))
    b7 = parse_record(rec("SubBefore", T, "R", "red-packet", "REQ", MID, 0, "") + "")  # empty keys: 7 fields
    assert isinstance(b8, SubBeforeRecord) and b8.retry_times == 3 and b8.region is None  # Java's "null"
    assert b9.client_host == "10.0.2.7" and b9.n_fields == 9
    assert b7.keys is None and b7.n_fields == 7
    assert parse_record(rec("SubBefore", T, "R", "g", "REQ", MID, 0, "null")).keys is None


def test_sub_after_layouts():
    old6 = parse_record(rec("SubAfter", "REQ", MID, 35, "true", "order-1:paid"))
    c7 = parse_record(rec("SubAfter", "REQ", MID, 35, "false", "order-1:paid", 4))
    cloud = parse_record(rec("SubAfter", "REQ", MID, 35, "false", "order-1:paid", 2, ""))  # 2024 CLOUD: trailing \x01
    full = parse_record(rec("SubAfter", "REQ", MID, 35, "TRUE", "order-1:paid", 0, T + 35, "red-packet"))
    assert isinstance(old6, SubAfterRecord) and old6.context_code is None and old6.ts_ms is None
    assert c7.context_code is ConsumeReturnType.FAILED and not c7.success
    assert cloud.context_code is ConsumeReturnType.EXCEPTION and cloud.n_fields == 7
    assert full.success and full.ts_ms == T + 35 and full.group == "red-packet"


def test_end_transaction_and_recall():
    e13 = parse_record(rec("EndTransaction", T, "R", "order-service", "order-paid", MID, "paid", "order-9:paid",
                           "10.0.0.11:10911", 2, MID, "ROLLBACK_MESSAGE", "false"))
    e14 = parse_record(rec("EndTransaction", T, "R", "order-service", "order-paid", MID, "null", "order-9:paid",
                           "10.0.0.11:10911", 2, "10.0.1.5@pid", MID, "COMMIT_MESSAGE", "true"))
    r = parse_record(rec("Recall", T, "R", "order-service", "order-paid", MID, "true"))
    assert isinstance(e13, EndTransactionRecord) and e13.state is TransactionState.ROLLBACK_MESSAGE
    assert not e13.from_check and e13.transaction_id == MID
    assert e14.state is TransactionState.COMMIT_MESSAGE and e14.from_check and e14.client_host == "10.0.1.5@pid"
    assert isinstance(r, RecallRecord) and r.success


def test_encoder_round_trips_every_layout():
    recs = [PubRecord(T, "R", "p", "t", MID, None, "k", "h:1", 10, 3, MessageType.Delay_Msg, "OFF", True, "c", 14),
            SubBeforeRecord(T, None, "g", "REQ", MID, 2, "k", "c", 8),
            SubAfterRecord("REQ", MID, 5, False, "k", ConsumeReturnType.RETURNNULL, T + 5, "g", 9),
            EndTransactionRecord(T, "R", "p", "t", MID, None, "k", "h:1", MessageType.Trans_msg_Commit, MID,
                                 TransactionState.UNKNOW, True, "c", 13),
            RecallRecord(T, "R", "p", "t", MID, False, 7)]
    for r in recs:
        for n in LAYOUTS[r.type]:
            text = encode_record(r, n)
            assert text.endswith("\x02")
            back = parse_record(text[:-1])
            assert back.type is r.type and back.msg_id == r.msg_id


# --- malformed records: a reason naming what is wrong -----------------------------------------

@pytest.mark.parametrize("text, field, words", [
    ("", None, "empty record"),
    (rec("Publish", T, "x"), "type", "unknown trace type 'Publish'"),
    (rec("Pub", T, "R", "g", "t", MID), "fields", "Pub record has 6 fields; RocketMQ writes 13, 14 or 15"),
    (rec("SubBefore", T, "R", "g", "REQ", MID, 0, "k", "h", "extra"), "fields", "SubBefore record has 10 fields"),
    (rec("SubAfter", "REQ", MID, 1), "fields", "SubAfter record has 4 fields"),
    (rec("EndTransaction", T, "R"), "fields", "EndTransaction record has 3 fields"),
    (rec("Pub", "12:00", "R", "g", "t", MID, "", "k", "h", 1, 1, 0, "OFF", "true"), "timestamp", "is not a number"),
    (rec("Pub", -5, "R", "g", "t", MID, "", "k", "h", 1, 1, 0, "OFF", "true"), "timestamp", "out of range"),
    (rec("Pub", T, "R", "g", "t", MID, "", "k", "h", "1e3", 1, 0, "OFF", "true"), "bodyLength", "not a number"),
    (rec("Pub", T, "R", "g", "t", MID, "", "k", "h", 1, 2**31, 0, "OFF", "true"), "costTime", "out of range"),
    (rec("Pub", T, "R", "g", "t", MID, "", "k", "h", 1, 1, 9, "OFF", "true"), "msgType", "message type ordinal"),
    (rec("Pub", T, "R", "g", "t", MID, "", "k", "h", 1, 1, 0, "OFF", "yes"), "success", "not true or false"),
    (rec("Pub", T, "R", "g", "", MID, "", "k", "h", 1, 1, 0, "OFF", "true"), "topic", "is empty"),
    (rec("Pub", T, "R", "g", "t", "null", "", "k", "h", 1, 1, 0, "OFF", "true"), "msgId", "is empty"),
    (rec("SubBefore", T, "R", "g", "REQ", MID, "-1", "k"), "retryTimes", "out of range"),
    (rec("SubAfter", "REQ", MID, 1, "true", "k", 7), "contextCode", "ConsumeReturnType"),
    (rec("EndTransaction", T, "R", "g", "t", MID, "", "k", "h", 2, MID, "COMMIT", "false"), "transactionState",
     "COMMIT_MESSAGE, ROLLBACK_MESSAGE or UNKNOW"),
    (rec("SubBefore", T, "R", "", "REQ", MID, 0, "k"), "group", "is empty"),
    (rec("SubBefore", "１２３", "R", "g", "REQ", MID, 0, "k"), "timestamp", "not a number"),  # non-ASCII digits
])
def test_malformed_records_name_the_field(text, field, words):
    with pytest.raises(DecodeError) as ei:
        parse_record(text)
    assert words in str(ei.value)
    assert ei.value.field == field


# --- the stream splitter ------------------------------------------------------------------------------

class Trickle:
    """A stream that returns at most ``n`` bytes per read (records cut at every possible place)."""

    def __init__(self, data: bytes, n: int) -> None:
        self.data, self.n, self.pos = data, n, 0

    def read(self, size: int) -> bytes:
        out = self.data[self.pos:self.pos + min(size, self.n)]
        self.pos += len(out)
        return out


def test_stream_cut_anywhere_gives_the_same_records():
    records = [encode_record(SubBeforeRecord(T + i, "R", "g", f"REQ{i}", MID, i % 3, f"k-{i}", None, 8))
               for i in range(50)]
    # bodies of a few records each, one per line (CRLF too), as a dump of the trace topic prints them
    data = ("\r\n".join("".join(records[i:i + 4]) for i in range(0, 50, 4)) + "\n").encode()
    whole = [(r.number, r.offset, r.text) for r in iter_raw_records(Trickle(data, len(data)), chunk_bytes=1 << 16)]
    assert len(whole) == 50 and all(data[o:o + len(t.encode())] == t.encode() for _, o, t in whole)
    for n in (1, 2, 7, 64):
        got = [(r.number, r.offset, r.text) for r in iter_raw_records(Trickle(data, n), chunk_bytes=n)]
        assert got == whole


def test_stream_bad_bytes_and_oversized_records_are_reported_and_skipped():
    good = encode_record(RecallRecord(T, "R", "p", "t", MID, True, 7)).encode()
    data = good + b"Pub\x01\xff\xfe\x02" + b"x" * 5000 + b"\x02" + good
    got = list(iter_raw_records(Trickle(data, 100), chunk_bytes=100, max_record_bytes=1000))
    assert [r.error is None for r in got] == [True, False, False, True]
    assert "not UTF-8" in (got[1].error or "") and "more than 1000 bytes" in (got[2].error or "")
    assert got[3].text == good[:-1].decode() and got[3].number == 4


def test_stream_from_an_idle_pipe_calls_on_idle():
    r, w = os.pipe()
    ticks: list[float] = []
    first = encode_record(RecallRecord(T, "R", "p", "t", MID, True, 7)).encode()

    def writer() -> None:
        os.write(w, first)
        # no more input until the reader reported idleness (no sleep hides a race: we wait on the tick)
        deadline = time.monotonic() + 10
        while not ticks and time.monotonic() < deadline:
            time.sleep(0.01)
        os.write(w, first)
        os.close(w)

    t = threading.Thread(target=writer)
    t.start()
    with os.fdopen(r, "rb") as stream:
        got = list(iter_raw_records(stream, on_idle=lambda: ticks.append(time.monotonic()), wait_s=0.05))
    t.join(10)
    assert len(got) == 2 and ticks


# --- mapping -------------------------------------------------------------------------------------------

def test_business_id_from_keys_or_msg_id():
    assert business_id("order-1:paid", MID) == "order-1:paid"
    assert business_id("user-7 order-1:paid", MID) == "order-1:paid"  # the smallest key, whatever the order
    assert business_id("null", MID) == MID and business_id(None, MID) == MID
    assert business_id("order-1:paid", MID, MsgIdFrom.MSG_ID) == MID


def _pub(mid: str = MID, keys: str | None = "order-1:paid", ok: bool = True,
         mt: MessageType = MessageType.Normal_Msg, offset: str | None = "OFF1") -> PubRecord:
    return PubRecord(T, "R", "order-service", "order-paid", mid, None, keys, "10.0.0.11:10911", 10, 4, mt, offset,
                     ok, None, 14)


def test_mapping_follows_the_design_table():
    m = map_records([
        _pub(),
        _pub("M2", "order-2:paid", ok=False),
        _pub("M3", "order-3:paid", mt=MessageType.Trans_Msg_Half),
        EndTransactionRecord(T + 9, "R", "order-service", "order-paid", "M3", None, "order-3:paid", "h",
                             MessageType.Trans_msg_Commit, "M3", TransactionState.COMMIT_MESSAGE, True, None, 13),
        _pub("M4", "order-4:paid", mt=MessageType.Trans_Msg_Half),
        EndTransactionRecord(T + 9, "R", "order-service", "order-paid", "M4", None, "order-4:paid", "h",
                             MessageType.Trans_msg_Commit, "M4", TransactionState.ROLLBACK_MESSAGE, False, None, 13),
        EndTransactionRecord(T + 9, "R", "order-service", "order-paid", "M4", None, "order-4:paid", "h",
                             MessageType.Trans_msg_Commit, "M4", TransactionState.UNKNOW, False, None, 13),
        SubBeforeRecord(T + 20, "R", "red-packet", "REQ", MID, 1, "order-1:paid", None, 8),
        SubAfterRecord("REQ", MID, 30, True, "order-1:paid", ConsumeReturnType.SUCCESS, None, None, 7),
    ])
    got = [(e.msg_id, e.stage) for e in m.events]
    assert got == [("order-1:paid", "sent"), ("order-1:paid", "broker_acked"),
                   ("order-2:paid", "sent"), ("order-2:paid", "send_failed"),
                   ("order-3:paid", "sent"), ("order-3:paid", "broker_acked"),
                   ("order-4:paid", "sent"), ("order-4:paid", "rolled_back"),
                   ("order-1:paid", "received"), ("order-1:paid", "business_done")]
    assert m.skipped == 1 and not m.bad  # UNKNOW: still in doubt, no stage
    for e in m.events:
        validate_event(e.to_dict())  # the collector's gate
        assert e.mq == "rocketmq" and e.emitter_id == "rocketmq-trace" and e.seq == 0
    ack = m.events[1]
    assert ack.attrs["rocketmq.store_host"] == "10.0.0.11:10911" and ack.attrs["rocketmq.offset_msg_id"] == "OFF1"
    assert ack.ts_us == T * 1000 + 4000  # start + cost
    assert m.events[4].attrs["rocketmq.transaction_id"] == "M3" and m.events[4].attrs["rocketmq.half"] == "true"
    recv, done = m.events[8], m.events[9]
    assert recv.topic == "order-paid" and recv.consumer_group == "red-packet" and recv.attrs["redelivered"] == "true"
    assert done.ts_us == (T + 20 + 30) * 1000 and done.consumer_group == "red-packet"  # time and group from SubBefore
    assert "FLUSH_SLAVE_TIMEOUT" in (m.events[3].error or "") and "OFF1" in (m.events[3].error or "")


def test_event_ids_are_derived_from_the_record():
    recs = [_pub(), SubBeforeRecord(T, "R", "g", "REQ", MID, 0, "order-1:paid", None, 8)]
    a, b = map_records(recs), map_records(recs)
    assert [e.event_id for e in a.events] == [e.event_id for e in b.events]
    assert len({e.event_id for e in a.events}) == 3
    c = map_records([_pub(ok=False)])  # another record: other ids
    assert not {e.event_id for e in c.events} & {e.event_id for e in a.events}


def test_success_means_the_ack_for_hooked_groups():
    recs = [_pub(), SubBeforeRecord(T, "R", "red-packet", "REQ", MID, 0, "order-1:paid", None, 8),
            SubAfterRecord("REQ", MID, 3, True, "order-1:paid", ConsumeReturnType.SUCCESS, T + 3, "red-packet", 9),
            SubBeforeRecord(T, "R", "points", "REQ2", MID, 0, "order-1:paid", None, 8),
            SubAfterRecord("REQ2", MID, 3, True, "order-1:paid", ConsumeReturnType.SUCCESS, T + 3, "points", 9)]
    m = map_records(recs, RocketMQImportConfig(hooked_groups=frozenset({"red-packet"})))
    outcome = {e.consumer_group: e.stage for e in m.events if e.stage not in ("sent", "broker_acked", "received")}
    assert outcome == {"red-packet": "offset_committed", "points": "business_done"}
    m = map_records(recs, RocketMQImportConfig(success_means=SuccessMeans.OFFSET_COMMITTED))
    assert {e.stage for e in m.events if e.consumer_group} == {"received", "offset_committed"}


def test_failure_at_the_maximum_retry_is_dead_lettered():
    recs: list = [_pub()]
    for retry in range(4):
        recs.append(SubBeforeRecord(T + retry, "R", "g", f"REQ{retry}", MID, retry, "order-1:paid", None, 8))
        recs.append(SubAfterRecord(f"REQ{retry}", MID, 1, False, "order-1:paid", ConsumeReturnType.FAILED, None,
                                   None, 7))
    m = map_records(recs, RocketMQImportConfig(group_max_reconsume={"g": 3}))
    dl = [e for e in m.events if e.stage == "dead_lettered"]
    assert len(dl) == 1 and dl[0].attrs["dlq_topic"] == "%DLQ%g" and dl[0].attrs["rocketmq.retry_times"] == "3"
    assert sum(e.stage == "business_failed" for e in m.events) == 4
    assert "RECONSUME_LATER" in (m.events[-2].error or "")
    # the default maximum is RocketMQ's 16: retry 3 is not the last
    assert not [e for e in map_records(recs).events if e.stage == "dead_lettered"]


def test_batch_pub_names_each_message():
    m = map_records([_pub("A1,A2,A3", None, offset="O1,O2,O3")])
    assert [(e.msg_id, e.stage, e.attrs.get("rocketmq.offset_msg_id")) for e in m.events] == [
        ("A1", "sent", "O1"), ("A1", "broker_acked", "O1"), ("A2", "sent", "O2"), ("A2", "broker_acked", "O2"),
        ("A3", "sent", "O3"), ("A3", "broker_acked", "O3")]
    assert len({e.event_id for e in m.events}) == 6


def test_recall_success_withdraws_the_scheduled_message():
    m = map_records([_pub(mt=MessageType.Delay_Msg), RecallRecord(T + 5, "R", "order-service", "order-paid", MID,
                                                                   True, 7),
                     RecallRecord(T + 6, "R", "order-service", "order-paid", MID, False, 7)])
    assert [(e.msg_id, e.stage) for e in m.events][-1] == ("order-1:paid", "rolled_back")  # named by its Pub's key
    assert m.skipped == 1


def test_sub_after_waits_for_its_sub_before_across_batches_and_bad_records_are_kept():
    mapper = TraceMapper()
    after = encode_record(SubAfterRecord("REQ", MID, 3, True, "order-1:paid", None, None, None, 6))[:-1]
    before = encode_record(SubBeforeRecord(T, "R", "g", "REQ", MID, 0, "order-1:paid", None, 8))[:-1]
    mapper.feed(RawRecord(1, 0, after, after.encode()))
    mapper.feed(RawRecord(2, 0, "Pub\x01x", b"Pub\x01x"))
    first = mapper.flush()
    assert not first.events and len(first.bad) == 1 and "Pub record has 2 fields" in first.bad[0].error
    assert mapper.pending == 1
    mapper.feed(RawRecord(3, 0, before, before.encode()))
    pub = encode_record(_pub())[:-1]
    mapper.feed(RawRecord(4, 0, pub, pub.encode()))
    second = mapper.flush()
    assert sorted(e.stage for e in second.events) == ["broker_acked", "business_done", "received", "sent"]
    assert mapper.pending == 0


def test_unresolvable_records_at_the_end():
    # an old SubAfter whose SubBefore never came: no group, no time -> kept as a bad record with the reason
    m = map_records([SubAfterRecord("REQ", MID, 3, True, "order-1:paid", None, None, None, 6),
                     SubBeforeRecord(T, "R", "g", "REQ9", "OTHER", 0, "order-9:paid", None, 8)])
    assert len(m.bad) == 1 and "SubAfter without its SubBefore (request id REQ)" in m.bad[0].error
    assert [(e.stage, e.topic) for e in m.events] == [("received", "")]  # no Pub: no topic known
    m = map_records([SubBeforeRecord(T, "R", "g", "REQ9", "OTHER", 0, "order-9:paid", None, 8)],
                    RocketMQImportConfig(group_topics={"g": "order-paid"}))
    assert m.events[0].topic == "order-paid"


def test_bounded_pending():
    mapper = TraceMapper(RocketMQImportConfig(max_pending=10))
    for i in range(25):
        t = encode_record(SubBeforeRecord(T + i, "R", "g", f"REQ{i}", f"M{i}", 0, None, None, 8))[:-1]
        mapper.feed(RawRecord(i + 1, 0, t, t.encode()))
    out = mapper.flush()
    assert mapper.pending == 10 and len(out.events) == 15  # the oldest beyond the bound went out with fallbacks


def test_trace_types_are_the_documented_ones():
    assert [t.value for t in TraceType] == ["Pub", "Recall", "SubBefore", "SubAfter", "EndTransaction"]
    assert [m.name for m in MessageType] == ["Normal_Msg", "Trans_Msg_Half", "Trans_msg_Commit", "Delay_Msg",
                                             "Order_Msg"]
