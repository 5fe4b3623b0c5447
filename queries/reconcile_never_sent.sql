-- Expected ids with no event at all in the scanned range: never_sent. {expected} is the run's
-- generated staging table of expected ids (never user input).
SELECT DISTINCT msg_id
FROM {db:Identifier}.{expected:Identifier}
WHERE msg_id NOT IN
(
    SELECT msg_id FROM {db:Identifier}.trace_events WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
)
