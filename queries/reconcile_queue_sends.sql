-- msgtrace: shard-local group-by
-- The exchange (topic), routing key and host of a few RabbitMQ messages' sends (read by primary key):
-- what reconcile_queue_order.sql's answers are compared with.
SELECT
    msg_id,
    any(topic) AS s_topic,
    any(ifNull(key, '')) AS s_key,
    any(host) AS s_host
FROM {db:Identifier}.trace_events
WHERE msg_id IN (SELECT arrayJoin({ids:Array(String)}))
  AND ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64} AND stage = 'sent' AND isNull(partition)
GROUP BY msg_id
