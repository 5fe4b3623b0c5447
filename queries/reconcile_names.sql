-- The topic and consumer-group names behind the hashes of reconcile_scan_msg.sql, read from a few
-- sample messages (one per hash pair) through the primary key.
SELECT DISTINCT
    cityHash64(topic) AS th,
    topic,
    cityHash64(ifNull(consumer_group, '')) AS gh,
    if(ifNull(consumer_group, '') = '', '(no group)', assumeNotNull(consumer_group)) AS g
FROM {db:Identifier}.trace_events
WHERE msg_id IN (SELECT arrayJoin({ids:Array(String)}))
  AND ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
