-- Reconcile, pass 1, when every topic has at most one expected consumer group (the common case,
-- and any --group with a single group): the same as reconcile_scan.sql without the ARRAY JOIN.
-- Each consumer stage belongs to its own group's pair; producer stages go to the topic's group.
-- A consumer stage of another group makes its own pair (judged exactly in pass 2, as every pair
-- that is not plainly delivered); being plainly delivered depends only on the pair's own stages,
-- so the counts equal the general query's.
SELECT
    vcode,
    topic,
    grp AS consumer_group,
    if(plain, '', msg_id) AS mid,
    count() AS n
FROM
(
    SELECT
        msg_id,
        grp,
        topic,
        bitAnd(masks, 255) AS pmask,
        bitAnd(bitShiftRight(masks, 8), 255) AS cm,
        bitAnd(bitShiftRight(masks, 16), 255) AS any_cmask,
        bitAnd(counts, 1048575) AS n_recv,
        bitShiftRight(counts, 20) AS n_done,
        toUInt8(multiIf(
            pmask = 0 AND any_cmask = 0, 1,
            bitAnd(pmask, 3) = 0, 10,
            bitAnd(pmask, 4) != 0 AND bitAnd(pmask, 1) = 0, 10,
            cm != 0 AND bitAnd(cm, 8) = 0, 10,
            n_done > 0, 0,
            bitAnd(cm, 128) != 0, 9,
            bitAnd(cm, 64) != 0 AND bitAnd(cm, 16) != 0, 7,
            bitAnd(cm, 16) != 0, 6,
            bitAnd(cm, 8) != 0, 8,
            bitAnd(pmask, 4) != 0 OR bitAnd(any_cmask, 248) != 0, 5,
            bitAnd(pmask, 2) != 0, 2,
            3)) AS vcode,
        vcode = 0 AND n_recv <= 1 AND n_done <= 1
            AND NOT (bitAnd(pmask, 2) != 0 AND bitAnd(pmask, 4) = 0 AND bitAnd(any_cmask, 248) != 0) AS plain
    FROM
    (
        SELECT
            msg_id,
            grp,
            groupBitOr(code) AS masks,
            sum(cnt) AS counts,
            min(tcode) AS tmin,
            anyIf(topic, topic != '') AS topic,
            if(tmin >= 4611686018427387904, toUInt64(tmin - 4611686018427387904), tmin) AS msg_time
        FROM
        (
            SELECT
                msg_id,
                toUInt8(transform(stage,
                    ['sent', 'send_failed', 'broker_acked', 'received', 'offset_committed',
                     'business_done', 'business_failed', 'dead_lettered'],
                    [1, 2, 4, 8, 16, 32, 64, 128], 0)) AS bit,
                if(bit < 8,
                   if({restrict_groups:UInt8} = 1, {group:String}, transform(topic, {topics:Array(String)}, {first_groups:Array(String)}, '')),
                   if(ifNull(consumer_group, '') = '', '(no group)', assumeNotNull(consumer_group))) AS grp,
                -- producer bits in 0-7; consumer bits in 8-15 (own group) and 16-23 (any group)
                toUInt32(if(bit < 8, bit, bitOr(bitShiftLeft(toUInt32(bit), 8), bitShiftLeft(toUInt32(bit), 16)))) AS code,
                toUInt64(multiIf(bit = 8, 1, bit = 32, 1048576, 0)) AS cnt,
                -- message time: the first sent, else the first event (offset by 2^62 so sent wins)
                if(bit = 1, ts_us, ts_us + 4611686018427387904) AS tcode,
                ts_us,
                topic
            FROM {db:Identifier}.trace_events
            WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
              AND ({restrict_groups:UInt8} = 0 OR stage IN ('sent', 'send_failed', 'broker_acked')
                   OR ifNull(consumer_group, '') = {group:String})
        )
        GROUP BY msg_id, grp
        HAVING (msg_time >= {from_us:UInt64} AND msg_time < {to_us:UInt64}) /*JUDGE_EXTRA*/
    )
)
GROUP BY vcode, topic, consumer_group, mid
