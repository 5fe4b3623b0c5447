-- A cheap first answer for reconcile_frontier.sql: per (topic, partition) of the given ones, the
-- latest broker_acked and its message, leaving out messages known not to be received by the topic's
-- group (pending_in_broker in this run). reconcile.py checks each answer against that message's own
-- events (reconcile_frontier_check.sql): if the group received it and its latest ack is this one, no
-- message acked later on the partition was received, so it is reconcile_frontier.sql's answer; where
-- the check fails, reconcile.py runs reconcile_frontier.sql itself.
SELECT
    topic,
    toInt64(ifNull(partition, -1)) AS part,
    max(ts_us) AS ack_ts,
    argMax(msg_id, ts_us) AS msg
FROM {db:Identifier}.trace_events
WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64} AND stage = 'broker_acked'
  AND has({topics:Array(String)}, topic) AND has({parts:Array(Int32)}, ifNull(partition, -1))
  AND msg_id NOT IN (SELECT arrayJoin({skip:Array(String)}))
GROUP BY topic, part
