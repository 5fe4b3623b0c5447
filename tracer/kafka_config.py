"""Kafka security settings (TLS, SASL) for every Kafka client msgtrace makes, in one place.

The settings come from the environment or from a client properties file, and are translated here,
once, for kafka-python (the audit producer, the collector, the business clients of ``reconcile`` /
``trace-msg --bootstrap`` and ``replay``) and for confluent-kafka (``confluent()``):

| variable (prefix ``MSGTRACE_KAFKA_``)   | meaning                                             |
|-----------------------------------------|-----------------------------------------------------|
| ``SECURITY_PROTOCOL``                   | PLAINTEXT (default), SSL, SASL_PLAINTEXT, SASL_SSL  |
| ``SASL_MECHANISM``                      | PLAIN (default with SASL), SCRAM-SHA-256, SCRAM-SHA-512 |
| ``SASL_USERNAME``                       | the SASL user                                       |
| ``SASL_PASSWORD`` or ``SASL_PASSWORD_FILE`` | its password, or a file whose first line is it (a secret mount) |
| ``SSL_CAFILE``                          | PEM file of the CA(s) that signed the brokers' certificates |
| ``SSL_CERTFILE`` / ``SSL_KEYFILE``      | the client's certificate and key (mutual TLS)       |
| ``SSL_KEY_PASSWORD`` or ``SSL_KEY_PASSWORD_FILE`` | the key's password                        |
| ``SSL_CHECK_HOSTNAME``                  | ``false`` turns host name verification off (default true) |
| ``CONFIG``                              | a properties file (``key=value`` lines, the Java / librdkafka names: ``security.protocol``, ``sasl.mechanism``, ``sasl.username``, ``sasl.password``, ``sasl.jaas.config``, ``ssl.ca.location``, ``ssl.certificate.location``, ``ssl.key.location``, ``ssl.key.password``, ``ssl.endpoint.identification.algorithm``); the variables above override it |

Only the security keys (``security.*``, ``sasl.*``, ``ssl.*``) of the file are read; an unknown one
there is an error (a misspelt ``sasl.pasword`` must not quietly connect without a password), other
keys (``bootstrap.servers``, ``acks``...) are ignored. The business Kafka (``--bootstrap`` of
``reconcile`` / ``trace-msg`` / ``replay``) reads the same names with the prefix
``MSGTRACE_BUSINESS_KAFKA_`` when any of them is set, else the audit Kafka's (one cluster for both is
the common case).

Secrets travel only by environment or file: a child process that msgtrace starts (the shipper,
``msgtrace collect`` in the tests) inherits them and reads them here itself, so they are never on a
command line (``ps``), and :meth:`KafkaSettings.describe` is what logs and errors show.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tracer.errors import ConfigError

AUDIT_PREFIX = "MSGTRACE_KAFKA_"
BUSINESS_PREFIX = "MSGTRACE_BUSINESS_KAFKA_"
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: the variables (after the prefix) this module reads; BOOTSTRAP is the address, read by the CLI
NAMES = ("SECURITY_PROTOCOL", "SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD", "SASL_PASSWORD_FILE",
         "SSL_CAFILE", "SSL_CERTFILE", "SSL_KEYFILE", "SSL_KEY_PASSWORD", "SSL_KEY_PASSWORD_FILE",
         "SSL_CHECK_HOSTNAME", "CONFIG")
#: properties-file key -> our field
_FILE_KEYS = {
    "security.protocol": "protocol",
    "sasl.mechanism": "mechanism",
    "sasl.mechanisms": "mechanism",  # librdkafka's older spelling
    "sasl.username": "username",
    "sasl.password": "password",
    "sasl.jaas.config": "jaas",
    "ssl.ca.location": "cafile",
    "ssl.certificate.location": "certfile",
    "ssl.key.location": "keyfile",
    "ssl.key.password": "key_password",
    "ssl.endpoint.identification.algorithm": "endpoint_identification",
}
_JAVA_ONLY = ("ssl.truststore.", "ssl.keystore.")
_JAAS_RE = re.compile(r'(username|password)\s*=\s*"((?:[^"\\]|\\.)*)"')
_SECRET_WORDS = ("password", "secret", "jaas", "token")


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """The security part of a Kafka client's configuration (empty: PLAINTEXT, nothing to add)."""

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    key_password: str | None = field(default=None, repr=False)
    check_hostname: bool = True
    #: where the settings came from, for messages ("MSGTRACE_KAFKA_*", a file)
    source: str = ""

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def plaintext(self) -> bool:
        return self.protocol == "PLAINTEXT"

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's KafkaProducer / KafkaConsumer / KafkaAdminClient
        ({} for PLAINTEXT: the client's defaults stay untouched)."""
        if self.plaintext:
            return {}
        out: dict[str, Any] = {"security_protocol": self.protocol}
        if self.sasl:
            out.update(sasl_mechanism=self.mechanism, sasl_plain_username=self.username,
                       sasl_plain_password=self.password)
        if self.tls:
            out["ssl_check_hostname"] = self.check_hostname
            for key, value in (("ssl_cafile", self.cafile), ("ssl_certfile", self.certfile),
                               ("ssl_keyfile", self.keyfile), ("ssl_password", self.key_password)):
                if value:
                    out[key] = value
        return out

    def confluent(self) -> dict[str, str]:
        """Properties for confluent-kafka's Producer / Consumer / AdminClient ({} for PLAINTEXT)."""
        if self.plaintext:
            return {}
        out: dict[str, str] = {"security.protocol": self.protocol}
        if self.sasl:
            out.update({"sasl.mechanism": self.mechanism or "PLAIN", "sasl.username": self.username or "",
                        "sasl.password": self.password or ""})
        if self.tls:
            out["ssl.endpoint.identification.algorithm"] = "https" if self.check_hostname else "none"
            for key, value in (("ssl.ca.location", self.cafile), ("ssl.certificate.location", self.certfile),
                               ("ssl.key.location", self.keyfile), ("ssl.key.password", self.key_password)):
                if value:
                    out[key] = value
        return out

    def describe(self) -> str:
        """One line for logs and errors: protocol, mechanism, user, files; never a password."""
        if self.plaintext:
            return "PLAINTEXT"
        parts = [self.protocol]
        if self.sasl:
            parts.append(f"{self.mechanism} as {self.username!r}")
        if self.tls:
            parts.append(f"CA {self.cafile}" if self.cafile else "system CAs")
            if self.certfile:
                parts.append(f"client certificate {self.certfile}")
            if not self.check_hostname:
                parts.append("host names not checked")
        return " ".join(parts)


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """A client configuration fit for a log line: every secret-looking value replaced by ``***``."""
    return {k: ("***" if any(w in str(k).lower() for w in _SECRET_WORDS) and v else v) for k, v in config.items()}


def _read_secret(var: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except OSError as e:
        raise ConfigError(f"{var}: cannot read {path}: {e.strerror or e}") from None


def _read_properties(var: str, path: str) -> dict[str, str]:
    """The security keys of a Java / librdkafka style properties file (``key=value``, ``#`` comments)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(f"{var}: cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{var}: {path} is not UTF-8 text") from None
    out: dict[str, str] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            key, sep, value = line.partition(":")
        key = key.strip().lower()
        if not sep or not key:
            raise ConfigError(f"{var}: {path} line {n} is not key=value")
        if not key.startswith(("security.", "sasl.", "ssl.")):
            continue  # bootstrap.servers, acks, ...: not ours to read
        if key.startswith(_JAVA_ONLY):
            raise ConfigError(f"{var}: {path} line {n}: {key} is a Java keystore setting; the Python clients "
                              "need PEM files (ssl.ca.location, ssl.certificate.location, ssl.key.location)")
        if key not in _FILE_KEYS:
            raise ConfigError(f"{var}: {path} line {n}: unknown security setting {key[:60]!r} "
                              f"(known: {', '.join(sorted(_FILE_KEYS))})")
        out[_FILE_KEYS[key]] = value.strip()
    if "jaas" in out:  # org.apache.kafka.common.security.plain.PlainLoginModule required username="u" password="p";
        for name, value in _JAAS_RE.findall(out.pop("jaas")):
            out.setdefault(name, value.replace('\\"', '"').replace("\\\\", "\\"))
    return out


def _truth(var: str, text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{var} must be true or false (got {text.strip()[:20]!r})")


def settings_from_env(prefix: str = AUDIT_PREFIX, environ: Mapping[str, str] | None = None) -> KafkaSettings:
    """The settings the variables with ``prefix`` (and the file ``<prefix>CONFIG``) give; a wrong or
    incomplete one is a ConfigError naming the variable (never quoting a secret)."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        v = env.get(prefix + name)
        return v if v is not None and v.strip() else None

    values: dict[str, str] = {}
    source = f"{prefix}*"
    cfg_path = get("CONFIG")
    if cfg_path:
        values.update(_read_properties(prefix + "CONFIG", cfg_path))
        source = f"{prefix}CONFIG={cfg_path} and {prefix}*"
    for name, key in (("SECURITY_PROTOCOL", "protocol"), ("SASL_MECHANISM", "mechanism"),
                      ("SASL_USERNAME", "username"), ("SSL_CAFILE", "cafile"), ("SSL_CERTFILE", "certfile"),
                      ("SSL_KEYFILE", "keyfile")):
        v = get(name)
        if v is not None:
            values[key] = v.strip()
    for name, key in (("SASL_PASSWORD", "password"), ("SSL_KEY_PASSWORD", "key_password")):
        v = env.get(prefix + name)
        file_var = prefix + name + "_FILE"
        path = get(name + "_FILE")
        if v:
            values[key] = v
        elif path:
            values[key] = _read_secret(file_var, path)
    check = get("SSL_CHECK_HOSTNAME")
    check_hostname = True
    if check is not None:
        check_hostname = _truth(prefix + "SSL_CHECK_HOSTNAME", check)
    elif "endpoint_identification" in values:
        check_hostname = values["endpoint_identification"].strip().lower() not in ("", "none")

    var = prefix + "SECURITY_PROTOCOL"
    protocol = values.get("protocol", "").upper() or None
    if protocol is not None and protocol not in PROTOCOLS:
        raise ConfigError(f"{var}: unknown security protocol {protocol[:30]!r} (one of {', '.join(PROTOCOLS)})")
    has_creds = bool(values.get("username") or values.get("password"))
    if protocol is None:
        if has_creds:
            raise ConfigError(f"SASL credentials are set ({prefix}SASL_USERNAME / _PASSWORD) but {var} is not: "
                              "set it to SASL_SSL (or SASL_PLAINTEXT, which sends them unencrypted)")
        protocol = "SSL" if values.get("cafile") or values.get("certfile") else "PLAINTEXT"
    mechanism = None
    if protocol.startswith("SASL_"):
        mechanism = (values.get("mechanism") or "PLAIN").upper()
        if mechanism not in MECHANISMS:
            raise ConfigError(f"{prefix}SASL_MECHANISM: unsupported mechanism {mechanism[:30]!r} "
                              f"(one of {', '.join(MECHANISMS)})")
        missing = [n for n, k in (("SASL_USERNAME", "username"), ("SASL_PASSWORD", "password")) if not values.get(k)]
        if missing:
            raise ConfigError(f"{var}={protocol} needs " + " and ".join(prefix + m for m in missing)
                              + (f" (or {prefix}SASL_PASSWORD_FILE)" if "SASL_PASSWORD" in missing else ""))
    elif has_creds:
        raise ConfigError(f"SASL credentials are set but {var} is {protocol}: set it to SASL_SSL or SASL_PLAINTEXT")
    for name, key in (("SSL_CAFILE", "cafile"), ("SSL_CERTFILE", "certfile"), ("SSL_KEYFILE", "keyfile")):
        path = values.get(key)
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"{prefix}{name}: cannot read {path}")
    if values.get("keyfile") and not values.get("certfile"):
        raise ConfigError(f"{prefix}SSL_KEYFILE is set without {prefix}SSL_CERTFILE")
    return KafkaSettings(protocol=protocol, mechanism=mechanism, username=values.get("username"),
                         password=values.get("password"), cafile=values.get("cafile"),
                         certfile=values.get("certfile"), keyfile=values.get("keyfile"),
                         key_password=values.get("key_password"), check_hostname=check_hostname, source=source)


def audit_settings(environ: Mapping[str, str] | None = None) -> KafkaSettings:
    """The audit Kafka's settings (``MSGTRACE_KAFKA_*``)."""
    return settings_from_env(AUDIT_PREFIX, environ)


def business_settings(environ: Mapping[str, str] | None = None) -> KafkaSettings:
    """The business Kafka's settings: ``MSGTRACE_BUSINESS_KAFKA_*`` when any is set, else the audit's."""
    env = os.environ if environ is None else environ
    if any(env.get(BUSINESS_PREFIX + n, "").strip() for n in NAMES):
        return settings_from_env(BUSINESS_PREFIX, env)
    return settings_from_env(AUDIT_PREFIX, env)


def audit_kafka_python() -> dict[str, Any]:
    """kafka-python keyword arguments for the audit Kafka (shorthand)."""
    return audit_settings().kafka_python()


def business_kafka_python() -> dict[str, Any]:
    """kafka-python keyword arguments for the business Kafka (shorthand)."""
    return business_settings().kafka_python()


__all__ = ["AUDIT_PREFIX", "BUSINESS_PREFIX", "MECHANISMS", "NAMES", "PROTOCOLS", "KafkaSettings", "audit_kafka_python",
           "audit_settings", "business_kafka_python", "business_settings", "redact", "settings_from_env"]
