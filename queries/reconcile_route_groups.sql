-- The queues (consumer groups) seen receiving from each (exchange, routing key) of the given exchanges
-- in the window (RabbitMQ): the groups expected for a message published with that routing key. The
-- routing key as reconcile_routes.sql reads it. {lo}/{hi}: the window's [from, cut) for a reconcile,
-- around the message for trace-msg --topic-groups.
SELECT
    topic,
    rk,
    groupUniqArray(g) AS gs
FROM
(
    SELECT
        topic,
        if(has(attr_keys, 'routing_key'), attr_values[indexOf(attr_keys, 'routing_key')], ifNull(key, '')) AS rk,
        if(ifNull(consumer_group, '') = '', '(no group)', assumeNotNull(consumer_group)) AS g
    FROM {db:Identifier}.trace_events
    WHERE stage = 'received' AND ts_us >= {lo:UInt64} AND ts_us < {hi:UInt64} AND mq = 'rabbitmq'
      AND has({topics:Array(String)}, topic)
)
GROUP BY topic, rk
