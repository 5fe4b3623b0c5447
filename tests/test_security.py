"""Security basics: Kafka TLS / SASL settings reach every client msgtrace makes, and secrets stay out of
logs, errors and the command lines of child processes.

- translation (``tracer.kafka_config``): variables and a properties file -> kafka-python keyword
  arguments and confluent-kafka properties, accepted by the real client classes (librdkafka rejects
  an unknown property at construction, kafka-python an unknown keyword);
- each client msgtrace builds gets them: the collector's consumer, the business consumers of
  ``reconcile`` / ``trace-msg --bootstrap`` and ``replay`` (the real classes, spied on);
- on the wire: Tansu 0.6 (``--authentication``) speaks SASL/SCRAM but not PLAIN, and its memory
  storage cannot be given a user while authentication is required (its ``user create`` does not
  authenticate). So no SASL login can succeed here; a recording proxy in front of it shows the
  collector process and the audit shipper process opening a SCRAM-SHA-256 exchange as the configured
  user, which they can only do if the settings reached them through the environment;
- secrets: a real ``msgtrace collect`` process given a store password and a SASL password by
  environment keeps both off its ``/proc/<pid>/cmdline`` and out of its logs while it fails to log
  in; errors of bad settings never quote a password.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tracer.errors import ConfigError
from tracer.kafka_config import (
    KafkaSettings,
    audit_settings,
    business_settings,
    redact,
    settings_from_env,
)

PW = "s3cr3t-Kafka-pw"
STORE_PW = "s3cr3t-Store-pw"
CA = "/etc/ssl/certs/ca-certificates.crt"


def env(**kw: str) -> dict[str, str]:
    return {f"MSGTRACE_KAFKA_{k}": v for k, v in kw.items()}


# --- translation ----------------------------------------------------------------------------------

def test_sasl_ssl_from_variables_for_both_clients(tmp_path):
    pw_file = tmp_path / "pw"
    pw_file.write_text(PW + "\n", encoding="utf-8")
    s = audit_settings(env(SECURITY_PROTOCOL="sasl_ssl", SASL_MECHANISM="scram-sha-512", SASL_USERNAME="audit",
                           SASL_PASSWORD_FILE=str(pw_file), SSL_CAFILE=CA))
    assert s.kafka_python() == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                                "sasl_plain_username": "audit", "sasl_plain_password": PW,
                                "ssl_check_hostname": True, "ssl_cafile": CA}
    assert s.confluent() == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                             "sasl.username": "audit", "sasl.password": PW, "ssl.ca.location": CA,
                             "ssl.endpoint.identification.algorithm": "https"}
    assert PW not in repr(s) and PW not in s.describe() and "SCRAM-SHA-512 as 'audit'" in s.describe()
    assert redact(s.confluent())["sasl.password"] == "***" and redact(s.kafka_python())["sasl_plain_password"] == "***"


def test_plaintext_adds_nothing_and_mtls_without_sasl():
    assert audit_settings({}).kafka_python() == {} and audit_settings({}).confluent() == {}
    s = audit_settings(env(SSL_CAFILE=CA, SSL_CERTFILE=CA, SSL_KEYFILE=CA, SSL_KEY_PASSWORD=PW,
                           SSL_CHECK_HOSTNAME="false"))
    assert s.protocol == "SSL"  # a CA or client certificate alone means TLS
    assert s.kafka_python() == {"security_protocol": "SSL", "ssl_check_hostname": False, "ssl_cafile": CA,
                                "ssl_certfile": CA, "ssl_keyfile": CA, "ssl_password": PW}
    assert s.confluent()["ssl.endpoint.identification.algorithm"] == "none"
    assert s.confluent()["ssl.key.password"] == PW and PW not in s.describe()


def test_a_properties_file_with_jaas_and_the_variables_override_it(tmp_path):
    f = tmp_path / "client.properties"
    f.write_text("\ufeff# the same file the Java clients use\nbootstrap.servers=kafka:9093\n"
                 "security.protocol = SASL_SSL\nsasl.mechanism=PLAIN\n"
                 'sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required '
                 f'username="svc" password="{PW}";\nssl.ca.location={CA}\n'
                 "ssl.endpoint.identification.algorithm=\n", encoding="utf-8")
    s = audit_settings(env(CONFIG=str(f)))
    assert (s.protocol, s.mechanism, s.username, s.password, s.cafile, s.check_hostname) == \
        ("SASL_SSL", "PLAIN", "svc", PW, CA, False)
    s2 = audit_settings(env(CONFIG=str(f), SASL_USERNAME="other", SASL_MECHANISM="SCRAM-SHA-256"))
    assert (s2.username, s2.mechanism, s2.password) == ("other", "SCRAM-SHA-256", PW)


@pytest.mark.parametrize("variables,words", [
    (env(SECURITY_PROTOCOL="SASL_TLS"), ["MSGTRACE_KAFKA_SECURITY_PROTOCOL", "SASL_TLS"]),
    (env(SECURITY_PROTOCOL="SASL_SSL", SASL_USERNAME="u"), ["MSGTRACE_KAFKA_SASL_PASSWORD"]),
    (env(SASL_USERNAME="u", SASL_PASSWORD=PW), ["MSGTRACE_KAFKA_SECURITY_PROTOCOL is not"]),
    (env(SECURITY_PROTOCOL="SSL", SASL_USERNAME="u", SASL_PASSWORD=PW), ["is SSL"]),
    (env(SECURITY_PROTOCOL="SASL_SSL", SASL_MECHANISM="GSSAPI", SASL_USERNAME="u", SASL_PASSWORD=PW),
     ["MSGTRACE_KAFKA_SASL_MECHANISM", "GSSAPI"]),
    (env(SECURITY_PROTOCOL="SASL_SSL", SASL_USERNAME="u", SASL_PASSWORD_FILE="/nonexistent/pw"),
     ["MSGTRACE_KAFKA_SASL_PASSWORD_FILE", "/nonexistent/pw"]),
    (env(SSL_CAFILE="/nonexistent/ca.pem"), ["MSGTRACE_KAFKA_SSL_CAFILE"]),
    (env(SSL_CAFILE=CA, SSL_CHECK_HOSTNAME="maybe"), ["MSGTRACE_KAFKA_SSL_CHECK_HOSTNAME"]),
    (env(CONFIG="/nonexistent/client.properties"), ["MSGTRACE_KAFKA_CONFIG"]),
])
def test_bad_settings_are_one_line_naming_the_variable_never_the_password(variables, words):
    with pytest.raises(ConfigError) as ei:
        audit_settings(variables)
    msg = str(ei.value)
    assert "\n" not in msg and PW not in msg, msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("line,word", [("sasl.pasword=" + PW, "sasl.pasword"),
                                       ("ssl.truststore.location=/x.jks", "Java keystore"),
                                       ("just some text", "not key=value")])
def test_bad_properties_files_name_the_line_never_the_value(tmp_path, line, word):
    f = tmp_path / "c.properties"
    f.write_text(f"security.protocol=SASL_SSL\n{line}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as ei:
        audit_settings(env(CONFIG=str(f)))
    assert word in str(ei.value) and "line 2" in str(ei.value) and PW not in str(ei.value)


def test_the_business_kafka_has_its_own_settings_or_the_audit_ones():
    audit = env(SECURITY_PROTOCOL="SASL_SSL", SASL_USERNAME="audit", SASL_PASSWORD=PW)
    assert business_settings(audit).username == "audit"  # one cluster for both: the common case
    both = {**audit, "MSGTRACE_BUSINESS_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    assert business_settings(both).plaintext and audit_settings(both).username == "audit"
    assert settings_from_env("MSGTRACE_BUSINESS_KAFKA_", both).kafka_python() == {}


def test_the_real_client_classes_accept_the_translated_settings():
    """librdkafka refuses unknown properties when a client is made; kafka-python unknown keywords."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    from kafka import KafkaConsumer, KafkaProducer

    for mech in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        s = audit_settings(env(SECURITY_PROTOCOL="SASL_SSL", SASL_MECHANISM=mech, SASL_USERNAME="u",
                               SASL_PASSWORD=PW, SSL_CAFILE=CA))
        p = confluent_kafka.Producer({"bootstrap.servers": "127.0.0.1:1", **s.confluent()})
        p.flush(0)
        c = confluent_kafka.Consumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "g", **s.confluent()})
        c.close()
        kp = KafkaProducer(bootstrap_servers="127.0.0.1:1", api_version=(2, 5, 0), **s.kafka_python())
        assert kp.config["sasl_mechanism"] == mech and kp.config["sasl_plain_password"] == PW
        kp.close(0)
        kc = KafkaConsumer(bootstrap_servers="127.0.0.1:1", api_version=(2, 5, 0), **s.kafka_python())
        assert kc.config["security_protocol"] == "SASL_SSL" and kc.config["ssl_cafile"] == CA
        kc.close()
    with pytest.raises(confluent_kafka.KafkaException):  # the check above could fail: a misspelt property
        confluent_kafka.Producer({"bootstrap.servers": "127.0.0.1:1", "sasl.pasword": PW})


