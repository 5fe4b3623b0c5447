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
"""
from __future__ import annotations

import operator
import re
from itertools import accumulate, chain
from typing import Any, Sequence

import orjson

from tracer.errors import DecodeError
from tracer.events import COLUMNS, MAX_RECORD_BYTES, SCHEMA, STAGES, STORE_COLUMNS, BadLine, check_format_header, \
    decode_batch

from .types import Decoded

_NKEYS = {len(COLUMNS)}
_GET = operator.itemgetter(*COLUMNS)
_NONE = type(None)
_STR, _INT, _DICT = {str}, {int}, {dict}
_STR_OR_NONE, _INT_OR_NONE = {str, _NONE}, {int, _NONE}
_LIMITS = {"partition": (-(2**31), 2**31 - 1), "offset": (-(2**63), 2**63 - 1),
           "pid": (0, 2**32 - 1), "ts_us": (0, 2**64 - 1), "seq": (0, 2**64 - 1)}
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
            return lo <= min(vals) and max(vals) <= hi
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
        cols = list(zip(*map(_GET, objs)))
    except KeyError:
        return None
    for i, kind, nullable, name in _CHECKS:
        if not _check_column(kind, nullable, name, cols[i]):
            return None
    if not all(cols[1]):  # msg_id must not be empty
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


def decode_record(value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None,
                  max_record_bytes: int = MAX_RECORD_BYTES) -> Decoded:
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
