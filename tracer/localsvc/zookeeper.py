"""A throwaway ZooKeeper from Debian's ``zookeeper`` package (Java), for ClickHouse clusters.

ClickHouse 18.16 keeps replication logs and the ``ON CLUSTER`` DDL queue in ZooKeeper; a test of
a replicated cluster needs a real one. This runs a standalone server (one node, no quorum) on a
free loopback port with its data in a temp dir, and waits until it serves (``srvr``).
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

from tracer.localsvc.base import ServiceError, _Process, free_port, wait_until

#: where Debian's ``zookeeper`` package puts the server's jar (its manifest names the other jars)
_JAR_CANDIDATES = ("/usr/share/java/zookeeper.jar", "/usr/share/zookeeper/zookeeper.jar")
_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
#: a logger binding, so the log says why a client was refused (Debian's jar ships none: silent)
_SLF4J_SIMPLE = ("/usr/share/java/slf4j-simple.jar",)

_ZOO_CFG = """tickTime={tick_ms}
initLimit=10
syncLimit=5
dataDir={dir}/data
clientPort={port}
clientPortAddress=127.0.0.1
maxClientCnxns=200
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,mntr
"""


def zookeeper_jar() -> str | None:
    """Path of ZooKeeper's server jar (``MSGTRACE_ZOOKEEPER_JAR`` or Debian's), None if absent."""
    env = os.environ.get("MSGTRACE_ZOOKEEPER_JAR")
    for cand in ((env,) if env else ()) + _JAR_CANDIDATES:
        if cand and os.path.isfile(cand):
            return cand
    return None


def four_letter(port: int, word: str, timeout: float = 1.0) -> str:
    """Send a ZooKeeper four-letter command (``ruok``, ``srvr``); return the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(word.encode())
        chunks = []
        while True:
            b = s.recv(4096)
            if not b:
                break
            chunks.append(b)
    return b"".join(chunks).decode(errors="replace")


class ZooKeeperServer(_Process):
    """A standalone ZooKeeper on 127.0.0.1:<free port>; ``stop()``/``start()`` keep port and data."""

    def __init__(self, port: int | None = None, workdir: str | None = None, tick_ms: int = 500) -> None:
        jar = zookeeper_jar()
        if not jar:
            raise ServiceError("ZooKeeper is not installed (apt-get install zookeeper)")
        java = shutil.which("java")
        if not java:
            raise ServiceError("ZooKeeper needs a Java runtime (apt-get install default-jre-headless)")
        self.jar, self.java = jar, java
        self.port = port or free_port()
        self.tick_ms = tick_ms
        self.workdir = workdir or tempfile.mkdtemp(prefix="msgtrace-zk-")

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def start(self, timeout: float = 60.0) -> ZooKeeperServer:
        d = self.workdir
        os.makedirs(os.path.join(d, "data"), exist_ok=True)
        cfg = Path(d, "zoo.cfg")
        cfg.write_text(_ZOO_CFG.format(dir=d, port=self.port, tick_ms=self.tick_ms))
        # a small heap and the client compiler: a test server starts in ~1 s instead of ~3 s
        classpath = ":".join([self.jar, *(j for j in _SLF4J_SIMPLE if os.path.isfile(j))])
        argv = [self.java, "-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                f"-Dzookeeper.log.dir={d}", "-Dzookeeper.admin.enableServer=false",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=info", "-cp", classpath, _MAIN, str(cfg)]
        self._spawn(argv, os.path.join(d, "zookeeper.log"))

        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise ServiceError(f"ZooKeeper exited at start: {self.log_tail()}")
            # "ruok" says imok as soon as the port listens, while sessions are still refused ("not
            # running"), and a ClickHouse 18.16 that connects then crashes later: wait for "srvr"
            # to report a serving mode
            return "Mode:" in four_letter(self.port, "srvr")

        try:
            wait_until(ready, timeout, f"ZooKeeper on port {self.port}", interval=0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> ZooKeeperServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
