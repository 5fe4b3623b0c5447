-- Reconcile, pass 1 by message (the usual case: the consumer stages of each message belong to one
-- group). One lean GROUP BY msg_id over the scanned range that also finds the groups expected on
-- each topic, so reconcile_topic_groups.sql (a second read of the window) is not needed.
-- Row kinds:
--   0  plainly delivered judged messages: one count per (topic, group);
--   1  every other judged message, by msg_id: pass 2 (reconcile_pairs.sql) judges all its pairs;
--   3  messages outside the window (not judged), counted per (topic, group, recvwin);
--   4  messages this shape cannot judge: consumer stages of more than one group or events naming
--      different topics (judged, or received in the window), or a judged message with a producer
--      stage naming a consumer group. reconcile.py then uses reconcile_topic_groups.sql and
--      reconcile_scan*.sql (per pair) instead.
-- recvwin = 1 when the message has a `received` in [from, cut): its group is then one of the groups
-- expected on its topic (reconcile_topic_groups.sql's definition), so the groups of a topic are
-- those of its rows with recvwin = 1, and a delivered message counts as plain (kind 0) only with
-- recvwin = 1. Plain = sent, received and business_done, no ack_lost, and exactly one event per stage
-- (rows = stage bits set): a duplicated audit event, a redelivery or a second outcome makes a message
-- kind 1, and pass 2 judges it exactly (uniqExact of event_id).
-- Topics and groups are compared by cityHash64 (th, gh; a consumer stage without a group hashes ''
-- and is '(no group)'): string aggregates per message (min/max of the names) cost more than the
-- rest of the query. reconcile_names.sql reads the names behind the hashes from one sample message
-- each. Two different names with one 64-bit hash in a window would be taken for one.
-- JUDGE_EXTRA marker: "OR msg_id IN (expected ids)" when an expected source is given.
-- GROUP_FILTER marker: with one group named (--group), "AND (producer stage OR that group)"; else
-- nothing (a constant-false OR would still be evaluated per row).
-- ifNull(cityHash64(consumer_group), cityHash64('')): NULL and '' hash alike ('(no group)'); not
-- cityHash64(assumeNotNull(..)), as the value
-- under a NULL is whatever the writer left there (an INSERT ... SELECT if(c, NULL, 'g') leaves 'g').
-- Stage bits (tracer.events.STAGE_BITS): sent 1, send_failed 2, broker_acked 4, received 8,
-- offset_committed 16, business_done 32, business_failed 64, dead_lettered 128.
SELECT
    kind,
    th,
    gh,
    mid,
    recvwin,
    count() AS n,
    any(msg_id) AS sample
FROM
(
    SELECT
        msg_id,
        t_lo AS th,
        bitAnd(masks, 255) AS pm,
        bitAnd(bitShiftRight(masks, 8), 255) AS cm,
        bitAnd(bitShiftRight(masks, 16), 1) AS recvwin,
        bitAnd(bitShiftRight(masks, 17), 1) AS producer_group,
        if(cm = 0, toUInt64(0), g_lo) AS gh,
        cm != 0 AND g_lo != g_hi AS multi,
        -- each stage recorded exactly once (stage bits set = events): duplicates go to pass 2
        n_ev = (bitAnd(masks, 1) + bitAnd(bitShiftRight(masks, 1), 1) + bitAnd(bitShiftRight(masks, 2), 1)
                + bitAnd(bitShiftRight(masks, 3), 1) + bitAnd(bitShiftRight(masks, 4), 1)
                + bitAnd(bitShiftRight(masks, 5), 1) + bitAnd(bitShiftRight(masks, 6), 1)
                + bitAnd(bitShiftRight(masks, 7), 1) + bitAnd(bitShiftRight(masks, 8), 1)
                + bitAnd(bitShiftRight(masks, 9), 1) + bitAnd(bitShiftRight(masks, 10), 1)
                + bitAnd(bitShiftRight(masks, 11), 1) + bitAnd(bitShiftRight(masks, 12), 1)
                + bitAnd(bitShiftRight(masks, 13), 1) + bitAnd(bitShiftRight(masks, 14), 1)
                + bitAnd(bitShiftRight(masks, 15), 1)) AS once,
        toUInt8(multiIf(
            (multi OR t_lo != t_hi) AND (judged OR recvwin = 1), 4,
            judged AND producer_group = 1, 4,
            NOT judged, 3,
            -- plainly delivered: business_done, a received (no audit gap), sent, no ack_lost
            once AND bitAnd(cm, 32) != 0 AND bitAnd(pm, 1) != 0
                AND NOT (bitAnd(pm, 2) != 0 AND bitAnd(pm, 4) = 0) AND recvwin = 1, 0,
            1)) AS kind,
        if(kind = 1, msg_id, '') AS mid
    FROM
    (
        SELECT
            msg_id,
            groupBitOr(code) AS masks,
            count() AS n_ev,
            min(tcode) AS tmin,
            if(tmin >= 4611686018427387904, toUInt64(tmin - 4611686018427387904), tmin) AS msg_time,
            ((msg_time >= {from_us:UInt64} AND msg_time < {to_us:UInt64}) /*JUDGE_EXTRA*/) AS judged,
            min(th1) AS t_lo,
            max(th1) AS t_hi,
            minIf(gh1, bit >= 8) AS g_lo,
            maxIf(gh1, bit >= 8) AS g_hi
        FROM
        (
            SELECT
                msg_id,
                toUInt8(transform(stage,
                    ['sent', 'send_failed', 'broker_acked', 'received', 'offset_committed',
                     'business_done', 'business_failed', 'dead_lettered'],
                    [1, 2, 4, 8, 16, 32, 64, 128], 0)) AS bit,
                -- producer bits in 0-7, consumer bits in 8-15, a received in [from, cut) in bit 16, a
                -- producer stage naming a consumer group in bit 17
                toUInt32(bitOr(bitOr(if(bit < 8, toUInt32(bit), bitShiftLeft(toUInt32(bit), 8)),
                                     if(bit = 8 AND ts_us >= {from_us:UInt64}, toUInt32(65536), toUInt32(0))),
                               if(bit < 8 AND gh1 != cityHash64(''), toUInt32(131072), toUInt32(0)))) AS code,
                -- message time: the first sent, else the first event (offset by 2^62 so sent wins)
                if(bit = 1, ts_us, ts_us + 4611686018427387904) AS tcode,
                cityHash64(topic) AS th1,
                ifNull(cityHash64(consumer_group), cityHash64('')) AS gh1
            FROM {db:Identifier}.trace_events
            WHERE ts_us >= {scan_from:UInt64} AND ts_us < {cut:UInt64} /*GROUP_FILTER*/
        )
        GROUP BY msg_id
    )
)
GROUP BY kind, th, gh, mid, recvwin
