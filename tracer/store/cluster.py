"""A store on a ClickHouse cluster: Distributed tables over per-shard Replicated tables.

``msgtrace db init --cluster NAME`` creates ``<table>_local`` (Replicated*MergeTree) on every node
and ``<table>`` (Distributed, sharded by ``cityHash64(msg_id)``) over them, so every query runs
unchanged. Three things differ from one server, and this module handles them for the store:

* **Staging tables in IN subqueries.** A reconcile stages candidate or expected ids in a plain
  table on the node it is connected to. In a Distributed query an ``IN (SELECT ... FROM staging)``
  is sent as is to every shard, where that table does not exist; ``GLOBAL IN`` runs the subquery
  once on the initiator and ships its result. On a cluster the store turns every
  ``IN (SELECT`` into ``GLOBAL IN (SELECT`` before parameters are rendered, so never inside a bound
  value (it would also rewrite that text inside a literal written in the SQL itself: ours have none).
  Harmless where the outer table is local: the subquery is simply run first.
* **Shard-local aggregation.** Because all of a message's events live on one shard, a query whose
  per-message aggregation is all that is needed can skip the merge across shards. A query declares
  it, in its SQL text (a comment line) or by the ``shard_local`` argument of ``Store.query``:

  - ``-- msgtrace: shard-local group-by``: the GROUP BY (or DISTINCT) of the SELECT that reads the
    events includes ``msg_id``: the store sets ``distributed_group_by_no_merge = 1`` (ClickHouse
    18.16 has it; it makes each shard finish that GROUP BY and the initiator only concatenate the
    shards' rows; the outer SELECTs still run on the initiator). Only the SELECT that reads the
    Distributed table is sent to the shards, so this pays only where that SELECT aggregates.
  - ``-- msgtrace: shard-local per-shard``: the whole statement's answer over all messages is the
    concatenation of its answers over disjoint sets of whole messages (rows keyed by message, or
    counts the caller adds up). The store runs the whole statement on one replica of every shard,
    against the ``_local`` tables, in parallel, and concatenates the rows: only the shards'
    (small) final answers travel, not one row per event or message. A statement that reads any
    other table (a staging table lives on one node) falls back to the Distributed tables, which is
    always correct.

* **Inserts** into a Distributed table are synchronous (``insert_distributed_sync = 1``, set by the
  store's client): an insert returns once every shard has its rows, so the collector commits
  audit offsets only after the data is on the shards, as on one server.
"""
from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tracer.errors import StoreUnavailable

if TYPE_CHECKING:
    from tracer.store.core import Backend, StoreURL


class ShardLocal(enum.Enum):
    """How a query may use the sharding by msg_id (see the module docstring)."""

    GROUP_BY = "group-by"
    PER_SHARD = "per-shard"


_DIRECTIVE_RE = re.compile(r"^[ \t]*--[ \t]*msgtrace:[ \t]*shard-local[ \t]+(group-by|per-shard)\b",
                           re.MULTILINE | re.IGNORECASE)
#: ``IN (SELECT`` / ``NOT IN (SELECT`` not already GLOBAL
_IN_SUBQUERY_RE = re.compile(r"(?<!GLOBAL )(?<![\w.`])((?:NOT\s+)?IN\s*\(\s*SELECT\b)", re.IGNORECASE)
_DIST_RE = re.compile(r"Distributed\(\s*['`\"]?(\w+)['`\"]?\s*,\s*['`\"]?(\w+)['`\"]?\s*,\s*['`\"]?(\w+)['`\"]?")


def declared(sql: str) -> ShardLocal | None:
    """The shard-local declaration in a statement's text, if any."""
    m = _DIRECTIVE_RE.search(sql)
    return ShardLocal(m.group(1).lower()) if m else None


def global_in(sql: str) -> str:
    """Every ``[NOT] IN (SELECT`` of ``sql`` as ``GLOBAL [NOT] IN (SELECT``."""
    return _IN_SUBQUERY_RE.sub(r"GLOBAL \1", sql)


