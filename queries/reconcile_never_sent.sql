-- Expected ids with no event at all in the scanned range: never_sent, each with its expected time
-- (ts_us, 0 when the source gives none; an audit gap covering it makes the verdict audit_gap).
-- {expected} is the run's generated staging table of expected ids (never user input).
SELECT msg_id, max(ts_us) AS ts_us
FROM {db:Identifier}.{expected:Identifier}
WHERE msg_id NOT IN
(
    SELECT msg_id FROM {db:Identifier}.trace_events WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
)
GROUP BY msg_id
