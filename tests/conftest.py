"""Real services for the tests: a Kafka-protocol broker, a ClickHouse server, chDB.

Each binds to loopback on a free port and is stopped after the session. Under
CI (``CI=true``) a service that cannot be had is a failure, never a skip.
Overrides: ``MSGTRACE_TEST_KAFKA_BOOTSTRAP`` (a real Kafka), ``MSGTRACE_TEST_CLICKHOUSE_URL``,
``MSGTRACE_TEST_AMQP_URL`` (a running RabbitMQ; each test gets a fresh vhost on it; default
``amqp://guest:guest@127.0.0.1:5672/``, and a node of the session's own is started when none answers).

The production settings (``MSGTRACE_KAFKA_BOOTSTRAP``, ``MSGTRACE_STORE``, ...) are removed from the
environment of the whole test session, so a developer shell configured for a real service never
sends test topics or test events there.

Markers are given by what a test uses (:func:`pytest_collection_modifyitems`): ``kafka`` (a broker),
``clickhouse`` (the ClickHouse server), ``rabbitmq`` (a RabbitMQ server), ``unit`` (neither: ``pytest -m unit`` is the fast tier);
``slow`` is set by the tests themselves.
"""
from __future__ import annotations

import os
import shutil
import uuid
from typing import Iterator

import pytest

from tracer.localsvc import ClickHouseServer, ServiceError, TansuBroker
from tracer.localsvc.rabbitmq import RabbitMQ, RabbitMQServer, find_rabbitmq
from tracer.store import Store

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_USED: dict[str, str] = {}
#: production settings a developer's shell may carry: never seen by the tests
_PRODUCTION_ENV = ("MSGTRACE_KAFKA_BOOTSTRAP", "MSGTRACE_BUSINESS_KAFKA_BOOTSTRAP", "MSGTRACE_STORE",
                   "MSGTRACE_SPOOL_DIR", "MSGTRACE_AUDIT_TOPIC", "MSGTRACE_SERVICE", "MSGTRACE_EXPECTED_DSN",
                   "MSGTRACE_STORE_PASSWORD", "MSGTRACE_STORE_PASSWORD_FILE")
for _name in _PRODUCTION_ENV:
    os.environ.pop(_name, None)
_KAFKA_FIXTURES = {"kafka_bootstrap", "tansu"}
_CLICKHOUSE_FIXTURES = {"clickhouse_server", "server_url"}
_RABBITMQ_FIXTURES = {"rabbitmq", "amqp_url", "rabbitmq_server"}


