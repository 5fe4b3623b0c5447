"""The collector's storage: a batch -> ``trace_events`` and ``quarantine`` (snuba's BatchWriter).

:class:`StoreWriter` is the only code of the collector that talks to the store. The write step
(``collectors.step_write``) sees it as a :class:`~collectors.types.BatchWriter`: ``write`` one
batch, ``release`` what is held between writes.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
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

    __slots__ = ("store", "session_hold", "dup_chunk_bytes", "crash", "_session", "_session_opened", "_arrow")

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
        # import now (~0.5 s), not on the writer thread with the first batch waiting (the C decoder's
        # batches are joined and counted with pyarrow.compute on both engines)
        import pyarrow  # noqa: F401
        import pyarrow.compute  # noqa: F401

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
                columns, distinct = batch_store_columns(batch.columns, batch.arrow, arrow=self._arrow)
                dups += batch.n_events - distinct
                self.store.insert("trace_events", columns)
                batch.events_written = True
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
