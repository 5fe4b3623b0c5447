-- Lookup tables for trace-msg without a msg_id (--at TOPIC/PARTITION@OFFSET, --key K, --topic T
-- --from/--to): trace_events is ordered by (msg_id, event_id), so a question by offset, key or time
-- would read the whole table. Each table here is narrow and ordered by the question it answers,
-- filled by a materialized view on every insert into trace_events (collector, import, direct sink)
-- and, once when created, from the events already stored (tracer.analysis.lookup.ensure_lookup).
-- Rendered by tracer.store.schema.render_schema with the markers of schema.sql (single server,
-- chDB, or a cluster: __LOCAL__, __ON_CLUSTER__, __ENGINE__). Runs on ClickHouse 18.16.
-- A row may be written twice (the view and the first fill both saw it): ReplacingMergeTree merges
-- duplicates and every lookup reads DISTINCT msg_ids.
-- Partitioned by day like trace_events, so that retention can drop the same day partitions here
-- (a lookup whose events were dropped finds an id with no events, which trace-msg reports as such).

CREATE TABLE IF NOT EXISTS {db:Identifier}.lookup_offsets__LOCAL__ __ON_CLUSTER__
(
    topic String,
    partition Int32,
    offset Int64,
    ts_us UInt64,
    msg_id String
)
ENGINE = __ENGINE__(ReplacingMergeTree)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(ts_us, 1000000)))
ORDER BY (topic, partition, offset, msg_id);
-- distributed: lookup_offsets BY cityHash64(msg_id)

CREATE TABLE IF NOT EXISTS {db:Identifier}.lookup_keys__LOCAL__ __ON_CLUSTER__
(
    key String,
    topic String,
    ts_us UInt64,
    msg_id String
)
ENGINE = __ENGINE__(ReplacingMergeTree)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(ts_us, 1000000)))
ORDER BY (key, topic, ts_us, msg_id);
-- distributed: lookup_keys BY cityHash64(msg_id)

CREATE TABLE IF NOT EXISTS {db:Identifier}.lookup_times__LOCAL__ __ON_CLUSTER__
(
    topic String,
    ts_us UInt64,
    msg_id String
)
ENGINE = __ENGINE__(ReplacingMergeTree)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(ts_us, 1000000)))
ORDER BY (topic, ts_us, msg_id);
-- distributed: lookup_times BY cityHash64(msg_id)

-- where the broker stored a message: its ack, and where a group received it (untraced producers)
CREATE MATERIALIZED VIEW IF NOT EXISTS {db:Identifier}.lookup_offsets_mv__LOCAL__ __ON_CLUSTER__
TO {db:Identifier}.lookup_offsets__LOCAL__
AS SELECT topic, assumeNotNull(partition) AS partition, assumeNotNull(offset) AS offset, ts_us, msg_id
FROM {db:Identifier}.trace_events__LOCAL__
WHERE stage IN ('broker_acked', 'received') AND partition IS NOT NULL AND offset IS NOT NULL;

-- the message key, as the producer sent it (or a consumer received it)
CREATE MATERIALIZED VIEW IF NOT EXISTS {db:Identifier}.lookup_keys_mv__LOCAL__ __ON_CLUSTER__
TO {db:Identifier}.lookup_keys__LOCAL__
AS SELECT assumeNotNull(key) AS key, topic, ts_us, msg_id
FROM {db:Identifier}.trace_events__LOCAL__
WHERE stage IN ('sent', 'received') AND key IS NOT NULL AND key != '';

-- when a message was sent to its topic
CREATE MATERIALIZED VIEW IF NOT EXISTS {db:Identifier}.lookup_times_mv__LOCAL__ __ON_CLUSTER__
TO {db:Identifier}.lookup_times__LOCAL__
AS SELECT topic, ts_us, msg_id
FROM {db:Identifier}.trace_events__LOCAL__
WHERE stage = 'sent';
