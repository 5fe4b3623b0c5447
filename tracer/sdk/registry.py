"""Which adapter wraps which client: a small registry keyed by the client library's top-level module.

``Tracer.wrap_producer(obj)`` / ``wrap_consumer`` / ``wrap_channel`` and ``processing(record)`` look
at the classes of ``obj`` (its MRO, so subclasses defined by the application still match), take the
top-level module of each (``kafka``, ``confluent_kafka``, ``cimpl``, ``pika``, ...) and import the adapter
module registered for it, lazily: a service using one client never imports the others.

An adapter module (see ``docs/sdk.md``) defines ``NAME``, ``MQ`` and any of ``wrap_producer(obj,
recorder)``, ``wrap_consumer(obj, recorder)``, ``wrap_channel(obj, recorder)``, ``record_ref(record)``.
Objects of unknown classes (test doubles, duck-typed clients) go to :data:`DEFAULT`, kafka-python's
adapter, as before this registry existed; ``client=`` names an adapter explicitly.
"""
from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Any

from tracer.errors import ConfigError

#: top-level module of a client library -> the msgtrace adapter module for it
CLIENTS: dict[str, str] = {
    "kafka": "tracer.sdk.kafka_python",
    "confluent_kafka": "tracer.sdk.confluent",
    "cimpl": "tracer.sdk.confluent",  # confluent-kafka's C classes report this module
    "pika": "tracer.sdk.pika",
}
#: adapter names accepted by ``client=`` -> adapter module
NAMES: dict[str, str] = {
    "kafka-python": "tracer.sdk.kafka_python",
    "confluent-kafka": "tracer.sdk.confluent",
    "pika": "tracer.sdk.pika",
}
DEFAULT = "tracer.sdk.kafka_python"
_by_type: dict[tuple[type, str], ModuleType | None] = {}
_lock = threading.Lock()


def register(client_module: str, adapter_module: str, name: str | None = None) -> None:
    """Route objects of ``client_module`` (a top-level module name) to ``adapter_module``."""
    with _lock:
        CLIENTS[client_module] = adapter_module
        if name:
            NAMES[name] = adapter_module
        _by_type.clear()


def _load(module: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise ConfigError(f"no msgtrace adapter for {what} yet ({module} is missing)") from None
        raise


def adapter_for(obj: Any, kind: str, client: str | None = None) -> ModuleType:
    """The adapter module that wraps ``obj`` as a ``kind`` (producer, consumer, channel)."""
    if client is not None:
        module = NAMES.get(client) or (client if client.startswith("tracer.") else None)
        if module is None:
            raise ConfigError(f"unknown client {client!r} (one of {', '.join(sorted(NAMES))})")
        mod = _load(module, client)
    else:
        mod = _match(type(obj)) or _load(DEFAULT, "kafka-python")
    if not hasattr(mod, f"wrap_{kind}"):
        raise ConfigError(f"the {getattr(mod, 'NAME', mod.__name__)} adapter cannot wrap a {kind} "
                          f"({type(obj).__module__}.{type(obj).__qualname__})")
    return mod


def adapter_for_record(record: Any) -> ModuleType | None:
    """The adapter that can say where a received ``record`` sits (``record_ref``), if any."""
    return adapter_for_record_type(type(record))


def adapter_for_record_type(cls: type) -> ModuleType | None:
    mod = _match(cls) or _load(DEFAULT, "kafka-python")
    return mod if hasattr(mod, "record_ref") else None


def _match(cls: type) -> ModuleType | None:
    key = (cls, "")
    mod = _by_type.get(key, _by_type)
    if mod is not _by_type:
        return mod  # type: ignore[return-value]
    found = None
    for c in cls.__mro__:
        root = (c.__module__ or "").split(".", 1)[0]
        module = CLIENTS.get(root)
        if module is not None:
            found = _load(module, f"{c.__module__}.{c.__qualname__}")
            break
    with _lock:
        if len(_by_type) > 1024:
            _by_type.clear()
        _by_type[key] = found
    return found


__all__ = ["CLIENTS", "NAMES", "DEFAULT", "register", "adapter_for", "adapter_for_record", "adapter_for_record_type"]
