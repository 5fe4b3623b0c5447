"""RabbitMQ for tests, benchmarks and the demo: the machine's server or a node of our own.

Two ways to get a RabbitMQ (Debian's ``rabbitmq-server``):

- the running server at an AMQP URL (``MSGTRACE_TEST_AMQP_URL``, default
  ``amqp://guest:guest@127.0.0.1:5672/``), used through a fresh virtual host per test so tests never
  see each other's queues; vhosts are created with the management HTTP API when it answers, else with
  ``rabbitmqctl`` (root or the ``rabbitmq`` user, loopback servers only);
- :class:`RabbitMQServer`: a node of our own (own node name, data dir, cookie, loopback, free ports),
  which a test may restart (a non-persistent message does not survive it) or kill.

:func:`find_rabbitmq` picks the first that works and says why the others did not.
Passwords never appear in errors or reprs (:meth:`AmqpEndpoint.redacted`).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

from tracer.localsvc.base import (
    ServiceError,
    _Process,
    free_port,
    port_open,
    wait_until,
)

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: where Debian puts the real scripts (``/usr/sbin/rabbitmq-*`` re-run them as the rabbitmq user)
_LIB_BIN = "/usr/lib/rabbitmq/bin"


@dataclass(slots=True, frozen=True)
class AmqpEndpoint:
    """One AMQP server and virtual host, parsed from (and formatted back to) an ``amqp://`` URL."""

    host: str = "127.0.0.1"
    port: int = 5672
    user: str = "guest"
    password: str = "guest"
    vhost: str = "/"

    @classmethod
    def parse(cls, url: str) -> AmqpEndpoint:
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("amqp", "amqps") or not u.hostname:
            raise ServiceError(f"not an amqp:// URL: {_redact(url)}")
        path = u.path.removeprefix("/")
        return cls(u.hostname, u.port or 5672, urllib.parse.unquote(u.username or "guest"),
                   urllib.parse.unquote(u.password or "guest"), urllib.parse.unquote(path) if path else "/")

    def url(self, vhost: str | None = None) -> str:
        v = self.vhost if vhost is None else vhost
        cred = f"{urllib.parse.quote(self.user, safe='')}:{urllib.parse.quote(self.password, safe='')}"
        return f"amqp://{cred}@{self.host}:{self.port}/{urllib.parse.quote(v, safe='')}"

    def with_vhost(self, vhost: str) -> AmqpEndpoint:
        return replace(self, vhost=vhost)

    def redacted(self) -> str:
        """The URL without its password: for logs, errors and test reports."""
        return _redact(self.url())

    @property
    def loopback(self) -> bool:
        return self.host in _LOOPBACK

    def __repr__(self) -> str:
        return f"AmqpEndpoint({self.redacted()})"


