"""Columnar inserts into a ClickHouse server in its Native format, written from Arrow buffers.

Why: clickhouse-driver serializes an INSERT from Python objects, so the collector's Arrow
columns (the C decoder's output) had to become Python lists first -- ~1 us per event under
the GIL on top of the driver's own writing, which held the server path at ~120k events/s.
Here each column is serialized straight from its Arrow buffers with numpy (no Python object
per value) and sent as one Data block over the driver's own connection; the driver still
does everything else (handshake, the query, the sample block, the end of the insert, errors).

The Native column layouts written (the same on 18.16 and today's servers):

* fixed-width integers: the little-endian values;
* ``String``: per row a LEB128 varint length, then the bytes;
* ``Nullable(T)``: one byte per row (1 = NULL), then T for every row (NULL rows: 0 / "");
* ``Array(T)``: per row the UInt64 end offset into the flattened values, then T of those values.

A column of the table declared ``LowCardinality(T)`` is sent as ``T``: servers convert it on
receipt (what they do for clients without LowCardinality). Any other type this module does not
write, a compressed connection, or a driver without the calls used here makes
:func:`native_insert` return False, and the caller uses the driver's own (slower) insert.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger("msgtrace.store")

_FIXED = {"UInt8": "u1", "UInt16": "<u2", "UInt32": "<u4", "UInt64": "<u8",
          "Int8": "i1", "Int16": "<i2", "Int32": "<i4", "Int64": "<i8",
          "Float32": "<f4", "Float64": "<f8"}


class NativeUnsupported(Exception):
    """This column / connection cannot be written here: use the driver's insert instead."""


def wire_type(table_type: str) -> str:
    """The type a column is sent as: the table's, LowCardinality(...) removed (servers convert)."""
    t = table_type.strip()
    if t.startswith("LowCardinality(") and t.endswith(")"):
        return wire_type(t[15:-1])
    if t.startswith("Nullable(") and t.endswith(")"):
        return f"Nullable({wire_type(t[9:-1])})"
    if t.startswith("Array(") and t.endswith(")"):
        return f"Array({wire_type(t[6:-1])})"
    return t


# --- column serialization ------------------------------------------------------------

def _varints(values: Any) -> tuple[Any, Any]:
    """LEB128 encodings of non-negative ``values`` (int64): (bytes per value, all bytes concatenated)."""
    import numpy as np

    size = np.ones(len(values), dtype=np.int64)
    rest = values >> 7
    while rest.any():
        size += rest > 0
        rest >>= 7
    ends = np.cumsum(size)
    out = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.uint8)
    starts = ends - size
    v = values.copy()
    k = 0
    while True:
        rows = np.nonzero(size > k)[0]
        if not len(rows):
            break
        more = (size[rows] > k + 1).astype(np.uint8) << 7
        out[starts[rows] + k] = (v[rows] & 0x7F).astype(np.uint8) | more
        v[rows] >>= 7
        k += 1
    return size, out


def _string_bytes(arr: Any) -> bytes:
    """A ``String`` column from an Arrow string array without nulls."""
    import numpy as np
    import pyarrow as pa

    n = len(arr)
    if n == 0:
        return b""
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    bufs = arr.buffers()
    offs = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4).astype(np.int64)
    lo, hi = int(offs[0]), int(offs[-1])
    data = np.frombuffer(bufs[2], dtype=np.uint8, count=hi - lo, offset=lo) if hi > lo and bufs[2] is not None \
        else np.empty(0, dtype=np.uint8)
    lens = np.diff(offs)
    width = int(lens[0])
    if width < 0x80 and (lens == width).all():  # one width (ids, hashes): rows of [width, bytes...]
        rows = np.empty((n, width + 1), dtype=np.uint8)
        rows[:, 0] = width
        rows[:, 1:] = data.reshape(n, width)
        return bytes(rows.tobytes())
    at = offs[:-1] - lo  # where each value starts in ``data``: its length goes in front of it
    if int(lens.max()) < 0x80:  # the usual case: a one-byte length per value
        return bytes(np.insert(data, at, lens.astype(np.uint8)).tobytes())
    size, prefix = _varints(lens)
    return bytes(np.insert(data, np.repeat(at, size), prefix).tobytes())


def _fixed_bytes(arr: Any, dtype: str) -> bytes:
    import numpy as np

    values = arr.to_numpy(zero_copy_only=False)
    return bytes(np.ascontiguousarray(values, dtype=np.dtype(dtype)).tobytes())


