"""The collector's server path: Arrow columns sent as ClickHouse Native blocks (tracer.store.native).

The serialization is checked two ways, against real engines: a modern ClickHouse (chDB) reads the
bytes as a Native file, and the 18.16 server receives them through the collector's insert; both
must give back exactly what the driver's own (list) insert stores.
"""
from __future__ import annotations

import pyarrow as pa
import pytest

from collectors.decode import batch_store_columns, decode_record
from collectors.testing import make_events
from tracer.events import STORE_COLUMNS, encode_batch, record_headers
from tracer.store import Store
from tracer.store.native import NativeUnsupported, column_bytes, wire_type

# values at the edges of the layouts: NULLs, empty strings and arrays, lengths whose varint needs
# 1, 2 and 3 bytes, multi-byte UTF-8, NUL bytes, and arrays sliced out of a larger one
STRINGS = ["", "a", "é" * 63 + "x", "x" * 127, "y" * 128, "z" * 16_383, "w" * 16_384, "\x00\n\t'\\", "ключ"]
COLUMNS = {
    "s": ("String", pa.array(STRINGS)),
    "ns": ("Nullable(String)", pa.array([None, "", "q" * 300, None, "ok", None, "é", "", None])),
    "u64": ("UInt64", pa.array([0, 1, 2**64 - 1, 5, 6, 7, 8, 9, 10], type=pa.uint64())),
    "u32": ("UInt32", pa.array([0, 2**32 - 1, 3, 4, 5, 6, 7, 8, 9], type=pa.uint32())),
    "ni32": ("Nullable(Int32)", pa.array([None, -(2**31), 2**31 - 1, 0, None, 1, 2, 3, None], type=pa.int32())),
    "ni64": ("Nullable(Int64)", pa.array([-(2**63), None, 2**63 - 1, 0, 1, 2, 3, None, 4], type=pa.int64())),
    "arr": ("Array(String)", pa.array([[], ["k"], ["a" * 200, ""], [], ["é", "x", "y"], [], ["z" * 20_000], [], ["last"]],
                                      type=pa.list_(pa.string()))),
}
N = len(STRINGS)


