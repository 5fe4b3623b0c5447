"""Expected-id sources for ``never_sent``: a file, stdin, or a query on the business database.

Ids are loaded into a per-run ClickHouse staging table by columnar inserts in batches (never one
row at a time through Python) and joined to the events in SQL by UNION ALL + GROUP BY.

An id may carry the time it should have been sent (a CSV's ``time_column``, or the second column
of the query): then only an audit gap covering that time makes its ``never_sent`` an ``audit_gap``
(:mod:`tracer.analysis.gaps`); without a time, any gap of a producer emitter in the scanned range does.
Times are ISO 8601 (naive ones in ``tz``, default UTC), dates, datetimes, or epoch seconds /
milliseconds / microseconds (told apart by magnitude).
"""
from __future__ import annotations

import csv
import io
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from typing import Any, Protocol

from tracer.analysis.sql import Ident, render
from tracer.errors import ConfigError
from tracer.events import MAX_MSG_ID_CHARS, cap_msg_id
from tracer.store import Store, check_identifier

BATCH = 200_000


@dataclass(slots=True)
class ExpectedSource:
    """Where the ids that should have been sent come from.

    ``path``: a file (``-`` = stdin) with one id per line, or a CSV file (``.csv`` or ``column`` given)
    whose ``column`` (default ``msg_id`` if present, else the first column) holds the ids, and
    ``time_column`` (optional) the time each should have been sent.
    ``sql`` + ``dsn``: a query on the business database through SQLAlchemy; its first column is the id,
    a second column (if any) its time.
    """

    path: str | None = None
    column: str | None = None
    sql: str | None = None
    dsn: str | None = None
    time_column: str | None = None
    tz: tzinfo = UTC

    def __post_init__(self) -> None:
        if (self.path is None) == (self.sql is None):
            raise ConfigError("give exactly one expected source: --expected FILE or --expected-sql QUERY")
        if self.sql is not None and not self.dsn:
            raise ConfigError("--expected-sql needs --expected-dsn URL (e.g. postgresql://user@host/db)")
        if self.time_column is not None and self.sql is not None:
            raise ConfigError("--expected-time-column is for a CSV file; with --expected-sql the query's second "
                              "column is the time")

    def describe(self) -> str:
        if self.path is not None:
            return "stdin" if self.path == "-" else f"file {self.path}"
        from sqlalchemy.engine import make_url

        try:
            return f"sql on {make_url(self.dsn or '').render_as_string(hide_password=True)}"
        except Exception:
            return "sql"

    def batches(self) -> Iterator[list[str]]:
        """Ids in batches of up to BATCH (lists built by C-level splitting, not a Python loop per id)."""
        for ids, _ in self.timed_batches():
            yield ids

    def timed_batches(self) -> Iterator[tuple[list[str], list[int] | None]]:
        """(ids, their expected times in µs or None when the source has no times), in batches."""
        if self.sql is not None:
            yield from _sql_batches(self.sql, self.dsn or "", self.tz)
            return
        is_csv = self.column is not None or self.time_column is not None or \
            (self.path or "").lower().endswith(".csv")
        if is_csv:
            yield from _csv_batches(self._read_text(), self.column, self.time_column, self.tz)
        else:
            text = self._read_text()
            ids = [i for i in text.replace("\r\n", "\n").split("\n") if i]
            for k in range(0, len(ids), BATCH):
                yield ids[k:k + BATCH], None

    def _read_text(self) -> str:
        if self.path == "-":
            data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
        else:
            try:
                with open(self.path or "", "rb") as f:
                    data = f.read()
            except OSError as e:
                raise ConfigError(f"cannot read expected file {self.path}: {e.strerror}") from None
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ConfigError(f"expected ids in {self.describe()} are not UTF-8 (byte {e.start})") from None


#: epoch values below this (2000-01-01) are not taken for times: a wrong column, most likely
_MIN_EPOCH_S = 946_684_800


def parse_time_us(value: Any, tz: tzinfo = UTC, msg_id: str = "") -> int:
    """An expected id's time in µs since the epoch (0 for none); a ConfigError naming the value
    and the id when it is not a time."""
    if value is None or value == "":
        return 0
    try:
        if isinstance(value, datetime):
            dt = value if value.tzinfo else value.replace(tzinfo=tz)
            return int(dt.timestamp()) * 1_000_000 + dt.microsecond
        if isinstance(value, date):
            return int(datetime(value.year, value.month, value.day, tzinfo=tz).timestamp()) * 1_000_000
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("utf-8")
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return 0
            try:
                num = float(text)
            except ValueError:
                dt = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00").replace(" ", "T", 1))
                return parse_time_us(dt, tz, msg_id)
        else:
            num = float(value)
        us = num * 1e6 if num < 1e11 else (num * 1e3 if num < 1e14 else num)
        if not us >= _MIN_EPOCH_S * 1e6 or us > 2**62:
            raise ValueError("out of range")
        return int(us)
    except (ValueError, TypeError, OverflowError, OSError):
        raise ConfigError(f"expected ids: the time {str(value)[:80]!r} of {msg_id[:200]!r} is not a time (use ISO "
                          "8601, a date, or epoch seconds / milliseconds / microseconds after 2000)") from None


