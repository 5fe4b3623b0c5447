-- msgtrace: shard-local group-by
-- RabbitMQ, for a few in_flight pairs read by key: the consumer instance (emitter) that last received
-- each message in each queue (consumer_group), and when. A delivery that was never acked goes back to
-- its queue when that consumer's channel closes; tracer.analysis.rabbitmq.queue_never_redelivered
-- checks whether the queue went on delivering without it.
SELECT
    msg_id,
    ifNull(consumer_group, '') AS consumer_group,
    argMax(emitter_id, ts_us) AS holder,
    argMax(host, ts_us) AS holder_host,
    max(ts_us) AS received_ts
FROM {db:Identifier}.trace_events
WHERE msg_id IN (SELECT arrayJoin({ids:Array(String)}))
  AND ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
  AND stage = 'received' AND isNull(partition)
GROUP BY msg_id, consumer_group
