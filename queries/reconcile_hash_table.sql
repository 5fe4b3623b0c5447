-- Staging table of one reconcile run's message hashes (pass 1's candidates; dropped after the run).
-- {table} is a generated, validated name, never user input.
CREATE TABLE IF NOT EXISTS {db:Identifier}.{table:Identifier}
(
    h UInt64
)
ENGINE = MergeTree()
ORDER BY h
