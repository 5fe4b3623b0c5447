"""A TCP fault proxy: the network between the apps and the business broker.

``cut()`` resets every open connection and refuses new ones until ``heal()``:
to a client that is what a broker failover or a network partition looks like.
Bytes are never half-forwarded: a request either reached the broker before the
cut or not at all, so the demo's ground truth stays exact.
"""
from __future__ import annotations

import socket
import struct
import threading

from tracer.localsvc import free_port


class FaultProxy:
    def __init__(self, upstream_port: int, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port()
        self.upstream = (host, upstream_port)
        self._cut = threading.Event()
        self._drop_responses = threading.Event()
        #: bytes of broker answers swallowed by drop_responses() (proof that the broker answered)
        self.dropped_bytes = 0
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, self.port))
        self._listener.listen(128)
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def cut(self) -> None:
        """Reset all connections (RST) and refuse new ones."""
        self._cut.set()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            _reset(s)

    def heal(self) -> None:
        self._cut.clear()
        self._drop_responses.clear()

    def drop_responses(self) -> None:
        """Requests still reach the broker; its answers are lost on the way back.

        A producer then reports a failure for a message the broker stored: the ack is lost.
        """
        self._drop_responses.set()

    def reset_all(self) -> None:
        """Drop current connections once (e.g. after the upstream broker restarted)."""
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            _reset(s)

    def close(self) -> None:
        self._closed = True
        self.cut()
        try:
            self._listener.close()
        except OSError:
            pass

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for a, b, answers in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(a, b, answers), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or self._cut.is_set():
                    break
                if answers and self._drop_responses.is_set():
                    self.dropped_bytes += len(data)  # swallowed on the way back
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _reset(s)
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


def _reset(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