@dataclass(frozen=True, slots=True)
class Replica:
    shard: int
    replica: int
    host: str
    port: int
    is_local: bool


@dataclass(slots=True)
class ClusterInfo:
    """What the store learnt about its cluster: the Distributed tables and the shards."""

    name: str
    database: str
    #: Distributed table -> the table it reads on each shard
    local_tables: dict[str, str]
    shards: list[list[Replica]] = field(default_factory=list)

    def to_local(self, sql: str) -> str | None:
        """``sql`` reading the shards' own tables instead of the Distributed ones; None when it
        also reads another table of the database (which may not exist on every shard)."""
        db = re.escape(f"`{self.database}`")
        ref = re.compile(db + r"\.`?([A-Za-z_][A-Za-z0-9_]*)`?")
        if any(m.group(1) not in self.local_tables for m in ref.finditer(sql)):
            return None
        return ref.sub(lambda m: f"`{self.database}`.`{self.local_tables[m.group(1)]}`", sql)


def detect(execute: Any, database: str) -> ClusterInfo | None:
    """The cluster behind the database's Distributed tables, or None (one server). ``execute`` is
    ``Backend.execute``."""
    _, rows = execute("SELECT name, engine_full FROM system.tables WHERE database = {db:String} "
                      "AND engine = 'Distributed'", {"db": database})
    local: dict[str, str] = {}
    name = ""
    for table, engine_full in rows:
        m = _DIST_RE.search(engine_full or "")
        if not m or m.group(2) != database:
            continue
        name = name or m.group(1)
        if m.group(1) == name:
            local[table] = m.group(3)
    if not local:
        return None
    _, reps = execute("SELECT shard_num, replica_num, host_name, port, is_local FROM system.clusters "
                      "WHERE cluster = {c:String} ORDER BY shard_num, replica_num", {"c": name})
    shards: dict[int, list[Replica]] = {}
    for s, r, host, port, is_local in reps:
        shards.setdefault(int(s), []).append(Replica(int(s), int(r), str(host), int(port), bool(is_local)))
    # the connected node first within its shard: no second connection where one is open
    ordered = [sorted(v, key=lambda x: not x.is_local) for _, v in sorted(shards.items())]
    return ClusterInfo(name, database, local, ordered)


class ShardRunner:
    """Runs one statement on one replica of every shard (``shard-local per-shard``)."""

    def __init__(self, info: ClusterInfo, url: StoreURL, local_backend: Backend) -> None:
        self.info = info
        self.url = url
        self.local_backend = local_backend
        self._backends: dict[tuple[str, int], Backend] = {}

    def _backend(self, rep: Replica) -> Backend:
        if rep.is_local:
            return self.local_backend
        key = (rep.host, rep.port)
        if key not in self._backends:
            from tracer.store.core import ClickHouseBackend

            self._backends[key] = ClickHouseBackend(replace(self.url, host=rep.host, port=rep.port))
        return self._backends[key]

    def _on_shard(self, replicas: list[Replica], sql: str, params: Mapping[str, Any] | None,
                  settings: Mapping[str, Any] | None) -> tuple[list[str], list[tuple[Any, ...]]]:
        errors = []
        for rep in replicas:  # the first replica that answers
            try:
                return self._backend(rep).execute(sql, params, False, settings)
            except StoreUnavailable as e:
                errors.append(str(e))
        raise StoreUnavailable(f"no replica of shard {replicas[0].shard} of cluster {self.info.name} answers: "
                               + "; ".join(errors))

    def run(self, sql: str, params: Mapping[str, Any] | None,
            settings: Mapping[str, Any] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        shards = self.info.shards
        with ThreadPoolExecutor(max_workers=min(len(shards), 16)) as ex:
            parts = list(ex.map(lambda reps: self._on_shard(reps, sql, params, settings), shards))
        names = next((n for n, _ in parts if n), [])
        rows = [r for _, rs in parts for r in rs]
        return names, rows

    def close(self) -> None:
        for b in self._backends.values():
            b.close()
        self._backends.clear()
