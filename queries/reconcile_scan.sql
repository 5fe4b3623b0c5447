-- Reconcile, pass 1 over the whole window: the verdict of every (msg_id, consumer group) pair,
-- returned as counts for plainly delivered pairs (per topic and group) and one row per other pair,
-- whose details come from reconcile_pairs.sql (pass 2, only for those messages).
-- Lean on purpose (this is the part that scales with the window): one GROUP BY over the events,
-- replicated by ARRAY JOIN to the groups expected for their topic (producer stages to every expected
-- group, consumer stages also to their own); the bitmasks of the producer side, the pair's own group
-- and any group are packed in one integer, the receipt and outcome counts in another.
-- Codes (tracer.verdicts.VERDICTS order): 0 delivered, 1 never_sent, 2 send_failed, 3 unacked,
-- 4 lost_in_broker, 5 pending_in_broker, 6 lost_in_consumer, 7 failed_and_committed, 8 in_flight,
-- 9 dead_lettered, 10 audit_gap. A pair is plain when delivered with one receipt, one outcome and
-- no ack_lost; the counts here are of rows, so duplicated audit events may make a pair look not
-- plain: pass 2 counts exactly (uniqExact of event_id) and puts it back among the delivered.
-- JUDGE_EXTRA marker: "OR msg_id IN (expected ids)" when an expected source is given.
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
            groupBitOr(if(g = grp, bitOr(code, bitShiftRight(code, 8)), code)) AS masks,
            sum(if(g = grp, cnt, 0)) AS counts,
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
                if(bit < 8, '', if(ifNull(consumer_group, '') = '', '(no group)', assumeNotNull(consumer_group))) AS g,
                -- producer bits stay in bits 0-7; consumer bits go to 16-23 (any group) and, for the
                -- pair's own group, are copied to 8-15 by the shift above
                toUInt32(if(bit < 8, bit, bitShiftLeft(toUInt32(bit), 16))) AS code,
                toUInt64(multiIf(bit = 8, 1, bit = 32, 1048576, 0)) AS cnt,
                -- message time: the first sent, else the first event (offset by 2^62 so sent wins)
                if(bit = 1, ts_us, ts_us + 4611686018427387904) AS tcode,
                ts_us,
                topic,
                arrayElement({topic_groups:Array(Array(String))}, indexOf({topics:Array(String)}, topic)) AS tg,
                if({restrict_groups:UInt8} = 1, {groups:Array(String)},
                   if(g != '' AND NOT has(tg, g), arrayPushBack(tg, g), tg)) AS garr
            FROM {db:Identifier}.trace_events
            WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64}
        )
        ARRAY JOIN if(empty(garr), [''], garr) AS grp
        GROUP BY msg_id, grp
        HAVING (msg_time >= {from_us:UInt64} AND msg_time < {to_us:UInt64}) /*JUDGE_EXTRA*/
    )
)
GROUP BY vcode, topic, consumer_group, mid
