-- msgtrace: shard-local group-by
-- The msg_ids behind pass 1's hashes, when they are few enough to travel as a bound array
-- (tracer.analysis.passes.INLINE_MAX): reconcile_resolve.sql without a staging table (creating and
-- filling one costs ~40-60 ms on chDB, ~0.15x the bare GROUP BY msg_id over 1M messages).
SELECT DISTINCT msg_id
FROM {db:Identifier}.trace_events
WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
  AND cityHash64(msg_id) IN (SELECT arrayJoin({hashes:Array(UInt64)}))