# --- each client msgtrace makes gets them ---------------------------------------------------------

@pytest.fixture
def sasl_env(monkeypatch):
    for k, v in env(SECURITY_PROTOCOL="SASL_PLAINTEXT", SASL_MECHANISM="SCRAM-SHA-256", SASL_USERNAME="audit",
                    SASL_PASSWORD=PW).items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def spied(monkeypatch):
    """The real kafka-python client classes, remembering the keyword arguments each was made with."""
    import kafka

    seen: list[dict] = []

    def spy(cls):
        class Spy(cls):  # type: ignore[misc,valid-type]
            def __init__(self, *a, **kw):
                seen.append(kw)
                super().__init__(*a, **kw)
        Spy.__name__ = cls.__name__
        return Spy

    for name in ("KafkaConsumer", "KafkaProducer"):
        monkeypatch.setattr(kafka, name, spy(getattr(kafka, name)))
    return seen


def _has_sasl(kw: dict) -> bool:
    return (kw.get("security_protocol"), kw.get("sasl_mechanism"), kw.get("sasl_plain_username"),
            kw.get("sasl_plain_password")) == ("SASL_PLAINTEXT", "SCRAM-SHA-256", "audit", PW)


def test_the_collector_consumer_gets_the_settings(sasl_env, spied, chdb_url, caplog):
    from collectors import CollectorConfig, run_collector
    from collectors.types import AuditSourceUnavailable
    from tracer.localsvc import free_port

    cfg = CollectorConfig(startup_timeout_s=1.5, backoff_initial_s=0.2, backoff_max_s=0.5)
    caplog.set_level(logging.DEBUG)
    with pytest.raises((AuditSourceUnavailable, ConfigError)) as ei:
        run_collector(f"127.0.0.1:{free_port()}", "audit", chdb_url, "g", until_idle=True, config=cfg)
    assert spied and all(_has_sasl(kw) for kw in spied), spied
    assert PW not in str(ei.value) and PW not in caplog.text


