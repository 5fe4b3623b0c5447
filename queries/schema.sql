-- msgtrace schema: one text for every server, rendered by tracer/store/schema.py.
-- The baseline runs on ClickHouse 18.16: no DateTime64 (ts_us UInt64), no Map (parallel arrays).
-- {db:Identifier} is replaced by the validated database name; the markers below by fixed
-- fragments (never user input), depending on the server's version and `db init --cluster`:
--   __ON_CLUSTER__        "ON CLUSTER `name`" with --cluster, else nothing
--   __LOCAL__             "_local" with --cluster (the storage tables; the Distributed tables over
--                         them take the plain names, so every query runs unchanged), else nothing
--   __ENGINE__(E)         E() alone; Replicated<E>('/clickhouse/tables/{shard}/<db>/<table>', '{replica}')
--                         with --cluster (macros {shard} and {replica} come from each server's config)
--   __LC__(T)             LowCardinality(T) on servers >= 20.3 and chDB, else T
--   __CODEC__(C)          CODEC(C) on servers >= 20.3 (whose default is LZ4), else nothing (chDB's
--                         default compression is ZSTD already: measured, benchmarks/results/sizing.md)
--   __TTL__(E)            "TTL E + INTERVAL <keep_days> DAY" on servers >= 20.3 and chDB when a
--                         retention is given (db init --keep-days), else nothing: retention drops day
--                         partitions (msgtrace retention), which works everywhere
--   -- distributed: T BY K   with --cluster: a Distributed table T over T_local, sharded by K
-- Sharding trace_events and verdicts by cityHash64(msg_id) keeps all of a message's events (and
-- its verdicts) on one shard: a trace-msg reads one shard's rows, and the reconcile's per-message
-- aggregation is complete on each shard (see tracer/store/cluster.py, shard-local queries).

CREATE DATABASE IF NOT EXISTS {db:Identifier} __ON_CLUSTER__;

-- One row per stage reached by a message. ReplacingMergeTree collapses duplicate
-- event_ids on merge; every query also de-duplicates by event_id itself, so a
-- redelivered audit batch never changes a count.
CREATE TABLE IF NOT EXISTS {db:Identifier}.trace_events__LOCAL__ __ON_CLUSTER__
(
    event_id String __CODEC__(ZSTD(1)),
    msg_id String __CODEC__(ZSTD(1)),
    stage __LC__(String),
    ts_us UInt64 __CODEC__(ZSTD(1)),
    service __LC__(String),
    host __LC__(String),
    mq __LC__(String),
    pid UInt32 __CODEC__(ZSTD(1)),
    topic __LC__(String),
    partition Nullable(Int32),
    offset Nullable(Int64) __CODEC__(ZSTD(1)),
    consumer_group __LC__(Nullable(String)),
    key Nullable(String) __CODEC__(ZSTD(1)),
    error Nullable(String) __CODEC__(ZSTD(1)),
    trace_id Nullable(String) __CODEC__(ZSTD(1)),
    span_id Nullable(String) __CODEC__(ZSTD(1)),
    emitter_id __LC__(String),
    seq UInt64 __CODEC__(ZSTD(1)),
    attr_keys Array(String) __CODEC__(ZSTD(1)),
    attr_values Array(String) __CODEC__(ZSTD(1))
)
ENGINE = __ENGINE__(ReplacingMergeTree)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(ts_us, 1000000)))
ORDER BY (msg_id, event_id)
__TTL__(toDateTime(intDiv(ts_us, 1000000)));
-- distributed: trace_events BY cityHash64(msg_id)

-- Audit records that failed to decode or validate, kept with the reason.
CREATE TABLE IF NOT EXISTS {db:Identifier}.quarantine__LOCAL__ __ON_CLUSTER__
(
    received_us UInt64,
    source String,
    partition Int32,
    offset Int64,
    line Int32,
    field String,
    error String,
    raw_size UInt64,
    raw String __CODEC__(ZSTD(1))
)
ENGINE = __ENGINE__(MergeTree)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(received_us, 1000000)))
ORDER BY (received_us, source, partition, offset)
__TTL__(toDateTime(intDiv(received_us, 1000000)));
-- distributed: quarantine BY cityHash64(source, partition, offset)

-- One row per reconcile run (the nightly job's history; small, kept: no TTL).
CREATE TABLE IF NOT EXISTS {db:Identifier}.reconcile_runs__LOCAL__ __ON_CLUSTER__
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
ENGINE = __ENGINE__(MergeTree)
PARTITION BY toYYYYMM(toDateTime(intDiv(started_us, 1000000)))
ORDER BY (started_us, run_id);
-- distributed: reconcile_runs BY cityHash64(run_id)

-- Verdicts of every judged (msg_id, consumer group) pair that was not plainly delivered.
CREATE TABLE IF NOT EXISTS {db:Identifier}.verdicts__LOCAL__ __ON_CLUSTER__
(
    run_id String,
    judged_us UInt64,
    msg_id String,
    consumer_group __LC__(String),
    topic __LC__(String),
    verdict __LC__(String),
    stopped_at __LC__(String),
    flags Array(String),
    evidence String __CODEC__(ZSTD(1))
)
ENGINE = __ENGINE__(MergeTree)
PARTITION BY toYYYYMMDD(toDateTime(intDiv(judged_us, 1000000)))
ORDER BY (run_id, msg_id, consumer_group)
__TTL__(toDateTime(intDiv(judged_us, 1000000)));
-- distributed: verdicts BY cityHash64(msg_id)

-- msgtrace replay: every run (`msgtrace replay`, dry runs too) and every message it considered.
-- One row per replay run: who ran it, when, on which reconcile run, with what filters, and the
-- confirmation counts. mode: dry_run (nothing was published) or execute.
CREATE TABLE IF NOT EXISTS {db:Identifier}.replay_runs__LOCAL__ __ON_CLUSTER__
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
ENGINE = __ENGINE__(MergeTree)
PARTITION BY toYYYYMM(toDateTime(intDiv(started_us, 1000000)))
ORDER BY (started_us, run_id);
-- distributed: replay_runs BY cityHash64(run_id)

-- One row per message a replay run considered: where it was read from, where it went, the result
-- (planned, published, skipped, failed) and why. Ordered by msg_id: "was this message replayed
-- before?" reads it by primary key.
CREATE TABLE IF NOT EXISTS {db:Identifier}.replay_messages__LOCAL__ __ON_CLUSTER__
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
ENGINE = __ENGINE__(MergeTree)
PARTITION BY toYYYYMM(toDateTime(intDiv(at_us, 1000000)))
ORDER BY (msg_id, run_id);
-- distributed: replay_messages BY cityHash64(msg_id)
