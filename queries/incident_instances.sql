-- Every instance (service, host, pid) that recorded events in [from, cut): when its events start and
-- stop, how many, its last stage, its emitters and the consumer groups it recorded for. An instance
-- whose events stop while others of its service go on was stopped or crashed (tracer.analysis.signals).
-- One GROUP BY over low-cardinality columns; no msg_id is read.
SELECT
    service,
    host,
    pid,
    min(ts_us) AS first_ts,
    max(ts_us) AS last_ts,
    count() AS events,
    argMax(stage, ts_us) AS last_stage,
    groupUniqArray(emitter_id) AS emitters,
    groupUniqArrayIf(assumeNotNull(consumer_group), ifNull(consumer_group, '') != '') AS groups
FROM {db:Identifier}.trace_events
WHERE ts_us >= {from_us:UInt64} AND ts_us < {cut:UInt64}
GROUP BY service, host, pid
ORDER BY service, first_ts