def test_the_business_clients_get_the_settings(sasl_env, spied, caplog):
    from tracer.analysis.broker import live_committed, live_log_start
    from tracer.localsvc import free_port
    from tracer.replay.sources import BusinessKafka

    caplog.set_level(logging.DEBUG)
    dead = f"127.0.0.1:{free_port()}"
    assert live_committed(dead, "g", "t", 0, timeout_s=1) is None  # reconcile / trace-msg --bootstrap
    assert live_log_start(dead, "t", 0, timeout_s=1) is None
    try:  # replay's reader of the business topics
        BusinessKafka(dead, timeout_s=1).close()
    except ConfigError as e:
        assert PW not in str(e)
    assert len(spied) == 3 and all(_has_sasl(kw) for kw in spied), spied
    assert PW not in caplog.text


def test_a_bad_business_setting_is_an_error_not_a_silent_plaintext_connection(monkeypatch):
    from tracer.analysis.broker import live_committed

    monkeypatch.setenv("MSGTRACE_BUSINESS_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ConfigError, match="MSGTRACE_BUSINESS_KAFKA_SASL_USERNAME"):
        live_committed("127.0.0.1:1", "g", "t", 0, timeout_s=1)


# --- on the wire: Tansu with authentication, behind a recording proxy ----------------------------

class RecordingProxy:
    """TCP proxy to a broker that keeps every byte the clients sent."""

    def __init__(self, upstream: int, port: int) -> None:
        self.upstream, self.port = upstream, port
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                c, _ = self._srv.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                c.close()
                continue
            threading.Thread(target=self._pump, args=(c, u, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    with self._lock:
                        self.sent += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def seen(self, needle: bytes) -> bool:
        with self._lock:
            return needle in self.sent

    def close(self) -> None:
        self._closed = True
        self._srv.close()


@pytest.fixture
def authenticating_tansu():
    """A Tansu broker that requires SASL (``--authentication``), reached through a RecordingProxy."""
    from conftest import unavailable

    from tracer.localsvc import ServiceError, TansuBroker, free_port, port_open, wait_until

    class AuthTansu(TansuBroker):
        def start(self, timeout: float = 20.0) -> AuthTansu:
            self._spawn([self.binary, "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}",
                         "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
                         "--storage-engine", "memory://tansu/", "--authentication"],
                        os.path.join(self.workdir, "tansu.log"))
            wait_until(lambda: self.proc.poll() is not None or port_open(self.port), timeout, "Tansu")
            if self.proc.poll() is not None:
                raise ServiceError(f"Tansu exited at start: {self.log_tail()}")
            return self

    port = free_port()
    try:
        broker = AuthTansu(advertised_port=port).start()
    except (ServiceError, TimeoutError, OSError) as e:
        unavailable("Tansu broker", e)
    proxy = RecordingProxy(broker.port, port)
    try:
        yield proxy
    finally:
        proxy.close()
        broker.stop()


SCRAM_FIRST = b"n,,n=audit,r="  # RFC 5802 client-first message: the user, in clear, on the wire


def _child_env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update(env(SECURITY_PROTOCOL="SASL_PLAINTEXT", SASL_MECHANISM="SCRAM-SHA-256", SASL_USERNAME="audit",
                 SASL_PASSWORD=PW))
    e.update(extra)
    return e


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_collect_process_logs_in_by_scram_and_keeps_secrets_off_its_command_line(authenticating_tansu,
                                                                              server_url, tmp_path):
    """A real ``msgtrace collect``: the SASL settings and the store password come by environment; the
    proxy sees it open a SCRAM-SHA-256 exchange as 'audit'; neither password is in its cmdline or
    its logs, although both logins fail (Tansu has no such user; the server no such password)."""
    from tracer.localsvc import wait_until
    from tracer.store import parse_store_url

    u = parse_store_url(server_url)
    url_without_password = f"clickhouse://{u.user}@{u.host}:{u.port}/{u.database}"
    store_pw = u.password  # the right one: the collector starts, then keeps failing its Kafka login
    log = tmp_path / "collect.log"

    def collect(password: str) -> subprocess.Popen:
        with open(log, "wb") as out:
            return subprocess.Popen([sys.executable, "-m", "tracer", "collect", "--audit-topic", "audit",
                                     "--group", "g", "--log-level", "debug"], stdout=out, stderr=subprocess.STDOUT,
                                    env=_child_env(MSGTRACE_KAFKA_BOOTSTRAP=f"127.0.0.1:{authenticating_tansu.port}",
                                                   MSGTRACE_STORE=url_without_password,
                                                   MSGTRACE_STORE_PASSWORD=password))

    proc = collect(store_pw)
    try:
        wait_until(lambda: authenticating_tansu.seen(SCRAM_FIRST) or proc.poll() is not None, 60,
                   "the collector to open a SCRAM exchange")
        assert proc.poll() is None, log.read_text()  # a failed Kafka login is retried, never a crash
        cmdline = _cmdline(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    text = log.read_text(errors="replace")
    assert "collect" in cmdline and PW not in cmdline and store_pw not in cmdline, cmdline
    assert PW not in text and store_pw not in text
    assert "SASL_PLAINTEXT SCRAM-SHA-256 as 'audit'" in text  # what it logs instead
    # a wrong store password is a configuration error: one line, exit 2 (systemd's unit does not
    # restart on 2: no crash loop), the password never quoted
    proc = collect(STORE_PW)
    assert proc.wait(60) == 2
    text = log.read_text(errors="replace")
    assert "Wrong password for user msgtrace" in text and STORE_PW not in text, text


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_collector_and_shipper_processes_open_scram_on_the_wire(authenticating_tansu, tmp_path):
    from tracer.localsvc import wait_until

    bootstrap = f"127.0.0.1:{authenticating_tansu.port}"
    log = tmp_path / "collect.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tracer", "collect", "--audit-topic", "audit", "--group", "g",
                                 "--store", f"chdb://{tmp_path / 'store'}"], stdout=out, stderr=subprocess.STDOUT,
                                env=_child_env(MSGTRACE_KAFKA_BOOTSTRAP=bootstrap))
    try:
        wait_until(lambda: authenticating_tansu.seen(SCRAM_FIRST) or proc.poll() is not None, 60,
                   "the collector process to open a SCRAM exchange")
        assert proc.poll() is None, log.read_text()
        assert authenticating_tansu.seen(b"SCRAM-SHA-256")
    finally:
        proc.kill()
        proc.wait(10)
    authenticating_tansu.sent.clear()

    # the audit shipper: a separate process (python -m tracer.sdk.shipper) started by the emitter
    code = ("import sys, time\n"
            "from tracer.sdk.tracer import Tracer\n"
            "t = Tracer(service='svc', bootstrap=sys.argv[1], spool_dir=sys.argv[2])\n"
            "t.record('sent', 'order-1', topic='orders')\n"
            "p = t._emitter._proc\n"
            "print(p.pid if p is not None else 0, flush=True)\n"
            "sys.stdin.readline()\n")
    shipper_pid = 0
    app = subprocess.Popen([sys.executable, "-c", code, bootstrap, str(tmp_path / "spool")], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, env=_child_env())
    try:
        shipper_pid = int(app.stdout.readline().strip() or 0)
        assert shipper_pid, "the emitter did not start a shipper process"
        cmdline = _cmdline(shipper_pid)
        assert "tracer.sdk.shipper" in cmdline and PW not in cmdline, cmdline
        wait_until(lambda: authenticating_tansu.seen(SCRAM_FIRST), 60,
                   "the shipper process to open a SCRAM exchange as 'audit'")
    finally:
        app.kill()
        app.wait(10)
        if shipper_pid:
            try:
                os.kill(shipper_pid, 9)
            except OSError:
                pass


def test_settings_object_never_shows_secrets():
    s = KafkaSettings(protocol="SASL_SSL", mechanism="PLAIN", username="u", password=PW, key_password=PW)
    assert PW not in repr(s) and PW not in str(s) and PW not in s.describe()
