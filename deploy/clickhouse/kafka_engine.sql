-- msgtrace: ClickHouse ingests the audit topic itself (no Python in the path).
--
-- The alternative to `msgtrace collect`: a Kafka engine table reads the audit topic,
-- materialized views parse each NDJSON line into msgtrace.trace_events and send the
-- lines that fail the checks to msgtrace.quarantine (without a specific reason).
-- Read deploy/clickhouse/README.md for the trade-offs before choosing this.
--
-- Needs ClickHouse >= 22.3 (LineAsString format, _headers virtual columns, JSONExtract
-- with types, isValidJSON). NOT for 18.16 (the oldest server the collector supports).
-- Create the schema first: `msgtrace db init --store clickhouse://.../msgtrace`.
-- Edit the broker list, topic and group below; run once, e.g.
--   clickhouse-client --multiquery < deploy/clickhouse/kafka_engine.sql
-- Do not run `msgtrace collect` on the same consumer group.

-- One row per line of each audit record (a record is a batch of NDJSON events).
CREATE TABLE IF NOT EXISTS msgtrace.audit_queue
(
    line String
)
ENGINE = Kafka
SETTINGS kafka_broker_list = 'kafka-1:9092,kafka-2:9092',
         kafka_topic_list = 'msgtrace.audit',
         kafka_group_name = 'msgtrace-clickhouse',
         kafka_format = 'LineAsString',
         kafka_num_consumers = 1,
         kafka_max_block_size = 65536,
         -- commit only after the block reached the views (at least once; trace_events de-duplicates)
         kafka_commit_every_batch = 0;

-- The checks of tracer.events.validate_event, as far as SQL can say them cheaply.
CREATE VIEW IF NOT EXISTS msgtrace.audit_lines AS
SELECT
    line,
    _topic AS topic_name,
    _partition AS kafka_partition,
    _offset AS kafka_offset,
    (indexOf(_headers.name, 'msgtrace-format') > 0
        AND _headers.value[indexOf(_headers.name, 'msgtrace-format')] = '1') AS header_ok,
    header_ok
        AND isValidJSON(line)
        AND JSONLength(line) = 19
        AND match(JSONExtractString(line, 'event_id'),
                  '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')
        AND JSONExtractString(line, 'msg_id') != ''
        AND JSONExtractString(line, 'stage') IN ('sent', 'send_failed', 'broker_acked', 'received',
                                                 'offset_committed', 'business_done', 'business_failed',
                                                 'dead_lettered')
        AND JSONType(line, 'ts_us') IN ('UInt64', 'Int64')
        AND JSONType(line, 'pid') IN ('UInt64', 'Int64')
        AND JSONType(line, 'seq') IN ('UInt64', 'Int64')
        AND JSONType(line, 'service') = 'String' AND JSONType(line, 'host') = 'String'
        AND JSONType(line, 'mq') = 'String' AND JSONType(line, 'topic') = 'String'
        AND JSONType(line, 'emitter_id') = 'String'
        AND JSONType(line, 'partition') IN ('Null', 'Int64', 'UInt64')
        AND JSONType(line, 'offset') IN ('Null', 'Int64', 'UInt64')
        AND JSONType(line, 'consumer_group') IN ('Null', 'String')
        AND JSONType(line, 'key') IN ('Null', 'String')
        AND JSONType(line, 'error') IN ('Null', 'String')
        AND JSONType(line, 'trace_id') IN ('Null', 'String')
        AND JSONType(line, 'span_id') IN ('Null', 'String')
        AND JSONType(line, 'attrs') = 'Object' AS ok
FROM msgtrace.audit_queue;

CREATE MATERIALIZED VIEW IF NOT EXISTS msgtrace.audit_to_trace_events TO msgtrace.trace_events AS
SELECT
    JSONExtractString(line, 'event_id') AS event_id,
    JSONExtractString(line, 'msg_id') AS msg_id,
    JSONExtractString(line, 'stage') AS stage,
    JSONExtractUInt(line, 'ts_us') AS ts_us,
    JSONExtractString(line, 'service') AS service,
    JSONExtractString(line, 'host') AS host,
    JSONExtractString(line, 'mq') AS mq,
    toUInt32(JSONExtractUInt(line, 'pid')) AS pid,
    JSONExtractString(line, 'topic') AS topic,
    JSONExtract(line, 'partition', 'Nullable(Int32)') AS partition,
    JSONExtract(line, 'offset', 'Nullable(Int64)') AS offset,
    JSONExtract(line, 'consumer_group', 'Nullable(String)') AS consumer_group,
    JSONExtract(line, 'key', 'Nullable(String)') AS key,
    JSONExtract(line, 'error', 'Nullable(String)') AS error,
    JSONExtract(line, 'trace_id', 'Nullable(String)') AS trace_id,
    JSONExtract(line, 'span_id', 'Nullable(String)') AS span_id,
    JSONExtractString(line, 'emitter_id') AS emitter_id,
    JSONExtractUInt(line, 'seq') AS seq,
    JSONExtractKeys(line, 'attrs') AS attr_keys,
    arrayMap(k -> JSONExtractString(line, 'attrs', k), JSONExtractKeys(line, 'attrs')) AS attr_values
FROM msgtrace.audit_lines
WHERE ok;

-- Everything else is kept, with the position but without a precise reason.
CREATE MATERIALIZED VIEW IF NOT EXISTS msgtrace.audit_to_quarantine TO msgtrace.quarantine AS
SELECT
    toUInt64(toUnixTimestamp(now())) * 1000000 AS received_us,
    topic_name AS source,
    toInt32(kafka_partition) AS partition,
    toInt64(kafka_offset) AS offset,
    toInt32(0) AS line,
    if(header_ok, '', 'msgtrace-format') AS field,
    if(header_ok, 'rejected by the Kafka-engine checks (see deploy/clickhouse/README.md)',
       'missing or unknown msgtrace-format header') AS error,
    toUInt64(length(line)) AS raw_size,
    substring(line, 1, 65536) AS raw
FROM msgtrace.audit_lines
WHERE NOT ok AND line != '';
