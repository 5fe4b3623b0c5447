"""The audit emitter: spool first, ship in the background, never block the business.

``Emitter.emit`` builds the wire line, stamps ``emitter_id`` + a gap-free ``seq``
and appends it to this process's spool with one unbuffered write (so an event
recorded before a SIGKILL is on disk). A daemon thread ships complete lines to
a sink, remembers what it shipped, and adopts the spools of dead processes.
Sinks: :class:`KafkaSink` (the audit topic, acks=all, many events per record)
and :class:`StoreSink` (straight into ``trace_events``, batched generously so
several processes can share one chDB directory).

When the sink is down the spool grows up to ``max_spool_bytes``; beyond it
events are dropped, counted and logged (their seq numbers stay unused, so the
audit sees the gap).
"""
from __future__ import annotations

import logging
import mmap
import os
import threading
import time
import uuid
import weakref
from typing import Any, Protocol, Sequence

import orjson

from tracer.errors import ConfigError, describe
from tracer.events import MAX_MSG_ID_CHARS, cap_msg_id, decode_batch, local_identity, record_headers
from tracer.sdk.spool import Chunk, SpoolReader, SpoolWriter, dead_spools

log = logging.getLogger("msgtrace.emitter")
_EMITTERS: "weakref.WeakSet[Emitter]" = weakref.WeakSet()


def _emitters_after_fork() -> None:
    for e in list(_EMITTERS):
        e._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_emitters_after_fork)

FSYNC_POLICIES = ("never", "batch", "always")
_dumps = orjson.dumps
_time_ns = time.time_ns
_NO_ATTRS: dict[str, str] = {}


def default_spool_dir() -> str:
    """``MSGTRACE_SPOOL_DIR`` or ``<user data dir>/msgtrace/spool``."""
    env = os.environ.get("MSGTRACE_SPOOL_DIR")
    if env:
        return env
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "msgtrace", "spool")


class Sink(Protocol):
    """Where shipped lines go. ``ship`` raises on failure (the lines are shipped again later)."""

    name: str
    #: bytes read from the spool per ship call, and seconds between ship calls when idle
    chunk_bytes: int
    interval: float

    def ship(self, data: bytes, lines: int) -> None: ...

    def close(self) -> None: ...


def _split_records(data: bytes, max_bytes: int) -> list[bytes]:
    """Cut NDJSON ``data`` at line ends into record values of at most ~max_bytes (no trailing newline)."""
    out: list[bytes] = []
    start, n = 0, len(data)
    while start < n:
        end = min(start + max_bytes, n)
        if end < n:
            cut = data.rfind(b"\n", start, end)
            end = cut + 1 if cut >= start else data.find(b"\n", end) + 1 or n
        out.append(data[start:end].rstrip(b"\n"))
        start = end
    return [v for v in out if v]


