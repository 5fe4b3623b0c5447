-- msgtrace schema. Runs unchanged on chDB (ClickHouse 26.x) and ClickHouse 18.16:
-- no DateTime64 (ts_us UInt64), no Map (parallel arrays), no TTL (retention drops
-- day partitions), no LowCardinality, codecs or skip indexes.
-- {db:Identifier} is replaced by the validated database name before execution.

CREATE DATABASE IF NOT EXISTS {db:Identifier};

-- One row per stage reached by a message. ReplacingMergeTree collapses duplicate
-- event_ids on merge; every query also de-duplicates by event_id itself, so a
-- redelivered audit batch never changes a count.
CREATE TABLE IF NOT EXISTS {db:Identifier}.trace_events
(
    event_id String,
    msg_id String,
    stage String,
    ts_us UInt64,
    service String,
    host String,
    mq String,
    pid UInt32,
    topic String,
    partition Nullable(Int32),
    offset Nullable(Int64),
    consumer_group Nullable(String),
    key Nullable(String),
    error Nullable(String),
    trace_id Nullable(String),
    span_id Nullable(String),
    emitter_id String,
    seq UInt64,
    attr_keys Array(String),
    attr_values Array(String)
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMMDD(toDateTime(intDiv(ts_us, 1000000)))
ORDER BY (msg_id, event_id);

-- Audit records that failed to decode or validate, kept with the reason.
CREATE TABLE IF NOT EXISTS {db:Identifier}.quarantine
(
    received_us UInt64,
    source String,
    partition Int32,
    offset Int64,
    line Int32,
    field String,
    error String,
    raw_size UInt64,
    raw String
)
ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(toDateTime(intDiv(received_us, 1000000)))
ORDER BY (received_us, source, partition, offset);

-- One row per reconcile run (the nightly job's history).
CREATE TABLE IF NOT EXISTS {db:Identifier}.reconcile_runs
(
    run_id String,
    started_us UInt64,
    finished_us UInt64,
    window_from_us UInt64,
    window_to_us UInt64,
    grace_s UInt32,
    params String,
    verdict_names Array(String),
    verdict_counts Array(UInt64)
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(toDateTime(intDiv(started_us, 1000000)))
ORDER BY (started_us, run_id);

-- Verdicts of every judged (msg_id, consumer group) pair that was not plainly delivered.
CREATE TABLE IF NOT EXISTS {db:Identifier}.verdicts
(
    run_id String,
    judged_us UInt64,
    msg_id String,
    consumer_group String,
    topic String,
    verdict String,
    stopped_at String,
    flags Array(String),
    evidence String
)
ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(toDateTime(intDiv(judged_us, 1000000)))
ORDER BY (run_id, msg_id, consumer_group);
