"""The audit emitter: spool first, ship in the background, never block the business.

``emit`` / ``emit_deliveries`` are the hot path: they stamp a gap-free ``seq`` (per emitter) and
append one compact frame (:mod:`tracer.sdk.frames`) to this process's memory-mapped spool, so an
event recorded before a SIGKILL is on disk, with no system call and no JSON work on the business
thread. Turning frames into wire lines and shipping them happens elsewhere (:mod:`tracer.sdk.shipper`):

- ``ship_process=True`` (the default for the audit topic): a shipper process reads the spool, so
  JSON encoding and kafka-python's producer never compete with the business threads for the GIL;
- ``ship_process=False`` (the default for the store sink and custom sinks): a daemon thread.

When the sink is down the spool grows up to ``max_spool_bytes``; beyond it events are dropped,
counted and logged (their seq numbers stay unused, so the audit sees the gap). A full disk (ENOSPC
when a new segment is allocated) drops the same way, counted per event, and the allocation is not
tried again for every event while the disk stays full.

Shipped segments are retained for ``retention`` seconds (default 24 h, ``MSGTRACE_SPOOL_RETENTION``;
0 = delete at once, and no recovery): the shipper ships again what the audit topic loses after
acknowledging it (:mod:`tracer.sdk.recovery`), and ``msgtrace ship --repair`` re-sends the seq
ranges the store misses. The cap counts retained segments too: when room is needed the oldest
shipped segment is evicted first (counted: ``evicted_segments`` / ``evicted_events``), and only when
nothing shipped is left to evict is an event dropped.

A little over ~500 lines: the hot path, the two shipping modes the owner controls (start, wake, flush,
close, the supervisor and its fall-back) and fork handling share the spool's state and its lock, and
are read together when one of them changes.
"""
from __future__ import annotations

import collections
import logging
import marshal
import os
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

from tracer.errors import ConfigError, describe
from tracer.events import local_identity
from tracer.sdk.frames import ACKS, BATCH, EVENT, HEADER, HEADER_SIZE, ROWS, Expander, SpoolMeta, sanitize_entries
from tracer.sdk.shipper import Adopted, FileCounters, ShipLoop
from tracer.sdk.shipper import drain_spools as drain_spools
from tracer.sdk.sinks import KafkaSink as KafkaSink
from tracer.sdk.sinks import NullSink as NullSink
from tracer.sdk.sinks import Sink as Sink
from tracer.sdk.sinks import StoreSink as StoreSink
from tracer.sdk.sinks import sink_spec
from tracer.sdk.spool import DISK_FULL, SpoolWriter, seg_name
from tracer.sdk.spool import default_retention as default_retention

log = logging.getLogger("msgtrace.emitter")
_EMITTERS: weakref.WeakSet[Emitter] = weakref.WeakSet()
_Adopted = Adopted  # the name before tracer.sdk.shipper


def _emitters_after_fork() -> None:
    for e in list(_EMITTERS):
        e._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_emitters_after_fork)

FSYNC_POLICIES = ("never", "batch", "always")
_time_ns = time.time_ns
_pack_header = HEADER.pack_into
_encode: Any = marshal.dumps  # the version passed at each call:
#: one event: marshal version 2 (no reference table to set up: ~30 % faster for a small tuple, ~20 % more
#: bytes); batches: version 4 (frames.MARSHAL_VERSION: repeated strings written once, faster for them)
_V_SMALL = 2


def default_spool_dir() -> str:
    """``MSGTRACE_SPOOL_DIR`` or ``<user data dir>/msgtrace/spool``."""
    env = os.environ.get("MSGTRACE_SPOOL_DIR")
    if env:
        return env
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "msgtrace", "spool")


