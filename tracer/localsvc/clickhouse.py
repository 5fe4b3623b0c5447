"""A throwaway ClickHouse server from Debian's ``clickhouse-server`` package."""

import os
import shutil
import tempfile
from pathlib import Path

from tracer.localsvc.base import (
    ServiceError,
    _Process,
    free_port,
    wait_until,
)

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
