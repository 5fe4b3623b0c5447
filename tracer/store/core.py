"""The ClickHouse store: one interface, two engines selected by URL.

* ``chdb:///path/to/dir`` -- embedded ClickHouse (chDB), the default. chDB lets
  one process at a time open a directory, so every operation runs in a short
  session guarded by a file lock: the collector, the CLI and a few writers
  share a store by taking turns, waiting a bounded time, and a waiter that
  gives up names the holder.
* ``clickhouse://user:password@host:9000/database`` -- a server over the native
  protocol (clickhouse-driver), 18.16 or newer; without a password in the URL, it comes from
  ``MSGTRACE_STORE_PASSWORD`` or the file ``MSGTRACE_STORE_PASSWORD_FILE`` (a secret). On a
  cluster the URL names any node; see :mod:`tracer.store.cluster`.

SQL lives in ``queries/*.sql`` and runs unchanged on both. Values are always
bound as ``{name:Type}`` parameters: chDB binds them server side; for old
servers without parameters the driver's own escaping renders them. Identifiers
(the database name) are validated, never taken raw from input.

Longer than the usual ~500 lines on purpose: it is the one place that knows both engines (URL
parsing and secrets, chDB's process lock and sessions, the server's driver and its typed errors,
parameter rendering for old servers, the columnar inserts), so the rest of msgtrace sees one
``Store`` whatever it runs on; the schema (:mod:`tracer.store.schema`), the Native-format insert
(:mod:`tracer.store.native`), clusters and retention have modules of their own.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tracer.errors import ConfigError, QueryError, StoreError, StoreLocked, StoreUnavailable
from tracer.events import STORE_COLUMNS, Event, to_columns

DEFAULT_DATABASE = "msgtrace"
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{0,19}$")
_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):([^{}]+)\}")
_CODE_RE = re.compile(r"Code: (\d+)\.")


def _queries_dir() -> Any:
    """``queries/`` beside the package in a checkout, else the installed copy (a Traversable)."""
    here = Path(__file__).resolve().parents[2] / "queries"
    if here.is_dir():
        return here
    import importlib.resources

    return importlib.resources.files("msgtrace_queries")


QUERIES_DIR = _queries_dir()


def default_store_url() -> str:
    """``MSGTRACE_STORE`` or an embedded chDB dir under the user's data dir."""
    env = os.environ.get("MSGTRACE_STORE")
    if env:
        return env
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return "chdb://" + os.path.join(base, "msgtrace", "store")


@dataclass(frozen=True, slots=True)
class StoreURL:
    engine: str  # "chdb" | "clickhouse"
    database: str
    path: str = ""
    host: str = ""
    port: int = 9000
    user: str = "default"
    password: str = field(default="", repr=False)
    secure: bool = False

    def redacted(self) -> str:
        """The URL as it may appear in logs and errors (never the password)."""
        if self.engine == "chdb":
            return f"chdb://{self.path}?database={self.database}"
        scheme = "clickhouses" if self.secure else "clickhouse"
        auth = f"{self.user}:***@" if self.password else f"{self.user}@"
        return f"{scheme}://{auth}{self.host}:{self.port}/{self.database}"


def check_identifier(name: str, what: str = "database name") -> str:
    if not _IDENT_RE.match(name or ""):
        raise ConfigError(f"invalid {what} {name!r}: use letters, digits and _ (not starting with a digit)")
    return name