def unavailable(what: str, why: object) -> None:
    """A needed service is missing: fail under CI, skip on a developer machine."""
    msg = f"{what} unavailable: {why}"
    if IN_CI:
        pytest.fail(msg + " (CI=true: missing services fail the run)", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a shared Kafka-protocol broker for this session."""
    env = os.environ.get("MSGTRACE_TEST_KAFKA_BOOTSTRAP")
    if env:
        _USED["kafka"] = f"external Kafka at {env}"
        yield env
        return
    try:
        broker = TansuBroker().start()
    except (ServiceError, TimeoutError, OSError) as e:
        unavailable("Tansu broker", e)
    _USED["kafka"] = f"Tansu {broker.binary} at {broker.bootstrap}"
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
        shutil.rmtree(broker.workdir, ignore_errors=True)


@pytest.fixture
def tansu() -> Iterator[TansuBroker]:
    """A broker of the test's own, which the test may restart (losing its log) or kill."""
    try:
        broker = TansuBroker().start()
    except (ServiceError, TimeoutError, OSError) as e:
        unavailable("Tansu broker", e)
    _USED.setdefault("tansu-own", f"Tansu {broker.binary} (per-test instances)")
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(broker.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def clickhouse_server() -> Iterator[ClickHouseServer | None]:
    """A ClickHouse server for the session (None when an external URL is given)."""
    if os.environ.get("MSGTRACE_TEST_CLICKHOUSE_URL"):
        _USED["clickhouse"] = "external ClickHouse server (MSGTRACE_TEST_CLICKHOUSE_URL)"
        yield None
        return
    try:
        server = ClickHouseServer().start()
    except (ServiceError, TimeoutError, OSError) as e:
        unavailable("clickhouse-server", e)
    _USED["clickhouse"] = f"clickhouse-server {server.binary} at 127.0.0.1:{server.tcp_port}"
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def _server_url(server: ClickHouseServer | None, database: str) -> str:
    env = os.environ.get("MSGTRACE_TEST_CLICKHOUSE_URL")
    if env:
        base = env.rsplit("/", 1)[0] if env.count("/") > 2 else env
        return f"{base}/{database}"
    assert server is not None
    return server.url(database)


@pytest.fixture
def chdb_url(tmp_path) -> str:
    _USED.setdefault("chdb", "chDB (embedded, temp dirs)")
    return f"chdb://{tmp_path / 'store'}"


@pytest.fixture
def server_url(clickhouse_server) -> str:
    """A fresh database on the ClickHouse server, for this test alone."""
    return _server_url(clickhouse_server, f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["chdb", "clickhouse"])
def store_url(request) -> str:
    """The same test on both ClickHouse engines."""
    if request.param == "chdb":
        return request.getfixturevalue("chdb_url")
    return request.getfixturevalue("server_url")


@pytest.fixture
def store(store_url) -> Iterator[Store]:
    """An initialised store on each engine."""
    s = Store(store_url)
    s.init_schema()
    try:
        yield s
    finally:
        if s.engine == "clickhouse":
            try:
                s.command("DROP DATABASE IF EXISTS {db:Identifier}")
            except Exception:
                pass
        s.close()


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQ]:
    """The session's RabbitMQ: the running server at MSGTRACE_TEST_AMQP_URL (or the default), else a node of
    our own started for the session."""
    try:
        r = find_rabbitmq()
    except (ServiceError, TimeoutError, OSError) as e:
        unavailable("RabbitMQ", e)
    _USED["rabbitmq"] = r.describe()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def amqp_url(rabbitmq) -> Iterator[str]:
    """An amqp:// URL of a fresh virtual host for this test alone (deleted afterwards, with its queues)."""
    with rabbitmq.vhost() as ep:
        yield ep.url()


@pytest.fixture
def rabbitmq_server() -> Iterator[RabbitMQServer]:
    """A RabbitMQ node of the test's own, which the test may restart (non-persistent messages are lost) or kill."""
    try:
        server = RabbitMQServer().start()
    except (ServiceError, TimeoutError, OSError) as e:
        unavailable("rabbitmq-server", e)
    _USED.setdefault("rabbitmq-own", f"rabbitmq-server {server.binary} (per-test nodes)")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "rabbitmq: uses a RabbitMQ server (Debian rabbitmq-server)")


def pytest_collection_modifyitems(config, items) -> None:
    """Mark each test by the real services it uses (see the module docstring)."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        kafka = bool(names & _KAFKA_FIXTURES) or item.get_closest_marker("kafka") is not None
        ch = bool(names & _CLICKHOUSE_FIXTURES) or params.get("store_url") == "clickhouse" \
            or item.get_closest_marker("clickhouse") is not None
        rabbit = bool(names & _RABBITMQ_FIXTURES) or item.get_closest_marker("rabbitmq") is not None
        if rabbit:
            item.add_marker(pytest.mark.rabbitmq)
        if kafka:
            item.add_marker(pytest.mark.kafka)
        if ch:
            item.add_marker(pytest.mark.clickhouse)
        if not (kafka or ch or rabbit or item.get_closest_marker("slow")):
            item.add_marker(pytest.mark.unit)


def pytest_report_header(config) -> list[str]:
    return [f"msgtrace tests: CI={'yes' if IN_CI else 'no'} (missing services {'fail' if IN_CI else 'skip'})"]


def pytest_terminal_summary(terminalreporter) -> None:
    if _USED:
        terminalreporter.section("real services used")
        for kind, what in sorted(_USED.items()):
            terminalreporter.write_line(f"{kind}: {what}")
