-- Staging table of one reconcile run's ids (expected ids, candidate messages; dropped after the
-- run), with the id's expected time when the source gives one (µs since epoch, 0: none).
-- {table} is a generated, validated name, never user input.
CREATE TABLE IF NOT EXISTS {db:Identifier}.{table:Identifier}
(
    msg_id String,
    ts_us UInt64 DEFAULT 0
)
ENGINE = MergeTree()
ORDER BY msg_id