class KafkaSink:
    """Ships to the audit topic with kafka-python: acks=all, one record = a batch of events.

    Creates the topic if it is missing (a restarted memory broker loses it) and
    rebuilds the producer after a failure, so a broker that comes back is used.
    """

    name = "kafka"
    chunk_bytes = 4 << 20
    interval = 0.25

    def __init__(self, bootstrap: str, topic: str = "msgtrace.audit", partitions: int = 3,
                 record_bytes: int = 512 << 10, timeout: float = 10.0, **producer_config: Any) -> None:
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.record_bytes, self.timeout = record_bytes, timeout
        self.producer_config = producer_config
        self._producer = None
        self._headers = record_headers()

    def _connect(self):
        from kafka import KafkaProducer

        self.ensure_topic()
        cfg: dict[str, Any] = dict(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0,
                                   enable_idempotence=False, retries=2, request_timeout_ms=5000,
                                   delivery_timeout_ms=int(self.timeout * 1000), max_block_ms=5000,
                                   max_request_size=max(1 << 20, 2 * self.record_bytes),
                                   reconnect_backoff_max_ms=1000, client_id="msgtrace-emitter")
        cfg.update(self.producer_config)
        self._producer = KafkaProducer(**cfg)
        return self._producer

    def ensure_topic(self) -> None:
        """Create the audit topic unless it exists (best effort: auto-creation may do it)."""
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000,
                                 client_id="msgtrace-emitter-admin")
        try:
            if self.topic not in set(admin.list_topics()):
                try:
                    admin.create_topics([NewTopic(self.topic, self.partitions, 1)])
                except TopicAlreadyExistsError:
                    pass
        finally:
            admin.close()

    def ship(self, data: bytes, lines: int) -> None:
        producer = self._producer or self._connect()
        t0 = time.monotonic()
        try:
            futures = [producer.send(self.topic, value=v, headers=self._headers)
                       for v in _split_records(data, self.record_bytes)]
            producer.flush(self.timeout)
            for f in futures:
                f.get(0)
            if time.monotonic() - t0 > 0.5:
                self._verify_topic()
        except Exception:
            self._drop_producer()
            raise

    def _verify_topic(self) -> None:
        """After a slow ship (the broker may have restarted meanwhile), make sure the topic still exists.

        A memory broker (Tansu) restarted under a producer with cached metadata acknowledges
        writes to the vanished topic and keeps nothing; shipping again is then the only remedy.
        """
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000,
                                 client_id="msgtrace-emitter-admin")
        try:
            exists = self.topic in set(admin.list_topics())
        finally:
            admin.close()
        if not exists:
            raise RuntimeError(f"audit topic {self.topic} vanished while shipping (broker restarted?); "
                               "shipping again")

    def _drop_producer(self) -> None:
        p, self._producer = self._producer, None
        if p is not None:
            try:
                p.close(timeout=0)
            except Exception:
                pass

    def close(self) -> None:
        self._drop_producer()


class StoreSink:
    """Writes straight into the ClickHouse store (``Store.insert_events``).

    For chDB each insert briefly takes the directory lock, so batches are large
    and spaced out (``interval``) to let several processes share one directory.
    """

    name = "store"
    chunk_bytes = 16 << 20
    interval = 1.0

    def __init__(self, url: str | None = None, interval: float = 1.0) -> None:
        self.url, self.interval = url, interval
        self._store = None
        self.bad_lines = 0

    def ship(self, data: bytes, lines: int) -> None:
        if self._store is None:
            from tracer.store import Store

            store = Store(self.url)
            store.init_schema()
            self._store = store
        batch = decode_batch(data, check_header=False)
        for bad in batch.bad:
            self.bad_lines += 1
            log.error("msgtrace spool line not stored: %s", bad.error)
        self._store.insert_events(batch.events)

    def close(self) -> None:
        s, self._store = self._store, None
        if s is not None:
            s.close()


class NullSink:
    """Keeps everything in the spool (another process or ``msgtrace ship`` drains it)."""

    name = "none"
    chunk_bytes = 1 << 20
    interval = 3600.0

    def ship(self, data: bytes, lines: int) -> None:
        raise RuntimeError("no sink configured")

    def close(self) -> None:
        pass


class _Adopted:
    """A dead process's spool that this shipper now owns (lock held until drained)."""

    __slots__ = ("path", "lock_fd", "reader", "shipped")

    def __init__(self, path: str, lock_fd: int) -> None:
        self.path, self.lock_fd = path, lock_fd
        self.reader = SpoolReader(path)
        self.shipped = 0

    def release(self, remove: bool) -> None:
        self.reader.close()
        if remove:
            import shutil

            shutil.rmtree(self.path, ignore_errors=True)
        os.close(self.lock_fd)


