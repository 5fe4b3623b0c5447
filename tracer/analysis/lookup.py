"""Finding messages without a msg_id: by where the broker stored them (topic/partition@offset), by
their key, or by topic and time. During an incident people have "order 42", "partition 3 around
10:05" or an offset from a consumer's log, not an id.

``trace_events`` is ordered by (msg_id, event_id), so these questions would read the whole table.
They are answered from three narrow lookup tables ordered by the question (``queries/schema_lookup.sql``),
which materialized views fill on every insert into ``trace_events``; :func:`ensure_lookup` creates
them on first use and fills them once from the events already stored. The store's own schema
(``queries/schema.sql``) is untouched: the tables are an index beside it and can be dropped and
rebuilt at any time.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tracer.errors import ConfigError
from tracer.store import Store, load_sql

TABLES = ("lookup_offsets", "lookup_keys", "lookup_times")
VIEWS = tuple(f"{t}_mv" for t in TABLES)
#: a short list: at most this many matches are judged and shown (queries return at most 1000)
LIMIT = 20
_AT_RE = re.compile(r"^(?P<topic>.+)/(?P<partition>-?\d+)@(?P<offset>\d+)$")
_MV_RE = re.compile(r"CREATE MATERIALIZED VIEW IF NOT EXISTS \S+ __ON_CLUSTER__\s+TO (\S+)\s+AS (SELECT .*)", re.DOTALL)


@dataclass(slots=True)
class Match:
    """A message found by a lookup, with where it was stored (-1: unknown) and its key."""

    msg_id: str
    ts_us: int
    topic: str = ""
    partition: int = -1
    offset: int = -1
    key: str = ""
    verdicts: list[Any] = field(default_factory=list)  # tracer.analysis.result.Verdict, when judged

    @property
    def where(self) -> str:
        if self.partition < 0:
            return self.topic
        return f"{self.topic}/{self.partition}" + (f"@{self.offset}" if self.offset >= 0 else "")

    def to_json(self) -> dict[str, Any]:
        from tracer.analysis.evidence import fmt_us

        return {"msg_id": self.msg_id, "topic": self.topic, "partition": None if self.partition < 0 else self.partition,
                "offset": None if self.offset < 0 else self.offset, "key": self.key or None,
                "time": fmt_us(self.ts_us), "verdicts": [{"consumer_group": v.consumer_group, "verdict": v.verdict,
                                                         "stopped_at": v.stopped_at, "flags": list(v.flags)}
                                                        for v in self.verdicts]}


def parse_at(text: str) -> tuple[str, int, int]:
    """``TOPIC/PARTITION@OFFSET`` (the topic may itself contain ``/``)."""
    m = _AT_RE.match((text or "").strip())
    if not m:
        raise ConfigError(f"--at {text!r}: use TOPIC/PARTITION@OFFSET, e.g. order-paid/3@1234")
    return m.group("topic"), int(m.group("partition")), int(m.group("offset"))


# --- the tables --------------------------------------------------------------------------------

def lookup_statements(store: Store) -> tuple[list[str], list[str]]:
    """The DDL of the lookup tables and views for this store (single server, chDB or its cluster),
    and the statements that fill them once from the stored events (generated from the views'
    SELECTs: one text for both)."""
    from tracer.store.schema import Feature, SchemaOptions, render_schema

    text = load_sql("schema_lookup")
    info = store.cluster_info()
    ddl = render_schema(store.database, SchemaOptions(Feature.NONE, info.name if info is not None else None),
                        sql=text)
    db = f"`{store.database}`"
    fills = []
    for chunk in text.split(";"):
        m = _MV_RE.search(chunk)
        if m:
            target, select = m.group(1), m.group(2)
            fills.append(f"INSERT INTO {target} {select}".replace("__LOCAL__", "").replace("{db:Identifier}", db))
    return ddl, fills


def present(store: Store) -> set[str]:
    rows = store.query("SELECT name FROM system.tables WHERE database = {db:String}", {"db": store.database},
                       small=True)
    return {r["name"] for r in rows} & set(TABLES + VIEWS)


def ensure_lookup(store: Store, progress: Any = None) -> bool:
    """Create the lookup tables and their views if they are missing, then fill them once from the
    events already stored (one pass over trace_events). Returns True if it had to build them.
    Cheap when they exist (one read of system.tables)."""
    if present(store) == set(TABLES + VIEWS):
        return False
    ddl, fills = lookup_statements(store)
    with store.session():
        for stmt in ddl:
            store.command(stmt)
        for i, stmt in enumerate(fills, 1):  # rows the views already wrote meanwhile are merged away
            if progress:
                progress(f"filling lookup table {i} of {len(fills)} from the stored events (once)")
            store.command(stmt)
    return True


# --- the questions -----------------------------------------------------------------------------

def _matches(rows: Sequence[dict[str, Any]], topic: str = "") -> list[Match]:
    return [Match(r["msg_id"], int(r["first_ts"]), r.get("msg_topic") or topic) for r in rows]


def by_offset(store: Store, topic: str, partition: int, offset: int, limit: int = LIMIT) -> list[Match]:
    rows = store.query_file("lookup_offset", {"topic": topic, "partition": partition, "offset": offset}, small=True)
    return _matches(rows[:limit], topic)


def by_key(store: Store, key: str, topic: str | None = None, limit: int = LIMIT) -> list[Match]:
    rows = store.query_file("lookup_key", {"key": key, "topic": topic or "", "any_topic": 0 if topic else 1},
                            small=True)
    return _matches(rows[:limit])


def by_time(store: Store, topic: str, from_us: int, to_us: int, limit: int = LIMIT) -> list[Match]:
    rows = store.query_file("lookup_time", {"topic": topic, "from_us": from_us, "to_us": to_us}, small=True)
    return _matches(rows[:limit], topic)


def describe(store: Store, found: list[Match]) -> list[Match]:
    """Fill in where each match was stored and its key (one read by key for the short list)."""
    if not found:
        return found
    rows = {r["msg_id"]: r for r in store.query_file("lookup_where", {"ids": [m.msg_id for m in found]}, small=True)}
    for m in found:
        r = rows.get(m.msg_id)
        if r is None:
            continue
        m.topic = m.topic or r["topic"] or ""
        m.partition = -1 if r["partition"] is None else int(r["partition"])
        m.offset = -1 if r["offset"] is None else int(r["offset"])
        m.key = r["key"] or ""
        m.ts_us = int(r["sent_ts"] or m.ts_us)
    return found
