-- The acks and receipts of a few messages (read by primary key): reconcile.py checks the answers of
-- reconcile_frontier_latest.sql with them.
SELECT
    msg_id,
    stage,
    ts_us,
    topic,
    toInt64(ifNull(partition, -1)) AS part,
    ifNull(offset, toInt64(-1)) AS off,
    if(ifNull(consumer_group, '') = '', '(no group)', assumeNotNull(consumer_group)) AS g
FROM {db:Identifier}.trace_events
WHERE msg_id IN (SELECT arrayJoin({ids:Array(String)}))
  AND ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64} AND stage IN ('broker_acked', 'received')
