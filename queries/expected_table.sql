-- Staging table of one reconcile run's ids (expected ids, candidate messages; dropped after the
-- run). {table} is a generated, validated name, never user input.
CREATE TABLE IF NOT EXISTS {db:Identifier}.{table:Identifier}
(
    msg_id String
)
ENGINE = MergeTree()
ORDER BY msg_id
