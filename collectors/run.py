"""Running a collector: the consumer group, the store and the steps, wired in one function.

:func:`run_collector` is the library entry point (``msgtrace collect``, the demo and batch jobs
call it); the consumer loop itself is :class:`collectors.consumer.Processor`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from tracer.errors import ConfigError, describe

from .consumer import CollectorConfig, Processor
from .step_base import Backoff, StateLog, log_event
from .types import AuditSourceUnavailable, CollectorStats, FlushTimeout


def _make_consumer(bootstrap: str, topic: str, group_id: str, cfg: CollectorConfig, listener: Any,
                   security: dict[str, Any], security_text: str = "PLAINTEXT") -> Any:
    """The collector's consumer; a broker that cannot be reached (or refuses the login: kafka-python
    reports a failed SASL handshake as a bootstrap timeout) is named with the security in use."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    opts = dict(bootstrap_servers=bootstrap.split(","), group_id=group_id, enable_auto_commit=False,
                auto_offset_reset="earliest", session_timeout_ms=cfg.session_timeout_ms,
                heartbeat_interval_ms=cfg.heartbeat_interval_ms, max_poll_records=cfg.max_poll_records,
                fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=32 * 1024 * 1024,
                client_id="msgtrace-collector")
    opts.update(security)  # TLS / SASL of the audit Kafka (tracer.kafka_config)
    opts.update(cfg.consumer_options)
    try:
        consumer = KafkaConsumer(**opts)
        consumer.subscribe([topic], listener=listener)
    except KafkaError as e:
        raise AuditSourceUnavailable(f"cannot reach the audit Kafka at {bootstrap} ({security_text}): "
                                     f"{describe(e)}") from None
    return consumer


def run_collector(bootstrap: str, topic: str, store_url: str | None, group_id: str = "msgtrace-collector",
                  until_idle: bool = False, *, config: CollectorConfig | None = None,
                  stop: threading.Event | None = None,
                  on_status: Callable[[CollectorStats, str], None] | None = None,
                  init_schema: bool = True, stats: CollectorStats | None = None) -> CollectorStats:
    """Collect the audit topic into the store; returns the run's stats.

    ``until_idle``: drain the topic (every assigned partition read to its end and
    committed) and return. Otherwise run until ``stop`` is set. Kafka that cannot be
    reached at start is retried until ``config.startup_timeout_s``. ``stats``: the object to
    count into (e.g. one a metrics server already reads); a new one by default.
    """
    from tracer.kafka_config import audit_settings
    from tracer.store import Store

    from .faults import crash_points_from_env

    if not bootstrap:
        raise ConfigError("no audit Kafka bootstrap servers (use --bootstrap or MSGTRACE_KAFKA_BOOTSTRAP)")
    if not topic:
        raise ConfigError("no audit topic (use --audit-topic or MSGTRACE_AUDIT_TOPIC)")
    cfg = config or CollectorConfig()
    if until_idle and cfg.give_up_after_s is None:
        import dataclasses

        cfg = dataclasses.replace(cfg, give_up_after_s=300.0)
    security = audit_settings()  # a bad setting fails here, before anything is opened
    if cfg.crash is None:
        crash = crash_points_from_env()
        if crash is not None:
            import dataclasses

            cfg = dataclasses.replace(cfg, crash=crash)
            log_event(logging.WARNING, "test-only fault hook armed: this collector SIGKILLs itself",
                      crash_at=crash.describe())
    stop = stop or threading.Event()
    stats = stats if stats is not None else CollectorStats()
    store = Store(store_url, lock_timeout=cfg.store_lock_timeout_s)
    if init_schema:
        _init_schema(store, cfg, stop, stats)
    proc_box: list[Processor] = []
    listener = _listener_proxy(proc_box)
    backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
    state = StateLog("kafka")
    start_deadline = time.monotonic() + cfg.startup_timeout_s
    consumer = None
    while consumer is None:
        try:
            consumer = _make_consumer(bootstrap, topic, group_id, cfg, listener, security.kafka_python(),
                                      security.describe())
        except AuditSourceUnavailable as e:
            stats.kafka_failures += 1
            backoff.failed()
            stats.kafka_down_since, stats.last_error = backoff.since, str(e)
            state.set("unavailable", error=str(e))
            if stop.is_set() or (until_idle and time.monotonic() > start_deadline):
                store.close()
                raise
            backoff.wait(time.monotonic() + backoff.delay)
    state.set("ok")
    stats.kafka_down_since = None
    proc = Processor(consumer, topic, store, cfg, stats, until_idle=until_idle, stop=stop, on_status=on_status)
    proc_box.append(proc)
    from .decode import FAST_C

    decoder = "c" if cfg.c_decoder and FAST_C else "python"
    log_event(logging.INFO, "collector started", topic=topic, group=group_id, store=store.url.redacted(),
              until_idle=until_idle, decoder=decoder, kafka_security=security.describe(),
              session_timeout_ms=cfg.session_timeout_ms)
    if decoder == "python" and cfg.c_decoder:
        log_event(logging.WARNING, "C decoder not built: decoding in Python (about 4x slower); "
                  "reinstall msgtrace with a C compiler present to build collectors._fastjson")
    gc_restore = _tune_gc(cfg.gc_threshold)
    malloc_restore = _tune_malloc(cfg.malloc_top_pad)
    try:
        proc.run()
    finally:
        gc_restore()
        malloc_restore()
        proc.strategy.close()
        try:
            consumer.close(autocommit=False)
        except Exception as e:
            log_event(logging.WARNING, "consumer close failed", error=str(e))
        store.close()
        stats.finished = time.monotonic()
    log_event(logging.INFO, "collector stopped", **stats.to_dict())
    if not stats.clean_exit:
        raise FlushTimeout(f"stopped with unwritten events after {cfg.shutdown_timeout_s:.0f} s; "
                           "their audit offsets stay uncommitted and the next run reads them again")
    return stats


