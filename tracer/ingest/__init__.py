"""Importers: other systems' records of message stages, turned into msgtrace events.

``rocketmq_format`` reads RocketMQ's message-trace records, ``rocketmq`` maps them to events,
``importer`` validates, de-duplicates, quarantines and writes them (and msgtrace's own NDJSON events).
"""
from __future__ import annotations

from .importer import (
                       ImportStats,
                       StoreLookup,
                       StoreWriter,
                       import_events,
                       import_rocketmq_trace,
)
from .rocketmq import (
                       DEFAULT_MAX_RECONSUME_TIMES,
                       Mapped,
                       MsgIdFrom,
                       RocketMQImportConfig,
                       SuccessMeans,
                       TraceMapper,
                       business_id,
                       map_records,
)

__all__ = [
                       "DEFAULT_MAX_RECONSUME_TIMES",
                       "ImportStats",
                       "Mapped",
                       "MsgIdFrom",
                       "RocketMQImportConfig",
                       "StoreLookup",
                       "StoreWriter",
                       "SuccessMeans",
                       "TraceMapper",
                       "business_id",
                       "import_events",
                       "import_rocketmq_trace",
                       "map_records",
]
