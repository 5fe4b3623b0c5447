"""msgtrace's own error hierarchy.

Client errors (kafka-python, clickhouse-driver, chDB) are translated into these
so that the CLI can print one clear line and library users can catch one base.
"""
from __future__ import annotations


class MsgtraceError(Exception):
    """Base of every error msgtrace raises on purpose."""


class ConfigError(MsgtraceError):
    """A setting, URL or option is wrong; the message names it."""


class DecodeError(MsgtraceError):
    """An audit record or event does not follow the wire format.

    ``field`` names the offending key (or ``None`` when the record as a whole is
    bad), ``line`` the 1-based line of the batch.
    """

    def __init__(self, message: str, *, field: str | None = None, line: int | None = None) -> None:
        self.field = field
        self.line = line
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{where}{message}")
        self.reason = message


class StoreError(MsgtraceError):
    """Base of every ClickHouse store failure."""


class StoreUnavailable(StoreError):
    """The server cannot be reached (refused, timed out, wrong host)."""


class StoreLocked(StoreError):
    """The embedded chDB directory is held by another process for too long."""


class QueryError(StoreError):
    """ClickHouse rejected a statement; ``code`` is ClickHouse's error code."""

    def __init__(self, message: str, *, code: int | None = None, query_name: str | None = None) -> None:
        self.code = code
        self.query_name = query_name
        super().__init__(message)


def describe(e: BaseException) -> str:
    """``Class: message`` of a client error, once (kafka-python's errors already start with their class)."""
    name = type(e).__name__
    text = str(e)
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"