def _tune_gc(threshold: tuple[int, int, int] | None) -> Callable[[], None]:
    """Set the collection thresholds and freeze what exists now; returns the undo."""
    import gc

    if threshold is None:
        return lambda: None
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*threshold)

    def restore() -> None:
        gc.set_threshold(*old)
        gc.unfreeze()

    return restore


# glibc's mallopt parameters (malloc.h) and defaults (mallopt(3))
_M_TOP_PAD, _M_MMAP_THRESHOLD = -2, -3
_DEFAULT_TOP_PAD = _DEFAULT_MMAP_THRESHOLD = 128 * 1024
#: the largest mmap threshold glibc takes on 64-bit (half its heap size)
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024


def _tune_malloc(top_pad: int | None) -> Callable[[], None]:
    """Keep ``top_pad`` bytes of freed heap in the process (glibc only; elsewhere a no-op); returns the undo.

    Why: see ``CollectorConfig.malloc_top_pad`` (freed batch memory re-faulted from the kernel per batch).
    """
    import ctypes
    import ctypes.util
    import platform

    if top_pad is None or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return lambda: None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    # Setting either parameter turns glibc's sliding mmap threshold off, leaving it at 128 KiB: a
    # record's bytes (~190 KB) would then be mmapped and faulted per record (measured: 3x the page
    # faults of the defaults). So the threshold is set too: blocks up to 32 MiB come from the heap.
    if not (mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD) and mallopt(_M_TOP_PAD, min(top_pad, 2**31 - 1))):
        return lambda: None

    def restore() -> None:
        mallopt(_M_TOP_PAD, _DEFAULT_TOP_PAD)
        mallopt(_M_MMAP_THRESHOLD, _DEFAULT_MMAP_THRESHOLD)
        trim(0)  # give the kept memory back now that no batch needs it

    return restore


def _listener_proxy(box: list[Processor]) -> Any:
    """A kafka-python rebalance listener forwarding to the processor (made after the consumer)."""
    from kafka import ConsumerRebalanceListener

    class _ListenerProxy(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python has no types
        def __init__(self, box: list[Processor]) -> None:
            self.box = box

        def on_partitions_revoked(self, revoked: Any) -> None:
            if self.box:
                self.box[0].on_revoked(revoked)

        def on_partitions_assigned(self, assigned: Any) -> None:
            if self.box:
                self.box[0].on_assigned(assigned)

    return _ListenerProxy(box)


def _init_schema(store: Any, cfg: CollectorConfig, stop: threading.Event, stats: CollectorStats) -> None:
    """Create the tables if needed, waiting (with backoff) for a store that is not up yet."""
    from tracer.errors import QueryError, StoreError

    backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
    state = StateLog("store")
    deadline = time.monotonic() + cfg.startup_timeout_s
    while True:
        try:
            store.init_schema()
            state.set("ok")
            stats.store_down_since = None
            return
        except QueryError:
            raise
        except StoreError as e:
            backoff.failed()
            stats.store_down_since, stats.last_error = backoff.since, str(e)
            state.set("unavailable", error=str(e))
            if stop.is_set() or time.monotonic() > deadline:
                raise
            backoff.wait(time.monotonic() + backoff.delay)
