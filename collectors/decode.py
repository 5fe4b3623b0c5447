"""Decoding audit records into columns, fast.

``tracer.events.decode_batch`` validates one event at a time (``validate_event``)
and builds an ``Event`` per line; at ~20 us per event it caps the collector near
50k events/s on this machine. Here a record is checked *column-wise*:

1. the whole record is parsed by ONE ``orjson.loads`` call, as a JSON array made
   by turning each line break into ``",\\n"`` (see :func:`_parse_lines` for why
   that is the same as parsing line by line, under the checks made there);
2. the objects are transposed into columns with C-level helpers (``itemgetter``,
   ``zip``) and each column is checked in bulk (type sets, min/max, one regex
   over the joined ids);
3. ``attrs`` stays a column of the parsed dicts; :func:`store_columns` turns it
   into the two array columns at write time -- flattened into Arrow list arrays
   for chDB (no Python list per event), lists of lists for the server.

Acceptance is sound: whenever the fast path accepts a record, ``validate_event``
accepts each of its lines with the same values. When any check fails the record
goes through ``decode_batch`` itself, so the events kept, the lines rejected and
the error messages are exactly the strict validator's.

Faster still, when it is built: ``collectors._fastjson`` (C) parses and checks a
whole record without the GIL and returns Arrow buffers (:func:`arrow_batch`), so
no Python object is made per event. It obeys the same rule (accept only what
``validate_event`` accepts, with the same values; otherwise the paths above run).
Without a C compiler the package still installs and uses the Python paths.
"""
from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from itertools import accumulate, chain
from typing import Any

import orjson

from tracer.errors import DecodeError
from tracer.events import (
    _LIMITS as INT_LIMITS,  # validate_event's integer ranges (one source)
)
from tracer.events import (
    COLUMNS,
    MAX_RECORD_BYTES,
    SCHEMA,
    STAGES,
    STORE_COLUMNS,
    BadLine,
    Stage,
    check_format_header,
    decode_batch,
)

from .types import Decoded

#: string fields that must not be empty (validate_event's rule; the fast paths check it too)
NON_EMPTY: frozenset[str] = frozenset({"msg_id"})
_INT_WIDTH = {"UInt32": 4, "Int32": 4, "UInt64": 8, "Int64": 8}


def c_contract() -> tuple[tuple[tuple[str, str, bool, bool, int, int, int], ...], tuple[str, ...]]:
    """The event contract as the C decoder takes it, built from ``tracer.events`` (its only source).

    Columns in wire order as (name, kind, nullable, non_empty, width, lo, hi); the schema's
    "uint"/"int" kinds become "int" with the width of the ClickHouse type and the range of
    ``validate_event``. Stages in ``Stage`` order.
    """
    cols = []
    for name, (kind, nullable, ch_type) in SCHEMA.items():
        width, lo, hi = 0, 0, 0
        if kind in ("int", "uint"):
            base = ch_type[9:-1] if ch_type.startswith("Nullable(") else ch_type
            width = _INT_WIDTH[base]
            lo, hi = INT_LIMITS[name]
            kind = "int"
        cols.append((name, kind, nullable, name in NON_EMPTY, width, lo, hi))
    return tuple(cols), tuple(s.value for s in Stage)


def _load_c() -> Any:
    """The C decoder configured with the contract, or None (not built, or a build too old)."""
    import importlib

    try:
        fj = importlib.import_module(f"{__package__}._fastjson")
    except ImportError:  # not built (no compiler at install time): the Python paths below
        return None
    if not hasattr(fj, "configure"):  # a stale build with its own copy of the contract
        return None
    try:
        fj.configure(*c_contract())
    except (ValueError, TypeError):  # a contract this build cannot take
        return None
    return fj


_fastjson = _load_c()

#: True when the C decoder is in use (reported by the collector at start-up).
FAST_C = _fastjson is not None

_NKEYS = {len(COLUMNS)}
_GET = operator.itemgetter(*COLUMNS)
_NONE = type(None)
_STR, _INT, _DICT = {str}, {int}, {dict}
_STR_OR_NONE, _INT_OR_NONE = {str, _NONE}, {int, _NONE}
_LIMITS = INT_LIMITS
_U = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# Joined with "\n", which none of the patterns admits: one match checks a whole column.
_UUIDS = re.compile(rf"(?:{_U}\n)*{_U}")
_HEX32S = re.compile(r"(?:[0-9a-f]{32}\n)*[0-9a-f]{32}")
_HEX16S = re.compile(r"(?:[0-9a-f]{16}\n)*[0-9a-f]{16}")
ATTRS_INDEX = COLUMNS.index("attrs")
#: A decoded column set: one column per event field in COLUMNS order (attrs: the dicts).
N_COLUMNS = len(COLUMNS)
#: kept for callers of the old layout: the number of storage columns (attrs split in two)
N_STORE_COLUMNS = len(STORE_COLUMNS)
_SCALAR_STORE = STORE_COLUMNS[:-2]
assert _SCALAR_STORE == tuple(c for c in COLUMNS if c != "attrs") and COLUMNS[-1] == "attrs"


