-- msgtrace: shard-local group-by
-- The msg_ids behind pass 1's hashes (reconcile_scan_msg.sql groups by cityHash64(msg_id)): one
-- read of the msg_id column. {hashes} is the run's generated staging table of hashes.
SELECT DISTINCT msg_id
FROM {db:Identifier}.trace_events
WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
  AND cityHash64(msg_id) IN (SELECT h FROM {db:Identifier}.{hashes:Identifier})