def parse_store_url(url: str) -> StoreURL:
    """Parse a store URL; a wrong one raises a one-line ConfigError."""
    if not url:
        raise ConfigError("empty store URL (expected chdb:///path or clickhouse://user:pass@host:9000/db)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # the text may quote part of the password: say what to do instead
        raise ConfigError("invalid store URL: bad host or port (percent-encode '/', '#', '?' and '@' "
                          "in the user name and password)") from None
    scheme = parts.scheme.lower()
    query = parse_qs(parts.query)
    if scheme == "chdb":
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise ConfigError("chdb store URL has no directory (expected chdb:///path/to/dir)")
        db = query.get("database", [DEFAULT_DATABASE])[0]
        return StoreURL("chdb", check_identifier(db), path=os.path.abspath(os.path.expanduser(path)))
    if scheme in ("clickhouse", "clickhouses"):
        if not parts.hostname:
            raise ConfigError("clickhouse store URL has no host (expected clickhouse://user:pass@host:9000/db)")
        db = unquote(parts.path.lstrip("/")) or query.get("database", [DEFAULT_DATABASE])[0]
        password = unquote(parts.password) if parts.password is not None else _env_password()
        return StoreURL("clickhouse", check_identifier(db), host=parts.hostname, port=port or 9000,
                        user=unquote(parts.username or "default"), password=password,
                        secure=scheme == "clickhouses")
    if "://" not in url:
        # never echo it: a bare string is as likely a password pasted into the wrong variable
        raise ConfigError("invalid store URL: it has no scheme (expected chdb:///path or "
                          "clickhouse://user@host:9000/db)")
    shown = url.split("://", 1)[0]
    if not _SCHEME_RE.match(shown):  # not a scheme a person would type: may be part of a secret
        raise ConfigError("invalid store URL: unsupported scheme (expected chdb:// or clickhouse://)")
    raise ConfigError(f"unsupported store URL scheme {shown!r} (expected chdb:// or clickhouse://)")


def lock_timeout_from_env(default: float = 30.0) -> float:
    """``MSGTRACE_STORE_LOCK_TIMEOUT``: seconds to wait for an embedded store another process holds."""
    raw = os.environ.get("MSGTRACE_STORE_LOCK_TIMEOUT")
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value >= 0 and value != float("inf")):
        raise ConfigError("MSGTRACE_STORE_LOCK_TIMEOUT must be a number of seconds >= 0 "
                          f"(got {raw.strip()[:20]!r})")
    return value


def _env_password() -> str:
    """The password of a store URL that has none: ``MSGTRACE_STORE_PASSWORD``, else the first line of
    the file ``MSGTRACE_STORE_PASSWORD_FILE`` names (a Docker or Kubernetes secret), else empty. The
    URL can then live in plain configuration and the password in a secret, never percent-encoded."""
    pw = os.environ.get("MSGTRACE_STORE_PASSWORD")
    if pw:
        return pw
    path = os.environ.get("MSGTRACE_STORE_PASSWORD_FILE")
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except OSError as e:
        raise ConfigError(f"MSGTRACE_STORE_PASSWORD_FILE: cannot read {path}: {e.strerror}") from None


def load_sql(name: str) -> str:
    """Text of ``queries/<name>.sql``."""
    path = QUERIES_DIR / f"{name}.sql"
    try:
        text: str = path.read_text(encoding="utf-8")
        return text
    except FileNotFoundError:
        raise StoreError(f"no query file {name}.sql in {QUERIES_DIR}") from None


def split_statements(sql: str) -> list[str]:
    """Split a .sql file on ``;`` at line ends, dropping comment-only chunks."""
    out = []
    for chunk in re.split(r";\s*(?:\n|$)", sql):
        body = "\n".join(ln for ln in chunk.splitlines() if not ln.strip().startswith("--")).strip()
        if body:
            out.append(body)
    return out


def _first_line(text: str, limit: int = 400) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= limit else line[:limit] + "..."


# --- ClickHouse type -> arrow type, for chDB's columnar insert -----------------

def _arrow_type(ch_type: str) -> Any:  # pa.DataType
    import pyarrow as pa

    t = ch_type.strip()
    if t.startswith("Nullable(") and t.endswith(")"):
        return _arrow_type(t[9:-1])
    if t.startswith("LowCardinality(") and t.endswith(")"):  # modern schema (tracer.store.schema)
        return _arrow_type(t[15:-1])
    if t.startswith("Array(") and t.endswith(")"):
        return pa.list_(_arrow_type(t[6:-1]))
    simple = {"String": pa.string(), "UInt8": pa.uint8(), "UInt16": pa.uint16(), "UInt32": pa.uint32(),
              "UInt64": pa.uint64(), "Int8": pa.int8(), "Int16": pa.int16(), "Int32": pa.int32(),
              "Int64": pa.int64(), "Float32": pa.float32(), "Float64": pa.float64()}
    if t in simple:
        return simple[t]
    raise StoreError(f"no arrow mapping for ClickHouse type {t}")


# --- parameter rendering -------------------------------------------------------