def _check_column(kind: str, nullable: bool, name: str, col: Sequence[Any]) -> bool:
    types = set(map(type, col))
    if kind in ("int", "uint"):
        if nullable:
            if not types <= _INT_OR_NONE:
                return False
            vals = [v for v in col if v is not None] if _NONE in types else col
        else:
            if types != _INT:
                return False
            vals = col
        if vals:
            lo, hi = _LIMITS[name]
            return bool(lo <= min(vals) and max(vals) <= hi)
        return True
    if kind == "attrs":
        return types == _DICT and set(map(type, chain.from_iterable(map(dict.values, col)))) <= _STR
    if nullable:
        if not types <= _STR_OR_NONE:
            return False
    elif types != _STR:
        return False
    if kind == "str":
        return True
    if kind == "stage":
        return set(col) <= STAGES
    if kind == "uuid":
        return _UUIDS.fullmatch("\n".join(col)) is not None
    vals = [v for v in col if v is not None] if _NONE in types else col
    if not vals:
        return True
    pattern = _HEX32S if kind == "hex32" else _HEX16S
    return pattern.fullmatch("\n".join(vals)) is not None


_CHECKS = [(i, kind, nullable, name) for i, (name, (kind, nullable, _)) in enumerate(SCHEMA.items())]
_NON_EMPTY_INDEX = [COLUMNS.index(n) for n in sorted(NON_EMPTY)]


def fast_columns(objs: list[Any]) -> list[Sequence[Any]] | None:
    """Columns of ``objs`` (COLUMNS order, attrs as dicts) if every object is a valid event, else None.

    No accepted object contains a JSON array anywhere (fields are scalars, attrs a flat
    object of strings): :func:`_parse_lines` relies on that.
    """
    if not objs or set(map(type, objs)) != _DICT:
        return None
    # 19 keys each and every column key present <=> the key set is exactly the columns
    if set(map(len, objs)) != _NKEYS:
        return None
    try:
        cols: list[Sequence[Any]] = list(zip(*map(_GET, objs)))
    except KeyError:
        return None
    for i, kind, nullable, name in _CHECKS:
        if not _check_column(kind, nullable, name, cols[i]):
            return None
    for i in _NON_EMPTY_INDEX:
        if not all(cols[i]):  # e.g. msg_id must not be empty
            return None
    return cols  # tuples: the batch extends lists


def _parse_lines(raw: bytes) -> list[Any] | None:
    """All lines of ``raw`` parsed at once, or None when that would not equal a per-line parse.

    ``raw`` has no blank line. It is parsed as ``[line1,\\nline2,\\n...]``. A raw line
    break is not allowed inside a JSON string, so every inserted comma stands outside
    strings; the next byte after it (and its ``\\n``) is ``{`` (checked), which cannot
    follow a comma inside an object (a key must), so each inserted comma separates array
    elements: top-level ones unless the parse put a line break inside a nested array,
    which :func:`fast_columns` then refuses. With as many top-level values as lines, each
    line is exactly one JSON value, the same one a per-line ``orjson.loads`` returns.
    """
    n = raw.count(b"\n") + 1
    if raw[:1] != b"{" or (n > 1 and raw.count(b"\n{") != n - 1):
        return None
    try:
        objs = orjson.loads(b"[" + raw.replace(b"\n", b",\n") + b"]")
    except orjson.JSONDecodeError:
        return None
    return objs if len(objs) == n else None


def _event_columns(events: Sequence[Any]) -> list[Sequence[Any]]:
    return list(zip(*map(operator.attrgetter(*COLUMNS), events)))


def store_columns(columns: Sequence[Sequence[Any]], *, arrow: bool = False) -> dict[str, Any]:
    """Decoded columns (attrs as dicts) -> ``trace_events`` columns for ``Store.insert``.

    ``arrow``: attr_keys / attr_values as Arrow list arrays built from flattened keys and
    values (chDB's insert takes Arrow arrays as they are); else lists of lists.
    """
    out: dict[str, Any] = dict(zip(_SCALAR_STORE, columns[:ATTRS_INDEX]))
    attrs = columns[ATTRS_INDEX]
    if arrow:
        import pyarrow as pa

        offsets = pa.array(list(accumulate(map(len, attrs), initial=0)), pa.int32())
        out["attr_keys"] = pa.ListArray.from_arrays(offsets, pa.array(list(chain.from_iterable(attrs)), pa.string()))
        out["attr_values"] = pa.ListArray.from_arrays(
            offsets, pa.array(list(chain.from_iterable(map(dict.values, attrs))), pa.string()))
    else:
        out["attr_keys"] = list(map(list, attrs))
        out["attr_values"] = list(map(list, map(dict.values, attrs)))
    return out


