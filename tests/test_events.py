"""The event contract and the audit wire format: strict, precise, lossless."""
from __future__ import annotations

import orjson
import pytest

from tracer.errors import DecodeError
from tracer.events import (
    COLUMNS,
    FORMAT_HEADER,
    MAX_RECORD_BYTES,
    STAGES,
    Event,
    Stage,
    decode_batch,
    decode_event_line,
    encode_batch,
    record_headers,
    validate_event,
)


def make(i: int = 0, **kw) -> Event:
    base = dict(msg_id=f"order-{i}:paid", stage="sent", service="order-service", host="h1", pid=42,
                topic="order-paid", emitter_id="e1", seq=i + 1)
    base.update(kw)
    return Event(**base)


def test_stage_names_are_the_contract():
    assert STAGES == {"sent", "send_failed", "broker_acked", "received", "offset_committed",
                      "business_done", "business_failed", "dead_lettered", "rolled_back"}
    assert Stage.BROKER_ACKED == "broker_acked"


def test_wire_keys_are_exactly_the_columns():
    line = encode_batch([make()])
    assert tuple(orjson.loads(line).keys()) == COLUMNS
    assert set(COLUMNS) >= {"event_id", "msg_id", "stage", "ts_us", "service", "host", "mq", "pid", "topic",
                            "partition", "offset", "consumer_group", "key", "error", "trace_id", "span_id",
                            "emitter_id", "seq", "attrs"}


def test_round_trip_keeps_every_field():
    events = [make(0), make(1, msg_id="订单-1:已支付 🧧", attrs={}),
              make(2, stage="received", partition=3, offset=2**40, consumer_group="red-packet", key="k",
                   trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331",
                   attrs={"a": "1", "ключ": "значение"}),
              make(3, stage="business_failed", error="boom\nline2 \"quoted\"")]
    batch = decode_batch(encode_batch(events), record_headers())
    assert batch.bad == []
    assert batch.events == events


def test_new_events_get_uuid_and_time():
    a, b = make(), make()
    assert a.event_id != b.event_id and len(a.event_id) == 36
    assert a.ts_us > 1_600_000_000_000_000


def _line(**changes) -> bytes:
    d = make().to_dict()
    for k, v in changes.items():
        if v is KeyError:
            del d[k]
        else:
            d[k] = v
    return orjson.dumps(d)


@pytest.mark.parametrize("changes, field, words", [
    ({"stage": "teleported"}, "stage", "unknown stage 'teleported'"),
    ({"ts_us": "yesterday"}, "ts_us", "must be an integer, got str"),
    ({"pid": True}, "pid", "must be an integer, got bool"),
    ({"partition": 1.5}, "partition", "must be an integer, got float"),
    ({"msg_id": None}, "msg_id", "must not be null"),
    ({"msg_id": ""}, "msg_id", "must not be empty"),
    ({"topic": KeyError}, "topic", "missing field 'topic'"),
    ({"colour": "red"}, "colour", "unknown field 'colour'"),
    ({"event_id": "not-a-uuid"}, "event_id", "not a UUID"),
    ({"trace_id": "XYZ"}, "trace_id", "32 lowercase hex"),
    ({"attrs": {"a": 1}}, "attrs", "value of 'a' must be a string"),
    ({"attrs": []}, "attrs", "must be an object"),
    ({"seq": -1}, "seq", "out of range"),
])
def test_bad_event_names_the_field(changes, field, words):
    batch = decode_batch(_line(**changes), record_headers())
    assert batch.events == []
    [bad] = batch.bad
    assert bad.field == field
    assert words in bad.error
    assert bad.line == 1


def test_malformed_record_keeps_good_lines():
    good = encode_batch([make(0), make(1)])
    value = good + b"\n{\"truncated\": " + b"\n" + b"\xff\xfe garbage"
    batch = decode_batch(value, record_headers())
    assert [e.msg_id for e in batch.events] == ["order-0:paid", "order-1:paid"]
    assert [b.line for b in batch.bad] == [3, 4]
    assert all("invalid JSON" in b.error for b in batch.bad)
    assert batch.bad[0].raw == b"{\"truncated\": "


@pytest.mark.parametrize("headers, words", [
    ([], f"missing header '{FORMAT_HEADER}'"),
    ([(FORMAT_HEADER, b"2")], "unknown format version '2'"),
    ([(FORMAT_HEADER, None)], "unknown format version ''"),
])
def test_format_version_is_checked(headers, words):
    batch = decode_batch(encode_batch([make()]), headers)
    assert batch.events == []
    [bad] = batch.bad
    assert words in bad.error and bad.field == FORMAT_HEADER and bad.line is None


def test_oversized_and_empty_records_are_refused_whole():
    big = b" " * (MAX_RECORD_BYTES + 1)
    assert "exceeds the limit" in decode_batch(big, record_headers()).bad[0].error
    assert "empty record" in decode_batch(b"", record_headers()).bad[0].error


def test_not_an_object():
    with pytest.raises(DecodeError, match="must be a JSON object, got list"):
        decode_event_line(b"[1,2]")
    with pytest.raises(DecodeError, match="must be a JSON object"):
        validate_event("x")


@pytest.mark.parametrize("field_name, value", [
    ("event_id", "0af76519-16cd-43dd-8448-eb211c80319c\n"),
    ("trace_id", "0af7651916cd43dd8448eb211c80319c\n"),
    ("span_id", "b7ad6b7169203331\n"),
])
def test_ids_with_a_trailing_newline_are_refused(field_name, value):
    batch = decode_batch(_line(**{field_name: value}), record_headers())
    assert batch.events == [] and batch.bad[0].field == field_name
