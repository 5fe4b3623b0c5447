-- msgtrace: shard-local group-by
-- Evidence for lost_in_broker that survives offset reuse: per (topic, partition, group), the latest
-- broker_acked time (and its message and offset) among the messages that the group did receive.
-- A message acked earlier on the same partition and never received by that group was passed over.
SELECT
    t AS topic,
    part,
    g AS consumer_group,
    max(ack) AS frontier_ack_ts,
    argMax(msg_id, ack) AS frontier_msg,
    argMax(ack_off, ack) AS frontier_off
FROM
(
    SELECT
        msg_id,
        anyIf(topic, topic != '') AS t,
        maxIf(ts_us, stage = 'broker_acked') AS ack,
        argMaxIf(toInt64(ifNull(partition, -1)), ts_us, stage = 'broker_acked') AS part,
        argMaxIf(ifNull(offset, toInt64(-1)), ts_us, stage = 'broker_acked') AS ack_off,
        groupUniqArrayIf(if(ifNull(consumer_group, '') = '', '(no group)', assumeNotNull(consumer_group)),
                         stage = 'received') AS rgroups
    FROM {db:Identifier}.trace_events
    WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64} AND has({topics:Array(String)}, topic)
      AND stage IN ('broker_acked', 'received') AND has({parts:Array(Int32)}, ifNull(partition, -1))
    GROUP BY msg_id
    HAVING ack > 0 AND notEmpty(rgroups)
)
ARRAY JOIN rgroups AS g
WHERE has({groups:Array(String)}, g)
GROUP BY t, part, g
