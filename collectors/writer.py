"""The collector's storage: a batch -> ``trace_events`` and ``quarantine`` (snuba's BatchWriter).

:class:`StoreWriter` is the only code of the collector that talks to the store. The write step
(``collectors.step_write``) sees it as a :class:`~collectors.types.BatchWriter`: ``write`` one
batch, ``release`` what is held between writes.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from tracer.errors import QueryError, StoreError

from .decode import batch_store_columns
from .step_base import log_event
from .types import Batch, QuarantineRow


class StoreWriter:
    """Writes batches to a :class:`tracer.store.Store`, counting events already stored.

    On chDB a store session is held across back-to-back batches for at most ``session_hold``
    seconds (opening one costs ~0.1-0.2 s) and dropped by ``release`` as soon as the source is
    idle, so other processes (``trace-msg``, the reconciler) get the directory in between.
    """

    __slots__ = ("store", "session_hold", "dup_chunk_bytes", "crash", "_session", "_session_opened", "_arrow",
                 "_server", "_native_types")

    def __init__(self, store: Any, *, session_hold: float = 3.0, dup_chunk_bytes: int = 100_000,
                 crash: Callable[[str], None] | None = None) -> None:
        self.store = store
        #: the test-only fault hook (collectors.faults), called with "write" after a batch's rows went in
        self.crash = crash
        self.session_hold = session_hold
        self.dup_chunk_bytes = dup_chunk_bytes
        self._session: Any = None
        self._session_opened = 0.0
        # chDB's insert takes Arrow arrays as they are: attrs go in flattened, not as a list per event
        self._arrow = getattr(store, "engine", None) == "chdb"
        self._server = getattr(store, "engine", None) == "clickhouse"  # Native blocks: tracer.store.native
        # import now (~0.5 s), not on the writer thread with the first batch waiting
        import pyarrow  # noqa: F401
        import pyarrow.compute  # noqa: F401
        #: trace_events' column types as the last write found them (server stores), what ``prepare``
        #: serializes for: set on the writer's thread from the store's cache (no query), read by prepare
        self._native_types: dict[str, str] | None = None

    # --- ahead of the write (the thread that builds batches) --------------------------------
    def prepare(self, batch: Batch) -> None:
        """Make the batch's insert columns now (the decode thread, while the writer's thread is
        busy with the previous batch): joined into one table, distinct ids counted and, for a
        server, serialized as Native columns. Never raises: what fails here the write makes."""
        if not batch.n_events or batch.prepared is not None or batch.events_written or not batch.arrow:
            return
        try:
            columns: Mapping[str, Any]
            columns, distinct = batch_store_columns(batch.columns, batch.arrow, arrow=self._arrow)
        except Exception as e:  # the write makes them (and reports what fails)
            log_event(logging.DEBUG, "batch not prepared ahead", error=str(e))
            return
        types = self._native_types
        if self._server and types is not None:
            from tracer.store.native import NativeBlock

            try:
                columns = NativeBlock(columns, types)
            except Exception as e:  # e.g. a type the native path does not write: the insert decides
                log_event(logging.DEBUG, "batch not serialized ahead", error=str(e))
        batch.prepared = (columns, distinct)
        batch.arrow = []  # joined into the prepared columns: the decoder's buffers can go

    # --- the embedded store's session lease -------------------------------------------
    def _open_session(self) -> None:
        if self._session is None:
            cm = self.store.session()
            cm.__enter__()
            self._session, self._session_opened = cm, time.monotonic()

    def release(self) -> None:
        """Drop the store session (lets other processes open an embedded store)."""
        cm, self._session = self._session, None
        if cm is not None:
            try:
                cm.__exit__(None, None, None)
            except Exception as e:  # closing must not lose the batch state
                log_event(logging.WARNING, "store session close failed", error=str(e))

    # --- the write ------------------------------------------------------------------------
    def count_redelivered(self, batch: Batch) -> int:
        """Events of the redelivery window that an earlier (killed) collector already stored."""
        pairs = sorted(set(zip(batch.window_ids, batch.window_msg_ids)))
        found = 0
        i = 0
        while i < len(pairs):
            # chunks of ~100 KB of literals: 18.16 renders parameters into the query text,
            # whose size is limited (max_query_size, 256 KiB by default)
            size, j = 0, i
            while j < len(pairs) and size < self.dup_chunk_bytes:
                size += len(pairs[j][0]) + len(pairs[j][1]) + 8
                j += 1
            chunk = pairs[i:j]
            i = j
            # IN (SELECT arrayJoin(...)): 18.16 has no IN over an array literal; this form
            # builds a set and still uses the (msg_id, event_id) key on both engines.
            rows = self.store.query(
                "SELECT uniqExact(event_id) AS n FROM {db:Identifier}.trace_events "
                "WHERE msg_id IN (SELECT arrayJoin({mids:Array(String)})) "
                "AND event_id IN (SELECT arrayJoin({ids:Array(String)}))",
                {"mids": sorted({m for _, m in chunk}), "ids": [e for e, _ in chunk]})
            found += int(rows[0]["n"]) if rows else 0
        return found

    def write(self, batch: Batch) -> None:
        """Store the batch; idempotent per part (a retry skips what went in). Raises StoreError."""
        try:
            self._open_session()
            if batch.n_events and not batch.events_written:
                dups = 0
                if batch.window_ids:
                    try:
                        dups = self.count_redelivered(batch)
                    except QueryError as e:  # only the count suffers; never block the write on it
                        log_event(logging.WARNING, "duplicate lookup failed", error=str(e))
                if batch.prepared is not None:
                    columns, distinct = batch.prepared
                else:
                    columns, distinct = batch_store_columns(batch.columns, batch.arrow, arrow=self._arrow)
                dups += batch.n_events - distinct
                self.store.insert("trace_events", columns)
                batch.events_written = True
                batch.prepared = None  # its memory is not needed any more
                if self._server and self._native_types is None:
                    try:  # (cached by the insert: no query)
                        self._native_types = dict(self.store.column_types("trace_events"))
                    except StoreError:
                        pass  # the next write tries again
                batch.duplicates = dups
                if self.crash is not None:
                    self.crash("write")
            if batch.quarantine and not batch.quarantine_written:
                q = batch.quarantine
                self.store.insert("quarantine", {f: [getattr(r, f) for r in q] for f in QuarantineRow.__slots__})
                batch.quarantine_written = True
            if time.monotonic() - self._session_opened >= self.session_hold:
                self.release()
        except StoreError:
            self.release()
            raise
