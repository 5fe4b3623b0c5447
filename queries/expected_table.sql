-- Staging table of one reconcile run's expected ids (dropped after the run). __TABLE__ is a
-- generated, validated name (expected_<run id>), never user input.
CREATE TABLE IF NOT EXISTS {db:Identifier}.`__TABLE__`
(
    msg_id String
)
ENGINE = MergeTree()
ORDER BY msg_id
