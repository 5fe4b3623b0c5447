"""Retention without TTL: drop the store's day partitions older than N days.

ClickHouse 18.16 has no TTL; every day-partitioned table of the schema (``PARTITION BY
toYYYYMMDD(...)``: trace_events, quarantine, verdicts) loses whole days with
``ALTER TABLE ... DROP PARTITION ID``, which costs nothing but a metadata change. The same works on
chDB and modern servers (where ``db init --keep-days`` can set a TTL instead).

"Keep N days" means what a TTL of N days does: a day's partition goes once all of it is older than
N days, i.e. partitions of days before ``today - N`` (today in the server's time zone, which is also
the zone the partition key uses). On a cluster the partitions are listed on every shard
(``cluster()`` over ``system.parts``) and dropped ``ON CLUSTER`` from the ``_local`` tables.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from tracer.errors import ConfigError, StoreError
from tracer.store.core import Store, check_identifier, load_sql

_PARTITION_ID_RE = re.compile(r"^[0-9]{8}$")


@dataclass(frozen=True, slots=True)
class PartitionDrop:
    """One day partition of one table that a retention run drops (or would drop)."""

    table: str  #: the table queries name (trace_events)
    storage: str  #: the table holding the rows (trace_events, or trace_events_local on a cluster)
    partition: str  #: partition id, YYYYMMDD
    rows: int
    bytes_on_disk: int


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    keep_days: int
    cutoff: str  #: partitions with an id below this day (YYYYMMDD) are dropped
    cluster: str | None
    drops: list[PartitionDrop]
    ttl_tables: list[str]  #: tables that already have a TTL (the server drops their rows itself)

    @property
    def rows(self) -> int:
        return sum(d.rows for d in self.drops)

    @property
    def bytes_on_disk(self) -> int:
        return sum(d.bytes_on_disk for d in self.drops)


def _day_tables(store: Store, names: list[str]) -> tuple[list[str], list[str]]:
    """(tables partitioned by day, tables with a TTL) among ``names`` (the storage tables)."""
    _, rows = store.rows("SELECT name, partition_key, create_table_query FROM system.tables "
                            "WHERE database = {db:String}", {"db": store.database})
    by_name = {r[0]: (r[1] or "", r[2] or "") for r in rows}
    day = [n for n in names if "toYYYYMMDD" in by_name.get(n, ("", ""))[0]]
    ttl = [n for n in day if re.search(r"\bTTL\b", by_name[n][1])]
    return day, ttl


def plan(store: Store, keep_days: int) -> RetentionPlan:
    """What ``apply`` would drop to keep ``keep_days`` days."""
    if keep_days < 1:
        raise ConfigError(f"--keep-days must be at least 1, not {keep_days}")
    from tracer.store.schema import LOCAL_SUFFIX, schema_tables

    info = store.cluster_info()
    # the events' own tables and trace-msg's lookup tables (queries/schema_lookup.sql), which hold
    # the same days: a lookup row outliving its events would point at nothing
    tables = schema_tables() + schema_tables(load_sql("schema_lookup"))
    storage = {t: (info.local_tables.get(t, t + LOCAL_SUFFIX) if info else t) for t in tables}
    day_tables, ttl = _day_tables(store, list(storage.values()))
    cutoff = str(store.rows("SELECT toYYYYMMDD(today() - {n:UInt32}) AS d", {"n": keep_days}, small=True)[1][0][0])
    if info is not None:
        source = f"cluster('{check_identifier(info.name, 'cluster name')}', system, parts)"
    else:
        source = "system.parts"
    drops: list[PartitionDrop] = []
    for table, local in storage.items():
        if local not in day_tables:
            continue
        _, parts = store.rows(
            f"SELECT partition_id, sum(rows) AS rows, sum(bytes_on_disk) AS bytes FROM {source} "
            "WHERE database = {db:String} AND table = {t:String} AND active "
            "GROUP BY partition_id ORDER BY partition_id", {"db": store.database, "t": local})
        for pid, n, size in parts:
            pid = str(pid)
            if _PARTITION_ID_RE.match(pid) and pid < cutoff:
                drops.append(PartitionDrop(table, local, pid, int(n), int(size)))
    return RetentionPlan(keep_days, cutoff, info.name if info else None, drops,
                         [t for t, s in storage.items() if s in ttl])


def apply(store: Store, p: RetentionPlan) -> int:
    """Drop the partitions of ``p``; return how many were dropped."""
    on_cluster = f" ON CLUSTER `{check_identifier(p.cluster, 'cluster name')}`" if p.cluster else ""
    done = 0
    with store.session():
        for d in p.drops:
            if not _PARTITION_ID_RE.match(d.partition):  # only day ids ever get here; never a raw value
                raise StoreError(f"refusing to drop partition {d.partition!r} of {d.table}: not a day id")
            check_identifier(d.storage, "table name")
            store.command(f"ALTER TABLE {{db:Identifier}}.`{d.storage}`{on_cluster} "
                          f"DROP PARTITION ID '{d.partition}'")
            done += 1
    return done