_ARROW: dict[str, Any] = {}


def _arrow_types() -> dict[str, Any]:
    """Arrow type of each storage column, as ``Store.insert`` makes them (built once)."""
    if not _ARROW:
        import pyarrow as pa

        from tracer.store.core import _arrow_type

        for name, (_, _, ch_type) in SCHEMA.items():
            if name != "attrs":
                _ARROW[name] = _arrow_type(ch_type)
        _ARROW["attr_keys"] = _ARROW["attr_values"] = pa.list_(pa.string())
        _ARROW["__schema__"] = pa.schema([(c, _ARROW[c]) for c in STORE_COLUMNS])
    return _ARROW


def arrow_batch(n: int, buffers: Sequence[tuple[Any, ...]]) -> Any:  # -> pa.RecordBatch
    """A ``trace_events`` record batch over the buffers ``_fastjson.decode`` returned (no copy)."""
    import pyarrow as pa

    types = _arrow_types()
    buf = pa.py_buffer
    arrays = []
    for name, bufs in zip(COLUMNS, buffers):
        if name == "attrs":
            _, loff, koff, kdata, voff, vdata = bufs
            nk = len(koff) // 4 - 1
            keys = pa.Array.from_buffers(pa.string(), nk, [None, buf(koff), buf(kdata)])
            vals = pa.Array.from_buffers(pa.string(), nk, [None, buf(voff), buf(vdata)])
            offsets = buf(loff)
            arrays.append(pa.Array.from_buffers(types["attr_keys"], n, [None, offsets], children=[keys]))
            arrays.append(pa.Array.from_buffers(types["attr_values"], n, [None, offsets], children=[vals]))
        else:
            arrays.append(pa.Array.from_buffers(types[name], n, [None if b is None else buf(b) for b in bufs]))
    return pa.RecordBatch.from_arrays(arrays, schema=types["__schema__"])


def python_batch(columns: Sequence[Sequence[Any]]) -> Any:  # -> pa.RecordBatch
    """Decoded Python columns (attrs as dicts) as a ``trace_events`` record batch."""
    import pyarrow as pa

    types = _arrow_types()
    cols = store_columns(columns, arrow=True)
    arrays = [c if isinstance(c, pa.Array) else pa.array(c, type=types[name]) for name, c in cols.items()]
    return pa.RecordBatch.from_arrays(arrays, schema=types["__schema__"])


def batch_store_columns(columns: Sequence[Sequence[Any]], arrow_batches: Sequence[Any], *,
                        arrow: bool) -> tuple[dict[str, Any], int]:
    """A batch's events as ``Store.insert`` columns, and how many distinct event ids they hold.

    Without C-decoded record batches this is :func:`store_columns` as before; with them, the
    Python-decoded events join them as one more record batch and each column is an Arrow
    chunked array (chDB reads it as is; the server store turns it into a list).
    """
    if not arrow_batches:
        ids = columns[_EVENT_ID_INDEX]
        return store_columns(columns, arrow=arrow), len(set(ids))
    import pyarrow as pa
    import pyarrow.compute as pc

    batches = list(arrow_batches)
    if columns and columns[0]:
        batches.append(python_batch(columns))
    # one chunk per column: chDB reads a table of many small chunks ~0.4 us/event slower
    table = pa.Table.from_batches(batches, schema=_arrow_types()["__schema__"]).combine_chunks()
    distinct = len(pc.unique(table.column("event_id")))  # (event_id is never null; unique: ~2x count_distinct)
    return {name: table.column(name) for name in STORE_COLUMNS}, distinct


_EVENT_ID_INDEX = COLUMNS.index("event_id")


def decode_record(value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None,
                  max_record_bytes: int = MAX_RECORD_BYTES, *, use_c: bool = True) -> Decoded:
    """Decode one audit record (same outcome as ``tracer.events.decode_batch``)."""
    raw = value or b""
    size = len(raw)
    try:
        check_format_header(headers)
        if size > max_record_bytes:
            raise DecodeError(f"record of {size} bytes exceeds the limit of {max_record_bytes}")
        if not raw.strip():
            raise DecodeError("empty record")
    except DecodeError as e:
        return Decoded(0, None, [BadLine(None, str(e), e.field, raw)], size, False)
    if use_c and _fastjson is not None:
        got = _fastjson.decode(raw)
        if got is not None:
            return Decoded(got[0], None, [], size, True, arrow_batch(*got))
    if not (raw.endswith(b"\n") or b"\n\n" in raw):
        objs = _parse_lines(raw)
        if objs is not None:
            cols = fast_columns(objs)
            if cols is not None:
                return Decoded(len(objs), cols, [], size, True)
    d = decode_batch(raw, headers, check_header=False)
    if not d.events:
        return Decoded(0, None, d.bad, size, False)
    return Decoded(len(d.events), _event_columns(d.events), d.bad, size, False)