class Emitter:
    """Spool + shipper for one process. ``emit`` is the hot path and never raises."""

    def __init__(self, service: str, sink: Sink | None, spool_dir: str | None = None, *,
                 fsync: str = "never", max_spool_bytes: int = 256 << 20, mq: str = "kafka",
                 adopt: bool = True, adopt_interval: float = 5.0, segment_bytes: int = 8 << 20,
                 start: bool = True, ship_process: bool | None = None, retention: float | None = None,
                 verify_interval: float = 5.0, recover: bool = True) -> None:
        """``ship_process``: ship from a separate process (None: yes when the sink can be rebuilt
        there, i.e. the audit topic with JSON-able settings). ``retention``: seconds shipped segments
        are kept (None: ``MSGTRACE_SPOOL_RETENTION`` or 24 h; 0: none, and no recovery).
        ``verify_interval``: how often the shipper compares the audit topic with what it acknowledged
        (seconds; 0: only at each ship). ``recover=False``: never ship again what the audit topic lost
        on its own (the retained segments then serve ``msgtrace ship --repair`` only)."""
        if fsync not in FSYNC_POLICIES:
            raise ConfigError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
        self.retention_s = float(default_retention() if retention is None else retention)
        if self.retention_s < 0:
            raise ConfigError(f"retention must be >= 0 seconds, got {retention!r}")
        self.verify_interval = float(verify_interval)
        self.recover = bool(recover)
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
        spec = sink_spec(self.sink)
        if ship_process and spec is None:
            raise ConfigError(f"the {self.sink.name} sink cannot ship from a separate process "
                              "(only the audit topic with JSON-able settings can)")
        self._spec = spec if (ship_process is None or ship_process) else None
        self._adopt = adopt
        self._adopt_interval_s = adopt_interval
        self.counters = {"dropped": 0, "errors": 0, "invalid": 0, "evicted_segments": 0, "evicted_events": 0}
        self.last_error: str | None = None
        self._last_drop_log = 0.0
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._stop = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._supervisor: threading.Thread | None = None
        self._open_spool()
        _EMITTERS.add(self)  # weakly: fork handling must not keep an emitter alive
        if start:
            self.start()

    def _open_spool(self) -> None:
        """A new identity and spool directory (at start, and in a forked child)."""
        self.emitter_id = str(uuid.uuid4())
        # event_id = 80 random bits of this emitter + the 48-bit seq: unique, cheap, and the
        # same on every re-ship, so de-duplication by event_id absorbs re-sent batches.
        r = uuid.uuid4().hex
        eid_prefix = f"{r[:8]}-{r[8:12]}-4{r[13:16]}-{'89ab'[int(r[16], 16) & 3]}{r[17:20]}-"
        self.host, self.pid = local_identity()
        self.meta = SpoolMeta(self.emitter_id, eid_prefix, self.service, self.host, self.pid, self.mq)
        try:
            self._writer = SpoolWriter(self.spool_dir, self.meta, self.fsync, self._segment_bytes)
        except OSError as e:
            raise ConfigError(f"cannot create the audit spool in {self.spool_dir}: {e.strerror or e}") from None
        self._lock = threading.Lock()
        self._seq = 0
        self._recorded = 0
        self._written = 0   # spool bytes appended by this emitter
        self._shipped = 0   # spool bytes known shipped (refreshed from the shipper's counters)
        #: the hot path's one comparison: ``_written + n > _limit`` means the cap may be reached
        #: (_limit = cap + shipped - retained shipped segments; recomputed in :meth:`_make_room`)
        self._limit = self.max_spool_bytes
        #: finished segments still on disk: [segno, bytes, first seq, last seq, _written at their end]
        self._segs: collections.deque[list[int]] = collections.deque()
        self._seg_first_seq = 1
        self._next_disk_check = 0.0
        self._full_until = 0.0  # a full disk: no new segment is tried before this (or before shipping moves)
        self._full_mark = -1
        self._process_mode = self._spec is not None and not isinstance(self.sink, NullSink)
        # the counters live in the spool (progress): the shipper's, and the owner's drops, for audit-health
        self._ship_counters: Any = FileCounters(self._writer.path)
        self._loop: ShipLoop | None = None
        if not self._process_mode:
            self._loop = self._new_loop(self._ship_counters)

    def _new_loop(self, counters: Any) -> ShipLoop:
        return ShipLoop(self.spool_dir, self.sink, counters, own_path=self._writer.path,
                        own_expander=Expander(self.meta), adopt=self._adopt, adopt_interval=self._adopt_interval_s,
                        retention_s=self.retention_s, verify_interval=self.verify_interval, recover=self.recover)

    @property
    def _adopt_interval(self) -> float:
        return self._loop.adopt_interval if self._loop is not None else self._adopt_interval_s

    @_adopt_interval.setter
    def _adopt_interval(self, seconds: float) -> None:
        self._adopt_interval_s = seconds
        if self._loop is not None:
            self._loop.adopt_interval = seconds
            self._loop._next_adopt = 0.0

    def _after_fork(self) -> None:
        """A forked child must not write into its parent's mapped segment nor use its shipper or Kafka
        client: it becomes an emitter of its own (new emitter_id, spool directory and shipper)."""
        if self._closed:
            return
        try:
            fds = [self._writer._lock_fd]
            if self._loop is not None:
                fds += [a.lock_fd for a in self._loop.adopted]
                self._loop.adopted = []
            if self._proc is not None and self._proc.stdin is not None:
                fds.append(self._proc.stdin.fileno())  # the parent's shipper must still see the parent go
            for fd in fds:
                try:
                    os.close(fd)  # the parent keeps its own copies (locks live while any copy is open there)
                except OSError:
                    pass
            self._proc = None
            self.counters = dict.fromkeys(self.counters, 0)
            for attr in ("_producer", "_store"):
                if hasattr(self.sink, attr):
                    setattr(self.sink, attr, None)  # clients are not fork-safe: build new ones
            self._wake = threading.Event()
            self._progress = threading.Condition()
            started = self._thread is not None or self._supervisor is not None
            self._thread = self._supervisor = None
            self._open_spool()
            if started:
                self.start()
        except Exception as e:
            self._closed = True
            log.error("msgtrace: cannot set up the audit spool after fork(); this child records nothing: %s", e)

    # --- hot path ---------------------------------------------------------------------------------
    def emit(self, stage: str, msg_id: str, topic: str = "", partition: int | None = None,
             offset: int | None = None, consumer_group: str | None = None, key: Any = None,
             error: str | None = None, trace_id: str | None = None, span_id: str | None = None,
             attrs: dict[str, str] | None = None, mq: str | None = None, ts_us: int = 0) -> None:
        """Spool one event. Never raises, never waits for the network. ``key``: text or bytes."""
        if msg_id.__class__ is not str or not msg_id:
            self._invalid(f"msg_id must be a non-empty string, got {msg_id!r}"[:200])
            return
        try:
            try:
                payload = _encode((EVENT, ts_us or _time_ns() // 1000, stage, msg_id, topic, partition, offset,
                                   consumer_group, key, error, trace_id, span_id, attrs, mq), _V_SMALL)
            except ValueError:  # an object marshal cannot carry (a key of an exotic type): as text
                payload = _encode((EVENT, ts_us or _time_ns() // 1000, stage, msg_id, str(topic), partition,
                                   offset, consumer_group, None if key is None else str(key), error, trace_id,
                                   span_id, {str(k): str(v) for k, v in (attrs or {}).items()}, mq), _V_SMALL)
        except Exception as e:
            self._error(e)
            return
        self._append(payload, 1)

    def emit_sent(self, msg_id: str, topic: str, partition: int | None, key: Any, trace_id: str | None,
                  span_id: str | None, mq: str | None) -> None:
        """``emit("sent", ...)`` for a producer's send (the hottest call there is, so its own copy of
        the spool append: one Python frame per send). Never raises."""
        try:
            try:
                payload = _encode((EVENT, _time_ns() // 1000, "sent", msg_id, topic, partition, None, None, key, None,
                                   trace_id, span_id, None, mq), _V_SMALL)
            except ValueError:
                payload = _encode((EVENT, _time_ns() // 1000, "sent", str(msg_id), str(topic), partition, None, None,
                                   None if key is None else str(key), None, trace_id, span_id, None, mq), _V_SMALL)
            n = HEADER_SIZE + len(payload)
            with self._lock:  # the spool append, inlined (as in _append)
                seq = self._seq = self._seq + 1
                if self._written + n > self._limit or self._closed:
                    if not self._make_room(n):
                        self._dropped(1)
                        return
                w = self._writer
                pos = w.seg_size
                if pos + n + HEADER_SIZE > w.seg_cap:
                    if not self._next_segment(n, seq):
                        self._dropped(1)
                        return
                    pos = 0
                mm: Any = w._mm
                mm[pos + HEADER_SIZE:pos + n] = payload
                _pack_header(mm, pos, n - HEADER_SIZE, seq)  # the length last: now the frame is complete
                w.seg_size = pos + n
                if w.fsync_always:
                    start = pos - pos % 4096
                    mm.flush(start, pos + n - start)
                self._written += n
                self._recorded += 1
        except Exception as e:  # the audit must never break the business path
            self._error(e)

    def emit_deliveries(self, stage: str, topic: str, partition: int | None, consumer_group: str | None,
                        mq: str | None, offset: int | None, entries: Sequence[tuple[Any, ...]],
                        offsets: bool = True) -> None:
        """One event per :data:`~tracer.sdk.inflight.Delivery` in one frame (a poll's ``received``,
        a commit's ``offset_committed``); the ids are read from the entries' headers when shipped."""
        if not entries:
            return
        ts = _time_ns() // 1000
        try:
            payload = _encode((BATCH, ts, stage, topic, partition, consumer_group, mq, offset, offsets, entries), 4)
        except ValueError:
            payload = _encode((BATCH, ts, stage, topic, partition, consumer_group, mq, offset, offsets,
                               sanitize_entries(entries)), 4)
        self._append(payload, len(entries))

    def emit_rows(self, stage: str, topic: str, partition: int | None, consumer_group: str | None, mq: str | None,
                  rows: Sequence[tuple[Any, ...]]) -> None:
        """One event per row ``(msg_id, offset, key, error, trace_id, span_id, attrs)`` of one (stage,
        topic, partition), in one frame: a produce batch's ``broker_acked``. Never raises."""
        if not rows:
            return
        ts = _time_ns() // 1000
        try:
            payload = _encode((ROWS, ts, stage, topic, partition, consumer_group, mq, rows), 4)
        except ValueError:
            payload = _encode((ROWS, ts, stage, topic, partition, consumer_group, mq,
                               [(str(m), o, None if k is None else str(k), e, t, sp,
                                 None if not a else {str(x): str(y) for x, y in a.items()})
                                for m, o, k, e, t, sp, a in rows]), 4)
        self._append(payload, len(rows))

    def emit_acks(self, stage: str, mq: str | None, rows: Sequence[tuple[Any, ...]]) -> None:
        """One event per row ``(msg_id, topic, partition, offset, key, trace_id, span_id, time_ns)``, each
        with its own time, in one frame (delivery reports gathered during one client call,
        :meth:`tracer.sdk.core.Recorder.flush_acks`). Never raises."""
        if not rows:
            return
        try:
            payload = _encode((ACKS, stage, mq, rows), 4)
        except ValueError:
            payload = _encode((ACKS, stage, mq, [(str(m), str(t), p, o, None if k is None else str(k), tr, sp, ts)
                                                 for m, t, p, o, k, tr, sp, ts in rows]), 4)
        except Exception as e:
            self._error(e)
            return
        self._append(payload, len(rows))

    def _error(self, e: BaseException) -> None:
        self.counters["errors"] += 1
        self.last_error = f"{describe(e)}"
        self._log_rate_limited("msgtrace: could not spool an event: %s", self.last_error)

    def _append(self, payload: bytes, events: int) -> None:
        try:
            n = HEADER_SIZE + len(payload)
            with self._lock:
                seq = self._seq + 1
                self._seq += events
                if self._written + n > self._limit or self._closed:
                    if not self._make_room(n):
                        self._dropped(events)
                        return
                w = self._writer  # the spool append, inlined (SpoolWriter.append): this runs per message
                pos = w.seg_size
                if pos + n + HEADER_SIZE > w.seg_cap:
                    if not self._next_segment(n, seq):
                        self._dropped(events)
                        return
                    pos = 0
                mm: Any = w._mm
                mm[pos + HEADER_SIZE:pos + n] = payload
                _pack_header(mm, pos, n - HEADER_SIZE, seq)  # the length last: now the frame is complete
                w.seg_size = pos + n
                if w.fsync_always:
                    start = pos - pos % 4096
                    mm.flush(start, pos + n - start)
                self._written += n
                self._recorded += events
        except Exception as e:  # the audit must never break the business path
            self._error(e)

    def emit_many(self, events: Sequence[tuple[Any, ...]]) -> None:
        """Spool several events; each tuple is ``(stage, msg_id, topic, partition, offset,
        consumer_group, key, error, trace_id, span_id[, attrs])``. Never raises (tests and tools)."""
        for ev in events:
            self.emit(ev[0], ev[1], topic=ev[2], partition=ev[3], offset=ev[4], consumer_group=ev[5], key=ev[6],
                      error=ev[7], trace_id=ev[8], span_id=ev[9], attrs=ev[10] if len(ev) > 10 else None)

    # --- room in the spool (slow paths, under the lock) ---------------------------------------------
    def _make_room(self, n: int) -> bool:
        """The cap is (nearly) reached: refresh what was shipped, evict retained segments (oldest
        first) if that makes room; False when ``n`` more bytes do not fit (the event is dropped)."""
        if self._closed:
            return False
        shipped = self._shipped = self._ship_counters.get("shipped_bytes")
        retained = self._retained(shipped)
        over = self._written - shipped + retained + n - self.max_spool_bytes
        while over > 0:
            freed = self._evict_one(shipped)
            if not freed:
                break
            retained -= freed
            over -= freed
        self._limit = self.max_spool_bytes + shipped - retained
        return self._written + n <= self._limit

    def _retained(self, shipped: int) -> int:
        """Bytes of finished segments shipped to their end and still on disk (the shipper deletes
        expired ones, oldest first: a few existence checks at most every half second)."""
        segs = self._segs
        now = time.monotonic()
        if now >= self._next_disk_check:
            self._next_disk_check = now + 0.5
            path = self._writer.path
            while segs and not os.path.exists(os.path.join(path, seg_name(segs[0][0]))):
                segs.popleft()
        return sum(e[1] for e in segs if e[4] <= shipped)

    def _evict_one(self, shipped: int) -> int:
        """Delete the oldest finished segment if it is shipped to its end; the bytes freed (0: none)."""
        segs = self._segs
        if not segs or segs[0][4] > shipped:
            return 0
        segno, size, first, last, _ = segs.popleft()
        try:
            os.unlink(os.path.join(self._writer.path, seg_name(segno)))
        except FileNotFoundError:
            return size  # the shipper's retention got there first: nothing evicted, but free
        except OSError:
            return 0
        self.counters["evicted_segments"] += 1
        self.counters["evicted_events"] += max(0, last - first + 1)
        self._ship_counters.add("evicted_segments")
        self._ship_counters.add("evicted_events", max(0, last - first + 1))
        return size

    def _next_segment(self, n: int, seq: int) -> bool:
        """The segment is full: start the next one. On a full disk, evict shipped segments and try
        again; if nothing can be evicted, False (the event is dropped), and no new segment is tried
        for a second or until shipping moves on (not once per event)."""
        w = self._writer
        if self._full_until:
            if time.monotonic() < self._full_until and self._ship_counters.get("shipped_bytes") == self._full_mark:
                return False
            self._full_until = 0.0
        shipped = self._ship_counters.get("shipped_bytes")
        while True:
            try:
                segno, size = w._rotate(n)
                break
            except OSError as e:
                if e.errno not in DISK_FULL:
                    raise
                if self._evict_one(shipped):
                    continue
                self._full_until = time.monotonic() + 1.0
                self._full_mark = shipped
                self.last_error = f"the spool's disk is full ({self.spool_dir}): {e.strerror or e}"
                return False
        self._segs.append([segno, size, self._seg_first_seq, seq - 1, self._written])
        self._seg_first_seq = seq
        if self._full_mark >= 0:  # the disk had been full: it is not any more
            self._full_mark = -1
            self.last_error = None
        return True

    def _invalid(self, why: str) -> None:
        self.counters["invalid"] += 1
        self.last_error = why
        self._log_rate_limited("msgtrace: event not recorded: %s", why)

    def _dropped(self, events: int = 1) -> None:
        self.counters["dropped"] += events
        try:
            self._ship_counters.add("dropped", events)
            self._ship_counters.set("seq_high", self._seq)  # what was handed out, dropped ones included
        except (ValueError, OSError):  # closed meanwhile
            pass
        self._log_rate_limited("msgtrace: audit spool full (%d bytes unshipped, limit %d): %d events dropped "
                               "so far; sink %s: %s", self._written - self._shipped,
                               self.max_spool_bytes, self.counters["dropped"], self.sink.name,
                               self._ship_counters.last_error or self.last_error)

    def _log_rate_limited(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:
            self._last_drop_log = now
            log.error(msg, *args)

    # --- shipping ---------------------------------------------------------------------------------
    @property
    def shipper(self) -> str:
        """Where shipping runs: ``process``, ``thread`` or ``none`` (NullSink: the spool keeps everything)."""
        if isinstance(self.sink, NullSink):
            return "none"
        return "process" if self._process_mode else "thread"

    def start(self) -> None:
        if isinstance(self.sink, NullSink) or self._closed:
            return  # spool only: another process or `msgtrace ship` drains it
        if self._process_mode:
            if self._supervisor is None:
                try:
                    self._spawn()
                except Exception as e:  # no usable interpreter to run it (an embedded Python, say)
                    log.warning("msgtrace: cannot start the shipper process (%s); shipping from a thread",
                                describe(e))
                    self._fall_back_to_thread()
                    return
                self._supervisor = threading.Thread(target=self._supervise, daemon=True,
                                                    name=f"msgtrace-shipper-watch-{self.emitter_id[:8]}")
                self._supervisor.start()
        elif self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"msgtrace-shipper-{self.emitter_id[:8]}",
                                            daemon=True)
            self._thread.start()

    def _spawn(self) -> None:
        """Start the shipper process for this spool (``python -m tracer.sdk.shipper``)."""
        import json

        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cfg = {"spool_dir": self.spool_dir, "own": self._writer.path, "sink": self._spec, "adopt": self._adopt,
               "adopt_interval": self._adopt_interval_s, "fsync": self.fsync, "retention_s": self.retention_s,
               "verify_interval": self.verify_interval, "recover": self.recover,
               "log_level": logging.getLogger("msgtrace").getEffectiveLevel()}
        proc = subprocess.Popen([sys.executable, "-m", "tracer.sdk.shipper"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, close_fds=True, start_new_session=True, env=env)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(cfg).encode() + b"\n")
        proc.stdin.flush()
        self._proc = proc
        self._spawned_at = time.monotonic()

    def _supervise(self) -> None:
        """Watch the shipper process: one that died is started again; one that cannot live (it dies
        twice within seconds of its start) is replaced by a shipper thread, so the spool still drains."""
        quick_deaths = 0
        while not self._stop:
            time.sleep(0.5)
            proc = self._proc
            if self._stop or proc is None or proc.poll() is None:
                continue
            self.last_error = f"shipper process exited with status {proc.returncode}"
            log.error("msgtrace: the shipper process exited (status %s); starting it again", proc.returncode)
            quick_deaths = quick_deaths + 1 if time.monotonic() - self._spawned_at < 5.0 else 0
            try:
                if quick_deaths >= 2:
                    self._fall_back_to_thread()
                    return
                self._spawn()
            except Exception as e:
                log.error("msgtrace: cannot start the shipper process (%s); shipping from a thread", describe(e))
                self._fall_back_to_thread()
                return

    def _fall_back_to_thread(self) -> None:
        # the shipper process is gone: its counters file goes on, written by a thread from now on
        counters = self._ship_counters
        self._loop = self._new_loop(counters)
        # the thread first: a flush() that sees the thread mode must find its thread alive
        self._thread = threading.Thread(target=self._run, name=f"msgtrace-shipper-{self.emitter_id[:8]}",
                                        daemon=True)
        self._thread.start()
        with self._lock:
            self._shipped = counters.get("shipped_bytes")
            self._process_mode = False
        self._proc = None

    def _run(self) -> None:
        backoff = 0.0
        loop = self._loop
        assert loop is not None
        while not self._stop:
            busy = False
            try:
                if self.fsync == "batch":
                    self._writer.sync()
                w = self._writer
                with self._lock:
                    head = (w.segno, w.seg_size)
                # Ship again at once only while a backlog fills whole chunks; once caught up, linger
                # for ``interval`` so steady traffic goes out in few large records (few wakeups, few
                # position saves, little GIL taken from the business threads).
                busy = loop.round(head)
                backoff = 0.0
            except Exception as e:
                self._ship_counters.add("ship_failures")
                self._ship_counters.error(describe(e))
                log.warning("msgtrace: shipping to %s failed (%s); events stay in the spool", self.sink.name,
                            describe(e))
                backoff = min(5.0, max(0.2, backoff * 2))
            with self._progress:
                self._progress.notify_all()
            if busy and not backoff:
                continue
            self._wake.wait(backoff or self.sink.interval)
            self._wake.clear()

    def _wake_process(self, message: bytes = b"w") -> bool:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return False
        try:
            proc.stdin.write(message)
            proc.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    # --- control ----------------------------------------------------------------------------------
    def pending_bytes(self) -> int:
        """Spool bytes recorded and not yet shipped."""
        return int(self._written - self._ship_counters.get("shipped_bytes"))

    def _adopted_pending(self) -> bool:
        return self._loop.adopted_pending if (self._loop is not None and not self._process_mode) else False

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything emitted so far (and adopted, for a shipper thread) is shipped;
        False on timeout, or when nothing ships (NullSink, a stopped shipper)."""
        target = self._written
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._process_mode:
            woken = False
            while self._ship_counters.get("shipped_bytes") < target:
                if not self._process_mode:  # fell back to a thread meanwhile
                    return self.flush(None if deadline is None else max(0.0, deadline - time.monotonic()))
                if not woken:
                    woken = self._wake_process()
                    if not woken and self._proc is None:
                        return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                time.sleep(0.002 if left is None else min(left, 0.002))
            return True
        with self._progress:
            while self._ship_counters.get("shipped_bytes") < target or self._adopted_pending():
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
        t0 = time.monotonic()
        shipping = self._thread is not None or self._proc is not None
        done = self.flush(timeout) if shipping else False
        with self._lock:
            self._closed = True
        self._stop = True
        self._wake.set()
        left = max(0.1, (timeout or 0.1) - (time.monotonic() - t0))
        if self._thread is not None:
            self._thread.join(left)
            if self._thread.is_alive():
                log.warning("msgtrace: shipper still busy at close; the spool stays for adoption")
                return False
        proc = self._proc
        if proc is not None:
            self._wake_process(b"c%.3f\n" % left)
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(left + 1.0)
            except subprocess.TimeoutExpired:
                log.warning("msgtrace: the shipper process is still shipping at close; it finishes on its own")
            self._proc = None
        done = done and self.pending_bytes() == 0
        if self._loop is not None:
            self._loop.close()
        if isinstance(self._ship_counters, FileCounters):
            self._ship_counters.close()
        # shipped with nothing to retain: removed; else kept (retained, or left for adoption)
        self._writer.close(remove=done and self.retention_s <= 0)
        try:
            self.sink.close()
        except Exception:
            pass
        return done

    @property
    def stats(self) -> dict[str, Any]:
        c = self._ship_counters
        s: dict[str, Any] = {"recorded": self._recorded, "shipped": c.get("shipped"),
                             "dropped": self.counters["dropped"],
                             "errors": self.counters["errors"], "ship_failures": c.get("ship_failures"),
                             "adopted_spools": c.get("adopted_spools"), "adopted_events": c.get("adopted_events"),
                             "invalid": self.counters["invalid"], "bad_frames": c.get("bad_frames"),
                             "torn": c.get("torn"), "evicted_segments": self.counters["evicted_segments"],
                             "evicted_events": self.counters["evicted_events"],
                             "expired_segments": c.get("expired_segments"), "audit_losses": c.get("audit_losses"),
                             "reshipped": c.get("reshipped"), "reship_lost": c.get("reship_lost"),
                             "retention_s": self.retention_s}
        s["spooled_bytes"] = self.pending_bytes()
        s["emitter_id"] = self.emitter_id
        s["sink"] = self.sink.name
        s["shipper"] = self.shipper
        s["spool"] = self._writer.path
        s["last_error"] = c.last_error or self.last_error
        return s


__all__ = ["Emitter", "KafkaSink", "StoreSink", "NullSink", "Sink", "drain_spools", "default_spool_dir",
           "FSYNC_POLICIES"]
