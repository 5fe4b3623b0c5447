"""Throwaway ClickHouse servers from Debian's ``clickhouse-server`` package: one server, or a
cluster of several (``remote_servers``, macros, ZooKeeper for replication and ``ON CLUSTER`` DDL)."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from tracer.localsvc.base import (
    ServiceError,
    _Process,
    free_port,
    port_open,
    wait_until,
)

if TYPE_CHECKING:
    from tracer.localsvc.zookeeper import ZooKeeperServer

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
{extra}
</yandex>
"""
_CH_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>8000000000</max_memory_usage></default>{extra_profiles}</profiles>
  <users>
    <{user}><password>{password}</password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile><quota>default</quota></{user}>
{extra_users}
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
    """A throwaway ClickHouse server (Debian's clickhouse-server) on free loopback ports.

    ``extra_config`` (XML inside ``<yandex>``), ``extra_users`` (inside ``<users>``) and
    ``extra_profiles`` (inside ``<profiles>``) extend the generated config: a cluster node's
    ``remote_servers``, macros and ZooKeeper, or least-privilege users.
    """

    def __init__(self, user: str = "msgtrace", password: str = "msgtrace-test", workdir: str | None = None, *,
                 tcp_port: int | None = None, http_port: int | None = None, extra_config: str = "",
                 extra_users: str = "", extra_profiles: str = "") -> None:
        binary = clickhouse_server_binary()
        if not binary:
            raise ServiceError("clickhouse-server is not installed (apt-get install clickhouse-server)")
        self.binary = binary
        self.user, self.password = user, password
        self.workdir = workdir or tempfile.mkdtemp(prefix="msgtrace-ch-")
        self.tcp_port = tcp_port or free_port()
        self.http_port = http_port or free_port()
        self.extra_config, self.extra_users, self.extra_profiles = extra_config, extra_users, extra_profiles

    def url(self, database: str = "msgtrace", user: str | None = None, password: str | None = None) -> str:
        from urllib.parse import quote

        u, p = (user, password or "") if user else (self.user, self.password)
        return f"clickhouse://{quote(u, safe='')}:{quote(p, safe='')}@127.0.0.1:{self.tcp_port}/{database}"

    def start(self, timeout: float = 60.0) -> ClickHouseServer:
        d = self.workdir
        for sub in ("data", "tmp", "user_files", "format_schemas"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        Path(d, "config.xml").write_text(_CH_CONFIG.format(dir=d, tcp_port=self.tcp_port, http_port=self.http_port,
                                                           extra=self.extra_config))
        Path(d, "users.xml").write_text(_CH_USERS.format(user=self.user, password=escape(self.password),
                                                         extra_users=self.extra_users,
                                                         extra_profiles=self.extra_profiles))
        self._spawn([self.binary, f"--config-file={d}/config.xml"], os.path.join(d, "stdout.log"))

        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise ServiceError(f"clickhouse-server exited at start: {self.log_tail()}")
            import logging

            from clickhouse_driver import Client

            # the driver logs a traceback per refused connect while the server starts
            logging.getLogger("clickhouse_driver.connection").setLevel(logging.CRITICAL)

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

    def log_tail(self, n: int = 20) -> str:
        """The end of the server's error log (where 18.16 writes why it stopped), else its stdout."""
        err = Path(self.workdir, "error.log")
        try:
            text = err.read_text(errors="replace").strip()
        except OSError:
            text = ""
        return "\n".join(text.splitlines()[-n:]) if text else super().log_tail(n)

    def __enter__(self) -> ClickHouseServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """Where one cluster node sits: its shard and replica numbers (1-based) and ports."""

    shard: int
    replica: int
    tcp_port: int
    http_port: int
    interserver_port: int


class ClickHouseCluster:
    """Several throwaway clickhouse-servers forming one cluster ``name``: ``shards`` x ``replicas``
    nodes, ``remote_servers`` with ``internal_replication`` (ReplicatedMergeTree copies the data,
    the Distributed table writes one replica per shard), macros ``{shard}``/``{replica}``, the
    ``ON CLUSTER`` DDL queue and replication in the given ZooKeeper.

    Node ``i`` keeps its ports and data dir across ``restart(i)``: a restarted node comes back as
    the same replica.
    """

    def __init__(self, zookeeper: ZooKeeperServer, *, name: str = "msgtrace_test", shards: int = 2,
                 replicas: int = 1, user: str = "msgtrace", password: str = "msgtrace-test",
                 workdir: str | None = None, extra_users: str = "", extra_profiles: str = "") -> None:
        self.name, self.zookeeper = name, zookeeper
        self.user, self.password = user, password
        self.workdir = workdir or tempfile.mkdtemp(prefix="msgtrace-chc-")
        self.specs = [NodeSpec(s, r, free_port(), free_port(), free_port())
                      for s in range(1, shards + 1) for r in range(1, replicas + 1)]
        self.nodes = [ClickHouseServer(user, password, os.path.join(self.workdir, f"n{s.shard}{s.replica}"),
                                       tcp_port=s.tcp_port, http_port=s.http_port,
                                       extra_config=self._node_config(s), extra_users=extra_users,
                                       extra_profiles=extra_profiles)
                       for s in self.specs]

    def _node_config(self, me: NodeSpec) -> str:
        shards = []
        for shard in sorted({s.shard for s in self.specs}):
            reps = "".join(f"<replica><host>127.0.0.1</host><port>{s.tcp_port}</port>"
                           f"<user>{escape(self.user)}</user><password>{escape(self.password)}</password></replica>"
                           for s in self.specs if s.shard == shard)
            shards.append(f"<shard><internal_replication>true</internal_replication>{reps}</shard>")
        zk_host, zk_port = self.zookeeper.address
        return (f"<remote_servers><{self.name}>{''.join(shards)}</{self.name}></remote_servers>\n"
                f"<zookeeper><node><host>{zk_host}</host><port>{zk_port}</port></node>"
                f"<session_timeout_ms>10000</session_timeout_ms></zookeeper>\n"
                f"<macros><shard>{me.shard:02d}</shard><replica>r{me.shard}{me.replica}</replica></macros>\n"
                f"<distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>\n"
                f"<interserver_http_host>127.0.0.1</interserver_http_host>"
                f"<interserver_http_port>{me.interserver_port}</interserver_http_port>")

    def url(self, node: int = 0, database: str = "msgtrace") -> str:
        return self.nodes[node].url(database)

    def start(self, timeout: float = 90.0) -> ClickHouseCluster:
        import concurrent.futures as cf

        try:
            with cf.ThreadPoolExecutor(len(self.nodes)) as ex:  # servers start in parallel (~2 s each)
                for f in [ex.submit(n.start, timeout) for n in self.nodes]:
                    f.result()
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, node: int, *, kill: bool = False, timeout: float = 60.0) -> None:
        """Stop node ``node`` (SIGKILL with ``kill``) and start it again on the same ports and data."""
        n = self.nodes[node]
        n.kill() if kill else n.stop(timeout=30)
        wait_until(lambda: not port_open(n.tcp_port), 30, f"port {n.tcp_port} to close")
        n.start(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node at once; SIGKILL a node still up after ``timeout`` (an 18.16 node with
        ZooKeeper takes ~8 s to shut down: a test that throws the data away may not wait)."""
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(len(self.nodes)) as ex:
            list(ex.map(lambda n: n.stop(timeout=timeout), self.nodes))

    def __enter__(self) -> ClickHouseCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
