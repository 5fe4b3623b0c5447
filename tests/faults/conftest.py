"""Fixtures of the fault suite: services the test itself breaks.

Every fault test is bounded (``pytest.mark.timeout``) and waits on conditions, never on fixed
sleeps. They run in the default suite; the longest are marked ``slow``.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from faultkit import unavailable

from tracer.demo.proxy import FaultProxy
from tracer.localsvc import ClickHouseServer, ServiceError, TansuBroker, free_port


@pytest.fixture
def own_server() -> Iterator[ClickHouseServer]:
    """A ClickHouse 18.16 server of the test's own, which it stops, kills and starts."""
    try:
        server = ClickHouseServer().start()
    except (ServiceError, TimeoutError, OSError) as e:
        unavailable("clickhouse-server", e)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


class ProxiedBroker:
    """A Tansu broker reached only through a :class:`FaultProxy` (it advertises the proxy's port):
    ``proxy.cut()`` makes it unreachable without losing its log."""

    def __init__(self) -> None:
        port = free_port()
        self.broker = TansuBroker(advertised_port=port).start()
        self.proxy = FaultProxy(self.broker.port, port=port)

    @property
    def bootstrap(self) -> str:
        return self.proxy.address

    def close(self) -> None:
        self.proxy.close()
        self.broker.stop()
        shutil.rmtree(self.broker.workdir, ignore_errors=True)


@pytest.fixture
def proxied_audit() -> Iterator[ProxiedBroker]:
    try:
        b = ProxiedBroker()
    except (ServiceError, TimeoutError, OSError) as e:
        unavailable("Tansu broker", e)
    try:
        yield b
    finally:
        b.close()
