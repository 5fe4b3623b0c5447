"""Importers: other systems' records of message stages, turned into msgtrace events.

``rocketmq_format`` reads RocketMQ's message-trace records, ``rocketmq`` maps them to events,
``importer`` validates, de-duplicates, quarantines and writes them (and msgtrace's own NDJSON events).
Names are imported on first use: ``tracer.sdk.rocketmq`` needs ``rocketmq.business_id`` alone and
must not pay for the importer on a service's start-up.
"""
from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "ImportStats": "importer", "StoreLookup": "importer", "StoreWriter": "importer", "import_events": "importer",
    "import_rocketmq_trace": "importer",
    "DEFAULT_MAX_RECONSUME_TIMES": "rocketmq", "Mapped": "rocketmq", "MsgIdFrom": "rocketmq",
    "RocketMQImportConfig": "rocketmq", "SuccessMeans": "rocketmq", "TraceMapper": "rocketmq",
    "business_id": "rocketmq", "map_records": "rocketmq",
}
__all__ = ["DEFAULT_MAX_RECONSUME_TIMES", "ImportStats", "Mapped", "MsgIdFrom", "RocketMQImportConfig", "StoreLookup",
           "StoreWriter", "SuccessMeans", "TraceMapper", "business_id", "import_events", "import_rocketmq_trace",
           "map_records"]


def __getattr__(name: str) -> Any:
    mod = _NAMES.get(name)
    if mod is None:
        raise AttributeError(f"module 'tracer.ingest' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
