"""msgtrace: find out, per message, where the message queue lost it.

``import tracer`` stays light: the SDK (``Tracer`` and the module-level helpers,
which use one process-wide ``Tracer.from_env()``) is imported on first use.
"""
from __future__ import annotations

import threading
from typing import Any

__all__ = ["Tracer", "wrap_producer", "wrap_consumer", "wrap_channel", "processing", "record", "default_tracer"]

_default: Any = None
_default_lock = threading.Lock()


def default_tracer() -> Any:
    """The process-wide tracer behind the module-level helpers (``Tracer.from_env()``)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                from tracer.sdk.tracer import Tracer

                _default = Tracer.from_env()
    return _default


def wrap_producer(producer: Any, client: str | None = None) -> Any:
    """``default_tracer().wrap_producer``: the adapter is chosen by the producer's type."""
    return default_tracer().wrap_producer(producer, client)


def wrap_consumer(consumer: Any, client: str | None = None) -> Any:
    """``default_tracer().wrap_consumer``."""
    return default_tracer().wrap_consumer(consumer, client)


def wrap_channel(channel: Any, client: str | None = None) -> Any:
    """``default_tracer().wrap_channel``: a RabbitMQ (pika) channel."""
    return default_tracer().wrap_channel(channel, client)


def processing(record_or_msg_id: Any, consumer_group: str | None = None) -> Any:
    return default_tracer().processing(record_or_msg_id, consumer_group)


def record(stage: str, msg_id: Any, **fields: Any) -> None:
    default_tracer().record(stage, msg_id, **fields)


def __getattr__(name: str) -> Any:
    if name == "Tracer":
        from tracer.sdk.tracer import Tracer

        return Tracer
    raise AttributeError(f"module 'tracer' has no attribute {name!r}")
