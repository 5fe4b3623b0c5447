"""Collectors: the audit topic -> ClickHouse (``msgtrace collect``).

Library entry point: :func:`run_collector` (the demo and batch jobs call it with
``until_idle=True``); it returns :class:`CollectorStats`.
"""
from .consumer import CollectorConfig
from .run import run_collector
from .types import CollectorStats

__all__ = ["CollectorConfig", "CollectorStats", "run_collector"]