class Emitter:
    """Spool + shipper for one process. ``emit`` is the hot path and never raises."""

    def __init__(self, service: str, sink: Sink | None, spool_dir: str | None = None, *,
                 fsync: str = "never", max_spool_bytes: int = 256 << 20, mq: str = "kafka",
                 adopt: bool = True, adopt_interval: float = 5.0, segment_bytes: int = 8 << 20,
                 start: bool = True) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ConfigError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
        self.service, self.mq = service, mq
        self.sink: Sink = sink or NullSink()
        self.spool_dir = spool_dir or default_spool_dir()
        try:
            os.makedirs(self.spool_dir, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the spool directory {self.spool_dir}: {e.strerror or e}") from None
        self.fsync = fsync
        self.max_spool_bytes = max_spool_bytes
        self._segment_bytes = segment_bytes
        self._open_spool()
        self._recorded = 0
        self.counters = {"shipped": 0, "dropped": 0, "errors": 0, "ship_failures": 0,
                         "adopted_spools": 0, "adopted_events": 0, "invalid": 0}
        self.last_error: str | None = None
        self._last_drop_log = 0.0
        self._adopt = adopt
        self._adopt_interval = adopt_interval
        self._adopted: list[_Adopted] = []
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._stop = False
        self._closed = False
        self._thread: threading.Thread | None = None
        _EMITTERS.add(self)  # weakly: fork handling must not keep an emitter alive
        if start:
            self.start()

    def _open_spool(self) -> None:
        """A new identity and spool directory (at start, and in a forked child)."""
        self.emitter_id = str(uuid.uuid4())
        # event_id = 80 random bits of this emitter + the 48-bit seq: unique, cheap, and the
        # same on every re-ship, so de-duplication by event_id absorbs re-sent batches.
        r = uuid.uuid4().hex
        self._eid_prefix = f"{r[:8]}-{r[8:12]}-4{r[13:16]}-{'89ab'[int(r[16], 16) & 3]}{r[17:20]}-"
        self.host, self.pid = local_identity()
        self._tail = self._make_tail()
        self._heads: dict[tuple, bytes] = {}
        try:
            self._writer = SpoolWriter(self.spool_dir, self.emitter_id, self.service, self.fsync,
                                       self._segment_bytes)
        except OSError as e:
            raise ConfigError(f"cannot create the audit spool in {self.spool_dir}: {e.strerror or e}") from None
        self._reader = SpoolReader(self._writer.path)
        self._lock = threading.Lock()
        self._seq = 0
        self._written = 0        # bytes appended by this emitter
        self._shipped_bytes = 0  # bytes of them shipped

    def _after_fork(self) -> None:
        """A forked child must not write into its parent's mapped segment nor use its Kafka client:
        it becomes an emitter of its own (new emitter_id, spool directory and shipper thread)."""
        if self._closed:
            return
        try:
            for fd in [self._writer._lock_fd] + [a.lock_fd for a in self._adopted]:
                os.close(fd)  # the parent keeps its locks: they live while any copy is open there
            self._adopted = []
            self._recorded = 0
            self.counters = dict.fromkeys(self.counters, 0)
            for attr in ("_producer", "_store"):
                if hasattr(self.sink, attr):
                    setattr(self.sink, attr, None)  # clients are not fork-safe: build new ones
            self._wake = threading.Event()
            self._progress = threading.Condition()
            started = self._thread is not None
            self._thread = None
            self._open_spool()
            if started:
                self.start()
        except Exception as e:
            self._closed = True
            log.error("msgtrace: cannot set up the audit spool after fork(); this child records nothing: %s", e)

    # --- hot path ---------------------------------------------------------------
    def _make_tail(self) -> bytes:
        """The constant fields of every line of this emitter, as a JSON fragment (``,"service":...``)."""
        return orjson.dumps({"service": self.service, "host": self.host, "pid": self.pid,
                             "emitter_id": self.emitter_id}).replace(b"{", b",", 1)[:-1]

    def _head(self, stage: str, topic: str, consumer_group: str | None, mq: str | None) -> bytes:
        """The constant start of a line for (stage, topic, group, mq), up to the event_id's seq digits.

        Lines are ``head + <seq hex>", + {variable fields}``: the keys that repeat for a topic are
        encoded once, not per event (key order is free in the wire format; the key set is fixed).
        """
        key = (stage, topic, consumer_group, mq)
        head = self._heads.get(key)
        if head is None:
            head = (orjson.dumps({"stage": stage, "mq": mq or self.mq, "topic": topic,
                                  "consumer_group": consumer_group})[:-1]
                    + self._tail + b',"event_id":"' + self._eid_prefix.encode())
            if len(self._heads) >= 4096:  # bounded: many ad-hoc topics just rebuild heads
                self._heads.clear()
            self._heads[key] = head
        return head

    def emit(self, stage: str, msg_id: str, topic: str = "", partition: int | None = None,
             offset: int | None = None, consumer_group: str | None = None, key: str | None = None,
             error: str | None = None, trace_id: str | None = None, span_id: str | None = None,
             attrs: dict[str, str] | None = None, mq: str | None = None, ts_us: int = 0) -> None:
        """Spool one event. Never raises, never waits for the network."""
        if type(msg_id) is not str or not msg_id:
            self._invalid(f"msg_id must be a non-empty string, got {msg_id!r}"[:200])
            return
        if len(msg_id) > MAX_MSG_ID_CHARS:
            msg_id = cap_msg_id(msg_id)
        try:
            head = self._heads.get((stage, topic, consumer_group, mq)) or self._head(stage, topic, consumer_group, mq)
            with self._lock:
                seq = self._seq = self._seq + 1
                body = head + b'%012x",' % seq + _dumps({
                    "seq": seq, "ts_us": ts_us or _time_ns() // 1000, "msg_id": msg_id, "partition": partition,
                    "offset": offset, "key": key, "error": error, "trace_id": trace_id, "span_id": span_id,
                    "attrs": attrs or _NO_ATTRS})[1:]
                n = len(body) + 1
                if self._written - self._shipped_bytes + n > self.max_spool_bytes or self._closed:
                    self._dropped()
                    return
                w = self._writer  # the spool append, inlined: this runs twice per message sent
                pos = w.seg_size
                if pos + n > w.seg_cap:
                    w._rotate(n)
                    pos = 0
                end = pos + n - 1
                mm = w._mm
                mm[pos:end] = body
                mm[end] = 10  # the newline last: only now is the line complete
                w.seg_size = end + 1
                if w.fsync_always:
                    start = pos - pos % mmap.ALLOCATIONGRANULARITY
                    mm.flush(start, end + 1 - start)
                self._written += n
                self._recorded += 1
        except Exception as e:  # the audit must never break the business path
            self.counters["errors"] += 1
            self.last_error = f"{describe(e)}"
            self._log_rate_limited("msgtrace: could not spool an event: %s", self.last_error)

    def emit_many(self, events: Sequence[tuple]) -> None:
        """Spool several events under one lock (a poll's worth of ``received``).

        Each tuple is ``(stage, msg_id, topic, partition, offset, consumer_group, key, error,
        trace_id, span_id[, attrs])``. Never raises.
        """
        for ev in events:  # test and tooling helper; the hooks use emit / emit_rows
            self.emit(ev[0], ev[1], topic=ev[2], partition=ev[3], offset=ev[4], consumer_group=ev[5], key=ev[6],
                      error=ev[7], trace_id=ev[8], span_id=ev[9], attrs=ev[10] if len(ev) > 10 else None)

    def emit_rows(self, stage: str, topic: str, consumer_group: str | None, fixed: dict[str, Any],
                  rows: Sequence[dict[str, Any]]) -> None:
        """Spool one event per row for one (stage, topic, group): a poll batch or a commit in one go.

        ``fixed`` holds the wire fields equal for every row (e.g. partition, committed offset),
        each row the rest (msg_id, ...): together with stage/topic/group/ts_us and the emitter's own
        fields they must be exactly the wire keys. The shared part is encoded once per call, not
        per event; all rows get the same timestamp. A row is a dict, or (the hooks' hot path) its
        JSON members already encoded: ``(msg_id, b'"offset":1,"msg_id":"m",...')`` without braces,
        so a fragment encoded at receive time serves the commit's event too. Never raises.
        """
        if not rows:
            return
        try:
            with self._lock:
                const = {"stage": stage, "mq": self.mq, "topic": topic, "consumer_group": consumer_group,
                         "ts_us": _time_ns() // 1000}
                const.update(fixed)
                head = _dumps(const)[:-1] + self._tail + b',"event_id":"' + self._eid_prefix.encode()
                w = self._writer
                limit = self.max_spool_bytes + self._shipped_bytes
                fsync_always = w.fsync_always
                for row in rows:
                    if row.__class__ is tuple:
                        msg_id, members = row
                    else:
                        msg_id, members = row["msg_id"], None
                    if type(msg_id) is not str or not msg_id:
                        self._invalid(f"msg_id must be a non-empty string, got {msg_id!r}"[:200])
                        continue
                    if members is None and len(msg_id) > MAX_MSG_ID_CHARS:
                        row = {**row, "msg_id": cap_msg_id(msg_id)}  # (encoded rows: capped by the hooks)
                    seq = self._seq = self._seq + 1
                    if members is None:
                        body = head + b'%012x","seq":%d,' % (seq, seq) + _dumps(row)[1:]
                    else:
                        body = head + b'%012x","seq":%d,%b}' % (seq, seq, members)
                    n = len(body) + 1
                    if self._written + n > limit or self._closed:
                        self._dropped()
                        continue
                    pos = w.seg_size
                    if pos + n > w.seg_cap:
                        w._rotate(n)
                        pos = 0
                    end = pos + n - 1
                    mm = w._mm
                    mm[pos:end] = body
                    mm[end] = 10  # the newline last: only now is the line complete
                    w.seg_size = end + 1
                    if fsync_always:
                        start = pos - pos % mmap.ALLOCATIONGRANULARITY
                        mm.flush(start, end + 1 - start)
                    self._written += n
                    self._recorded += 1
        except Exception as e:
            self.counters["errors"] += 1
            self.last_error = f"{describe(e)}"
            self._log_rate_limited("msgtrace: could not spool events: %s", self.last_error)

    def emit_deliveries(self, stage: str, topic: str, partition: int | None, consumer_group: str | None,
                        mq: str | None, offset: int | None, entries: Sequence[tuple], offsets: bool = True) -> None:
        """One event per :data:`~tracer.sdk.inflight.Delivery` entry (received, offset_committed)."""
        from tracer.identity import incoming_ids, key_text, position_id

        rows = []
        for pos, key, headers, msg_id, attrs in entries:
            h_id, trace_id, span_id = incoming_ids(headers)
            mid = msg_id or h_id or position_id(topic, partition, pos if offsets else None)
            a = dict(attrs) if attrs else {}
            if stage == "offset_committed":
                k = None
                off = offset
                if offsets and offset is not None and pos is not None:
                    a["record_offset"] = str(pos)
            else:
                k = key_text(key)
                off = pos if offsets else offset
            rows.append({"msg_id": mid, "offset": off, "key": k, "trace_id": trace_id, "span_id": span_id,
                         "attrs": a})
        self.emit_rows(stage, topic, consumer_group, {"partition": partition, "error": None}, rows)

    def _invalid(self, why: str) -> None:
        self.counters["invalid"] += 1
        self.last_error = why
        self._log_rate_limited("msgtrace: event not recorded: %s", why)

    def _dropped(self) -> None:
        self.counters["dropped"] += 1
        self._log_rate_limited("msgtrace: audit spool full (%d bytes unshipped, limit %d): %d events dropped "
                               "so far; sink %s: %s", self._written - self._shipped_bytes,
                               self.max_spool_bytes, self.counters["dropped"], self.sink.name, self.last_error)

    def _log_rate_limited(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:
            self._last_drop_log = now
            log.error(msg, *args)

    # --- shipper ----------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"msgtrace-shipper-{self.emitter_id[:8]}",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        backoff = 0.0
        next_adopt = 0.0
        if isinstance(self.sink, NullSink):
            return  # spool only: another process or `msgtrace ship` drains it
        while not self._stop:
            busy = False
            try:
                if self.fsync == "batch":
                    self._writer.sync()
                if self._adopt and time.monotonic() >= next_adopt:
                    next_adopt = time.monotonic() + self._adopt_interval
                    self._scan_dead()
                # Ship again at once only while a backlog fills whole chunks; once caught up, linger
                # for ``interval`` so steady traffic goes out in few large records (few wakeups, few
                # position saves, little GIL taken from the business threads).
                busy = self._ship_own() >= self.sink.chunk_bytes // 2
                busy = self._ship_adopted() or busy
                backoff = 0.0
            except Exception as e:
                self.counters["ship_failures"] += 1
                self.last_error = f"{describe(e)}"
                log.warning("msgtrace: shipping to %s failed (%s); events stay in the spool", self.sink.name,
                            self.last_error)
                backoff = min(5.0, max(0.2, backoff * 2))
            with self._progress:
                self._progress.notify_all()
            if busy and not backoff:
                continue
            self._wake.wait(backoff or self.sink.interval)
            self._wake.clear()

    def _ship_own(self) -> int:
        """Ship one chunk of our own spool; its size in bytes (0: nothing to ship)."""
        w = self._writer
        with self._lock:
            head = (w.segno, w.seg_size)
        chunk = self._reader.read(self.sink.chunk_bytes, head=head)
        if chunk is None:
            return 0
        self._ship(chunk)
        self._reader.advance(chunk)
        with self._lock:
            self._shipped_bytes += len(chunk.data)
            self.counters["shipped"] += chunk.lines
        return len(chunk.data)

    def _ship(self, chunk: Chunk) -> None:
        self.sink.ship(chunk.data, chunk.lines)

    def _scan_dead(self) -> None:
        skip = {os.path.basename(a.path) for a in self._adopted} | {self.emitter_id}
        for path, fd in dead_spools(self.spool_dir, skip):
            self._adopted.append(_Adopted(path, fd))
            self.counters["adopted_spools"] += 1
            log.info("msgtrace: adopted the spool of a dead process: %s", path)

    def _ship_adopted(self) -> bool:
        busy = False
        for a in list(self._adopted):
            chunk = a.reader.read(self.sink.chunk_bytes, dead=True)
            if chunk is None:
                a.release(remove=True)
                self._adopted.remove(a)
                continue
            self._ship(chunk)
            a.reader.advance(chunk)
            a.shipped += chunk.lines
            self.counters["adopted_events"] += chunk.lines
            busy = True
        return busy

    # --- control ----------------------------------------------------------------
    def pending_bytes(self) -> int:
        return self._written - self._shipped_bytes

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything emitted so far (and adopted) is shipped; False on timeout."""
        target = self._written
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._progress:
            while self._shipped_bytes < target or self._adopted:
                if self._thread is None or not self._thread.is_alive():
                    return False
                self._wake.set()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._progress.wait(0.1 if left is None else min(left, 0.1))
        return True

    def close(self, timeout: float | None = 5.0) -> bool:
        """Ship what we can within ``timeout``, stop, release the spool (removed if fully shipped)."""
        if self._closed:
            return self.pending_bytes() == 0
        done = self.flush(timeout) if self._thread is not None else False
        with self._lock:
            self._closed = True
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(0.1, timeout or 0.1))
        if self._thread is not None and self._thread.is_alive():
            log.warning("msgtrace: shipper still busy at close; the spool stays for adoption")
            return False
        done = done and self.pending_bytes() == 0
        self._reader.close()
        self._writer.close(remove=done)
        for a in self._adopted:
            a.release(remove=False)
        self._adopted.clear()
        try:
            self.sink.close()
        except Exception:
            pass
        return done

    @property
    def stats(self) -> dict[str, Any]:
        s: dict[str, Any] = {"recorded": self._recorded}
        s.update(self.counters)
        s["spooled_bytes"] = self.pending_bytes()
        s["emitter_id"] = self.emitter_id
        s["sink"] = self.sink.name
        s["spool"] = self._writer.path
        s["last_error"] = self.last_error
        return s


def drain_spools(spool_dir: str, sink: Sink, timeout: float | None = None) -> dict[str, int]:
    """Ship every dead spool in ``spool_dir`` to ``sink`` (``msgtrace ship``). Live ones are left alone."""
    stats = {"spools": 0, "events": 0, "torn": 0, "left": 0}
    deadline = None if timeout is None else time.monotonic() + timeout
    for path, fd in dead_spools(spool_dir):
        a = _Adopted(path, fd)
        stats["spools"] += 1
        drained = False
        try:
            while deadline is None or time.monotonic() < deadline:
                chunk = a.reader.read(sink.chunk_bytes, dead=True)
                if chunk is None:
                    drained = True
                    break
                sink.ship(chunk.data, chunk.lines)
                a.reader.advance(chunk)
                stats["events"] += chunk.lines
        finally:
            stats["torn"] += a.reader.torn
            stats["left"] += 0 if drained else 1
            a.release(remove=drained)
    return stats


__all__ = ["Emitter", "KafkaSink", "StoreSink", "NullSink", "Sink", "drain_spools", "default_spool_dir",
           "FSYNC_POLICIES"]
