-- The audit's own bookkeeping per emitter in [from, to): who it is, how many of its seq numbers are
-- stored (exactly, duplicates counted once), the lowest and highest, when its events start and stop,
-- and what it recorded (the topics it produced to, the consumer groups it recorded for, the
-- (topic, partition, group) lanes it received from, as 'topic\0partition\0group' strings), so that
-- its gaps can be charged to the verdicts that depend on them (tracer.analysis.gaps).
-- {distinct_seq}: uniqExact(seq), or on chDB groupBitmap(seq) (exact too, cheaper; not on 18.16).
-- {producer_stages}: the producer stages, e.g. ('sent', 'send_failed', 'broker_acked', 'rolled_back').
-- emitters: the emitters to report; all_emitters = 1 reports every one (emitters then holds [''],
-- as 18.16 cannot cast an empty array literal).
SELECT
    emitter_id,
    any(service) AS service,
    any(host) AS host,
    any(pid) AS pid,
    {distinct_seq:SQL} AS n,
    min(seq) AS lo,
    max(seq) AS hi,
    count() AS rows,
    min(ts_us) AS first_ts,
    max(ts_us) AS last_ts,
    groupUniqArrayIf(topic, stage IN {producer_stages:SQL}) AS producer_topics,
    groupUniqArrayIf(assumeNotNull(consumer_group), stage NOT IN {producer_stages:SQL}
                     AND ifNull(consumer_group, '') != '') AS groups,
    groupUniqArrayIf(concat(topic, '\0', toString(ifNull(partition, -1)), '\0', ifNull(consumer_group, '')),
                     stage = 'received') AS lanes
FROM {db:Identifier}.trace_events
WHERE ts_us >= {from_us:UInt64} AND ts_us < {to_us:UInt64} AND emitter_id != '' AND seq > 0
    AND ({all_emitters:UInt8} = 1 OR has({emitters:Array(String)}, emitter_id))
GROUP BY emitter_id
ORDER BY service, first_ts
