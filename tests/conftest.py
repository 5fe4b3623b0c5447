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
``clickhouse`` (the ClickHouse server), ``rabbitmq`` (a RabbitMQ server), ``chdb`` (the embedded
store), ``slow`` (Chromium, ZooKeeper, killed child processes, generated or million-row inputs), and
``unit`` for none of these: ``pytest -m unit`` is the fast tier (pure Python, well under a minute),
``pytest -m "unit or chdb"`` adds everything that needs no service. A test is marked by the fixtures
it uses (the sets below), its own marks, or :data:`_MODULE_MARKS` for tests that start a service
themselves. The tier is kept honest at run time: a ``unit`` test that starts a service process or
opens a chDB store fails, naming the marker it needs (:func:`_unit_guard`).
"""
from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

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
_KAFKA_FIXTURES = {"kafka_bootstrap", "tansu", "proxied_audit", "proxied_broker"}
_CLICKHOUSE_FIXTURES = {"clickhouse_server", "server_url", "own_server", "users_server"}
_RABBITMQ_FIXTURES = {"rabbitmq", "amqp_url", "rabbitmq_server"}
_CHDB_FIXTURES = {"chdb_url", "initialised_chdb", "story_store"}
_SLOW_FIXTURES = {"chromium", "zookeeper", "adopted"}
#: tests that start a service (or open chDB) without a fixture that says so: module -> marks, or
#: (module, test name prefix) -> marks
_MODULE_MARKS: dict[str, tuple[str, ...]] = {
    "test_real_flags.py": ("kafka",),
    "test_cluster.py": ("kafka", "clickhouse", "slow"),
    "test_collector_native.py": ("chdb",),
    "test_tracemsg_startup.py": ("chdb",),
    "test_incident_demo.py": ("chdb", "kafka", "slow"),
    "test_rules_property.py": ("chdb", "slow"),
}
_TEST_MARKS: dict[tuple[str, str], tuple[str, ...]] = {
    ("test_store.py", "test_stopped_server_gives_one_line_error"): ("clickhouse",),
    ("test_bad_input.py", "test_a_million_expected_ids"): ("slow",),
    ("test_emitter.py", "test_a_closed_emitter_can_be_garbage_collected"): ("slow",),
    ("test_deploy.py", "test_nightly_script_runs_a_reconcile"): ("chdb",),
}


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


def _marks_of(item) -> set[str]:
    """The tier markers this test needs (see the module docstring)."""
    names = set(getattr(item, "fixturenames", ()))
    params = getattr(getattr(item, "callspec", None), "params", {})
    module = item.path.name if getattr(item, "path", None) is not None else ""
    marks = {m for m in ("kafka", "clickhouse", "rabbitmq", "chdb", "slow") if item.get_closest_marker(m)}
    marks.update(_MODULE_MARKS.get(module, ()))
    for (mod, prefix), extra in _TEST_MARKS.items():
        if mod == module and item.name.startswith(prefix):
            marks.update(extra)
    if names & _KAFKA_FIXTURES:
        marks.add("kafka")
    if names & _CLICKHOUSE_FIXTURES or "clickhouse" in params.values():
        marks.add("clickhouse")
    if names & _RABBITMQ_FIXTURES:
        marks.add("rabbitmq")
    if names & _CHDB_FIXTURES or "chdb" in params.values() or "store" in names:
        marks.add("chdb")
    if names & _SLOW_FIXTURES:
        marks.add("slow")
    return marks


def pytest_collection_modifyitems(config, items) -> None:
    """Mark each test by the real services it uses (see the module docstring)."""
    for item in items:
        marks = _marks_of(item)
        for m in sorted(marks):
            item.add_marker(getattr(pytest.mark, m))
        if not marks:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_guard(request, monkeypatch) -> Iterator[None]:
    """A ``unit`` test must not start a service process or open chDB: it would slow the fast tier
    and hide what the test needs. Such a test fails, naming the marker it lacks."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    from tracer.localsvc import base
    from tracer.store import core

    def no_service(self, argv, log_path):  # noqa: ARG001
        pytest.fail(f"a unit-tier test started {type(self).__name__}: use its fixture or mark the test "
                    "(kafka / clickhouse / rabbitmq / slow; tests/conftest.py _MODULE_MARKS)", pytrace=False)

    def no_chdb(path):  # noqa: ARG001
        pytest.fail("a unit-tier test opened a chDB store: use the chdb_url fixture or mark it chdb "
                    "(tests/conftest.py _MODULE_MARKS)", pytrace=False)

    monkeypatch.setattr(base._Process, "_spawn", no_service)
    monkeypatch.setattr(core, "_chdb_connect", no_chdb)
    yield


def pytest_report_header(config) -> list[str]:
    return [f"msgtrace tests: CI={'yes' if IN_CI else 'no'} (missing services {'fail' if IN_CI else 'skip'})"]


def pytest_terminal_summary(terminalreporter) -> None:
    if _USED:
        terminalreporter.section("real services used")
        for kind, what in sorted(_USED.items()):
            terminalreporter.write_line(f"{kind}: {what}")
