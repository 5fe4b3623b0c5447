-- RabbitMQ: per queue (consumer_group) among some, its latest delivery in the scanned range and the
-- message of it: did the queue go on delivering after an in_flight delivery of it was taken?
-- (tracer.analysis.rabbitmq.queue_never_redelivered). Only when a RabbitMQ pair is in_flight (few).
SELECT
    ifNull(consumer_group, '') AS consumer_group,
    max(ts_us) AS latest_received,
    argMax(msg_id, ts_us) AS by_msg
FROM {db:Identifier}.trace_events
WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
  AND stage = 'received' AND isNull(partition)
  AND ifNull(consumer_group, '') IN (SELECT arrayJoin({groups:Array(String)}))
GROUP BY consumer_group
