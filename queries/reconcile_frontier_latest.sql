-- A cheap first answer for reconcile_frontier.sql, step 1: per (topic, partition) of the given ones,
-- the time of the latest broker_acked, leaving out the acks stamped at the ack times of messages known
-- not to be received by the topic's group (pending_in_broker in this run, {skip_ts}). No msg_id is
-- read here (the column costs most of the read): reconcile_frontier_acks.sql then reads the messages
-- acked at the times found (few granules), and tracer.analysis.broker checks that no message left
-- out by its time alone was acked later, and each answer against that message's own events
-- (reconcile_frontier_check.sql); where a check fails, reconcile_frontier.sql itself runs.
-- `x IN (SELECT arrayJoin(array))` and not has(array, x): a set lookup instead of a scan of the
-- array per row (measured ~0.2x the bare GROUP BY msg_id cheaper over 5M events).
SELECT
    topic,
    toInt64(ifNull(partition, -1)) AS part,
    max(ts_us) AS ack_ts
FROM {db:Identifier}.trace_events
WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64} AND stage = 'broker_acked'
  AND topic IN (SELECT arrayJoin({topics:Array(String)}))
  AND ifNull(partition, -1) IN (SELECT arrayJoin({parts:Array(Int32)}))
  AND ts_us NOT IN (SELECT arrayJoin({skip_ts:Array(UInt64)}))
GROUP BY topic, part
