-- msgtrace replay tables (msgtrace replay stores every run here; `replay` creates them itself until
-- `db init` runs this file too). Same constraints as schema.sql: runs unchanged on chDB and
-- ClickHouse 18.16 (UInt64 microseconds, no DateTime64, Map, TTL, LowCardinality).
-- {db:Identifier} is replaced by the validated database name before execution.

CREATE DATABASE IF NOT EXISTS {db:Identifier};

-- One row per replay run: who ran it, when, on which reconcile run, with what filters, and the
-- confirmation counts. mode: dry_run (nothing was published) or execute.
CREATE TABLE IF NOT EXISTS {db:Identifier}.replay_runs
(
    run_id String,
    started_us UInt64,
    finished_us UInt64,
    user String,
    host String,
    mode String,
    reconcile_run String,
    window_from_us UInt64,
    window_to_us UInt64,
    note String,
    params String,
    planned UInt64,
    published UInt64,
    skipped UInt64,
    failed UInt64
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(toDateTime(intDiv(started_us, 1000000)))
ORDER BY (started_us, run_id);

-- One row per message a replay run considered: where it was read from, where it went, the result
-- (planned, published, skipped, failed) and why. Ordered by msg_id: "was this message replayed
-- before?" reads it by primary key.
CREATE TABLE IF NOT EXISTS {db:Identifier}.replay_messages
(
    run_id String,
    at_us UInt64,
    msg_id String,
    consumer_groups Array(String),
    verdicts Array(String),
    source String,
    source_topic String,
    source_partition Int32,
    source_offset Int64,
    target_topic String,
    target_partition Int32,
    target_offset Int64,
    result String,
    reason_code String,
    reason String
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(toDateTime(intDiv(at_us, 1000000)))
ORDER BY (msg_id, run_id);