def _csv_batches(text: str, column: str | None, time_column: str | None = None,
                 tz: tzinfo = UTC) -> Iterator[tuple[list[str], list[int] | None]]:
    times: list[Any] | None = None
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        types = {time_column: pa.string()} if time_column else None
        tbl = pacsv.read_csv(io.BytesIO(text.encode()),
                             convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=False,
                                                                  auto_dict_encode=False),
                             read_options=pacsv.ReadOptions(autogenerate_column_names=False))
        names = tbl.column_names
        col = column or ("msg_id" if "msg_id" in names else names[0])
        if col not in names:
            raise ConfigError(f"expected CSV has no column {col!r} (columns: {', '.join(names)})")
        if time_column is not None and time_column not in names:
            raise ConfigError(f"expected CSV has no time column {time_column!r} (columns: {', '.join(names)})")
        raw = tbl.column(col).cast(pa.string()).to_pylist()
        keep = [k for k, i in enumerate(raw) if i]
        ids = [raw[k] for k in keep]
        if time_column is not None:
            tcol = tbl.column(time_column).to_pylist()
            times = [tcol[k] for k in keep]
    except ConfigError:
        raise
    except Exception:  # pyarrow refuses some CSVs (ragged rows): fall back to the csv module
        reader = csv.reader(io.StringIO(text))
        header = next(reader, [])
        col = column or ("msg_id" if "msg_id" in header else (header[0] if header else ""))
        if col not in header:
            raise ConfigError(f"expected CSV has no column {col!r} (columns: {', '.join(header)})") from None
        if time_column is not None and time_column not in header:
            raise ConfigError(f"expected CSV has no time column {time_column!r} "
                              f"(columns: {', '.join(header)})") from None
        k = header.index(col)
        t = header.index(time_column) if time_column is not None else -1
        rows = [row for row in reader if len(row) > k and row[k]]
        ids = [row[k] for row in rows]
        if t >= 0:
            times = [row[t] if len(row) > t else "" for row in rows]
    for i in range(0, len(ids), BATCH):
        chunk = ids[i:i + BATCH]
        yield chunk, (None if times is None else
                      [parse_time_us(v, tz, m) for v, m in zip(times[i:i + BATCH], chunk)])


def _sql_batches(query: str, dsn: str, tz: tzinfo = UTC) -> Iterator[tuple[list[str], list[int] | None]]:
    try:
        from sqlalchemy import create_engine
    except ImportError:  # pragma: no cover - sqlalchemy is an optional extra
        raise ConfigError("--expected-sql needs SQLAlchemy: pip install 'msgtrace[sql]'") from None
    try:
        engine = create_engine(dsn)
    except Exception as e:
        raise ConfigError(f"invalid --expected-dsn: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    try:
        with engine.connect() as conn:
            # raw SQL: a colon in a literal (e.g. "order-42:paid") is not a bind parameter
            result = conn.execution_options(stream_results=True).exec_driver_sql(query)
            while True:
                chunk = result.fetchmany(BATCH)
                if not chunk:
                    break
                cols = list(zip(*chunk))  # transpose in C
                keep = [k for k, v in enumerate(cols[0]) if v is not None and v != ""]
                ids = [str(cols[0][k]) for k in keep]
                times = None
                if len(cols) > 1:  # the second column is the time each id should have been sent
                    times = [parse_time_us(cols[1][k], tz, ids[j]) for j, k in enumerate(keep)]
                yield ids, times
    except ConfigError:
        raise
    except Exception as e:
        first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise ConfigError(f"expected-ids query failed: {first}") from None
    finally:
        engine.dispose()


def load_expected(store: Store, source: IdSource, run_id: str | None = None) -> tuple[str, int]:
    """Create the run's staging table and fill it; return (table name, number of ids loaded)."""
    table = Ident(f"expected_{(run_id or uuid.uuid4().hex)[:32]}")
    store.command(render("expected_table", table=table))
    n = 0
    timed = getattr(source, "timed_batches", None)
    batches = timed() if timed is not None else ((b, None) for b in source.batches())
    try:
        for batch, times in batches:
            if batch:
                if max(map(len, batch)) > MAX_MSG_ID_CHARS:  # stored ids that long are capped
                    batch = [cap_msg_id(m) for m in batch]
                cols: dict[str, Any] = {"msg_id": batch}
                if times is not None:
                    cols["ts_us"] = times
                n += store.insert(table.name, cols)
    except BaseException:
        drop_expected(store, table.name)
        raise
    return table.name, n


def drop_expected(store: Store, table: str) -> None:
    store.command(render("reconcile_drop_staging", table=Ident(table)))
    store._types.pop(table, None)


class IdSource(Protocol):
    def batches(self) -> Iterator[list[str]]: ...


@dataclass(slots=True)
class IdList:
    """Ids already in memory (candidate messages of a run), as an id source."""

    ids: Sequence[str]

    def batches(self) -> Iterator[list[str]]:
        for i in range(0, len(self.ids), BATCH):
            yield list(self.ids[i:i + BATCH])


class Staging:
    """The staging tables of one run: made on demand, all dropped at the end (``with``)."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.tables: list[str] = []

    def ids(self, ids: Sequence[str], tag: str) -> Ident:
        return self.load(IdList(ids), tag)[0]

    def hashes(self, hashes: Sequence[int], tag: str) -> Ident:
        """A table of message hashes (pass 1 by message names its candidates by cityHash64(msg_id))."""
        table = Ident(check_identifier(f"expected_{(tag + self.run_id)[:32]}", "table name"))
        self.store.command(render("reconcile_hash_table", table=table))
        self.tables.append(table.name)
        for i in range(0, len(hashes), BATCH):
            self.store.insert(table.name, {"h": list(hashes[i:i + BATCH])})
        return table

    def load(self, source: IdSource, tag: str = "") -> tuple[Ident, int]:
        table, n = load_expected(self.store, source, tag + self.run_id)
        self.tables.append(table)
        return Ident(table), n

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        for t in self.tables:
            drop_expected(self.store, t)
        self.tables.clear()
