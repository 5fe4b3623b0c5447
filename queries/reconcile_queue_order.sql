-- msgtrace: shard-local group-by
-- RabbitMQ's broker evidence (no partitions, no offsets): per queue (consumer_group), exchange (topic),
-- routing key and publishing host, the latest sent time among the messages the queue received, and the
-- message that has it. A queue delivers in order, so a message broker_acked before another one was even
-- sent (from the same host: one clock; same exchange and routing key: the same bindings) that the queue
-- delivered, yet never delivered itself, had left the queue undelivered: lost in the broker.
-- Aggregation by msg_id (no JOIN: ClickHouse 18.16), then one row per queue through ARRAY JOIN.
SELECT
    g AS consumer_group,
    s_topic AS topic,
    s_key AS key,
    s_host AS host,
    max(sent_ts) AS latest_sent,
    argMax(msg_id, sent_ts) AS by_msg
FROM
(
    SELECT
        msg_id,
        anyIf(topic, stage = 'sent') AS s_topic,
        anyIf(ifNull(key, ''), stage = 'sent') AS s_key,
        anyIf(host, stage = 'sent') AS s_host,
        minIf(ts_us, stage = 'sent') AS sent_ts,
        groupUniqArrayIf(ifNull(consumer_group, ''), stage = 'received') AS groups
    FROM {db:Identifier}.trace_events
    WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
      AND stage IN ('sent', 'received')
      AND isNull(partition)
      AND topic IN (SELECT arrayJoin({topics:Array(String)}))
    GROUP BY msg_id
    HAVING countIf(stage = 'sent') > 0 AND notEmpty(groups)
)
ARRAY JOIN groups AS g
WHERE has({groups:Array(String)}, g)
GROUP BY g, s_topic, s_key, s_host
