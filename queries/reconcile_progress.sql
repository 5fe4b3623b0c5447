-- How far each group got on one partition, per log epoch (segment between resets): the highest
-- offset it received or committed (the stages in {stages}: both for broker evidence, only
-- offset_committed for consumer evidence), and the highest below {below} (the partition's live log
-- start, for expired_in_broker; 2^62 when unknown). Offsets compare only within one epoch.
SELECT
    g AS consumer_group,
    arrayCount(r -> r <= ts_us, {resets:Array(UInt64)}) AS seg,
    max(off) AS max_off,
    if(countIf(off < {below:Int64}) > 0, maxIf(off, off < {below:Int64}), toInt64(-1)) AS max_below,
    argMax(msg_id, off) AS by_msg,
    argMax(stage, off) AS by_stage,
    argMax(ts_us, off) AS at_ts
FROM
(
    SELECT
        msg_id,
        stage,
        ts_us,
        ifNull(offset, toInt64(-1)) AS off,
        if(ifNull(consumer_group, '') = '', '(no group)', assumeNotNull(consumer_group)) AS g
    FROM {db:Identifier}.trace_events
    WHERE topic = {topic:String} AND partition = {part:Int32}
      AND has({stages:Array(String)}, stage)
      AND ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
)
WHERE has({groups:Array(String)}, g)
GROUP BY consumer_group, seg