def _redact(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    if u.password is None:
        return url
    netloc = f"{u.username}:***@{u.hostname}" + (f":{u.port}" if u.port else "")
    return urllib.parse.urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


def amqp_answers(ep: AmqpEndpoint, timeout: float = 3.0) -> bool:
    """True when an AMQP server accepts ``ep``'s credentials on ``ep``'s vhost (a real handshake)."""
    import pika

    if not port_open(ep.port, ep.host):
        return False
    params = pika.URLParameters(ep.url())
    params.socket_timeout = params.blocked_connection_timeout = timeout
    params.connection_attempts, params.stack_timeout = 1, timeout
    try:
        conn = pika.BlockingConnection(params)
    except Exception:
        return False
    try:
        conn.close()
    except Exception:
        pass
    return True


class VhostAdmin(Protocol):
    """Creates and deletes virtual hosts on one server (and lets one user in)."""

    what: str

    def add_vhost(self, name: str, user: str) -> None: ...

    def delete_vhost(self, name: str) -> None: ...


class CtlAdmin:
    """``rabbitmqctl`` against one node (``node`` None: the default node of this machine)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, node: str | None = None) -> None:
        self._argv = argv + (["-n", node] if node else [])
        self._env = env
        self.what = f"rabbitmqctl ({node or 'default node'})"

    def run(self, *args: str, timeout: float = 60.0) -> str:
        try:
            p = subprocess.run([*self._argv, *args], capture_output=True, text=True, timeout=timeout,
                               env=self._env, stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ServiceError(f"rabbitmqctl {args[0]} failed: {e}") from None
        if p.returncode != 0:
            out = (p.stderr.strip() or p.stdout.strip()).splitlines()
            raise ServiceError(f"rabbitmqctl {args[0]} failed (exit {p.returncode}): {out[-1] if out else ''}")
        return p.stdout

    def add_vhost(self, name: str, user: str) -> None:
        self.run("add_vhost", name)
        self.run("set_permissions", "-p", name, user, ".*", ".*", ".*")

    def delete_vhost(self, name: str) -> None:
        self.run("delete_vhost", name)


class HttpAdmin:
    """The management plugin's HTTP API (``/api/vhosts``, ``/api/permissions``)."""

    def __init__(self, base: str, user: str, password: str, timeout: float = 10.0) -> None:
        self._base = base.rstrip("/")
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._timeout = timeout
        self.what = f"management API at {self._base}"

    def _call(self, method: str, path: str, body: dict[str, str] | None = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self._base + path, data=data, method=method,
                                     headers={"Authorization": self._auth, "content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as r:
                data_out: bytes = r.read()
                return data_out
        except urllib.error.HTTPError as e:
            raise ServiceError(f"management API {method} {path.split('/')[2]}: HTTP {e.code}") from None
        except (OSError, ValueError) as e:
            raise ServiceError(f"management API unreachable: {e}") from None

    def overview(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self._call("GET", "/api/overview"))
        return doc

    def add_vhost(self, name: str, user: str) -> None:
        q = urllib.parse.quote(name, safe="")
        self._call("PUT", f"/api/vhosts/{q}", {})
        self._call("PUT", f"/api/permissions/{q}/{urllib.parse.quote(user, safe='')}",
                   {"configure": ".*", "write": ".*", "read": ".*"})

    def delete_vhost(self, name: str) -> None:
        self._call("DELETE", f"/api/vhosts/{urllib.parse.quote(name, safe='')}")


def _system_ctl() -> list[str] | None:
    """The machine's ``rabbitmqctl``, if this user may run it (root or rabbitmq, as Debian's wrapper wants)."""
    path = shutil.which("rabbitmqctl") or ("/usr/sbin/rabbitmqctl" if os.path.exists("/usr/sbin/rabbitmqctl")
                                           else None)
    return [path] if path else None


def rabbitmq_server_binary() -> str | None:
    """Debian's real ``rabbitmq-server`` script (not the wrapper that switches to the rabbitmq user)."""
    for cand in (os.path.join(_LIB_BIN, "rabbitmq-server"), shutil.which("rabbitmq-server")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


class RabbitMQServer(_Process):
    """A RabbitMQ node of our own on 127.0.0.1:<free port>, with its own node name, data and cookie.

    ``restart()`` keeps the data dir and the port: durable queues survive, non-persistent messages do
    not, as on a real broker restart.
    """

    def __init__(self, workdir: str | None = None, port: int | None = None) -> None:
        binary = rabbitmq_server_binary()
        if binary is None:
            raise ServiceError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        self.binary = binary
        self.workdir = workdir or tempfile.mkdtemp(prefix="msgtrace-rabbitmq-")
        self.port = port or free_port()
        self.dist_port = free_port()
        self.node = f"msgtrace-{uuid.uuid4().hex[:8]}@localhost"
        self.endpoint = AmqpEndpoint("127.0.0.1", self.port, "guest", "guest", "/")
        ctl = os.path.join(os.path.dirname(binary), "rabbitmqctl")
        self.admin = CtlAdmin([ctl], self._env(), node=self.node)

    def _env(self) -> dict[str, str]:
        d = self.workdir
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(HOME=d, RABBITMQ_NODENAME=self.node, RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                   RABBITMQ_NODE_PORT=str(self.port), RABBITMQ_DIST_PORT=str(self.dist_port),
                   RABBITMQ_MNESIA_BASE=os.path.join(d, "mnesia"), RABBITMQ_LOG_BASE=os.path.join(d, "log"),
                   RABBITMQ_CONFIG_FILE=os.path.join(d, "rabbitmq"),
                   RABBITMQ_ADVANCED_CONFIG_FILE=os.path.join(d, "advanced.config"),
                   RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(d, "enabled_plugins"),
                   RABBITMQ_PID_FILE=os.path.join(d, "rabbitmq.pid"), ERL_EPMD_ADDRESS="127.0.0.1")
        return env

    def url(self, vhost: str = "/") -> str:
        return self.endpoint.url(vhost)

    def start(self, timeout: float = 90.0) -> RabbitMQServer:
        d = self.workdir
        for sub in ("mnesia", "log"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        with open(os.path.join(d, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        env = self._env()
        log = open(os.path.join(d, "server.log"), "ab")
        try:
            self.proc = subprocess.Popen([self.binary], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=d, start_new_session=True)
        finally:
            log.close()
        self.log_path = os.path.join(d, "server.log")

        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise ServiceError(f"rabbitmq-server exited at start: {self.log_tail()}")
            return port_open(self.port) and amqp_answers(self.endpoint, timeout=2)

        try:
            wait_until(ready, timeout, f"rabbitmq-server on port {self.port}", interval=0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """A clean shutdown (so the next start finds its data intact), SIGKILL if it does not come."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.admin.run("shutdown", timeout=timeout)
            except ServiceError:
                pass
        super().stop(timeout=5)
        self._wait_port_closed()

    def kill(self) -> None:
        """SIGKILL the whole node (the Erlang VM is a child of the start script): the abrupt crash."""
        p = self.proc
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, 9)
            except OSError:
                pass
        super().kill()
        self._wait_port_closed()

    def _wait_port_closed(self) -> None:
        wait_until(lambda: not port_open(self.port), 30, f"port {self.port} to close")

    def restart(self) -> None:
        """Stop and start with the same data dir and port (non-persistent messages are gone)."""
        self.stop()
        self.start()

    def __enter__(self) -> RabbitMQServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RabbitMQ:
    """A usable RabbitMQ: where it is, how to make vhosts on it, and whether we own the server."""

    def __init__(self, endpoint: AmqpEndpoint, admin: VhostAdmin, server: RabbitMQServer | None = None) -> None:
        self.endpoint, self.admin, self.server = endpoint, admin, server

    def describe(self) -> str:
        owner = "own node" if self.server is not None else "running server"
        return f"RabbitMQ ({owner}) at {self.endpoint.redacted()}, vhosts by {self.admin.what}"

    def new_vhost(self) -> AmqpEndpoint:
        name = f"msgtrace-{uuid.uuid4().hex[:12]}"
        self.admin.add_vhost(name, self.endpoint.user)
        return self.endpoint.with_vhost(name)

    def delete_vhost(self, ep: AmqpEndpoint) -> None:
        self.admin.delete_vhost(ep.vhost)

    @contextmanager
    def vhost(self) -> Iterator[AmqpEndpoint]:
        """A fresh virtual host for the caller alone, deleted (with its queues) afterwards."""
        ep = self.new_vhost()
        try:
            yield ep
        finally:
            try:
                self.delete_vhost(ep)
            except ServiceError:
                pass

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            shutil.rmtree(self.server.workdir, ignore_errors=True)


def _admin_for(ep: AmqpEndpoint, why: list[str]) -> VhostAdmin | None:
    """A way to create vhosts on the server at ``ep`` that is proven to act on that very server."""
    candidates: list[VhostAdmin] = []
    mgmt = os.environ.get("MSGTRACE_TEST_AMQP_MANAGEMENT_URL") or f"http://{ep.host}:15672"
    if port_open(urllib.parse.urlsplit(mgmt).port or 15672, urllib.parse.urlsplit(mgmt).hostname or ep.host):
        candidates.append(HttpAdmin(mgmt, ep.user, ep.password))
    else:
        why.append(f"no management API at {mgmt}")
    ctl = _system_ctl()
    if ctl and ep.loopback:
        candidates.append(CtlAdmin(ctl))
    elif not ctl:
        why.append("no rabbitmqctl")
    for admin in candidates:
        name = f"msgtrace-probe-{uuid.uuid4().hex[:8]}"
        try:
            admin.add_vhost(name, ep.user)
        except ServiceError as e:
            why.append(str(e))
            continue
        try:  # the admin may talk to another node than the one at ep: prove it is the same server
            ok = amqp_answers(ep.with_vhost(name))
        finally:
            try:
                admin.delete_vhost(name)
            except ServiceError:
                pass
        if ok:
            return admin
        why.append(f"{admin.what} does not manage the server at {ep.redacted()}")
    return None


def find_rabbitmq(url: str | None = None, start_own: bool = True) -> RabbitMQ:
    """The running server at ``url`` (``MSGTRACE_TEST_AMQP_URL`` or the default) if it answers and vhosts
    can be made on it; else, with ``start_own``, a node of our own. Raises ServiceError saying why not."""
    url = url or os.environ.get("MSGTRACE_TEST_AMQP_URL") or DEFAULT_AMQP_URL
    ep = AmqpEndpoint.parse(url)
    why: list[str] = []
    try:
        answers = amqp_answers(ep)
    except ImportError:
        raise ServiceError("the RabbitMQ tests need the PyPI package pika (pip install pika)") from None
    if answers:
        admin = _admin_for(ep, why)
        if admin is not None:
            return RabbitMQ(ep, admin)
    else:
        why.append(f"no AMQP server answers at {ep.redacted()}")
    if not start_own:
        raise ServiceError("; ".join(why))
    try:
        server = RabbitMQServer().start()  # a fresh node has guest/guest (loopback only)
    except (ServiceError, TimeoutError, OSError) as e:
        raise ServiceError("; ".join([*why, f"own rabbitmq-server: {e}"])) from None
    return RabbitMQ(server.endpoint, server.admin, server)
