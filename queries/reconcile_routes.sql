-- msgtrace: shard-local group-by
-- The exchange and routing key of a few messages (read by primary key), RabbitMQ ones only: the
-- queues expected to get a RabbitMQ message are those bound to its (exchange, routing key), not every
-- queue of the exchange (tracer.analysis.rabbitmq.drop_unrouted). The routing key: attrs routing_key
-- (pika's adapter records it on deliveries), else the key column (pika's sent / broker_acked carry it
-- there). The exchange: topic (the routing key itself for the default exchange).
SELECT
    msg_id,
    anyIf(topic, topic != '' AND stage != 'received') AS s_exchange,
    anyIf(topic, topic != '') AS any_exchange,
    anyIf(rk, stage != 'received') AS s_rk,
    anyIf(rk, stage = 'received') AS r_rk
FROM
(
    SELECT
        msg_id,
        stage,
        topic,
        if(has(attr_keys, 'routing_key'), attr_values[indexOf(attr_keys, 'routing_key')], ifNull(key, '')) AS rk
    FROM {db:Identifier}.trace_events
    WHERE msg_id IN (SELECT arrayJoin({ids:Array(String)}))
      AND ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64} AND mq = 'rabbitmq'
      AND stage IN ('sent', 'send_failed', 'broker_acked', 'received')
)
GROUP BY msg_id