def _tsv_escape(s: str) -> str:
    return (s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r").replace("\0", "\\0"))


_LITERAL_ESCAPES = str.maketrans({"\b": "\\b", "\f": "\\f", "\r": "\\r", "\n": "\\n", "\t": "\\t",
                                  "\0": "\\0", "\a": "\\a", "\v": "\\v", "\\": "\\\\", "'": "\\'"})


def _literal(value: Any) -> str:
    """A ClickHouse literal of a (nested) list/tuple of str/int/float/None; same escaping as the driver's."""
    if isinstance(value, str):
        return "'" + value.translate(_LITERAL_ESCAPES) + "'"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(v) for v in value) + ")"
    from clickhouse_driver.util.escape import escape_param

    return str(escape_param(value, None))


def _chdb_param(value: Any) -> str:
    """chDB binds parameters from text in ClickHouse's escaped format."""
    if isinstance(value, str):
        return _tsv_escape(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    if value is None:
        return "\\N"
    # composite values (arrays, tuples) are read as quoted literals, unescaped; rendered here rather
    # than by clickhouse-driver, whose import costs ~0.25 s (trace-msg start-up)
    return _literal(value)


class Backend:
    """One engine's connection. Not used directly: see :class:`Store`."""

    engine = ""

    def execute(self, sql: str, params: Mapping[str, Any] | None, small: bool = False,
                settings: Mapping[str, Any] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one statement; ``settings``: ClickHouse settings for this query alone."""
        raise NotImplementedError

    def insert(self, table: str, columns: Mapping[str, Sequence[Any]], types: Mapping[str, str]) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        yield

    def close(self) -> None:
        pass


# chDB is one embedded server per process: serialize every use of it.
_CHDB_PROCESS_LOCK = threading.RLock()
_CHDB_BACKENDS: weakref.WeakSet[ChdbBackend] = weakref.WeakSet()
_FORK_LEFTOVERS: list[Any] = []


def _chdb_after_fork() -> None:
    """A forked child must not keep the parent's store lock alive (flock locks live while any
    copy of the descriptor is open) nor use its chDB connection: it forgets both."""
    global _CHDB_PROCESS_LOCK
    _CHDB_PROCESS_LOCK = threading.RLock()
    for b in list(_CHDB_BACKENDS):
        fd, b._lock_fd = b._lock_fd, None
        if b._sess is not None:
            # never closed nor freed here: its destructor waits for chDB threads the child lacks
            _FORK_LEFTOVERS.append(b._sess)
        b._sess, b._depth = None, 0
        if fd is not None:
            try:
                os.close(fd)  # close, never LOCK_UN: that would release the parent's lock
            except OSError:
                pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_chdb_after_fork)


class ChdbBackend(Backend):
    engine = "chdb"

    def __init__(self, url: StoreURL, lock_timeout: float) -> None:
        self.url = url
        self.lock_timeout = lock_timeout
        self._sess: Any = None
        self._depth = 0
        self._lock_fd: int | None = None
        _CHDB_BACKENDS.add(self)

    def _lock_path(self) -> str:
        return os.path.join(self.url.path, ".msgtrace.lock")

    def _holder(self) -> str:
        try:
            with open(self._lock_path(), encoding="utf-8", errors="replace") as f:
                return f.read().strip() or "an unknown process"
        except OSError:
            return "an unknown process"

    def _acquire_file_lock(self) -> None:
        os.makedirs(self.url.path, exist_ok=True)
        fd = os.open(self._lock_path(), os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StoreLocked(f"chDB store {self.url.path} is held by {self._holder()} "
                                      f"(waited {self.lock_timeout:.0f} s)") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        import sys

        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({' '.join(sys.argv)[:200]})".encode(), 0)
        self._lock_fd = fd

    def _release_file_lock(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)  # closing drops the flock

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        with _CHDB_PROCESS_LOCK:
            if self._depth == 0:
                self._open()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._shut()

    def _open(self) -> None:
        self._acquire_file_lock()
        try:
            self._sess = _chdb_connect(self.url.path)
        except Exception as e:  # chDB raises RuntimeError on a foreign lock
            self._release_file_lock()
            raise StoreLocked(f"cannot open chDB store {self.url.path}: {_first_line(str(e))} "
                              "(another process may hold it outside msgtrace)") from None

    def _shut(self) -> None:
        sess, self._sess = self._sess, None
        try:
            if sess is not None:
                sess.close()
        finally:
            self._release_file_lock()

    def execute(self, sql: str, params: Mapping[str, Any] | None, small: bool = False,
                settings: Mapping[str, Any] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        # settings: only cluster settings are passed (tracer.store.cluster), and chDB is never a cluster
        fmt = "JSONCompact" if small else "Arrow"
        with self.session():
            try:
                # "Arrow" (IPC bytes) read with pyarrow: the same table as "ArrowTable" without chDB
                # importing pandas (~0.35 s), which trace-msg's start-up cannot afford. Small results
                # (small=True) come as JSONCompact, read with orjson: no pyarrow import (~0.2 s).
                if params:
                    res = self._sess.query(sql, fmt, params={k: _chdb_param(v) for k, v in params.items()})
                else:
                    res = self._sess.query(sql, fmt)
            except Exception as e:
                raise _query_error(e) from None
        if small:
            return _json_rows(res)
        tbl = _arrow_table(res)
        if tbl is None or not hasattr(tbl, "column_names"):
            return [], []
        names = list(tbl.column_names)
        cols = [c.to_pylist() for c in tbl.columns]
        return names, list(zip(*cols)) if cols else []

    def insert(self, table: str, columns: Mapping[str, Sequence[Any]], types: Mapping[str, str]) -> None:
        import pyarrow as pa

        names = list(columns)
        arrays = [columns[n] if isinstance(columns[n], (pa.Array, pa.ChunkedArray))  # already Arrow: as is
                  else pa.array(columns[n], type=_arrow_type(types[n])) for n in names]
        _msgtrace_rows = pa.Table.from_arrays(arrays, names=names)  # noqa: F841 (read by chDB by name)
        cols = ", ".join(f"`{n}`" for n in names)
        sql = f"INSERT INTO {table} ({cols}) SELECT {cols} FROM Python(_msgtrace_rows)"
        with self.session():
            try:
                self._sess.query(sql)
            except Exception as e:
                raise _query_error(e) from None

    def close(self) -> None:
        with _CHDB_PROCESS_LOCK:
            if self._sess is not None and self._depth == 0:
                self._shut()


def _pylist(values: Any) -> list[Any]:
    """A column as a Python list (Arrow arrays, e.g. from the collector's decoder, included)."""
    to_pylist = getattr(values, "to_pylist", None)
    return to_pylist() if to_pylist is not None else list(values)


def _chdb_connect(path: str) -> Any:
    """A chDB connection to ``path``: what ``chdb.session.Session`` opens, without importing
    ``chdb.session`` (it imports pyarrow and numpy, ~0.2 s of trace-msg's start-up)."""
    try:
        from chdb import _chdb

        connect: Any = _chdb.connect  # type: ignore[attr-defined]
    except (ImportError, AttributeError):  # another chDB layout: the public API
        from chdb import session as chdb_session

        return chdb_session.Session(path)  # type: ignore[no-untyped-call]
    conn = connect(path)
    # JSON results (small=True): NaN and infinities as strings, so they read back as floats
    conn.query("SET output_format_json_quote_denormals = 1, output_format_json_validate_utf8 = 1")
    return conn


def _json_conv(t: str) -> Any:
    """Python value from a JSONCompact value of ClickHouse type ``t`` (as the Arrow path gives it)."""
    if t.startswith("Nullable(") and t.endswith(")"):
        inner = _json_conv(t[9:-1])
        return None if inner is None else (lambda v: None if v is None else inner(v))
    if t.startswith("LowCardinality(") and t.endswith(")"):
        return _json_conv(t[15:-1])
    if t.startswith("Array(") and t.endswith(")"):
        inner = _json_conv(t[6:-1])
        return None if inner is None else (lambda v: [inner(x) for x in v])
    if t.startswith(("UInt", "Int")):
        return int  # 64-bit integers may come quoted
    if t.startswith("Float"):
        return float  # "nan", "inf" quoted (see _chdb_connect)
    return None  # strings, and anything else, as JSON gives it


def _json_rows(res: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    data = res.bytes() if res is not None and hasattr(res, "bytes") else b""
    if not data:
        return [], []
    import orjson

    doc = orjson.loads(data)
    meta = doc.get("meta") or []
    names = [m["name"] for m in meta]
    convs = [(i, c) for i, c in enumerate(_json_conv(m["type"]) for m in meta) if c is not None]
    rows = doc.get("data") or []
    if convs:
        for r in rows:
            for i, c in convs:
                r[i] = c(r[i])
    return names, [tuple(r) for r in rows]


def _arrow_table(res: Any) -> Any:  # pa.Table | None
    data = res.bytes() if res is not None and hasattr(res, "bytes") else b""
    if not data:
        return None
    import pyarrow as pa
    import pyarrow.ipc

    return pa.ipc.open_file(pa.BufferReader(data)).read_all()


def _query_error(e: Exception) -> QueryError:
    text = str(e)
    m = _CODE_RE.search(text)
    return QueryError(f"ClickHouse error: {_first_line(text)}", code=int(m.group(1)) if m else None)


class ClickHouseBackend(Backend):
    engine = "clickhouse"

    def __init__(self, url: StoreURL, connect_timeout: float = 5.0, timeout: float = 300.0) -> None:
        import logging

        from clickhouse_driver import Client

        # The driver logs a traceback per failed connect; our error says it in one line.
        logging.getLogger("clickhouse_driver.connection").setLevel(logging.CRITICAL)
        self.url = url
        self._lock = threading.Lock()
        # No database at connect: ours may not exist before `db init`, and a user restricted to it
        # (deploy/clickhouse, allow_databases) is refused at connect if "default" is named; every
        # statement names its database anyway.
        self._client = Client(host=url.host, port=url.port, user=url.user, password=url.password,
                              database="", secure=url.secure, connect_timeout=connect_timeout,
                              send_receive_timeout=timeout, sync_request_timeout=connect_timeout,
                              # insert_distributed_sync: an insert into a Distributed table (a cluster,
                              # tracer.store.cluster) returns once the shards have the rows, so offsets
                              # are committed after the data is stored; no effect on other tables
                              settings={"use_numpy": False, "insert_distributed_sync": 1})

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from clickhouse_driver import errors as ce

        with self._lock:
            try:
                return fn(*args, **kwargs)
            except ce.ServerException as e:
                raise QueryError(f"ClickHouse error: Code: {e.code}. {_first_line(e.message)}",
                                 code=e.code) from None
            except (ce.NetworkError, ce.SocketTimeoutError, OSError, EOFError) as e:
                self._client.disconnect()
                raise StoreUnavailable(f"cannot reach ClickHouse at {self.url.host}:{self.url.port}: "
                                       f"{_first_line(str(e)) or type(e).__name__}") from None
            except ce.Error as e:
                self._client.disconnect()
                raise StoreError(f"ClickHouse client error: {_first_line(str(e))}") from None

    def execute(self, sql: str, params: Mapping[str, Any] | None, small: bool = False,
                settings: Mapping[str, Any] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        if params:
            sql = self._render(sql, params)
        if settings:
            rows, cols = self._call(self._client.execute, sql, with_column_types=True, settings=dict(settings))
        else:
            rows, cols = self._call(self._client.execute, sql, with_column_types=True)
        return [c[0] for c in cols], rows

    @staticmethod
    def _render(sql: str, params: Mapping[str, Any]) -> str:
        """Old servers have no query parameters: render them with the driver's escaping."""
        from clickhouse_driver.util.escape import escape_param

        def sub(m: re.Match[str]) -> str:
            name, typ = m.group(1), m.group(2)
            if name not in params:
                raise QueryError(f"missing query parameter {name!r}")
            return f"CAST({escape_param(params[name], None)} AS {typ})"

        return _PARAM_RE.sub(sub, sql)

    def insert(self, table: str, columns: Mapping[str, Sequence[Any]], types: Mapping[str, str]) -> None:
        from .native import is_arrow, native_insert  # Arrow columns: sent as Native blocks, no Python lists

        if is_arrow(columns) and self._call(native_insert, self._client, table, columns, types):
            return
        names = list(columns)
        cols = ", ".join(f"`{n}`" for n in names)
        self._call(self._client.execute, f"INSERT INTO {table} ({cols}) VALUES",
                   [_pylist(columns[n]) for n in names], columnar=True, types_check=False)

    def close(self) -> None:
        with self._lock:
            self._client.disconnect()


class Store:
    """The ClickHouse store behind msgtrace: query, insert, schema.

    Use ``with store.session():`` to keep an embedded store open across several
    calls (cheaper, and nobody else gets it in between); each call alone opens
    and closes it.
    """

    def __init__(self, url: str | None = None, *, lock_timeout: float | None = None) -> None:
        # None: the default store; "" (an empty --store or variable) is an error, never the default
        self.url = parse_store_url(default_store_url() if url is None else url)
        self.database = self.url.database
        if lock_timeout is None:
            lock_timeout = lock_timeout_from_env()
        if self.url.engine == "chdb":
            self.backend: Backend = ChdbBackend(self.url, lock_timeout)
        else:
            self.backend = ClickHouseBackend(self.url)
        self._types: dict[str, dict[str, str]] = {}
        self._cluster: Any = _UNKNOWN  # ClusterInfo | None once asked (tracer.store.cluster)
        self._shards: Any = None  # ShardRunner, for shard-local per-shard queries

    @property
    def engine(self) -> str:
        return self.backend.engine

    def __repr__(self) -> str:
        return f"Store({self.url.redacted()})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def session(self) -> contextlib.AbstractContextManager[None]:
        return self.backend.session()

    def close(self) -> None:
        if self._shards is not None:
            self._shards.close()
            self._shards = None
        self.backend.close()

    # --- cluster ---------------------------------------------------------------
    def cluster_info(self) -> Any:
        """The cluster behind this store's Distributed tables (a ``tracer.store.cluster.ClusterInfo``),
        None for one server or chDB. Asked once per Store (one query), again after ``init_schema``."""
        if self._cluster is _UNKNOWN:
            if self.backend.engine != "clickhouse":
                self._cluster = None
            else:
                from tracer.store.cluster import detect

                self._cluster = detect(self.backend.execute, self.database)
        return self._cluster

    def _cluster_rows(self, info: Any, sql: str, params: Mapping[str, Any] | None, small: bool,
                      shard_local: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
        from tracer.store.cluster import ShardLocal, ShardRunner, declared, global_in

        mode = shard_local or declared(sql)
        if mode is ShardLocal.PER_SHARD:
            local_sql = info.to_local(sql)
            if local_sql is not None:
                if self._shards is None:
                    self._shards = ShardRunner(info, self.url, self.backend)
                return self._shards.run(local_sql, params)  # type: ignore[no-any-return]
        settings = {"distributed_group_by_no_merge": 1} if mode is ShardLocal.GROUP_BY else None
        return self.backend.execute(global_in(sql), params, small, settings)

    # --- SQL ----------------------------------------------------------------
    def render_identifiers(self, sql: str) -> str:
        return sql.replace("{db:Identifier}", f"`{self.database}`")

    def rows(self, sql: str, params: Mapping[str, Any] | None = None, *, small: bool = False,
             shard_local: Any = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run a statement; return (column names, row tuples). ``small``: a result of a few rows, read
        without pyarrow on chDB (start-up of short commands). ``shard_local``: a
        ``tracer.store.cluster.ShardLocal`` (or the statement's ``-- msgtrace: shard-local ...`` line):
        how the statement may use the sharding by msg_id on a cluster; ignored elsewhere."""
        sql = self.render_identifiers(sql)
        if self.backend.engine == "clickhouse":
            info = self.cluster_info()
            if info is not None:
                return self._cluster_rows(info, sql, params, small, shard_local)
        return self.backend.execute(sql, params, small)

    def query(self, sql: str, params: Mapping[str, Any] | None = None, *, small: bool = False,
              shard_local: Any = None) -> list[dict[str, Any]]:
        """Run a statement; return rows as dicts."""
        names, rows = self.rows(sql, params, small=small, shard_local=shard_local)
        return [dict(zip(names, r)) for r in rows]

    def query_file(self, name: str, params: Mapping[str, Any] | None = None, *, small: bool = False,
                   shard_local: Any = None) -> list[dict[str, Any]]:
        """Run ``queries/<name>.sql`` (one statement)."""
        try:
            return self.query(load_sql(name), params, small=small, shard_local=shard_local)
        except QueryError as e:
            e.query_name = name
            raise

    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self.rows(sql, params)

    def run_script(self, name: str) -> int:
        """Run every statement of ``queries/<name>.sql``; return how many ran."""
        stmts = split_statements(load_sql(name))
        with self.session():
            for s in stmts:
                self.command(s)
        return len(stmts)

    def init_schema(self, *, cluster: str | None = None, features: Any = "auto",
                    keep_days: int | None = None) -> list[str]:
        """Create the database and tables; safe to run again. Return the statements run: none when
        every table exists already and nothing else is asked (so a collector whose user may not run
        DDL starts on a prepared store). ``cluster``: Replicated local tables and Distributed tables
        on every node of that cluster (``ON CLUSTER``); ``features``: ``tracer.store.schema.Feature``
        or its text form (``auto``, ``baseline``, ``lowcardinality,codecs,ttl``); ``keep_days``: a
        TTL where the server has TTL (see :mod:`tracer.store.schema`)."""
        if cluster is None and keep_days is None and features == "auto" and self.schema_present():
            return []
        stmts = self.schema_statements(cluster=cluster, features=features, keep_days=keep_days)
        with self.session():
            for s in stmts:
                self.backend.execute(s, None)
        self._types.clear()
        self._cluster = _UNKNOWN
        return stmts

    def schema_statements(self, *, cluster: str | None = None, features: Any = "auto",
                          keep_days: int | None = None, version: str | None = None) -> list[str]:
        """The DDL ``init_schema`` runs (``db init --print``); ``version`` instead of asking the server."""
        from tracer.store.schema import Feature, SchemaOptions, parse_features, render_schema

        if not isinstance(features, Feature):
            features = parse_features(str(features), version or self.server_version(),
                                      embedded=self.engine == "chdb")
        return render_schema(self.database, SchemaOptions(features, cluster, keep_days))

    def schema_present(self) -> bool:
        """Whether every table of ``queries/schema.sql`` exists in the database."""
        from tracer.store.schema import schema_tables

        names, rows = self.backend.execute("SELECT name FROM system.tables WHERE database = {db:String}",
                                           {"db": self.database}, True)
        return set(schema_tables()) <= {r[0] for r in rows}

    def server_version(self) -> str:
        return str(self.rows("SELECT version()")[1][0][0])

    # --- inserts ---------------------------------------------------------------
    def column_types(self, table: str) -> dict[str, str]:
        if table not in self._types:
            check_identifier(table, "table name")
            names, rows = self.rows(f"DESCRIBE TABLE {{db:Identifier}}.`{table}`")
            self._types[table] = {r[0]: r[1] for r in rows}
        return self._types[table]

    def insert(self, table: str, columns: Mapping[str, Sequence[Any]]) -> int:
        """Columnar insert of ``columns`` (name -> values) into ``table``."""
        check_identifier(table, "table name")
        types = self.column_types(table)
        unknown = [c for c in columns if c not in types]
        if unknown:
            raise StoreError(f"table {table} has no column {unknown[0]!r}")
        n = len(next(iter(columns.values()))) if columns else 0
        if n:
            self.backend.insert(self.render_identifiers(f"{{db:Identifier}}.`{table}`"), columns,
                                {c: types[c] for c in columns})
        return n

    def insert_events(self, events: Sequence[Event]) -> int:
        """Insert events into ``trace_events`` in one columnar batch."""
        if not events:
            return 0
        return self.insert("trace_events", to_columns(events))

    def select_events(self, msg_id: str) -> list[Event]:
        """Every stored event of one message, de-duplicated, in time order."""
        from tracer.events import from_row

        cols = ", ".join(f"`{c}`" for c in STORE_COLUMNS)
        rows = self.query(
            f"SELECT {cols} FROM {{db:Identifier}}.trace_events WHERE msg_id = {{msg_id:String}} "
            "ORDER BY ts_us, seq, event_id LIMIT 1 BY event_id",
            {"msg_id": msg_id}, small=True)
        return [from_row(r) for r in rows]


_UNKNOWN = object()


def open_store(url: str | None = None, **kwargs: Any) -> Store:
    """Open the store at ``url`` (default: ``MSGTRACE_STORE`` or the embedded chDB dir)."""
    return Store(url, **kwargs)
