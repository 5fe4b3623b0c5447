-- msgtrace: shard-local group-by
-- The latest replay run (attrs replay_run) of each of a few replayed messages, read by primary key:
-- pass 2 (reconcile_pairs.sql) knows which messages have replay events, not the run's id.
SELECT
    msg_id,
    argMaxIf(attr_values[indexOf(attr_keys, 'replay_run')], ts_us, has(attr_keys, 'replay_run')) AS replay_run
FROM {db:Identifier}.trace_events
WHERE msg_id IN (SELECT arrayJoin({ids:Array(String)}))
  AND ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
GROUP BY msg_id