def column_bytes(arr: Any, wire: str) -> bytes:
    """The Native serialization of one Arrow array as ClickHouse type ``wire``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if wire.startswith("Nullable(") and wire.endswith(")"):
        inner = wire[9:-1]
        if arr.null_count:
            nulls: bytes = arr.is_null().to_numpy(zero_copy_only=False).astype(np.uint8).tobytes()
            fill: Any = "" if inner == "String" else 0
            arr = pc.fill_null(arr, pa.scalar(fill, type=arr.type))
        else:
            nulls = bytes(len(arr))
        return nulls + column_bytes(arr, inner)
    if arr.null_count:
        raise NativeUnsupported(f"NULL in a column of type {wire}")
    if wire == "String":
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            raise NativeUnsupported(f"{arr.type} for a String column")
        return _string_bytes(arr)
    if wire in _FIXED:
        if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
            raise NativeUnsupported(f"{arr.type} for a {wire} column")
        return _fixed_bytes(arr, _FIXED[wire])
    if wire.startswith("Array(") and wire.endswith(")"):
        if not pa.types.is_list(arr.type):
            raise NativeUnsupported(f"{arr.type} for an {wire} column")
        offs = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=len(arr) + 1,
                             offset=arr.offset * 4).astype(np.int64)
        ends: bytes = (offs[1:] - offs[0]).astype("<u8").tobytes()
        values = arr.values.slice(int(offs[0]), int(offs[-1] - offs[0]))
        return ends + column_bytes(values, wire[6:-1])
    raise NativeUnsupported(f"type {wire}")


def _as_array(values: Any) -> Any:
    """One Arrow array of a column given as an Array or a ChunkedArray."""
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray):
        return values.chunk(0) if values.num_chunks == 1 else (
            pa.concat_arrays(values.chunks) if values.num_chunks else pa.array([], type=values.type))
    return values


def is_arrow(columns: Mapping[str, Sequence[Any]]) -> bool:
    """True when every column is an Arrow array (what the native path writes)."""
    try:
        import pyarrow as pa
    except ImportError:
        return False
    return bool(columns) and all(isinstance(v, (pa.Array, pa.ChunkedArray)) for v in columns.values())


# --- the insert over clickhouse-driver's connection ------------------------------------

_DRIVER_OK: bool | None = None


def _driver_ok(client: Any) -> bool:
    """Whether this clickhouse-driver has every call the native insert uses (checked once)."""
    global _DRIVER_OK
    if _DRIVER_OK is None:
        try:
            from clickhouse_driver import defines  # noqa: F401
            from clickhouse_driver.block import BlockInfo, ColumnOrientedBlock  # noqa: F401
            from clickhouse_driver.protocol import ClientPacketTypes  # noqa: F401
            from clickhouse_driver.varint import write_varint  # noqa: F401
            from clickhouse_driver.writer import write_binary_str, write_binary_uint8  # noqa: F401

            _DRIVER_OK = all(hasattr(client, a) for a in (
                "disconnect_on_error", "receive_sample_block", "receive_profile_events",
                "receive_end_of_insert_query"))
        except ImportError:
            _DRIVER_OK = False
        if not _DRIVER_OK:
            log.warning("clickhouse-driver lacks the calls of the native insert: using its row insert")
    return _DRIVER_OK


def native_insert(client: Any, table: str, columns: Mapping[str, Any], types: Mapping[str, str]) -> bool:
    """INSERT ``columns`` (name -> Arrow array) into ``table`` (already quoted) as one Native block.

    ``types``: the table's column types as the store knows them (DESCRIBE); the columns are
    serialized before the query is sent, and sent only if the server's sample block agrees.
    Returns False, having inserted nothing, when this cannot be done here (then use the driver's
    insert). Server and network errors propagate as clickhouse-driver raises them.
    """
    if not _driver_ok(client):
        return False
    from clickhouse_driver import defines
    from clickhouse_driver.block import BlockInfo, ColumnOrientedBlock
    from clickhouse_driver.protocol import ClientPacketTypes, Compression
    from clickhouse_driver.varint import write_varint
    from clickhouse_driver.writer import write_binary_str, write_binary_uint8

    names = list(columns)
    arrays = {n: _as_array(columns[n]) for n in names}
    n_rows = len(arrays[names[0]])
    if any(len(a) != n_rows for a in arrays.values()):
        raise ValueError("columns of different lengths")
    try:
        body = [(n, wire_type(types[n])) for n in names]
        data = [column_bytes(arrays[n], w) for n, w in body]
    except (KeyError, NativeUnsupported) as e:
        log.debug("native insert not possible (%s): using the driver's insert", e)
        return False
    query = f"INSERT INTO {table} ({', '.join(f'`{n}`' for n in names)}) VALUES"
    with client.disconnect_on_error(query, None):
        conn = client.connection
        if conn.compression != Compression.DISABLED:
            return False  # (nothing sent yet) the block would have to be compressed
        conn.send_query(query)
        conn.send_external_tables(None)
        sample = client.receive_sample_block()
        server = {n: wire_type(t) for n, t in (sample.columns_with_types if sample is not None else ())}
        if any(server.get(n) != w for n, w in body):
            # The table changed since the store read its types: end this insert with no rows
            # (the server waits for data) and let the caller use the driver's insert.
            log.info("table %s changed its column types: using the driver's insert", table)
            conn.send_data(ColumnOrientedBlock())
            client.receive_profile_events()
            client.receive_end_of_insert_query()
            return False
        revision = conn.server_info.used_revision
        fout = conn.fout
        write_varint(ClientPacketTypes.DATA, fout)
        if revision >= defines.DBMS_MIN_REVISION_WITH_TEMPORARY_TABLES:
            write_binary_str("", fout)
        if revision >= defines.DBMS_MIN_REVISION_WITH_BLOCK_INFO:
            BlockInfo().write(fout)
        write_varint(len(names), fout)
        write_varint(n_rows, fout)
        for (name, wire), payload in zip(body, data):
            write_binary_str(name, fout)
            write_binary_str(wire, fout)
            if revision >= defines.DBMS_MIN_REVISION_WITH_CUSTOM_SERIALIZATION:
                write_binary_uint8(0, fout)
            fout.write(payload)
        fout.flush()
        client.receive_profile_events()
        conn.send_data(ColumnOrientedBlock())  # an empty block ends the data
        client.receive_profile_events()
        client.receive_end_of_insert_query()
    return True
