-- The topic and consumer-group names behind the hashes of reconcile_scan_msg.sql that the first
-- receipts (reconcile_groups_hint.sql) did not name: a read of the topic and group columns of the
-- receipts in the window, kept to the topics asked.
SELECT DISTINCT
    cityHash64(topic) AS th,
    topic,
    cityHash64(ifNull(consumer_group, '')) AS gh,
    if(ifNull(consumer_group, '') = '', '(no group)', assumeNotNull(consumer_group)) AS consumer_group
FROM {db:Identifier}.trace_events
WHERE ts_us >= {from_us:UInt64} AND ts_us < {cut:UInt64} AND stage = 'received'
  AND has({ths:Array(UInt64)}, cityHash64(topic))