def _native_file(columns: dict[str, tuple[str, pa.Array]]) -> bytes:
    """One block of the Native *format* (no block info): what ``file(..., Native)`` reads."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def text(s: str) -> bytes:
        raw = s.encode()
        return varint(len(raw)) + raw

    body = varint(len(columns)) + varint(N)
    for name, (typ, arr) in columns.items():
        body += text(name) + text(typ) + column_bytes(arr, typ)
    return body


def test_native_bytes_read_back_by_a_modern_clickhouse(tmp_path) -> None:
    path = tmp_path / "block.native"
    path.write_bytes(_native_file(COLUMNS))
    with Store(f"chdb://{tmp_path / 'store'}") as s:
        rows = s.query("SELECT * FROM file({p:String}, 'Native')", {"p": str(path)})
    assert [r["s"] for r in rows] == STRINGS
    for name, (_, arr) in COLUMNS.items():
        assert [r[name] for r in rows] == arr.to_pylist(), name


def test_sliced_and_chunked_arrays_serialize_as_their_values() -> None:
    assert column_bytes(pa.array(["ab"] * 3), "String") == b"\x02ab" * 3  # one width: the 2-D path
    assert column_bytes(pa.array([""] * 3), "String") == b"\x00" * 3
    assert column_bytes(pa.array(["x" * 200] * 2), "String") == (b"\xc8\x01" + b"x" * 200) * 2
    big = pa.array([f"v{i}" for i in range(100)])
    assert column_bytes(big.slice(40, 9), "String") == column_bytes(pa.array([f"v{i}" for i in range(40, 49)]), "String")
    lists = pa.array([[str(i)] * (i % 3) for i in range(50)], type=pa.list_(pa.string()))
    assert column_bytes(lists.slice(10, 9), "Array(String)") == \
        column_bytes(pa.array(lists.slice(10, 9).to_pylist(), type=lists.type), "Array(String)")
    nullable = pa.array([None if i % 4 == 0 else f"n{i}" for i in range(30)])
    assert column_bytes(nullable.slice(5, 9), "Nullable(String)") == \
        column_bytes(pa.array(nullable.slice(5, 9).to_pylist()), "Nullable(String)")


def test_what_native_does_not_write_is_refused_not_guessed() -> None:
    with pytest.raises(NativeUnsupported):
        column_bytes(pa.array(["x", None]), "String")  # NULL in a non-Nullable column
    with pytest.raises(NativeUnsupported):
        column_bytes(pa.array([1.5]), "String")
    with pytest.raises(NativeUnsupported):
        column_bytes(pa.array(["2026-01-01"]), "Date")
    assert wire_type("LowCardinality(String)") == "String"  # servers convert on receipt
    assert wire_type("Array(LowCardinality(String))") == "Array(String)"
    assert wire_type("Nullable(UInt64)") == "Nullable(UInt64)"


def test_collector_batches_into_the_server_equal_the_driver_insert(server_url, monkeypatch) -> None:
    """C-decoded batches inserted as Native blocks and the same columns as Python lists through
    clickhouse-driver store identical rows on the 18.16 server."""
    import tracer.store.native as nat
    from tracer.store.core import _pylist

    took: list[bool] = []
    real = nat.native_insert
    monkeypatch.setattr(nat, "native_insert", lambda *a, **k: took.append(real(*a, **k)) or took[-1])

    events = make_events(3_000)
    events[0].error, events[1].error = "e" * 200, "é" * 9_000  # varints of 2 and 3 bytes
    events[2].attrs, events[3].attrs = {}, {"k" * 300: "v" * 70_000, "": ""}
    events[4].trace_id, events[4].span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    events[5].key, events[5].consumer_group = "\x00\n\t'\\ключ", ""
    h = record_headers()
    batches = [decode_record(encode_batch(events[i:i + 500]), h).arrow for i in range(0, len(events), 500)]
    assert all(b is not None for b in batches)
    table, _ = batch_store_columns([], batches, arrow=True)
    cols = ", ".join(f"`{c}`" for c in STORE_COLUMNS)
    with Store(server_url) as s:
        s.init_schema()
        s.command("CREATE TABLE {db:Identifier}.by_driver AS {db:Identifier}.trace_events")
        s.insert("trace_events", table)  # Arrow columns: the Native path
        s.insert("by_driver", {c: _pylist(v) for c, v in table.items()})  # lists: the driver's insert
        native = s.rows(f"SELECT {cols} FROM {{db:Identifier}}.trace_events ORDER BY event_id")[1]
        driver = s.rows(f"SELECT {cols} FROM {{db:Identifier}}.by_driver ORDER BY event_id")[1]
    assert took == [True]  # the Arrow columns went as a Native block (not the driver fallback)
    assert len(native) == 3_000 and native == driver
    stored = {r[0]: r for r in native}
    e3 = stored[events[3].event_id]
    assert e3[STORE_COLUMNS.index("attr_keys")] == ["k" * 300, ""]
    assert stored[events[1].event_id][STORE_COLUMNS.index("error")] == "é" * 9_000


def test_a_table_changed_under_the_store_falls_back_to_the_driver(server_url, monkeypatch) -> None:
    """The store's cached column types disagree with the server's sample block: the Native block is
    not sent (the insert is ended empty) and the driver's insert stores the rows, nothing twice."""
    import tracer.store.native as nat

    took: list[bool] = []
    real = nat.native_insert
    monkeypatch.setattr(nat, "native_insert", lambda *a, **k: took.append(real(*a, **k)) or took[-1])
    events = make_events(1_000)
    table, _ = batch_store_columns([], [decode_record(encode_batch(events), record_headers()).arrow], arrow=True)
    with Store(server_url) as s:
        s.init_schema()
        assert s.column_types("trace_events")["pid"] == "UInt32"  # cached now
        s.command("ALTER TABLE {db:Identifier}.trace_events MODIFY COLUMN pid UInt64")
        s.insert("trace_events", table)
        rows = s.query("SELECT count() AS n, uniqExact(event_id) AS u, sum(pid) AS p FROM {db:Identifier}.trace_events")
    assert took == [False]
    assert (rows[0]["n"], rows[0]["u"], rows[0]["p"]) == (1_000, 1_000, 4242 * 1_000)
